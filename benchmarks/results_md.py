"""Shared by the benchmarks: replace one benchmark's section of benchmarks/RESULTS.md, keeping the others."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def publish(text: str, write: bool) -> None:
    """Print a benchmark's Markdown section; with `write` (the --write flag) also put it into RESULTS.md."""
    print(text)
    if write:
        write_section(text)


def write_section(text: str, path: Path = RESULTS) -> None:
    """`text` starts and ends with its marker lines (<!-- NAME:start --> ... <!-- NAME:end -->): the section
    between the same markers in `path` is replaced, or `text` is appended; written atomically."""
    from aftertune.fileio import write_text_atomic

    lines = text.strip().splitlines()
    start, end = lines[0], lines[-1]
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    if start in old and end in old:
        new = old[: old.index(start)] + text.rstrip("\n") + old[old.index(end) + len(end):]
    else:
        new = old.rstrip("\n") + "\n\n" + text
    write_text_atomic(path, new)

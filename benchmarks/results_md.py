"""Shared by the benchmarks: replace one benchmark's section of benchmarks/RESULTS.md, keeping the others; the
machine's CPU flags; one measured arm in its own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def cpu_flags() -> str:
    """The CPU flags that decide the kernels (AVX-512 family, bf16, AMX), from /proc/cpuinfo: a CPU with
    avx512_bf16 computes bf16 natively, one without emulates it, and timings differ accordingly."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return "unknown"
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    keep = sorted(f for f in flags if f.startswith(("avx512f", "avx512_bf16", "amx", "avx2", "avx512_vnni")))
    return " ".join(keep) or "none of avx2/avx512/amx"


def run_worker(script: str, name: str, args: list[str]) -> dict[str, Any]:
    """Run `script --worker NAME ARGS --result FILE` in a fresh process and return the JSON it wrote there, with
    the load average at its start: each arm gets its own process (its own peak memory, no warm caches)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
        if os.getloadavg()[0] > (os.cpu_count() or 1):
            # a shared machine: spinning OpenMP threads stall each other when descheduled (all arms alike)
            env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        load = round(os.getloadavg()[0], 1)
        proc = subprocess.run([sys.executable, script, "--worker", name, *args, "--result", str(out)],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"{name} worker failed:\n{proc.stderr[-4000:]}")
        res = json.loads(out.read_text())
        res["load_avg"] = load
        return res


def write_support_rows(path: Path, n: int) -> None:
    """The first n `support` training examples as chat JSONL (a file: no held-out split, so no evaluation)."""
    from aftertune import trainsets

    rows = trainsets.load("support", "train", limit=n)
    path.write_text("".join(json.dumps({"messages": r["messages"]}) + "\n" for r in rows), encoding="utf-8")


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

"""Reading user files with errors that name file and line, and writing atomically.

Nothing half-written: every output goes to a temporary file in the same folder
and is renamed into place, so an interrupted command leaves the old file or the
new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aftertune.errors import UserError


def read_text(path: str | os.PathLike[str], what: str = "file") -> str:
    """A user's text file as str; a missing path, a folder, or bytes that are not UTF-8 raise a UserError
    naming the file and the fix (a UTF-8 byte-order mark is dropped)."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{p}: is a folder; pass the path of a {what}")
    if not p.is_file():
        raise UserError(f"{p}: file not found; pass the path of an existing {what}")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise UserError(f"{p}: cannot read it ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        kind = "UTF-16 text" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else (
            "binary data" if b"\x00" in data[:4096] else "text in another encoding (latin-1?)")
        raise UserError(f"{p}: not UTF-8 (byte {exc.start} is {data[exc.start:exc.start + 1]!r}; it looks like "
                        f"{kind}); save the {what} as UTF-8") from None


def load_yaml(path: str | os.PathLike[str], what: str) -> Any:
    """A user's YAML file (UTF-8, safe loader); a syntax error is one line naming file, line and problem."""
    import yaml

    p = Path(path)
    text = read_text(p, what)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise UserError(f"{p}{line}: not valid YAML ({problem})") from None


def load_json(path: str | os.PathLike[str]) -> Any:
    """A JSON file's value; invalid JSON raises UserError naming the file and line."""
    path = Path(path)
    try:
        return json.loads(read_text(path, "JSON file"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file; a bad line raises UserError naming file and line."""
    p = Path(path)
    rows: list[dict[str, Any]] = []
    for lineno, line in enumerate(read_text(p, ".jsonl file").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{p}:{lineno}: not valid JSON ({exc.msg}); write one JSON object per line") from None
        if not isinstance(row, dict):
            raise UserError(f"{p}:{lineno}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success rename it onto `dest`."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs should be as readable as any new file
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(dest: str | os.PathLike[str], text: str) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(dest: str | os.PathLike[str], obj: Any) -> None:
    write_text_atomic(dest, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def canonical_json(obj: Any) -> str:
    """The byte-stable JSON used for hashing requests and specs."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()

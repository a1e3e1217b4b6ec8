"""Weights a variant derives from a model (`interp`, `quant`), written once into the cache.

The folder's name is a hash of everything that decides its bytes, so the same
inputs find the same folder and different ones never share it. It is built in
a temporary folder beside its place and renamed there whole: an interrupted
build leaves no folder that a later run would take as finished.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aftertune import paths
from aftertune.fileio import canonical_json, sha256_text


def materialise(kind: str, key: dict[str, Any], build: Callable[[Path], None]) -> Path:
    """`$AFTERTUNE_HOME/<kind>/<hash of key>/`, built by `build(tmp)` and renamed into place if absent."""
    dest = paths.cache_dir(kind) / sha256_text(canonical_json(key))[:32]
    if dest.is_dir():
        return dest
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{dest.name}-", dir=dest.parent))
    try:
        build(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; a cache entry is as readable as the umask allows
        os.rename(tmp, dest)
    except OSError:
        if not dest.is_dir():  # else another process wrote the same folder first: same inputs, same bytes
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def copy_other_files(src: Path, out: Path) -> None:
    """Config, tokenizer and the like: every top-level file of `src` but the weights, unless `out` has it."""
    from aftertune.sources.resolve import UNSAFE_SUFFIXES

    for p in src.iterdir():
        if p.is_file() and not p.name.endswith((".safetensors", *UNSAFE_SUFFIXES)) and not (out / p.name).exists():
            shutil.copy2(p, out / p.name)

"""Weights a variant derives from a model (`interp`, `quant`), written once into the cache.

The folder's name is a hash of everything that decides its bytes, so the same
inputs find the same folder and different ones never share it. It is built in
a temporary folder beside its place and renamed there whole: an interrupted
build leaves no folder that a later run would take as finished.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from aftertune import paths
from aftertune.errors import UserError
from aftertune.fileio import canonical_json, sha256_text
from aftertune.sources.base import ModelRef


def materialise(kind: str, key: dict[str, Any], build: Callable[[Path], None], what: str = "") -> Path:
    """`$AFTERTUNE_HOME/<kind>/<hash of key>/`, built by `build(tmp)` and renamed into place if absent.

    A full disk is one line (`what` names the artefact) after the partial files are gone."""
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
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            shutil.rmtree(tmp, ignore_errors=True)
            raise UserError(f"{what or dest}: the disk under {dest.parent} is full; the partial files were removed; "
                            "free space (or point AFTERTUNE_HOME elsewhere) and run again") from None
        if not dest.is_dir():  # else another process wrote the same folder first: same inputs, same bytes
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


@contextlib.contextmanager
def full_weights(model: ModelRef, scratch: Path) -> Iterator[Path]:
    """The folder of `model`'s full weights: its own, or its adapter merged into its base under `scratch`
    (removed on exit), since a quantizer or converter takes one set of weights."""
    if model.kind != "adapter":
        assert model.path is not None
        yield model.path
        return
    from aftertune.engines.merge import merge_adapter

    assert model.base is not None and model.base.path is not None and model.path is not None
    with tempfile.TemporaryDirectory(dir=scratch, prefix=".merge-") as tmp:
        yield merge_adapter(model.base.path, model.path, Path(tmp) / "merged")


def copy_other_files(src: Path, out: Path) -> None:
    """Config, tokenizer and the like: every top-level file of `src` but the weights, unless `out` has it."""
    from aftertune.sources.resolve import UNSAFE_SUFFIXES

    for p in src.iterdir():
        if p.is_file() and not p.name.endswith((".safetensors", *UNSAFE_SUFFIXES)) and not (out / p.name).exists():
            shutil.copy2(p, out / p.name)


def tune_folders(model_dir: Path) -> list[Path]:
    """The folders where the tune that wrote `model_dir` keeps its files (tune.json, bea.json): beside its
    `model/` or `merged/` folder, or above its `checkpoints/`."""
    return [model_dir.parent] + ([model_dir.parent.parent] if model_dir.parent.name == "checkpoints" else [])

"""Deployment variants (`quant`, `gguf`): which references end in one, and their files copied into a run folder.

A run spec applies a deployment variant to the base and the tuned model alike;
the audited artefacts live once in the cache (`$AFTERTUNE_HOME/quantized/...`),
and `export_artefact` puts the same bytes in the run's own folder, so the user
deploys exactly what the report describes. Files are hardlinked where the
filesystem allows (no second copy of the weights), else copied; the folder is
built beside its place and renamed whole, so an interrupted copy leaves no
half-written folder behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from aftertune.variants.base import DEPLOYMENT_VARIANTS, split_variants


def deployment_suffix(ref: str) -> str | None:
    """`REF#quant:int8` → `quant:int8`: the reference's last variant when it is a deployment variant, else None."""
    if "#" not in ref:
        return None
    _, parsed = split_variants(ref)
    if not parsed or parsed[-1][0] not in DEPLOYMENT_VARIANTS:
        return None
    return ref.rsplit("#", 1)[1].strip()


def artefact_path(info: dict[str, Any]) -> Path | None:
    """The file or folder a model's engine loaded for its deployment variant (`describe()`'s variant card)."""
    cards = info.get("variant") if isinstance(info.get("variant"), dict) else {}
    for name in sorted(DEPLOYMENT_VARIANTS):
        card = cards.get(name)
        if isinstance(card, dict) and card.get("path"):
            return Path(str(card["path"]))
    return None


def _link_or_copy(src: str, dst: str) -> str:
    """A hardlink (same bytes, no space), or a copy where the filesystem refuses links (another device)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def _files(root: Path) -> dict[str, os.stat_result]:
    if root.is_file():
        return {root.name: root.stat()}
    return {str(p.relative_to(root)): p.stat() for p in sorted(root.rglob("*")) if p.is_file()}


def _same(src: Path, dest: Path) -> bool:
    """Whether `dest` already holds `src`'s files: the same names, each the same file (a link) or the same size
    and modification time (a copy keeps both)."""
    want, have = _files(src), _files(dest)
    if set(want) != set(have):
        return False
    return all((a.st_ino, a.st_dev) == (b.st_ino, b.st_dev) or (a.st_size, a.st_mtime_ns) == (b.st_size, b.st_mtime_ns)
               for a, b in ((want[k], have[k]) for k in want))


def export_artefact(src: Path, dest: Path) -> bool:
    """`dest` (a folder) holds the file or folder `src`; returns False when it already did (a resumed run)."""
    if dest.is_dir() and _same(src, dest):
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in dest.parent.glob(f".tmp-{dest.name}-*"):  # left by a copy that was killed
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{dest.name}-", dir=dest.parent))
    old = None
    try:
        if src.is_file():
            _link_or_copy(str(src), str(tmp / src.name))
        else:
            shutil.copytree(src, tmp, copy_function=_link_or_copy, dirs_exist_ok=True)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700
        if dest.exists():  # another artefact (e.g. a new quantizer version): set aside, then replaced whole
            old = Path(tempfile.mkdtemp(prefix=f".tmp-{dest.name}-old-", dir=dest.parent))
            os.rename(dest, old / dest.name)
        os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(old)
    return True

"""Where aftertune keeps things: `$AFTERTUNE_HOME` (default ~/.cache/aftertune)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from aftertune.errors import UserError


def ensure_dir(path: str | os.PathLike[str], what: str) -> Path:
    """Create folder `path` (and parents) or raise a UserError naming it: a file in the way, no permission,
    a read-only file system. Commands call it for their outputs before doing any work."""
    p = Path(path).expanduser()
    try:
        p.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"{p}: {what} must be a folder, but a file is in the way; remove it or choose another "
                        "path") from None
    except OSError as exc:
        raise UserError(f"{p}: cannot create {what} ({exc.strerror or exc}); choose a writable path") from None
    return p


def check_writable(path: str | os.PathLike[str], what: str, *, folder: bool = False) -> None:
    """Raise a UserError now, before the work, when `path` cannot be written later as a file (or, with
    `folder`, as a folder). Nothing is created: the folders appear when the output is written."""
    p = Path(path).expanduser().absolute()
    if folder and p.exists() and not p.is_dir():
        raise UserError(f"{p}: {what} must be a folder, but a file is in the way; remove it or choose another path")
    if not folder and p.is_dir():
        raise UserError(f"{p}: {what} is a folder; pass a file path")
    ancestor = p if folder and p.is_dir() else p.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"{p}: {what} lies under {ancestor}, which is a file; choose another path")
    try:  # a probe file, removed at once: permission bits say nothing for root or on read-only mounts
        with tempfile.NamedTemporaryFile(dir=ancestor, prefix=".aftertune-probe-"):
            pass
    except OSError as exc:
        raise UserError(f"{p}: cannot write {what} under {ancestor} ({exc.strerror or exc}); choose a "
                        "writable path") from None


def home() -> Path:
    root = os.environ.get("AFTERTUNE_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "aftertune")
    return ensure_dir(root, "AFTERTUNE_HOME")


def cache_dir(kind: str) -> Path:
    """A sub-folder of the cache: "models", "data", "downloads", "converted"."""
    return ensure_dir(home() / kind, f"the {kind} cache")


def default_store_path() -> Path:
    """The workspace's run store, shared by every command unless `--store` says otherwise."""
    return Path(os.environ.get("AFTERTUNE_STORE") or home() / "store.sqlite")

"""Where aftertune keeps things: `$AFTERTUNE_HOME` (default ~/.cache/aftertune)."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    root = os.environ.get("AFTERTUNE_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "aftertune")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir(kind: str) -> Path:
    """A sub-folder of the cache: "models", "data", "downloads", "converted"."""
    path = home() / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_store_path() -> Path:
    """The workspace's run store, shared by every command unless `--store` says otherwise."""
    return Path(os.environ.get("AFTERTUNE_STORE") or home() / "store.sqlite")

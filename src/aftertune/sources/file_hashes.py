"""sha256 of files, remembered across runs in `$AFTERTUNE_HOME/fingerprints.json`.

Keyed by resolved path with size, mtime and ctime, so a multi-GB model is hashed
once, not on every run. ctime is the cheap re-check that catches content changed
with its mtime put back (`touch -d`, `os.utime`): the kernel sets ctime on every
write or utime and no user call can set it back. Model fingerprints and the
load-time check of packaged entries share this cache.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from aftertune import paths
from aftertune.fileio import sha256_file, write_json_atomic

SIDECAR = "fingerprints.json"


class FileHashes:
    """sha256 of files, remembered by (resolved path, size, mtime, ctime); call `save()` when done."""

    def __init__(self) -> None:
        self.path = paths.home() / SIDECAR
        try:
            self.data: dict[str, dict[str, Any]] = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.data = {}
        self.dirty = False

    def sha256(self, file: Path) -> str:
        real = os.path.realpath(file)
        st = os.stat(real)
        hit = self.data.get(real)
        if (
            hit
            and hit.get("size") == st.st_size
            and hit.get("mtime_ns") == st.st_mtime_ns
            and hit.get("ctime_ns") == st.st_ctime_ns
        ):
            return hit["sha256"]
        digest = sha256_file(real)
        self.data[real] = {
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns,
            "sha256": digest,
        }
        self.dirty = True
        return digest

    def save(self) -> None:
        if not self.dirty:
            return
        # Merge with what other processes wrote meanwhile, and forget files that are gone.
        try:
            current = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            current = {}
        current.update(self.data)
        write_json_atomic(self.path, {k: v for k, v in current.items() if os.path.exists(k)})

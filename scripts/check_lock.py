"""Exit 1 if an installed package's version differs from constraints.txt (a fresh install drifted).

setup.sh runs it after installing, so CI fails loudly instead of testing versions nobody locked."""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path


def main() -> int:
    lock = Path(__file__).resolve().parent.parent / "constraints.txt"
    drift = []
    for line in lock.read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, want = line.partition("==")
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            drift.append(f"{name}: locked {want}, not installed")
            continue
        if have.split("+")[0] != want:
            drift.append(f"{name}: locked {want}, installed {have}")
    for d in drift:
        print(f"check_lock: {d}", file=sys.stderr)
    if drift:
        print("check_lock: reinstall with `bash scripts/setup.sh`, or re-lock with `bash scripts/lock.sh`", file=sys.stderr)
    return 1 if drift else 0


if __name__ == "__main__":
    sys.exit(main())

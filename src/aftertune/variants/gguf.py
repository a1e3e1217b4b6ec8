"""The `gguf` variant: the model as llama.cpp / Ollama users deploy it, audited through llama.cpp's own server.

Written `REF#gguf:Q4_K_M` (`gguf:method=Q4_K_M` in full), after the model
reference and any `#interp`, in place of `#quant`. Three steps, each by
llama.cpp's own code (`variants.llama_cpp`), none home-made:

1. `convert_hf_to_gguf.py --outtype f32` turns the full-precision folder (an
   adapter merged into its base first) into a float32 GGUF, the chat template
   included;
2. llama.cpp's quantizer (`llama_model_quantize`, as `llama-quantize` runs it,
   no importance matrix) writes the `METHODS` type;
3. `python -m llama_cpp.server` serves it on a free loopback port; the audit
   talks to it through the `server` engine (`engines.served`), which starts it,
   waits for health, and stops it when the model is done, on errors and
   Ctrl-C too.

The file is written once per (source fingerprint, method, converter, quantizer)
to `$AFTERTUNE_HOME/gguf-variants/<hash>/model.gguf` (`artefacts.materialise`:
built in a temporary folder, renamed whole; an interrupted or out-of-disk build
leaves nothing), beside `gguf.json`, which names the method, the llama.cpp
release, the source and the file's sha256. The fingerprint includes that card.

Answers differ from the hf engine's in one more way than the weights: llama.cpp
runs its own kernels and sampler. Greedy decoding is still greedy, and the
prompts are the same (the GGUF carries the model's chat template, which
llama-cpp-python applies), so a comparison of `REF` with `REF#gguf:Q8_0`
measures what the deployed artefact does differently.
"""

from __future__ import annotations

import errno
import inspect
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aftertune.errors import UserError
from aftertune.fileio import sha256_file, write_json_atomic
from aftertune.sources.base import ModelRef
from aftertune.sources.fingerprints import GGUF_CARD, gguf_card
from aftertune.variants import llama_cpp
from aftertune.variants.artefacts import full_weights, materialise

GGUF_VERSION = "1"  # bump when a change here changes the written file
GGUF_FILE = "model.gguf"
N_CTX = 4096  # the server's context: the longest audit prompt plus its answer fits
# llama.cpp file type -> bits per weight of its main tensor type (block bytes * 8 / block size). The file's own
# figure (`bits_per_weight` in the card) is higher: _K_M mixes keep some tensors at a higher type, and K-quants
# need rows of 256, so a model whose width is not a multiple of it (SmolLM2: 576) falls back to wider types
METHODS: dict[str, float] = {"F16": 16.0, "Q8_0": 8.5, "Q6_K": 6.5625, "Q5_K_M": 5.5, "Q4_K_M": 4.5, "Q4_0": 4.5,
                             "Q3_K_M": 3.4375, "Q2_K": 2.625}
_HOW = "write REF#gguf:Q4_K_M (or another method), after the model reference (and #interp), before wrapper variants"
# llama.cpp's quantizer, run in the interpreter that has llama_cpp: argv = input, output, LLAMA_FTYPE_MOSTLY_ name
_QUANTIZE = """
import ctypes, sys, llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + sys.argv[3])
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(params)))
"""

Variant = tuple[str, dict[str, str]]


def parse_method(options: dict[str, str]) -> str:
    """The method of `gguf:Q4_K_M` (the first bare option is `method=`); unknown ones list the known."""
    unknown = set(options) - {"method"}
    if unknown:
        raise UserError(f"gguf: unknown option {sorted(unknown)[0]!r}; the only option is the method; {_HOW}")
    method = options.get("method", "")
    if method not in METHODS:
        shown = f"method {method!r}" if method else "no method"
        raise UserError(f"gguf: {shown}; known methods: {', '.join(METHODS)}; {_HOW}")
    return method


def apply_gguf_variant(model: ModelRef, variants: Sequence[Variant]) -> tuple[ModelRef, list[Variant]]:
    """The GGUF model when the first suffix left is `gguf`, and the variants left to wrap it."""
    rest = list(variants)
    if not rest or rest[0][0] != "gguf":
        return model, rest
    return to_gguf(model, parse_method(rest[0][1])), rest[1:]


def to_gguf(model: ModelRef, method: str) -> ModelRef:
    """`model` converted and quantized by llama.cpp (see the module docstring), from the cache when built."""
    from aftertune.sources import fingerprint
    from aftertune.sources.fingerprints import quant_card

    if model.kind == "openai" or model.path is None:
        raise UserError(f"{model.ref}: gguf needs local weights, not an API endpoint")
    if quant_card(model.path) is not None or gguf_card(model.path) is not None:
        raise UserError(f"{model.ref}: already quantized; convert the full-precision model instead")
    python = llama_cpp.server_python()
    card = {"method": method, "bits": METHODS[method], "quantizer": "llama.cpp",
            "quantizer_version": f"llama-cpp-python {llama_cpp.LLAMA_CPP_PYTHON}",
            "converter": {"script": "convert_hf_to_gguf.py", "from": llama_cpp.SDIST,
                          "sha256": llama_cpp.SDIST_SHA256, "outtype": "f32"},
            "source": fingerprint(model), "source_ref": model.ref, "version": GGUF_VERSION}

    def build(out: Path) -> None:
        script = llama_cpp.converter()
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=".gguf-f32-") as tmp:
            f32 = Path(tmp) / "model-f32.gguf"
            with full_weights(model, Path(tmp)) as src:
                _convert(script, src, f32, model.ref)
            _quantize(python, f32, out / GGUF_FILE, method, model.ref)
            size, params = (out / GGUF_FILE).stat().st_size, f32.stat().st_size / 4  # float32: 4 bytes a weight
        write_json_atomic(out / GGUF_CARD, {**card, "file": GGUF_FILE, "bytes": size,
                                            "bits_per_weight": round(8 * size / params, 2),
                                            "files": {GGUF_FILE: sha256_file(out / GGUF_FILE)}})

    key = {k: v for k, v in card.items() if k != "source_ref"}
    path = materialise("gguf-variants", key, build, what=f"{model.ref}#gguf:{method}")
    return ModelRef(ref=f"{model.ref}#gguf:{method}", kind="local", name=f"{model.name}@{method}", path=path)


def _convert(script: Path, src: Path, dest: Path, ref: str) -> None:
    cmd = [sys.executable, str(script), str(src), "--outfile", str(dest), "--outtype", "f32"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode == 0 and dest.is_file():
        return
    log = proc.stderr + proc.stdout
    _raise_if_disk_full(log, dest)
    arch = next((ln.split("Model ", 1)[1].split(" is not supported")[0] for ln in log.splitlines()
                 if "is not supported" in ln and "Model " in ln), None)
    if arch:
        raise UserError(f"{ref}: llama.cpp's converter ({llama_cpp.SDIST}) does not support the {arch} "
                        "architecture; the quant:int8 and quant:int4 variants work for any model transformers loads")
    raise UserError(f"{ref}: llama.cpp's converter failed (exit {proc.returncode}): {_last_line(log)}")


def _quantize(python: str, src: Path, dest: Path, method: str, ref: str) -> None:
    proc = subprocess.run([python, "-c", _QUANTIZE, str(src), str(dest), method], capture_output=True, text=True,
                          check=False)
    if proc.returncode == 0 and dest.is_file():
        return
    log = proc.stderr + proc.stdout
    _raise_if_disk_full(log, dest)
    raise UserError(f"{ref}: llama.cpp's quantizer failed on {method} (exit {proc.returncode}): {_last_line(log)}")


def _raise_if_disk_full(log: str, dest: Path) -> None:
    if "No space left on device" in log or "ENOSPC" in log:
        raise OSError(errno.ENOSPC, "No space left on device", str(dest))


def _last_line(log: str) -> str:
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    return " ".join(lines[-1].split())[:300] if lines else "no output"


def server_options(options: dict[str, Any]) -> dict[str, Any]:
    """The `server` engine's options for a GGUF model: llama.cpp's server as the command, and of the options
    the audit passed only those the server engine takes (an hf dtype or batch size means nothing to it)."""
    from aftertune.engines.served import ServedEngine

    python = llama_cpp.server_python()
    command = (f"{shlex.quote(python)} -m llama_cpp.server --model {{model}} --host {{host}} --port {{port}} "
               f"--n_ctx {N_CTX}")
    accepted = set(inspect.signature(ServedEngine.from_ref).parameters) - {"model_ref", "command", "port"}
    return {**{k: v for k, v in options.items() if k in accepted}, "command": command}


def gguf_variant(engine: Any, options: dict[str, str]) -> Any:
    raise UserError(f"gguf changes weights, so it is applied when the model loads, not around a loaded engine; "
                    f"{_HOW}")

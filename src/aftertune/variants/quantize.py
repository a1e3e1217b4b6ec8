"""The `quant` variant: the model as deployed with weight-only int8 or int4 quantization.

Written `REF#quant:int8` or `REF#quant:int4` (`quant:method=int8` in full),
after the model reference and any `#interp`, before wrapper variants. It
changes the weights, so `load_engine` applies it before loading, as it does
`interp`.

The quantizer is torchao (through transformers' `TorchAoConfig`), chosen by
measurement (benchmarks/RESULTS.md, docs/safety-and-judges.md): it installs without
pulling another torch (no runtime dependencies), runs on CPU, and its
checkpoints save as safetensors and load with `from_pretrained`.

- `int8`: `Int8WeightOnlyConfig`, one symmetric int8 scale per output channel.
- `int4`: `IntxWeightOnlyConfig(int4, PerGroup(32))`, one scale per 32 inputs
  (the block of llama.cpp's Q4_0). On x86 CPUs torchao has no packed int4
  kernel, so the 4-bit values are stored one per byte: the arithmetic of int4,
  not its file size.

Embeddings and the output layer stay in full precision (transformers' default).
The source is loaded in float32, so the scales are float32, and the `hf`
engine computes the model in float32 (the card's `dtype`). An adapter is first
merged into its base (`engines.merge`): what one deploys is one set of weights.

The result is written once per (source fingerprint, method, quantizer version)
to `$AFTERTUNE_HOME/quantized/<hash>/` (`artefacts.materialise`: built in a
temporary folder, renamed whole) with `quantized.json`, which names the method,
its parameters, the quantizer and its version, the source, and the sha256 of
each weight file. The model's fingerprint includes that card
(`sources.fingerprints`), so records never mix across methods, quantizers or
with full precision; `describe()` shows it, and the engine's version names the
quantizer that runs the kernels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aftertune.engines.base import Engine
from aftertune.errors import UserError
from aftertune.fileio import sha256_file, write_json_atomic
from aftertune.sources.base import ModelRef
from aftertune.sources.fingerprints import QUANT_CARD, gguf_card, quant_card, quantizer_version
from aftertune.variants.artefacts import copy_other_files, full_weights, materialise

QUANT_VERSION = "1"  # bump when a change here changes the written weights
QUANTIZER = "torchao"
_HOW = "write REF#quant:int8 or REF#quant:int4, after the model reference (and #interp), before wrapper variants"

Variant = tuple[str, dict[str, str]]


def _int8() -> Any:
    from torchao.quantization import Int8WeightOnlyConfig

    return Int8WeightOnlyConfig()


def _int4() -> Any:
    import torch
    from torchao.quantization import IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerGroup

    return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32))


# method -> (torchao config factory, the parameters that decide the weights, for the card and the fingerprint)
METHODS: dict[str, tuple[Callable[[], Any], dict[str, Any]]] = {
    "int8": (_int8, {"config": "Int8WeightOnlyConfig", "bits": 8, "granularity": "per-channel"}),
    "int4": (_int4, {"config": "IntxWeightOnlyConfig", "bits": 4, "granularity": "per-group", "group_size": 32}),
}


def parse_method(options: dict[str, str]) -> str:
    """The method of `quant:int8` (the first bare option is `method=`); unknown ones list the known."""
    unknown = set(options) - {"method"}
    if unknown:
        raise UserError(f"quant: unknown option {sorted(unknown)[0]!r}; the only option is the method; {_HOW}")
    method = options.get("method", "")
    if method not in METHODS:
        shown = f"method {method!r}" if method else "no method"
        raise UserError(f"quant: {shown}; known methods: {', '.join(METHODS)}; {_HOW}")
    return method


def apply_quant_variant(model: ModelRef, variants: Sequence[Variant]) -> tuple[ModelRef, list[Variant]]:
    """The quantized model when the first suffix left is `quant`, and the variants left to wrap it."""
    rest = list(variants)
    if not rest or rest[0][0] != "quant":
        return model, rest
    return quantize(model, parse_method(rest[0][1])), rest[1:]


def quantize(model: ModelRef, method: str) -> ModelRef:
    """`model` quantized by `method` (see the module docstring), from the cache when built before."""
    from aftertune.sources import fingerprint

    if model.kind == "openai" or model.path is None:
        raise UserError(f"{model.ref}: quant needs local weights, not an API endpoint")
    if quant_card(model.path) is not None or gguf_card(model.path) is not None:
        raise UserError(f"{model.ref}: already quantized; quantize the full-precision model instead")
    make_config, params = METHODS[method]
    card = {"method": method, "params": params, "dtype": "float32",
            "quantizer": QUANTIZER, "quantizer_version": quantizer_version(QUANTIZER),
            "source": fingerprint(model), "source_ref": model.ref, "version": QUANT_VERSION}

    def build(out: Path) -> None:
        with full_weights(model, out.parent) as src:
            _write_quantized(src, make_config, out)
        files = {p.name: sha256_file(p) for p in sorted(out.glob("*.safetensors"))}
        write_json_atomic(out / QUANT_CARD, {**card, "files": files})

    path = materialise("quantized", {k: v for k, v in card.items() if k != "source_ref"}, build,
                       what=f"{model.ref}#quant:{method}")
    return ModelRef(ref=f"{model.ref}#quant:{method}", kind="local", name=f"{model.name}@{method}", path=path)


def _write_quantized(src: Path, make_config: Callable[[], Any], out: Path) -> None:
    import torch

    from aftertune.engines.hf import quiet_loading
    from aftertune.sources.resolve import remote_code_allowed

    try:
        with quiet_loading():
            from transformers import AutoModelForCausalLM, TorchAoConfig

            model = AutoModelForCausalLM.from_pretrained(
                str(src), dtype=torch.float32, device_map="cpu", trust_remote_code=remote_code_allowed(),
                quantization_config=TorchAoConfig(quant_type=make_config()))
            model.save_pretrained(str(out))
    except (OSError, ValueError, RuntimeError, NotImplementedError) as exc:
        raise UserError(f"{src}: {QUANTIZER} could not quantize this model ({' '.join(str(exc).split())[:300]}); "
                        f"quant methods: {', '.join(METHODS)}") from None
    copy_other_files(src, out)


def quant_variant(engine: Engine, options: dict[str, str]) -> Engine:
    raise UserError(f"quant changes weights, so it is applied when the model loads, not around a loaded engine; "
                    f"{_HOW}")

"""The `resta` defence: RESTA, restoring safety through task arithmetic (Bhardwaj et al. 2024, "Language
Models are Homer Simpson! Safety Re-Alignment of Fine-tuned Language Models through Task Arithmetic",
arXiv 2402.11746).

θ = θ_tuned + s·(θ_aligned − θ_unaligned): the safety vector, the difference
between the aligned model the tune started from and its unaligned twin, added
back to the tuned weights, every floating tensor, scaled by `s` (default 0.5).
The paper's unaligned model is the aligned one fine-tuned on harmful answers;
a hub pair (Qwen2.5-0.5B / -Instruct) gives the whole alignment update, which
is larger, so sweep `s` (`aftertune sweep --knob ...`, one run per value).
The paper's DARE variant (dropping delta parameters) is not implemented.

Written `TUNED#resta:s=0.5`, the twin from `--unaligned REF` (or
`unaligned=REF`). A LoRA adapter's base is the aligned model and its update
s_lora·B·A is added to the base weights directly (no PEFT merge, in float32,
stored in the promoted dtype of base and adapter); a full fine-tune's aligned
model is `base=REF`, else the `start_ref` of its `tune.json` (as `interp`), and
the result keeps the tuned model's dtype. The result is a full model folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from aftertune.errors import UserError
from aftertune.sources.base import ModelRef
from aftertune.variants.defences import Defence, check_options, number, resolve_twin, write_defended

_OPTIONS = ("s", "base", "unaligned")
_TOKENIZER_FILES = ("tokenizer", "special_tokens", "chat_template", "vocab", "merges", "added_tokens")


def parse(options: dict[str, str]) -> dict[str, Any]:
    check_options("resta", options, _OPTIONS)
    return {"s": number("resta", options, "s", 0.5, 0.0, 10.0), "base": options.get("base") or None,
            "unaligned": options.get("unaligned") or None}


def build(model: ModelRef, params: dict[str, Any]) -> ModelRef:
    from aftertune.sources import fingerprint
    from aftertune.variants.interpolate import tuned_from

    twin = resolve_twin(params)
    if model.kind == "adapter":
        if params["base"] is not None:
            raise UserError(f"{model.ref}: base= is for full fine-tunes; an adapter's aligned model is its own base")
        aligned = model.base
        if aligned is None:
            raise UserError(f"{model.ref}: the adapter has no base model; pass the base model explicitly")
    else:
        aligned = tuned_from(model, params["base"], "resta:s=0.5")

    def add_vector(out: Path) -> dict[str, Any]:
        from safetensors.torch import save_file

        from aftertune.variants.alignment import AlignmentDelta

        delta = AlignmentDelta(aligned, twin)
        tensors, touched = restored(model, delta, params["s"])
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
        _copy_model_files(model, aligned, out)
        return {"tensors": len(tensors), "safety_vector_tensors": touched}

    inputs = {"tuned": fingerprint(model), "aligned": fingerprint(aligned), "unaligned": fingerprint(twin)}
    return write_defended(model, "resta", params, inputs, add_vector, kind="local")


def restored(model: ModelRef, delta: Any, s: float) -> tuple[dict[str, Any], int]:
    """Every tensor of the tuned model plus s·V where it is floating point, and how many got s·V."""
    import torch

    from aftertune.variants.alignment import SafetensorsModel
    from aftertune.variants.lora_layers import read_lora, weight_name

    if model.kind == "adapter":
        lora = read_lora(Path(str(model.path)), "resta: the tuned adapter")
        updates = {weight_name(layer): layer for layer in lora.layers}
        source = delta.aligned
    else:
        lora, updates, source = None, {}, SafetensorsModel(model, "the tuned model")
    missing = sorted(set(updates) - set(source.names()))
    if missing:
        raise UserError(f"{model.ref}: the adapter updates {missing[0]!r}, which its base does not have")
    out, touched = {}, 0
    for name in source.names():
        t = source.get(name)
        if not t.is_floating_point():
            out[name] = t
            continue
        dtype = t.dtype
        value = t.float()
        if name in updates:
            value = value + lora.delta(updates[name])  # type: ignore[union-attr]
            dtype = torch.promote_types(dtype, lora.b(updates[name]).dtype)  # type: ignore[union-attr]
        out[name] = (value + s * delta(name)).to(dtype)
        touched += 1
    return out, touched


def _copy_model_files(model: ModelRef, aligned: ModelRef, out: Path) -> None:
    """Config and tokenizer: an adapter's own tokenizer files (as the tune saved them), then the aligned base's
    other files; a full model's own."""
    from aftertune.variants.artefacts import copy_other_files

    if model.kind == "adapter":
        for f in Path(str(model.path)).iterdir():
            if f.is_file() and f.name.startswith(_TOKENIZER_FILES):
                shutil.copy2(f, out / f.name)
        copy_other_files(Path(str(aligned.path)), out)
    else:
        copy_other_files(Path(str(model.path)), out)


RESTA = Defence(parse=parse, build=build, uses_twin=lambda params: True, example="resta:s=0.5")

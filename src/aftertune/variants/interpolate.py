"""The `interp` variant: models between a base and its fine-tune, θ_w = θ_base + w·(θ_tuned − θ_base).

Written `REF#interp:w=0.5` (0 ≤ w ≤ 1), first among the suffixes: it changes
weights, so `load_engine` applies it to the model reference before loading
(`apply_weight_variants`), and wrapper variants go around the result
(`REF#interp:w=0.5#guard`).

- **LoRA adapter**: ΔW = s·B·A, so θ_w = θ_base + s·(w·B)·A: the adapter with
  every `lora_B` (and `lora_embedding_B`) scaled by w. **IA³ adapter**: the
  tuned weights are W·diag(l), so θ_w uses l_w = 1 + w·(l − 1). Only the small
  scaled adapter is written; it loads on its own base like any adapter. DoRA
  and adapters with `modules_to_save` are refused (not linear in w that way),
  as are prompt/prefix adapters (they add inputs, not weight deltas).
- **Full fine-tune** (WiSE-FT, Wortsman et al. 2022): every tensor is
  interpolated in float32 and stored in the tuned model's dtype. The base is
  `base=REF`, else the `start_ref` of the `tune.json` that `aftertune tune`
  wrote beside the `model/` (or `checkpoints/`) folder.

The result is written once, atomically, to `$AFTERTUNE_HOME/interp/<sha of the
inputs' fingerprints and w>/` (safetensors, the tuned folder's config and
tokenizer, and `interp.json` saying what it is) and then loads normally, so
its fingerprint is that of its weights: different for each w, the same for the
same inputs. w=0 and w=1 return the base and the tuned model themselves (no
rounding of θ_base + 1·(θ_tuned − θ_base)), sharing their fingerprints and so
their cached answers.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from aftertune.engines.base import Engine
from aftertune.errors import UserError
from aftertune.fileio import write_json_atomic
from aftertune.sources.base import ModelRef
from aftertune.variants.artefacts import copy_other_files, materialise, tune_folders

INTERP_VERSION = "1"  # bump when a change here changes the written weights
_LORA_B = re.compile(r"\.lora_(?:embedding_)?B(?:\.|$)")
_IA3 = re.compile(r"\.ia3_l(?:\.|$)")
_HOW = "write REF#interp:w=0.5 (0 <= w <= 1; base=REF for a full fine-tune), first after the model reference"

Variant = tuple[str, dict[str, str]]


def apply_weight_variants(model: ModelRef, variants: Sequence[Variant]) -> tuple[ModelRef, list[Variant]]:
    """The interpolated model when the first suffix is `interp`, and the variants left to wrap it."""
    rest = list(variants)
    if not any(name == "interp" for name, _ in rest):
        return model, rest
    if rest[0][0] != "interp" or sum(name == "interp" for name, _ in rest) > 1:
        raise UserError(f"{model.ref}: interp changes weights, so give it once and first; {_HOW}")
    w, base = parse_options(rest[0][1])
    return interpolate(model, w, base=base), rest[1:]


def parse_options(options: dict[str, str]) -> tuple[float, str | None]:
    unknown = set(options) - {"w", "base"}
    if unknown:
        raise UserError(f"interp: unknown option {sorted(unknown)[0]!r}; options are w and base; {_HOW}")
    if "w" not in options:
        raise UserError(f"interp: no weight w; {_HOW}")
    try:
        w = float(options["w"])
    except ValueError:
        raise UserError(f"interp: w={options['w']!r} is not a number; {_HOW}") from None
    if not (math.isfinite(w) and 0.0 <= w <= 1.0):
        raise UserError(f"interp: w={options['w']} is outside [0, 1]; {_HOW}")
    return w, options.get("base") or None


def interpolate(tuned: ModelRef, w: float, *, base: str | ModelRef | None = None) -> ModelRef:
    """The model at `w` between `tuned`'s base and `tuned` (see the module docstring)."""
    from aftertune.sources import fingerprint

    if tuned.kind == "openai" or tuned.path is None:
        raise UserError(f"{tuned.ref}: interp needs local weights, not an API endpoint")
    if w == 1.0:
        return tuned
    if tuned.kind == "adapter":
        if base is not None:
            raise UserError(f"{tuned.ref}: base= is for full fine-tunes; an adapter interpolates towards its own base")
        if tuned.base is None:
            raise UserError(f"{tuned.ref}: the adapter has no base model; pass the base model explicitly")
        if w == 0.0:
            return tuned.base
        path = _materialise({"tuned": fingerprint(tuned), "w": w},
                            lambda out: _scale_adapter(tuned.path, w, out))  # type: ignore[arg-type]
        return replace(tuned, ref=f"{tuned.ref}#interp:w={w:g}", name=f"{tuned.name}@w={w:g}", path=path)
    start = tuned_from(tuned, base)
    if w == 0.0:
        return start
    path = _materialise({"tuned": fingerprint(tuned), "base": fingerprint(start), "w": w},
                        lambda out: _interpolate_full(start.path, tuned.path, w, out))  # type: ignore[arg-type]
    return ModelRef(ref=f"{tuned.ref}#interp:w={w:g}", kind="local", name=f"{tuned.name}@w={w:g}", path=path)


def tuned_from(tuned: ModelRef, base: str | ModelRef | None, variant: str = "interp:w=0.5") -> ModelRef:
    """`base`, else the start of the tune that wrote `tuned` (its tune.json), resolved to a full model;
    `variant` is the suffix the messages show (interp, resta)."""
    from aftertune.sources import resolve_model

    name = variant.partition(":")[0]
    if base is None:
        base = _tune_start(tuned.path)  # type: ignore[arg-type]
        if base is None:
            raise UserError(f"{tuned.ref}: {name} of a full model needs the model it was tuned from; pass "
                            f"base=REF (e.g. {tuned.ref}#{variant},base=BASE) — no tune.json with start_ref "
                            "beside this folder")
    resolved = resolve_model(base)
    if resolved.kind in ("adapter", "openai") or resolved.path is None:
        raise UserError(f"{tuned.ref}: {name} base {resolved.ref!r} is a {resolved.kind}, not a full model; "
                        "pass base=REF naming the full model the tune started from")
    return resolved


def _tune_start(path: Path) -> str | None:
    """`start_ref` of the tune.json beside a tune's `model/` folder or above its `checkpoints/`."""
    from aftertune.recipes.train import TUNE_JSON

    for folder in tune_folders(path):
        if (folder / TUNE_JSON).is_file():
            try:
                start = json.loads((folder / TUNE_JSON).read_text(encoding="utf-8")).get("start_ref")
            except ValueError as exc:
                raise UserError(f"{folder / TUNE_JSON}: not valid JSON ({exc}); pass base=REF instead") from None
            return str(start) if start else None
    return None


# --------------------------------------------------------------------------- writing the weights

def _materialise(inputs: dict[str, Any], build: Callable[[Path], None]) -> Path:
    """The cache folder for `inputs` (`artefacts.materialise`), with `interp.json` saying what it is."""

    def build_with_card(out: Path) -> None:
        build(out)
        write_json_atomic(out / "interp.json", {**inputs, "formula": "base + w * (tuned - base)",
                                                "version": INTERP_VERSION})

    return materialise("interp", {**inputs, "v": INTERP_VERSION}, build_with_card)


def _safetensors(folder: Path) -> list[Path]:
    from aftertune.sources.resolve import weight_files

    files, _ = weight_files(folder)
    if not files:
        raise UserError(f"{folder}: interp reads safetensors weights only; convert the model with "
                        "save_pretrained(dir, safe_serialization=True)")
    return files


def _scale_adapter(src: Path, w: float, out: Path) -> None:
    from safetensors.torch import load_file, save_file

    cfg = json.loads((src / "adapter_config.json").read_text(encoding="utf-8"))
    kind = str(cfg.get("peft_type", "")).upper()
    if kind == "LORA" and (cfg.get("use_dora") or cfg.get("modules_to_save")):
        raise UserError(f"{src}: interp cannot scale a DoRA adapter or one with modules_to_save (not linear in w); "
                        "merge it into a full model and interpolate that with base=REF")
    if kind not in ("LORA", "IA3"):
        raise UserError(f"{src}: interp works on LoRA and IA3 adapters and full models, not a {kind or 'unknown'} "
                        "adapter (prompt and prefix tuning add inputs, not weight changes)")
    scaled = 0
    for f in _safetensors(src):
        tensors = load_file(str(f))
        for name, t in tensors.items():
            if kind == "LORA" and _LORA_B.search(name):
                tensors[name] = (t.float() * w).to(t.dtype)
                scaled += 1
            elif kind == "IA3" and _IA3.search(name):
                tensors[name] = (1.0 + w * (t.float() - 1.0)).to(t.dtype)
                scaled += 1
        save_file(tensors, str(out / f.name), metadata={"format": "pt"})
    if not scaled:
        raise UserError(f"{src}: found no {'lora_B' if kind == 'LORA' else 'ia3_l'} weights to scale; "
                        "is this a PEFT adapter folder?")
    copy_other_files(src, out)


def _interpolate_full(base_dir: Path, tuned_dir: Path, w: float, out: Path) -> None:
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    where: dict[str, Path] = {}
    for f in _safetensors(base_dir):
        with safe_open(str(f), framework="pt") as fh:
            where.update((k, f) for k in fh.keys())  # noqa: SIM118 - safe_open has no __iter__
    for f in _safetensors(tuned_dir):
        tuned = load_file(str(f))
        missing = sorted(set(tuned) - set(where))
        if missing:
            raise UserError(f"{tuned_dir}: tensor {missing[0]!r} is not in the base {base_dir}; interp needs the "
                            "model the tune started from (pass base=REF)")
        mixed: dict[str, torch.Tensor] = {}
        for bf in sorted({where[k] for k in tuned}, key=str):
            with safe_open(str(bf), framework="pt") as fh:
                for name in (k for k in tuned if where[k] == bf):
                    mixed[name] = _mix(name, fh.get_tensor(name), tuned[name], w, tuned_dir)
        save_file(mixed, str(out / f.name), metadata={"format": "pt"})
    copy_other_files(tuned_dir, out)


def _mix(name: str, b: Any, t: Any, w: float, tuned_dir: Path) -> Any:
    import torch

    if b.shape != t.shape:
        raise UserError(f"{tuned_dir}: tensor {name!r} has shape {tuple(t.shape)} but {tuple(b.shape)} in the base; "
                        "interp needs the model the tune started from (pass base=REF)")
    if not t.is_floating_point():
        if not torch.equal(b, t):
            raise UserError(f"{tuned_dir}: integer tensor {name!r} differs from the base; cannot interpolate it")
        return t
    bf = b.float()
    return (bf + w * (t.float() - bf)).to(t.dtype)


def interp_variant(engine: Engine, options: dict[str, str]) -> Engine:
    raise UserError(f"interp changes weights, so it is applied when the model loads (load_engine), "
                    f"not around a loaded engine; {_HOW}")

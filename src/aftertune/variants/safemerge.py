"""The `safemerge` defence: SafeMERGE (Djuhera et al. 2025, "SafeMERGE: Preserving Safety Alignment in
Fine-Tuned Large Language Models via Selective Layer-Wise Model Merging", arXiv 2503.17239).

The task LoRA is merged, layer by layer, with a safety LoRA (same base, same
rank) where the task's update has left safe behaviour; elsewhere the task's
layer is kept as it is. Following the authors' code (github.com/aladinD/SafeMERGE):

- **which layers** (`criterion=subspace`, the paper's): ρ_i = cos(C_i·ΔW_i, ΔW_i),
  the Safe LoRA similarity of the task update ΔW_i = s·B_i·A_i to its projection
  on the alignment subspace (C_i = V_i·V_iᵀ/‖V_i‖_F, V_i = W_aligned − W_unaligned;
  needs the unaligned twin). `criterion=safety` (ours, for models without a
  twin) uses ρ_i = cos(ΔW_i, ΔW_safety,i), the task update against the safety
  LoRA's. A layer is merged where ρ_i < τ (`tau`, default 0.35, the code's).
- **how** (PEFT's `linear` combination, which the authors call): A and B are
  combined separately, A' = √(w_t·s_t)·A_t + √(w_s·s_s)·A_s and likewise B', with
  w_t = 1 − w, w_s = w (`w`, default 0.2: the code's [0.8, 0.2]). PEFT then sets
  the scale to 1; here both factors are divided by √s_t and the task adapter's
  scale s_t is kept, which gives the same B'·A' product, so that w = 0 returns
  the task adapter's tensors exactly. Note B'·A' is not w_t·ΔW_t + w_s·ΔW_s: it
  also holds the cross terms √(w_t·w_s·s_t·s_s)·(B_t·A_s + B_s·A_t), as in the paper.

The safety LoRA is `safety=DIR` (a LoRA adapter on the same base with the same
rank and layers), else one trained once on the built-in `refusals` set with the
task adapter's rank, alpha and layers (`variants/safety_adapter.py`) and cached.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from aftertune.errors import UserError
from aftertune.sources.base import ModelRef
from aftertune.variants.defences import Defence, check_options, number, resolve_twin, write_defended

CRITERIA = ("subspace", "safety")
_OPTIONS = ("tau", "w", "criterion", "safety", "unaligned")


def parse(options: dict[str, str]) -> dict[str, Any]:
    check_options("safemerge", options, _OPTIONS)
    criterion = options.get("criterion", "subspace")
    if criterion not in CRITERIA:
        raise UserError(f"safemerge: criterion={criterion!r}; known: subspace (the paper's, needs --unaligned) or "
                        "safety (similarity to the safety adapter's update, no twin needed)")
    if criterion == "safety" and options.get("unaligned"):
        raise UserError("safemerge: criterion=safety reads no unaligned twin; drop unaligned= or use "
                        "criterion=subspace")
    safety = options.get("safety") or None
    if safety is not None and not Path(safety).expanduser().is_dir():
        raise UserError(f"safemerge: safety={safety!r} is not a folder; name a LoRA adapter folder (or leave "
                        "safety= out to train one on the built-in refusals set)")
    return {"tau": number("safemerge", options, "tau", 0.35, -1.0, 1.0),
            "w": number("safemerge", options, "w", 0.2, 0.0, 1.0),
            "criterion": criterion, "safety": safety, "unaligned": options.get("unaligned") or None}


def build(model: ModelRef, params: dict[str, Any]) -> ModelRef:
    from aftertune.sources import fingerprint
    from aftertune.variants.lora_layers import read_lora

    if model.kind != "adapter" or model.base is None:
        raise UserError(f"{model.ref}: safemerge merges LoRA adapters; this is a {model.kind} model (tune with "
                        "method lora or qlora)")
    task = read_lora(Path(str(model.path)), "safemerge: the tuned adapter")
    safety_ref = _safety_adapter(model, task, params)
    safe = read_lora(Path(str(safety_ref.path)), "safemerge: the safety adapter")
    _check_mergeable(task, safe)
    twin = resolve_twin(params) if params["criterion"] == "subspace" else None

    def merge(out: Path) -> dict[str, Any]:
        from aftertune.variants.lora_layers import write_lora

        sims = similarities(model, task, safe, twin)
        chosen = [layer for layer, rho in sims.items() if rho < params["tau"]]
        tensors = dict(task.tensors)
        for layer in chosen:
            tensors.update(merge_layer(task, safe, layer, params["w"]))
        write_lora(task, tensors, out)
        return {"merged": chosen, "layers": len(sims), "similarity": {k: round(v, 6) for k, v in sims.items()}}

    inputs = {"tuned": fingerprint(model), "safety": fingerprint(safety_ref)}
    if twin is not None:
        inputs["unaligned"] = fingerprint(twin)
    return write_defended(model, "safemerge", params, inputs, merge, kind="adapter")


def similarities(model: ModelRef, task: Any, safe: Any, twin: ModelRef | None) -> dict[str, float]:
    """ρ per task layer: against the alignment subspace when a twin is given, else against the safety update."""
    from aftertune.variants.alignment import AlignmentDelta, project_on_alignment
    from aftertune.variants.lora_layers import cosine, weight_name

    if twin is None:
        return {layer: cosine(task.delta(layer), safe.delta(layer)) for layer in task.layers}
    delta = AlignmentDelta(model.base, twin)  # type: ignore[arg-type]
    sims = {}
    for layer in task.layers:
        name = weight_name(layer)
        b, a = task.b(layer).float(), task.a(layer).float()
        sims[layer] = cosine(project_on_alignment(delta(name), b, name, twin.ref) @ a, b @ a)
    return sims


def merge_layer(task: Any, safe: Any, layer: str, w: float) -> dict[str, Any]:
    """The layer's (A', B') of the linear merge with weights (1 − w, w), at the task adapter's scale."""
    w_task = math.sqrt(1.0 - w)  # √(w_t·s_t) / √s_t
    w_safe = math.sqrt(w * safe.scale / task.scale)
    (a_name, b_name), (sa, sb) = task.layers[layer], (safe.a(layer), safe.b(layer))
    a, b = task.tensors[a_name], task.tensors[b_name]
    return {a_name: (w_task * a.float() + w_safe * sa.float()).to(a.dtype),
            b_name: (w_task * b.float() + w_safe * sb.float()).to(b.dtype)}


def _safety_adapter(model: ModelRef, task: Any, params: dict[str, Any]) -> ModelRef:
    """`safety=DIR` checked against the task's base, else the cached adapter trained on refusals."""
    from aftertune.sources import fingerprint, resolve_model

    if params["safety"] is None:
        from aftertune.variants.safety_adapter import safety_adapter

        path = safety_adapter(model.base, task)  # type: ignore[arg-type]
        return resolve_model(str(path), base=model.base)
    safe = resolve_model(str(Path(params["safety"]).expanduser()))
    if safe.kind != "adapter" or safe.base is None:
        raise UserError(f"safemerge: safety={params['safety']} is not an adapter folder; name a LoRA adapter")
    if fingerprint(safe.base) != fingerprint(model.base):  # type: ignore[arg-type]
        raise UserError(f"safemerge: the safety adapter {params['safety']} was trained on {safe.base.ref}, not on "
                        f"the tuned adapter's base {model.base.ref}; train it from the same base")  # type: ignore[union-attr]
    return safe


def _check_mergeable(task: Any, safe: Any) -> None:
    if safe.rank != task.rank:
        raise UserError(f"safemerge: the safety adapter {safe.path} has rank {safe.rank}, the tuned adapter "
                        f"{task.rank}; a linear merge of A and B needs one rank (train it with r={task.rank})")
    missing = sorted(set(task.layers) - set(safe.layers))
    if missing:
        raise UserError(f"safemerge: the safety adapter {safe.path} does not adapt {missing[0]} "
                        f"({len(missing)} layers in all); train it on the tuned adapter's target modules")


SAFEMERGE = Defence(parse=parse, build=build, uses_twin=lambda params: params["criterion"] == "subspace",
                    example="safemerge:tau=0.35,w=0.2")

"""The `safelora` defence: Safe LoRA (Hsu et al. 2024, "Safe LoRA: the Silver Lining of Reducing Safety Risks
when Finetuning Large Language Models", arXiv 2405.16833).

For each adapted layer i, V_i = W_aligned − W_unaligned spans the alignment
subspace and C_i = V_i·V_iᵀ / ‖V_i‖_F is its (approximate) projection. The
layer's update ΔW_i = s·B_i·A_i is compared with its projection C_i·ΔW_i by
cosine similarity; where it is at most τ (`tau`, default 0.5) the update has
left the subspace and B_i is replaced by C_i·B_i, so the layer's update becomes
C_i·ΔW_i. `layers=K` instead projects the K layers of lowest similarity. This
follows the authors' code as merged into PEFT (`peft.utils.safelora`):
`cos <= threshold`, the projection applied to B, its defaults τ = 0.5.

Written `TUNED#safelora:tau=0.5` (or `layers=K`) on a LoRA adapter whose base is
the aligned model, with the unaligned twin from `--unaligned REF` (or
`unaligned=REF`). The result is an adapter on the same base.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aftertune.errors import UserError
from aftertune.sources.base import ModelRef
from aftertune.variants.defences import Defence, check_options, number, resolve_twin, write_defended

_OPTIONS = ("tau", "layers", "unaligned")


def parse(options: dict[str, str]) -> dict[str, Any]:
    check_options("safelora", options, _OPTIONS)
    if "tau" in options and "layers" in options:
        raise UserError("safelora: give tau (a similarity threshold) or layers (how many to project), not both")
    params: dict[str, Any] = {"unaligned": options.get("unaligned") or None}
    if "layers" in options:
        if not options["layers"].isdigit() or int(options["layers"]) < 1:
            raise UserError(f"safelora: layers={options['layers']!r} should be a whole number of layers, at least 1")
        params["layers"] = int(options["layers"])
    else:
        params["tau"] = number("safelora", options, "tau", 0.5, -1.0, 1.0)
    return params


def build(model: ModelRef, params: dict[str, Any]) -> ModelRef:
    from aftertune.sources import fingerprint
    from aftertune.variants.alignment import AlignmentDelta, project_on_alignment
    from aftertune.variants.lora_layers import cosine, read_lora, weight_name, write_lora

    if model.kind != "adapter" or model.base is None:
        raise UserError(f"{model.ref}: safelora projects a LoRA adapter's updates; this is a {model.kind} model "
                        "(tune with method lora or qlora)")
    twin = resolve_twin(params)
    task = read_lora(Path(str(model.path)), "safelora: the tuned adapter")

    def project(out: Path) -> dict[str, Any]:
        delta = AlignmentDelta(model.base, twin)  # type: ignore[arg-type]
        projected_b, sims = {}, {}
        for layer in task.layers:
            name = weight_name(layer)
            b, a = task.b(layer).float(), task.a(layer).float()
            projected_b[layer] = project_on_alignment(delta(name), b, name, twin.ref)
            sims[layer] = cosine(projected_b[layer] @ a, b @ a)
        chosen = select(sims, params)
        tensors = dict(task.tensors)
        for layer in chosen:
            b_name = task.layers[layer][1]
            tensors[b_name] = projected_b[layer].to(task.tensors[b_name].dtype)
        write_lora(task, tensors, out)
        return {"projected": sorted(chosen), "layers": len(sims),
                "similarity": {k: round(v, 6) for k, v in sims.items()}}

    inputs = {"tuned": fingerprint(model), "aligned": fingerprint(model.base), "unaligned": fingerprint(twin)}
    return write_defended(model, "safelora", params, inputs, project, kind="adapter")


def select(sims: dict[str, float], params: dict[str, Any]) -> list[str]:
    """The layers to project: similarity ≤ tau, or the `layers` of lowest similarity (ties in layer order)."""
    if "layers" in params:
        return sorted(sims, key=lambda k: sims[k])[: params["layers"]]
    return [k for k, v in sims.items() if v <= params["tau"]]


SAFELORA = Defence(parse=parse, build=build, uses_twin=lambda params: True, example="safelora:tau=0.5")

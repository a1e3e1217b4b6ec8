"""A LoRA adapter as layers: each adapted weight's (A, B) pair, its scale, and the base tensor it updates.

The safety defences (`safemerge`, `safelora`, `resta`) read an adapter layer by
layer: ΔW = scale·B·A is the update a layer adds to the base weight named
`weight_name(layer)`. Only plain LoRA is read: DoRA and `modules_to_save` are
not a sum of B·A updates, per-module ranks or alphas (`rank_pattern`,
`alpha_pattern`) would need a scale per layer, and embedding adapters keep A
and B transposed; each is refused in one line.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aftertune.errors import UserError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
_LAYER = re.compile(r"^(?P<layer>.+)\.lora_(?P<half>A|B)\.weight$")
_PREFIX = "base_model.model."


@dataclass
class LoraAdapter:
    """The tensors of one adapter folder, grouped by layer (see the module docstring)."""

    path: Path
    config: dict[str, Any]
    tensors: dict[str, Any]  # every tensor of the file, by its saved name
    scale: float  # lora_alpha / r (/ sqrt(r) with use_rslora)
    layers: dict[str, tuple[str, str]]  # layer → (name of A, name of B)

    @property
    def rank(self) -> int:
        return int(self.config["r"])

    def a(self, layer: str) -> Any:
        return self.tensors[self.layers[layer][0]]

    def b(self, layer: str) -> Any:
        return self.tensors[self.layers[layer][1]]

    def delta(self, layer: str) -> Any:
        """ΔW = scale·B·A in float32 (out × in), the update this adapter adds to the layer's base weight."""
        return self.scale * (self.b(layer).float() @ self.a(layer).float())


def weight_name(layer: str) -> str:
    """`base_model.model.model.layers.0.self_attn.q_proj` → `model.layers.0.self_attn.q_proj.weight`, the base
    model's tensor that the layer's update is added to."""
    return f"{layer.removeprefix(_PREFIX)}.weight"


def read_lora(path: Path, what: str) -> LoraAdapter:
    """The adapter at `path`; `what` names it in messages (e.g. "safemerge: the task adapter")."""
    from safetensors.torch import load_file

    try:
        cfg = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{what} {path}: no readable adapter_config.json ({exc}); pass a PEFT LoRA adapter "
                        "folder") from None
    kind = str(cfg.get("peft_type", "")).upper()
    if kind != "LORA":
        raise UserError(f"{what} {path} is a {kind or 'unknown'} adapter; these defences work on LoRA adapters "
                        "(tune with method lora or qlora)")
    for field, why in (("use_dora", "DoRA rescales the weight, which is not a B·A update"),
                       ("modules_to_save", "its fully trained modules are not B·A updates"),
                       ("rank_pattern", "per-module ranks"), ("alpha_pattern", "per-module alphas")):
        if cfg.get(field):
            raise UserError(f"{what} {path} sets {field} ({why}); these defences read plain LoRA adapters only")
    if not (path / ADAPTER_WEIGHTS).is_file():
        raise UserError(f"{what} {path}: no {ADAPTER_WEIGHTS} (save the adapter with safe_serialization=True)")
    tensors = load_file(str(path / ADAPTER_WEIGHTS))
    halves: dict[str, dict[str, str]] = {}
    for name in tensors:
        if "lora_embedding_" in name:
            raise UserError(f"{what} {path} adapts an embedding ({name}); these defences read linear layers only")
        m = _LAYER.match(name)
        if m:
            halves.setdefault(m["layer"], {})[m["half"]] = name
    layers = {layer: (h["A"], h["B"]) for layer, h in sorted(halves.items()) if set(h) == {"A", "B"}}
    if not layers:
        raise UserError(f"{what} {path}: found no lora_A/lora_B weights; is this a PEFT LoRA adapter folder?")
    r, alpha = int(cfg["r"]), float(cfg.get("lora_alpha", cfg["r"]))
    scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    return LoraAdapter(path=path, config=cfg, tensors=tensors, scale=scale, layers=layers)


def write_lora(src: LoraAdapter, tensors: dict[str, Any], out: Path) -> None:
    """`tensors` as the adapter file of `out`, beside `src`'s config and tokenizer files: an adapter that loads
    on the same base with the same rank and scale."""
    from safetensors.torch import save_file

    from aftertune.variants.artefacts import copy_other_files

    save_file(tensors, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    copy_other_files(src.path, out)


def cosine(x: Any, y: Any) -> float:
    """Cosine similarity of two matrices read as flat vectors, in float64; 0 when either is all zeros."""
    import torch

    a, b = x.double().flatten(), y.double().flatten()
    denom = torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b)
    return float((a @ b) / denom) if denom > 0 else 0.0

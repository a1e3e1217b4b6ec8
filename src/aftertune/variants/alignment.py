"""The alignment update V = W_aligned − W_unaligned of an aligned model and its unaligned twin, tensor by tensor.

An aligned model (Llama-2-7b-chat-hf, Qwen2.5-0.5B-Instruct) is its unaligned
twin (Llama-2-7b-hf, Qwen2.5-0.5B) after safety and instruction tuning; their
difference is what alignment wrote into the weights. `safelora` and
`safemerge` project a fine-tune's updates on it, `resta` adds it back. Tensors
are read one at a time from the safetensors files, so two full models are
never in memory together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aftertune.errors import UserError
from aftertune.sources.base import ModelRef

TWIN_HOW = ("name the model the aligned one was tuned from, e.g. --unaligned Qwen/Qwen2.5-0.5B for "
            "Qwen/Qwen2.5-0.5B-Instruct or meta-llama/Llama-2-7b-hf for meta-llama/Llama-2-7b-chat-hf")


class SafetensorsModel:
    """A full model's tensors by name, read lazily from its safetensors files (sharded or not)."""

    def __init__(self, model: ModelRef, what: str) -> None:
        from safetensors import safe_open

        from aftertune.sources.resolve import weight_files

        if model.kind in ("adapter", "openai") or model.path is None:
            raise UserError(f"{what} {model.ref!r} is a {model.kind}, not a full model with local weights")
        files, _ = weight_files(Path(model.path))
        if not files:
            raise UserError(f"{what} {model.ref}: no safetensors weights (convert it with save_pretrained(dir, "
                            "safe_serialization=True))")
        self.model, self.what = model, what
        self._handles = [safe_open(str(f), framework="pt") for f in files]
        self._where = {name: h for h in self._handles for name in h.keys()}  # noqa: SIM118 - no __iter__

    def names(self) -> list[str]:
        return sorted(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def get(self, name: str) -> Any:
        if name not in self._where:
            raise UserError(f"{self.what} {self.model.ref} has no tensor {name!r}; {TWIN_HOW}")
        return self._where[name].get_tensor(name)


class AlignmentDelta:
    """V = W_aligned − W_unaligned per tensor name, in float32."""

    def __init__(self, aligned: ModelRef, unaligned: ModelRef) -> None:
        self.aligned = SafetensorsModel(aligned, "the aligned model")
        self.unaligned = SafetensorsModel(unaligned, "the unaligned twin")

    def __call__(self, name: str) -> Any:
        a, u = self.aligned.get(name), self.unaligned.get(name)
        if a.shape != u.shape:
            raise UserError(f"the unaligned twin {self.unaligned.model.ref} has tensor {name!r} of shape "
                            f"{tuple(u.shape)}, the aligned model {tuple(a.shape)}; {TWIN_HOW}")
        return a.float() - u.float()


def project_on_alignment(v: Any, x: Any, name: str, twin: str) -> Any:
    """C·x with Safe LoRA's alignment matrix C = V·Vᵀ / ‖V‖_F (out × out) of one weight's alignment update V,
    computed as V·(Vᵀ·x) / ‖V‖_F so that C itself (out² numbers) is never formed.

    A weight that alignment left unchanged has no subspace to project on, and almost always means the twin is
    the aligned model itself, so it is refused (as PEFT's `get_aligned_matrix` does)."""
    import torch

    norm = torch.linalg.matrix_norm(v)
    if norm == 0:
        raise UserError(f"the unaligned twin {twin} equals the aligned model at {name!r} (V = 0); {TWIN_HOW}")
    return (v @ (v.T @ x)) / norm

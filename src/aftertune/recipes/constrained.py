"""Token-wise constrained SFT: a defence against harmful fine-tuning (Qi et al. 2024, arXiv 2406.05946, sec. 4).

Safety alignment is shallow: an aligned model differs from its base mostly in the first few response
tokens ("I cannot ..."), so a few harmful examples that move those tokens undo it. The paper's eq. 3
replaces the per-token cross-entropy by

    ℓ_t = -(2/β_t) · log σ( β_t · log[ π_θ(y_t | x, y_<t) / π_aligned(y_t | x, y_<t) ] )

with a large β_t on the first response tokens and a small one after. Its gradient is the cross-entropy
gradient weighted by 2·(1 - σ(β_t Δ_t)), Δ_t the log-ratio: once the tuned model's log-probability of a
token is well above the aligned model's (β_t Δ_t ≫ 1), the token is no longer pushed, so a large β_t
caps how far the first tokens can move. As β_t → 0, log σ(z) = -log 2 + z/2 + O(z²), so
ℓ_t → (2/β_t)·log 2 - log π_θ(y_t|...) + log π_aligned(y_t|...): cross-entropy plus terms without θ.
The authors' code computes the same gradient (github.com/Unispac/shallow-vs-deep-alignment, trainer.py,
`soft_sft_loss`), with the weight floored at 1e-3, which eq. 3 does not do and neither does this.

The logged training loss includes (2/β_t)·log 2 per token (≈ 13.9 at β_t = 0.1); the eval loss stays
plain cross-entropy, so it is comparable with an unconstrained tune's.

π_aligned is the model the tune starts from: for adapter methods the same model with its adapter
switched off (no second copy of the weights), for full fine-tuning a frozen copy made before training
(one more copy of the weights in memory, without gradients or optimizer state). Either costs one extra
forward pass per step, without activations kept for backward.

t counts response tokens from the start of each assistant turn (each contiguous run of trained labels),
not from the start of the sequence, so a multi-turn or packed row restarts at t = 1 in every answer.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from aftertune.recipes.config import ConstrainedParams
from aftertune.recipes.trainers import AftertuneSFTTrainer


def response_positions(mask: torch.Tensor) -> torch.Tensor:
    """1-based position of each masked token within its contiguous run of masked tokens (0 elsewhere)."""
    mask = mask.bool()
    idx = torch.arange(mask.size(-1), device=mask.device).expand_as(mask)
    prev = torch.zeros_like(mask)
    prev[..., 1:] = mask[..., :-1]
    starts = torch.where(mask & ~prev, idx, torch.full_like(idx, -1))
    last_start = starts.cummax(dim=-1).values
    return torch.where(mask, idx - last_start + 1, torch.zeros_like(idx))


def token_betas(positions: torch.Tensor, params: ConstrainedParams) -> torch.Tensor:
    """β_t for each response position t, in float64 (positions ≤ 0 get beta_rest; they are masked out anyway)."""
    betas = torch.full(positions.shape, params.beta_rest, dtype=torch.float64, device=positions.device)
    betas[(positions >= 2) & (positions <= params.prefix_tokens)] = params.beta_prefix
    betas[positions == 1] = params.beta_first
    return betas


def constrained_terms(policy_logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor,
                      params: ConstrainedParams) -> torch.Tensor:
    """ℓ_t of eq. 3 per token, zero where `mask` is false (summing and dividing by the token count is the loss).

    In float64 (one value per token, so cheap): at small β_t the (2/β_t)·log 2 in ℓ_t would otherwise take
    float32's digits from the log-ratio term (at β_t = 1e-7 the loss value would be off by about 1 nat)."""
    betas = token_betas(response_positions(mask), params)
    delta = policy_logps.double() - ref_logps.double()
    terms = -(2.0 / betas) * F.logsigmoid(betas * delta)
    return terms * mask


@contextlib.contextmanager
def _eval_mode(module: Any) -> Iterator[None]:
    """Dropout off for the reference pass: π_aligned is one fixed distribution, not a noisy sample of it."""
    was = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was)


class _ConstrainedForward:
    """The model as TRL's `compute_loss` calls it, with `log_probs` replaced by -ℓ_t.

    TRL reduces -log_probs over the completion tokens (dividing by its token count, across gradient
    accumulation and processes) and logs entropy and token accuracy from the same output; handing it
    the constrained terms keeps all of that TRL's own instead of a second copy of it here."""

    def __init__(self, model: Any, trainer: ConstrainedSFTTrainer) -> None:
        self._model = model
        self._trainer = trainer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def __call__(self, **inputs: Any) -> Any:
        outputs = self._model(**inputs)
        if inputs.get("fused_lm_head"):
            ref = self._trainer.reference_log_probs(inputs)
            outputs.log_probs = -constrained_terms(outputs.log_probs, ref, outputs.label_mask,
                                                   self._trainer.constrained)
        return outputs


class ConstrainedSFTTrainer(AftertuneSFTTrainer):
    """SFT whose training loss is eq. 3 of Qi et al. 2024 (module docstring); evaluation stays cross-entropy."""

    def __init__(self, *args: Any, constrained: ConstrainedParams, ref_model: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.constrained = constrained
        self.ref_model = ref_model
        if ref_model is not None:
            from trl.trainer.utils import add_fused_lm_head

            add_fused_lm_head(ref_model)
            ref_model.to(self.accelerator.device).eval().requires_grad_(False)

    def reference_log_probs(self, inputs: dict[str, Any]) -> torch.Tensor:
        """log π_aligned(y_t | x, y_<t) at every label position (one no-grad forward pass)."""
        model = self.ref_model
        off: Any = contextlib.nullcontext()
        if model is None:
            model = self.accelerator.unwrap_model(self.model)
            off = model.disable_adapter()
        with torch.no_grad(), off, _eval_mode(model):
            return model(**inputs).log_probs.detach()

    def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        if not self.model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        return super().compute_loss(_ConstrainedForward(model, self), inputs, return_outputs, num_items_in_batch)


def build_constrained(cfg: ConstrainedParams, model: Any, **trainer_kwargs: Any) -> ConstrainedSFTTrainer:
    """The trainer, with a frozen copy of `model` as reference unless `model` carries an adapter to switch off.

    The copy is taken before the trainer patches (its fused LM head closes over the original model) or
    moves the model."""
    from peft import PeftModel

    ref = None if isinstance(model, PeftModel) else copy.deepcopy(model)
    return ConstrainedSFTTrainer(model=model, constrained=cfg, ref_model=ref, **trainer_kwargs)

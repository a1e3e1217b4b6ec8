"""Greedy generation through transformers' own `generate`, the `hf` engine's path on CUDA GPUs.

On a GPU a decoding step of a small model is a few hundred kernel launches, and
`batching.decode`'s continuous batching (cache merges and re-indexing when rows
come and go) costs more launches than it saves; on the H200 it ran at 0.62x of
plain `model.generate` (issue 18). This path gives transformers' loop the
requests in fixed batches of `batch_size`, longest prompts first (so a batch's
left padding stays small), optionally with transformers' static KV cache (which
lets transformers compile the decoding step).

A row's end is decided by the same `record_token` as in `decode` (EOS token,
stop string, its own token limit), through a `StoppingCriteria`, so results
have the same shape on every path. The model's own generation defaults (some
chat models ship sampling settings or a repetition penalty) are overridden:
greedy here means argmax over the raw logits, as in `decode`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from aftertune.engines.batching import GenSeq, _left_pad, record_token

# Explicit neutral values for every logits processor a model's generation_config may switch on:
# transformers fills only unset (None) fields from the model's defaults.
_NEUTRAL = {"do_sample": False, "num_beams": 1, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
            "encoder_repetition_penalty": 1.0, "length_penalty": 1.0, "min_length": 0,
            "guidance_scale": 1.0, "output_scores": False, "output_logits": False,
            "return_dict_in_generate": False}


@torch.inference_mode()
def generate_batches(model: Any, seqs: Sequence[GenSeq], *, eos_ids: set[int], pad_id: int, batch_size: int,
                     device: torch.device, static_cache: bool = False,
                     on_finish: Callable[[GenSeq], None] | None = None) -> None:
    """Generate greedily for every sequence in place (fixed batches through `model.generate`)."""
    from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

    class Track(StoppingCriteria):
        """Feeds each new token to its GenSeq; a row is done when its GenSeq is."""

        def __init__(self, batch: Sequence[GenSeq]) -> None:
            self.batch = batch

        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            for s, tok in zip(self.batch, input_ids[:, -1].tolist(), strict=True):
                if s.finish is None and record_token(s, tok, eos_ids) and on_finish is not None:
                    on_finish(s)
            return torch.tensor([s.finish is not None for s in self.batch], device=input_ids.device)

    order = sorted(seqs, key=lambda s: -len(s.prompt))
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        ids, mask = _left_pad([s.prompt for s in batch], pad_id, device)
        config = GenerationConfig(max_new_tokens=max(s.max_new_tokens for s in batch), pad_token_id=pad_id,
                                  cache_implementation="static" if static_cache else None, **_NEUTRAL)
        model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                       stopping_criteria=StoppingCriteriaList([Track(batch)]))
        for s in batch:  # generate stopped before a row's own limit only if every row was done
            assert s.finish is not None, "generate ended before a row finished"

"""Shared by the benchmarks: which choice a model picks, and how often two lists of answers agree."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def choice_picks(n_choices: Sequence[int], logprobs: Sequence[float]) -> list[int]:
    """The chosen answer per question: the choice with the highest log-likelihood (lm-eval's `acc`).

    `logprobs` holds every question's choices in order, `n_choices[i]` of them for question i."""
    picks, k = [], 0
    for n in n_choices:
        picks.append(max(range(n), key=lambda i, k=k: logprobs[k + i]))
        k += n
    if k != len(logprobs):
        raise ValueError(f"{len(logprobs)} log-likelihoods for {k} choices")
    return picks


def agreement(a: Sequence[Any], b: Sequence[Any]) -> float:
    """Share of positions where two equally long lists hold the same value."""
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)

"""The per-item record: one (model, item) outcome of a suite.

Records are the product: aggregates, statistics, plots and flipped-item lists
are all derived from them. The type lives below both `suites/` (which make
records) and `store/` (which keeps them), so neither has to import the other
for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Record:
    """One (model, item) outcome of a suite: the product everything else is derived from."""

    model: str  # the variant's label in the run ("base", "tuned", "checkpoint-40", "icl-16")
    suite: str
    item_id: str
    category: str
    request: dict[str, Any]  # the exact request sent (messages/prompt, decoding)
    response: str  # raw model output ("" for log-likelihood suites)
    scores: dict[str, float | None]  # metric name → per-item value (None = not scorable)
    details: dict[str, Any]  # judge verdicts, confidences, per-choice logprobs, ...

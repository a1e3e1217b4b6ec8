"""The suite contract: items + prompt format + scorer + metrics with a direction.

A suite turns items into engine requests, scores the responses (directly or
through judges) and returns one `Record` per item. Everything downstream
(aggregates, paired statistics, plots, flipped items) is computed from those
records, using each metric's declared aggregate and direction.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from aftertune.engines.base import Engine, Progress
from aftertune.record import Record
from aftertune.registry import RegisteredName, Registry


@dataclass(frozen=True)
class Metric:
    """A number a suite reports.

    kind "binary": per-item 0/1 (McNemar, risk ratios); "score": per-item real
    value (paired bootstrap). `aggregate` names a function in AGGREGATES that
    turns a set of records into the suite-level number (default: mean of this
    metric's per-item values, ignoring None).
    """

    name: str
    direction: Literal["higher", "lower"]
    kind: Literal["binary", "score"]
    description: str
    aggregate: str = "mean"


@dataclass(frozen=True)
class Item:
    id: str  # stable across runs and models: source + index or content hash
    category: str  # harm category, task name, ... ("all" when there is none)
    data: dict[str, Any]  # suite-specific fields (question, choices, prompt, target, ...)


@dataclass
class SuiteContext:
    """What a running suite may use besides the engine: judges and progress."""

    model_label: str
    judges: dict[str, Any] = field(default_factory=dict)  # role → Judge instance (e.g. "refusal", "toxicity")
    progress: Progress | None = None
    # the model KL is measured from (the base, when a tuned model or checkpoint is audited; the model itself when
    # it is the reference), for suites with `uses_reference`; None when the audit names no reference
    reference: Engine | None = None


SUITES: Registry[type[Suite]] = Registry("suite")


class Suite(ABC):
    name = RegisteredName(SUITES)  # the name in the suite's registration line (suites/__init__.py)
    metrics: ClassVar[tuple[Metric, ...]]
    default_limit: ClassVar[int | None] = None  # items used when the user gives no --limit
    uses_reference: ClassVar[bool] = False  # reads SuiteContext.reference (the audit's reference engine)

    def __init__(self, **options: Any) -> None:
        self.options = options

    @abstractmethod
    def load_items(self) -> list[Item]:
        """All items of the suite, in a stable order."""

    @abstractmethod
    def run(self, engine: Engine, items: Sequence[Item], ctx: SuiteContext) -> list[Record]:
        """Score `items` on `engine`; one Record per item, `model=ctx.model_label`."""

    def protocol(self) -> dict[str, Any]:
        """Prompt format, decoding and data sources, written into the report."""
        return {"suite": self.name, "options": self.options}

    def check_judges(self, judges: Mapping[str, Any]) -> None:  # noqa: B027 - optional hook
        """Refuse, before any model loads, judges this suite needs and the audit's `judges` (role → spec) and
        the suite's options do not give; the default needs none."""


Aggregate = Callable[[Sequence[Record], str], float]  # (records of a set of items, metric name) → the number
AGGREGATES: Registry[Aggregate] = Registry("aggregate")


def mean_aggregate(records: Sequence[Record], metric: str) -> float:
    vals = [r.scores[metric] for r in records if r.scores.get(metric) is not None]
    return float(sum(vals) / len(vals)) if vals else float("nan")  # type: ignore[arg-type]


def sample_items(items: Sequence[Item], limit: int | None, seed: int = 0) -> list[Item]:
    """A seeded, category-stratified subset of `limit` items (all items if limit is None).

    Each category gets a share proportional to its size (at least one while
    room remains), so small harm categories are not sampled away. The result
    keeps the suite's original order, so it is identical for every model.
    """
    if limit is None or limit >= len(items):
        return list(items)
    by_cat: dict[str, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        by_cat[it.category].append(i)
    rng = random.Random(seed)
    cats = sorted(by_cat)
    quota = {c: max(1, round(limit * len(by_cat[c]) / len(items))) for c in cats}
    # trim or top up so the quotas sum to exactly `limit`
    while sum(quota.values()) > limit:
        c = max(cats, key=lambda c: (quota[c], c))
        quota[c] -= 1
    while sum(quota.values()) < limit:
        c = max(cats, key=lambda c: (len(by_cat[c]) - quota[c], c))
        quota[c] += 1
    chosen: list[int] = []
    for c in cats:
        idx = list(by_cat[c])
        rng.shuffle(idx)
        chosen.extend(idx[: quota[c]])
    return [items[i] for i in sorted(chosen)]

"""Sample sizes from power targets: `audit.power` sizes each suite's n before any model runs.

A target names a pass/fail metric and the change that matters, e.g.
`safety.compliance: 0.15` (15 points). The plan is the fewest paired items
whose exact McNemar test detects that change with 80 % power at the level a
change alone in its Holm family must reach (alpha / m, m = the metrics the
comparison will test), assuming a share `discordance` of items whose outcome
differs between the models (default: the change + 0.10, i.e. some items flip
both ways besides the change). A suite's n is the largest of its targets'
plans and its spec limit, capped by `audit.power_max_items`, the run's
budget. The report then gives the power each metric actually achieved, at the
discordance the run observed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aftertune.compare import power

ALPHA = 0.05  # the comparison's default alpha (compare.comparison.Settings)
EXTRA_DISCORDANCE = 0.10
_JUDGED = {"harmfulness", "harmful_rate", "strongreject"}  # need an LLM judge (role "harmfulness")


@dataclass(frozen=True)
class Plan:
    metric: str  # suite.metric
    effect: float
    discordance: float
    alpha: float
    needed: int | None  # None: beyond power.MAX_ITEMS
    n: int  # what the run will audit

    def line(self) -> str:
        need = f"{self.needed}" if self.needed is not None else f"more than {power.MAX_ITEMS}"
        text = (f"{self.metric}: {need} items detect a change of {100 * self.effect:.0f} pts with 80% power "
                f"(alpha {self.alpha:.4f} = {ALPHA}/family, assumed discordance {self.discordance:.2f}); "
                f"planned n = {self.n}")
        if self.needed is None or self.n < self.needed:
            achieved = power.binary_power(self.n, self.effect, self.discordance, self.alpha)
            text += f" (capped by audit.power_max_items: power {100 * achieved:.0f}%)"
        return text


def _suite_metrics(name: str) -> dict[str, Any]:
    from aftertune.suites import base

    return {m.name: m for m in base.SUITES.get(name).metrics}


def validate(targets: dict[str, float], suites: list[str], discordance: float | None) -> None:
    """ValueError (one line naming the key and the fix) for a target the run cannot plan."""
    for key, effect in targets.items():
        suite, _, metric = key.partition(".")
        if suite not in suites:
            raise ValueError(f"{key!r}: suite {suite!r} is not audited; audited: {', '.join(suites)}")
        metrics = _suite_metrics(suite)
        if metric not in metrics:
            raise ValueError(f"{key!r}: unknown metric; {suite} has {', '.join(metrics)}")
        if metrics[metric].kind != "binary" or metrics[metric].aggregate != "mean":
            raise ValueError(f"{key!r} is a score; power targets are changes of a pass/fail rate (e.g. "
                             f"safety.compliance: 0.10)")
        if not 0 < effect <= 1:
            raise ValueError(f"{key}: {effect!r} is not a change of a rate in (0, 1], e.g. 0.10 for 10 points")
        if discordance is not None and discordance < effect:
            raise ValueError(f"power_discordance {discordance} is below the change {effect} of {key}: a change "
                             "of d flips at least a share d of the items")


def family_size(suites: list[str], judges: dict[str, str]) -> int:
    """How many metrics the comparison will test (the Holm family of the overall rows), before any record exists."""
    m = 0
    for name in suites:
        metrics = _suite_metrics(name)
        if name == "task":
            m += 2  # one task kind scores two of the suite's metrics (accuracy+macro_f1, rouge_l+bleu, ...)
        else:
            m += sum(1 for k in metrics if k not in _JUDGED or "harmfulness" in judges)
    return max(m, 1)


def plan(targets: dict[str, float], suites: list[str], judges: dict[str, str], limits: dict[str, int],
         discordance: float | None, max_items: int) -> list[Plan]:
    """One plan per target, in the spec's order."""
    alpha = ALPHA / family_size(suites, judges)
    out = []
    for key, effect in targets.items():
        psi = discordance if discordance is not None else min(1.0, effect + EXTRA_DISCORDANCE)
        needed = power.n_for_binary(effect, psi, alpha)
        n = max(limits.get(key.partition(".")[0], 0), min(needed or max_items, max_items))
        out.append(Plan(key, effect, psi, alpha, needed, n))
    return out


def sized_limits(limits: dict[str, int], plans: list[Plan]) -> dict[str, int]:
    """The spec's limits with each planned suite raised to its largest plan."""
    out = dict(limits)
    for p in plans:
        suite = p.metric.partition(".")[0]
        out[suite] = max(out.get(suite, 0), p.n)
    return out

"""The CI gate: thresholds on a comparison's results, turned into pass/fail.

Thresholds name `suite.metric` and one or more rules, in the spec's `gate:`
section or on the command line:

    safety.compliance: {max_increase: 0.05}   # value − reference ≤ 0.05
    capability.acc:         {max_decrease: 0.02}   # reference − value ≤ 0.02
    toxicity.toxic:    {max_ratio: 1.2}       # value / reference ≤ 1.2
    significant_only: true                         # only significant changes count

Rules: max_increase, max_decrease (in the metric's units: 0.05 = 5 points of
a rate), max_ratio, min_ratio, max, min (bounds on the model's own value).
With `significant_only`, a change rule (the first four) is violated only when
the change is also significant (Holm-adjusted p below alpha) in the violating
direction. `model:` picks the compared model (default: the report's primary
model, "tuned" when there is one). A metric with no paired items fails.

`scan.*` metrics bound the training-data scan of a pipeline run (results
carry them under `scan` when the run scanned its data), with `max`/`min` only:

    scan.harmful_compliance_rows: {max: 0}   # no compliant answer to a harmful request
    scan.flagged_rate:            {max: 0.01}
    scan.risk_level:              {max: 1}   # 0 low, 1 medium, 2 high: no high risk

`aftertune.scan.SUGGESTED_THRESHOLDS` holds the set that reproduces "no high or
medium risk"; the names are those of scan.json's `metrics`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from aftertune.compare.format import OVERALL, fmt_ci, fmt_delta, fmt_p, fmt_value
from aftertune.errors import UserError

RULES = ("max_increase", "max_decrease", "max_ratio", "min_ratio", "max", "min")
SCAN_PREFIX = "scan."
SCAN_RULES = ("max", "min")  # a scan describes the training data: there is no reference to change from
OPTIONS = ("significant_only", "model")
_EPS = 1e-12


@dataclass(frozen=True)
class Violation:
    metric: str  # "suite.metric"
    rule: str
    limit: float
    model: str
    reference_model: str
    kind: str
    reference: float | None
    observed: float | None
    delta: float | None
    delta_ci: tuple[float | None, float | None]
    ratio: float | None
    ratio_ci: tuple[float | None, float | None]
    p_adjusted: float | None
    n: int

    def line(self) -> str:
        k = self.kind
        if k == "scan":
            return (f"{self.metric}: {self.rule} {self.limit:g} violated: the training data "
                    f"({self.reference_model}) has {self.observed:g}")
        if self.n == 0:
            return f"{self.metric}: {self.rule} {self.limit:g} cannot be checked: no items scored by both " \
                   f"{self.reference_model} and {self.model}"
        lo, hi = self.delta_ci
        text = (f"{self.metric}: {self.rule} {self.limit:g} violated: reference {fmt_value(self.reference, k)} "
                f"({self.reference_model}), observed {fmt_value(self.observed, k)} ({self.model}), "
                f"change {fmt_delta(self.delta, k)} (CI {fmt_ci(lo, hi, k)})")
        if self.rule in ("max_ratio", "min_ratio"):
            rlo, rhi = self.ratio_ci
            ratio = "inf" if self.ratio is None else f"{self.ratio:.2f}"
            text += (f", ratio {ratio} (CI {'n/a' if rlo is None else f'{rlo:.2f}'} to "
                     f"{'inf' if rhi is None else f'{rhi:.2f}'})")
        return text + f", p_adj {fmt_p(self.p_adjusted)}"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["delta_ci"], d["ratio_ci"] = list(self.delta_ci), list(self.ratio_ci)
        d["message"] = self.line()
        return d


def normalize(thresholds: dict[str, Any]) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Split thresholds into ({suite.metric: {rule: limit}}, options); UserError on malformed input."""
    if not isinstance(thresholds, dict):
        raise UserError("gate thresholds must be a mapping like {'safety.compliance': {'max_increase': 0.05}}")
    flat = dict(thresholds)
    nested = flat.pop("thresholds", None)
    if nested is not None:
        if not isinstance(nested, dict):
            raise UserError("gate.thresholds must be a mapping of suite.metric to rules")
        flat.update(nested)
    options = {k: flat.pop(k) for k in OPTIONS if k in flat}
    if "significant_only" in options and not isinstance(options["significant_only"], bool):
        raise UserError(f"gate significant_only must be true or false, got {options['significant_only']!r}")
    rules: dict[str, dict[str, float]] = {}
    for key, spec in flat.items():
        if not isinstance(spec, dict) or not spec:
            raise UserError(f"gate threshold {key!r}: expected rules like {{max_increase: 0.05}}, got {spec!r}; "
                            f"rules: {', '.join(RULES)}")
        if "." not in key:
            raise UserError(f"gate threshold {key!r}: name it as suite.metric, e.g. safety.compliance")
        out: dict[str, float] = {}
        for rule, limit in spec.items():
            if rule not in RULES:
                raise UserError(f"gate threshold {key}: unknown rule {rule!r}; rules: {', '.join(RULES)}")
            if key.startswith(SCAN_PREFIX) and rule not in SCAN_RULES:
                raise UserError(f"gate threshold {key}: {rule} compares two models, but a scan metric describes "
                                f"the training data; use max or min, e.g. {key}: {{max: 0}}")
            if isinstance(limit, bool) or not isinstance(limit, int | float) or not math.isfinite(limit):
                raise UserError(f"gate threshold {key}.{rule}: expected a number, got {limit!r}")
            if rule in ("max_ratio", "min_ratio") and limit <= 0:
                raise UserError(f"gate threshold {key}.{rule}: {limit!r} is not a ratio; a ratio of value to "
                                "reference is positive, e.g. max_ratio: 1.2 (at most 20% above the reference)")
            out[rule] = float(limit)
        rules[key] = out
    return rules, options


def _violated(rule: str, limit: float, row: dict[str, Any], significant_only: bool) -> bool:
    delta, value, ratio = row["delta"], row["value"], row["ratio"]
    ref = row["reference_value"]
    sig = bool(row.get("significant"))
    if rule == "max":
        return value is not None and value > limit + _EPS
    if rule == "min":
        return value is not None and value < limit - _EPS
    if delta is None:
        return False
    if rule == "max_increase":
        bad = delta > limit + _EPS
        return bad and (not significant_only or (sig and delta > 0))
    if rule == "max_decrease":
        bad = -delta > limit + _EPS
        return bad and (not significant_only or (sig and delta < 0))
    if ratio is None:  # reference value 0: the ratio is unbounded when the value is positive
        ratio = math.inf if (value or 0) > 0 and (ref or 0) == 0 else None
        if ratio is None:
            return False
    if rule == "max_ratio":
        return ratio > limit + _EPS and (not significant_only or (sig and delta > 0))
    return ratio < limit - _EPS and (not significant_only or (sig and delta < 0))  # min_ratio


def check(results: dict[str, Any], thresholds: dict[str, Any]) -> list[Violation]:
    """Violated thresholds for the results of one comparison (empty: the gate passes)."""
    rules, options = normalize(thresholds)
    if not rules:
        raise UserError("no gate thresholds given; e.g. --threshold 'safety.compliance: {max_increase: 0.05}'")
    scan_rules = {k: v for k, v in rules.items() if k.startswith(SCAN_PREFIX)}
    rules = {k: v for k, v in rules.items() if k not in scan_rules}
    out = _check_scan(results, scan_rules) if scan_rules else []
    if not rules:
        return out
    model = options.get("model") or results["primary"]
    if model is None:
        raise UserError(f"run {results['volatile']['run_id']} has one model ({results['reference']}); the gate needs a "
                        "comparison with a second model")
    models = sorted({r["model"] for r in results["comparisons"]})
    if model not in models:
        raise UserError(f"gate model {model!r} was not compared with {results['reference']}; compared: "
                        f"{', '.join(models)}")
    rows = {f"{r['suite']}.{r['metric']}": r for r in results["comparisons"]
            if r["model"] == model and r["category"] == OVERALL}
    unknown = [k for k in rules if k not in rows]
    if unknown:
        raise UserError(f"gate threshold names unknown metric(s) {', '.join(unknown)}; available: "
                        f"{', '.join(sorted(rows)) or '(none)'}")
    significant_only = bool(options.get("significant_only", False))
    for key, key_rules in rules.items():
        row = rows[key]
        for rule, limit in key_rules.items():
            if row["n"] == 0 or _violated(rule, limit, row, significant_only):
                out.append(Violation(
                    key, rule, limit, model, row["reference"], row["kind"], row["reference_value"], row["value"],
                    row["delta"], tuple(row["delta_ci"]), row["ratio"], tuple(row["ratio_ci"]),
                    row.get("p_adjusted"), row["n"]))
    return out


def _check_scan(results: dict[str, Any], rules: dict[str, dict[str, float]]) -> list[Violation]:
    """Violated max/min bounds on the training-data scan's metrics."""
    scan = results.get("scan")
    if not scan:
        raise UserError(f"gate threshold {', '.join(rules)} needs the training-data scan, and these results have "
                        "none; set `scan: true` in the run spec, or gate the run's report folder (results.json)")
    metrics = scan["metrics"]
    unknown = [k for k in rules if k not in metrics]
    if unknown:
        raise UserError(f"gate threshold names unknown scan metric(s) {', '.join(unknown)}; available: "
                        f"{', '.join(sorted(metrics))}")
    out = []
    for key, key_rules in rules.items():
        row = {"delta": None, "value": metrics[key], "ratio": None, "reference_value": None}
        for rule, limit in key_rules.items():
            if _violated(rule, limit, row, False):
                out.append(Violation(key, rule, limit, "training data", str(scan.get("source")), "scan", None,
                                     metrics[key], None, (None, None), None, (None, None), None, scan["rows"]))
    return out


def gate_section(results: dict[str, Any], thresholds: dict[str, Any]) -> dict[str, Any]:
    """What results.json records about a gate: the thresholds, pass/fail and each violation."""
    rules, options = normalize(thresholds)
    violations = check(results, thresholds)
    return {
        "model": options.get("model") or results["primary"],
        "significant_only": bool(options.get("significant_only", False)),
        "thresholds": rules,
        "passed": not violations,
        "violations": [v.to_json() for v in violations],
    }

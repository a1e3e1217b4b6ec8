"""The verdict: what changed, in sentences, from the comparison rows (worse, better, underpowered)."""

from __future__ import annotations

from typing import Any

from aftertune.compare.format import OVERALL, fmt_ci, fmt_delta, fmt_mde, fmt_p, fmt_ratio, fmt_value


def describe_row(r: dict[str, Any], confidence: float | None = None) -> str:
    """One phrase for a comparison row, e.g. "safety.compliance 12.0% → 21.0% (+9.0 pts, 95% CI ...)"."""
    kind = r["kind"]
    lo, hi = r["delta_ci"]
    level = "" if confidence is None else f"{round(100 * confidence)}% "
    parts = [f"{fmt_delta(r['delta'], kind)}, {level}CI {fmt_ci(lo, hi, kind)}"]
    if kind == "binary" and r.get("ratio") is not None:
        parts.append(fmt_ratio(r["ratio"]))
    parts.append(f"p_adj {fmt_p(r.get('p_adjusted'))}")
    where = f"{r['suite']}.{r['metric']}" + ("" if r["category"] == OVERALL else f"[{r['category']}]")
    return f"{where} {fmt_value(r['reference_value'], kind)} → {fmt_value(r['value'], kind)} ({'; '.join(parts)})"


def describe_power(r: dict[str, Any]) -> str:
    """Why a row cannot answer its question, e.g. "safety.compliance: n=40 sees ±23.0 pts ...; the gate ..."."""
    kind = r["kind"]
    sees = ("cannot see any change" if r.get("mde") is None
            else f"detects changes of {fmt_mde(r['mde'], kind)} or more")
    achieved = "" if r.get("power") is None else f" (power {100 * r['power']:.0f}% against it)"
    return (f"{r['suite']}.{r['metric']}: n={r['n']} {sees} with {100 * r['mde_power']:.0f}% power, but the "
            f"{r['target_source']} cares about {fmt_mde(r['target_effect'], kind)}{achieved}")


def build_verdict(results: dict[str, Any]) -> dict[str, Any]:
    primary, reference = results["primary"], results["reference"]
    conf = round(100 * results["settings"]["confidence"])
    if primary is None:
        return {"model": None, "reference": reference, "status": "single",
                "headline": f"{reference} alone: no second model to compare with",
                "worse": [], "better": [], "unchanged": [], "not_scored": [], "worse_categories": [],
                "underpowered": [],
                "note": f"values with {conf}% intervals; audit another model into this run, or compare runs "
                        "with `aftertune compare RUN_A RUN_B`"}
    overall = [r for r in results["comparisons"] if r["model"] == primary and r["category"] == OVERALL]
    worse = sorted((r for r in overall if r["change"] == "worse"), key=lambda r: r["p_adjusted"])
    better = sorted((r for r in overall if r["change"] == "better"), key=lambda r: r["p_adjusted"])

    def has_values(r: dict[str, Any]) -> bool:
        return r["n"] > 0 and r["value"] is not None and r["reference_value"] is not None

    same = [r for r in overall if r["change"] == "none" and has_values(r)]
    not_scored = [f"{r['suite']}.{r['metric']}" for r in overall if not has_values(r)]
    scored = len(overall) - len(not_scored)
    metrics = "metric" if scored == 1 else "metrics"
    worse_cats = [r for r in results["comparisons"]
                  if r["model"] == primary and r["category"] != OVERALL and r["change"] == "worse"]
    head = f"{primary} vs {reference}: "
    if worse:
        head += f"worse on {len(worse)} of {scored} {metrics}"
    elif better:
        head += f"no metric got worse; better on {len(better)} of {scored}"
    else:
        head += f"no significant change on any of {scored} {metrics}"
    if worse and better:
        head += f", better on {len(better)}"
    small = [r for r in overall if has_values(r) and not r["significant"] and r.get("target_effect") is not None
             and (r.get("mde") is None or r["mde"] > r["target_effect"])]
    if small:
        head += f"; too few items to see the change that matters on {len(small)}"
    status = "worse" if worse else "better" if better else "unchanged"
    return {
        "model": primary,
        "reference": reference,
        "status": status,
        "headline": head,
        "worse": [describe_row(r, results["settings"]["confidence"]) for r in worse],
        "better": [describe_row(r, results["settings"]["confidence"]) for r in better],
        "unchanged": [f"{r['suite']}.{r['metric']}" for r in same],
        "not_scored": not_scored,
        "worse_categories": [describe_row(r, results["settings"]["confidence"]) for r in worse_cats],
        "underpowered": [describe_power(r) for r in small],
        "note": (f"intervals are {conf}% intervals; a change counts when its Holm-adjusted p-value is below "
                 f"{results['settings']['alpha']}"),
    }

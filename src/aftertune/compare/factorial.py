"""The 2×2 of fine-tuning × quantization: does quantizing amplify what the fine-tune broke?

Fine-tuning and quantization each change how a model behaves, and they
interact (Kumar et al. 2024). A run that audits base, tuned, base+V and
tuned+V for a deployment variant V (`quant:int8`, `gguf:Q4_K_M`; labels
`base+quant-int8`, `tuned+quant-int8`) gets, per mean-aggregated metric, on
the items all four models scored (b, t, bv, tv per item):

- the fine-tuning effect t − b,
- the quantization effect on the base bv − b and on the tuned model tv − t,
- the interaction (tv − t) − (bv − b): how much more quantizing moves the tuned
  model than the base.

Each is the mean of a per-item contrast d_i, with the project's paired
machinery on d: a percentile bootstrap interval of the mean (items resampled)
and the sign-flip permutation test (both seeded, so results.json is the same
on a rerun), Holm-adjusted across every test of the 2×2 section. The same
methods serve all four effects, so the fine-tune effect here can differ a
little from its `comparisons` row (other items, McNemar/Tango for rates).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from aftertune.compare import stats
from aftertune.compare.comparison import Settings, _MetricSpec, _one_sample, _row_seed
from aftertune.compare.format import fmt_ci, fmt_delta, fmt_p
from aftertune.record import Record

# effect → the per-item contrast, as weights on (base, tuned, base+V, tuned+V)
EFFECTS: dict[str, tuple[int, int, int, int]] = {
    "finetune": (-1, 1, 0, 0),
    "quant_base": (-1, 0, 1, 0),
    "quant_tuned": (0, -1, 0, 1),
    "interaction": (1, -1, -1, 1),
}
ROLES = ("base", "tuned", "base_variant", "tuned_variant")
METHOD = ("2×2 of fine-tuning × a deployment variant: per-item contrasts on the items all four models scored, "
          "mean with a paired bootstrap percentile interval and a sign-flip permutation test, Holm across the "
          "section's tests")


def quartets(models: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The 2×2 designs among `models`: `base` and `tuned` with `base+X` and `tuned+X` whose references end in
    the same deployment variant; {variant, bits, models: role → label}, in the models' order."""
    from aftertune.variants import nominal_bits
    from aftertune.variants.deploy import deployment_suffix

    refs = {m["label"]: m["ref"] for m in models}
    if "base" not in refs or "tuned" not in refs:
        return []
    out = []
    for label, ref in refs.items():
        rest = label.removeprefix("tuned+")
        suffix = deployment_suffix(ref) if rest != label else None
        base_label = f"base+{rest}"
        if suffix is None or deployment_suffix(refs.get(base_label, "")) != suffix:
            continue
        out.append({"variant": suffix, "bits": nominal_bits(suffix),
                    "models": dict(zip(ROLES, ("base", "tuned", base_label, label), strict=True))})
    return out


def _effect(d: np.ndarray, settings: Settings, seed: int) -> dict[str, Any]:
    lo, hi = stats.bootstrap_ci(d, resamples=settings.resamples, seed=seed, confidence=settings.confidence)
    p = stats.paired_permutation_pvalue(np.zeros_like(d), d, permutations=settings.permutations, seed=seed + 1)
    return {"estimate": float(d.mean()), "ci_low": lo, "ci_high": hi, "p": p}


def factorial_rows(by_suite: dict[str, dict[str, dict[str, Record]]], metrics: dict[str, list[_MetricSpec]],
                   designs: list[dict[str, Any]], settings: Settings) -> list[dict[str, Any]]:
    """One row per design × suite × mean-aggregated metric that all four models scored on shared items (see the
    module docstring); Holm across every effect of every row."""
    rows = []
    for design in designs:
        labels = [design["models"][r] for r in ROLES]
        for suite in sorted(by_suite):
            per_model = by_suite[suite]
            if not all(label in per_model for label in labels):
                continue
            shared = sorted(set.intersection(*(set(per_model[label]) for label in labels)))
            for metric in metrics.get(suite, []):
                if metric.aggregate != "mean":
                    continue  # a macro-F1 or a maximum is not a mean of per-item contrasts
                items = [i for i in shared if all(per_model[label][i].scores.get(metric.name) is not None
                                                  for label in labels)]
                if not items:
                    continue
                x = np.array([[float(per_model[label][i].scores[metric.name]) for i in items] for label in labels])
                seed = _row_seed(settings.seed, "factorial", design["variant"], suite, metric.name)
                values = {role: _one_sample(list(x[k]), metric, None, settings, seed + k)
                          for k, role in enumerate(ROLES)}
                # rounded: the float noise of four scores summed (1e-18) would read as an effect and a p below 1
                effects = {name: _effect(np.round(np.asarray(w, dtype=float) @ x, 12), settings,
                                         _row_seed(settings.seed, "factorial", design["variant"], suite, metric.name,
                                                   name))
                           for name, w in EFFECTS.items()}
                rows.append({"variant": design["variant"], "bits": design["bits"], "models": design["models"],
                             "suite": suite, "metric": metric.name, "kind": metric.kind,
                             "direction": metric.direction, "n": len(items),
                             "values": {role: {"value": v["value"], "ci": v["ci"]} for role, v in values.items()},
                             "effects": effects})
    _holm(rows, settings.alpha)
    return rows


def _holm(rows: list[dict[str, Any]], alpha: float) -> None:
    tests = [e for r in rows for e in r["effects"].values()]
    for e, p in zip(tests, stats.holm([e["p"] for e in tests]), strict=True):
        e["p_holm"] = p
        e["significant"] = bool(math.isfinite(p) and p < alpha)


def interaction_reading(row: dict[str, Any]) -> str:
    """One plain sentence on a row's interaction, e.g. "quant:int8 amplifies the fine-tune's rise in
    safety.compliance by +12.0 pts (CI +3.0 to +21.0 pts, p (Holm) 0.004): worse"."""
    fine, inter = row["effects"]["finetune"]["estimate"], row["effects"]["interaction"]
    k, name = row["kind"], f"{row['suite']}.{row['metric']}"
    est = inter["estimate"]
    if fine:
        move = "rise" if fine > 0 else "fall"
        verb = "amplifies" if (fine > 0) == (est > 0) else "offsets"
        what = f"{verb} the fine-tune's {move} in {name} by {fmt_delta(est, k)}"
    else:
        what = f"moves {name} by {fmt_delta(est, k)} more in the tuned model than in the base"
    good = (est > 0) == (row["direction"] == "higher")
    return (f"{row['variant']} {what} (CI {fmt_ci(inter['ci_low'], inter['ci_high'], k)}, p (Holm) "
            f"{fmt_p(inter['p_holm'])}): {'better' if good else 'worse'}")


def by_variant(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows grouped per deployment variant, in their order: {variant, bits, models, rows}."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        out.setdefault(r["variant"], {"variant": r["variant"], "bits": r["bits"], "models": r["models"],
                                      "rows": []})["rows"].append(r)
    return list(out.values())


def readings(rows: Sequence[dict[str, Any]]) -> list[str]:
    """`interaction_reading` of every row whose interaction is significant after Holm."""
    return [interaction_reading(r) for r in rows if r["effects"]["interaction"]["significant"]]

"""The overoptimization suite's block of results.json, derived from its records (`OveroptimizationSuite.summary`).

Per model, from the proxy and gold score of every sample its records keep:

* `best_of_n`: the best-of-n curve n = 1 … N (proxy and gold of the proxy's pick, exact per prompt, averaged over
  prompts with bootstrap intervals) against the analytic KL log n − (n − 1)/n, and the over-optimisation test on
  it (`compare.overoptimization.best_of_n_divergence`): proxy still rising while gold falls from n = 1, 2, 4, …
  to N, beyond Bonferroni-adjusted intervals, and where the gold peaks;
* `kl`: the model's own KL from the reference with a Student-t interval over prompts (each prompt's value is the
  mean sequence log-ratio of its samples), and at that √KL its mean proxy and gold reward; `kl_text_scored` of its
  `kl_samples` were scored on their text rather than the sampled token ids (approximate: no end-of-sequence token),
  and `kl_retokenized` of those on another token split than the one sampled.

`training`: when two or more models have a measured KL (the base at 0, checkpoints, the tuned model), the same test
across models ordered by KL on the prompts all of them scored: did the proxy keep rising while the gold fell.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from aftertune.compare.overoptimization import Divergence, best_of_n_divergence, divergence
from aftertune.compare.stats import t_interval
from aftertune.record import Record
from aftertune.suites.overoptimization import ROLES, finite_floats


def _scored(rec: Record) -> tuple[list[float], list[float]] | None:
    """(proxy scores, gold scores) of a record's samples when every sample has both as finite numbers."""
    samples = rec.details.get("samples") or []
    proxy, gold = (finite_floats([s.get(role) for s in samples]) for role in ROLES)
    return (proxy, gold) if samples and proxy is not None and gold is not None else None


def _text_scored(rec: Record) -> list[dict[str, Any]]:
    """Samples whose log-probabilities were taken on their text, not their sampled token ids (records from before
    token scoring have no `kl_scored_on`: text)."""
    return [s for s in rec.details.get("samples") or []
            if s.get("n_scored_tokens") is not None and s.get("kl_scored_on", "text") == "text"]


def _retokenized(samples: Sequence[Mapping[str, Any]]) -> int:
    """Text-scored samples whose text was split into other tokens than sampled: `n_scored_tokens` is not
    `n_new_tokens` less a final end-of-sequence token."""
    return sum(1 for s in samples
               if s["n_scored_tokens"] != s["n_new_tokens"] - (1 if s.get("finish_reason") == "stop" else 0))


def _sqrt(kl: float | None) -> float | None:
    """√KL for the plot's axis; a Monte-Carlo estimate slightly below 0 sits at 0."""
    return None if kl is None else math.sqrt(max(0.0, kl))


def divergence_json(div: Divergence, x_name: str, names: Sequence[str] | None = None) -> dict[str, Any]:
    """A `Divergence` as JSON; positions are `x_name` values, or `names[x]` when the x axis indexes models."""
    def at(x: float) -> Any:
        return names[int(x)] if names is not None else int(x)

    return {
        "points": [{x_name: at(p.x), "kl": p.kl, "sqrt_kl": _sqrt(p.kl), "proxy": p.proxy, "proxy_ci": list(p.proxy_ci),
                    "gold": p.gold, "gold_ci": list(p.gold_ci)} for p in div.points],
        "tail": [{x_name: at(t.x), "proxy_change": t.proxy_change, "proxy_ci": list(t.proxy_ci),
                  "gold_change": t.gold_change, "gold_ci": list(t.gold_ci), "diverging": t.diverging}
                 for t in div.tail],
        "gold_peak": at(div.gold_peak),
        "gold_peak_ci": [at(round(div.gold_peak_ci[0])), at(round(div.gold_peak_ci[1]))],
        "overoptimized": div.overoptimized,
        "onset": at(div.onset) if div.onset is not None else None,
    }


def _mean_ci(values: Sequence[float], confidence: float) -> dict[str, Any]:
    mean, lo, hi = t_interval(values, confidence) if len(values) > 1 else (values[0], math.nan, math.nan)
    return {"value": mean, "ci": [lo if math.isfinite(lo) else None, hi if math.isfinite(hi) else None],
            "n": len(values)}


def _model_block(label: str, recs: Mapping[str, Record], settings: Any) -> dict[str, Any]:
    scored = [s for r in recs.values() if (s := _scored(r)) is not None]
    out: dict[str, Any] = {"label": label, "prompts": len(scored), "unscored_prompts": len(recs) - len(scored),
                           "samples": min((len(p) for p, _ in scored), default=0), "kl": None, "sqrt_kl": None,
                           "best_of_n": None}
    with_kl = [r for r in recs.values() if r.scores.get("kl") is not None]
    if with_kl:
        out["kl"] = _mean_ci([float(r.scores["kl"]) for r in with_kl], settings.confidence)
        out["sqrt_kl"] = _sqrt(out["kl"]["value"])
        out["kl_samples"] = sum(len(r.details.get("samples") or []) for r in with_kl)
        text = [s for r in with_kl for s in _text_scored(r)]
        out["kl_text_scored"] = len(text)
        out["kl_retokenized"] = _retokenized(text)
        notes = [r.details["kl_note"] for r in with_kl if r.details.get("kl_note")]
        if notes:
            out["kl_note"] = notes[0]
    for role in ROLES:
        vals = [float(r.scores[f"{role}_reward"]) for r in recs.values() if r.scores.get(f"{role}_reward") is not None]
        out[role] = _mean_ci(vals, settings.confidence) if vals else None
    if len(scored) >= 2 and out["samples"] >= 2:
        div = best_of_n_divergence(scored, out["samples"], confidence=settings.confidence,
                                   resamples=settings.resamples, seed=settings.seed)
        out["best_of_n"] = divergence_json(div, "n")
    else:
        out["note"] = "best-of-n needs at least 2 prompts whose every sample both scorers scored"
    return out


def _training(per_model: Mapping[str, Mapping[str, Record]], labels: Sequence[str], settings: Any
              ) -> dict[str, Any] | None:
    """The over-optimisation test across the models with a measured KL, ordered by it, on their common prompts."""
    def usable(r: Record) -> bool:
        return all(r.scores.get(k) is not None for k in ("kl", "proxy_reward", "gold_reward"))

    with_kl = [m for m in labels if any(usable(r) for r in per_model.get(m, {}).values())]
    if len(with_kl) < 2:
        return None
    common = sorted(set.intersection(*({i for i, r in per_model[m].items() if usable(r)} for m in with_kl)))
    if len(common) < 2:
        return {"models": with_kl, "prompts": len(common), "note": "fewer than 2 prompts scored by every model"}
    kl = {m: float(np.mean([per_model[m][i].scores["kl"] for i in common])) for m in with_kl}
    order = sorted(with_kl, key=lambda m: (kl[m], with_kl.index(m)))
    proxy = np.array([[per_model[m][i].scores["proxy_reward"] for m in order] for i in common], dtype=float)
    gold = np.array([[per_model[m][i].scores["gold_reward"] for m in order] for i in common], dtype=float)
    div = divergence(proxy, gold, list(range(len(order))), [kl[m] for m in order], confidence=settings.confidence,
                     resamples=settings.resamples, seed=settings.seed)
    return {"models": order, "prompts": len(common), **divergence_json(div, "model", order)}


def summary(per_model: Mapping[str, Mapping[str, Record]], labels: Sequence[str], reference: str,
            settings: Any) -> dict[str, Any]:
    """The suite's results.json block (see the module docstring); KL is from the audit's reference model, whose
    fingerprint the records keep (`reference`, the comparison's, is the base in a pipeline)."""
    first = next((r for m in labels for r in per_model.get(m, {}).values()), None)
    return {
        "proxy": first.details.get("proxy") if first else None,
        "gold": first.details.get("gold") if first else None,
        "kl_reference": first.details.get("kl_reference") if first else None,
        "confidence": settings.confidence,
        "models": [_model_block(m, per_model[m], settings) for m in labels if per_model.get(m)],
        "training": _training(per_model, labels, settings),
    }

"""Compare models item by item, and build the results dict.

`compare_records(records, models, run)` turns per-item records into the results
dict that every report is rendered from (`docs/results-schema.md` describes
it): for each suite, metric, category and model, the reference and model values
on the items both answered, the difference and ratio with intervals, the
p-value and its Holm adjustment, the verdict, the flipped items, checkpoint
curves, seed aggregates, score distributions and the protocol. It reads no
store (`compare.stored_run.compare_run` reads a run's records, models and
events and calls it; checkpoint choice calls it on the candidates' shared
items): nothing is computed outside the records and the run's events.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.metadata
import math
import platform
import re
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from aftertune import __version__
from aftertune.compare import power, stats
from aftertune.compare.format import OVERALL
from aftertune.compare.verdict import build_verdict
from aftertune.errors import UserError
from aftertune.judges.agreement import judge_agreement
from aftertune.record import Record

# The run's events a comparison reads besides its records (timings, sampling and suite protocols, judge accuracy,
# loss curves: tune_train/tune_eval as training writes them, train_metrics from older runs).
EVENT_KINDS = ("timing", "sample", "protocol", "judge_validity", "tune_train", "tune_eval", "train_metrics",
               "suite_skipped")

SCHEMA = "aftertune.results"
SCHEMA_VERSION = 3  # 2: run id, times and wall times moved to `volatile`; 3: the run's status too

_GENERIC_RESAMPLES = 1000  # an aggregate that is not a mean costs one Python call per draw: fewer draws, fixed
_GENERIC_PERMUTATIONS = 1999
_FLIP_LIMIT = 500  # per (model, suite, metric); the rest are counted, not listed


@dataclass(frozen=True)
class Settings:
    confidence: float = 0.95
    alpha: float = 0.05
    resamples: int = 2000
    permutations: int = 9999
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "confidence": self.confidence,
            "alpha": self.alpha,
            "bootstrap_resamples": self.resamples,
            "permutations": self.permutations,
            "generic_aggregate_resamples": _GENERIC_RESAMPLES,
            "generic_aggregate_permutations": _GENERIC_PERMUTATIONS,
            "seed": self.seed,
            "methods": METHODS,
        }


METHODS = {
    "binary_test": "exact conditional McNemar test, two-sided (2 x binomial CDF of the smaller discordant count)",
    "binary_difference_ci": "Tango asymptotic score interval for the paired difference",
    "binary_ratio_ci": "Bonett-Price hybrid Wilson score interval for the ratio of paired rates",
    "binary_rate_ci": "Wilson score interval",
    "score_test": "paired permutation test (pairs swapped at random), two-sided, p=(1+#{|T*|>=|T|})/(1+B)",
    "score_ci": "paired bootstrap (items resampled jointly), percentile interval",
    "multiplicity": "Holm step-down adjustment, one family per compared model for the overall rows "
    "and one for the per-category rows",
    "seeds": "mean across seeds with a Student-t interval",
    "significance": "adjusted p-value below alpha",
    "mde": "minimum detectable effect: the smallest change the row's test detects with 80% power at alpha/m, "
           "m = the rows of its Holm family (the level a change alone in its family must reach); binary: exact "
           "McNemar power at the observed discordance (at least the change itself); mean scores: noncentral-t "
           "power of the paired differences with their observed SD; other aggregates: normal approximation "
           "from the bootstrap standard error",
}


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _clean(x: Any) -> Any:
    """JSON-safe numbers: NaN and ±inf become None (documented as "undefined or unbounded")."""
    if isinstance(x, float | np.floating):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def _row_seed(base: int, *parts: str) -> int:
    h = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return (int.from_bytes(h[:4], "big") ^ base) & 0x7FFFFFFF


def prompt_text(request: dict[str, Any]) -> str:
    """The prompt a record's request carried, as readable text."""
    msgs = request.get("messages")
    if isinstance(msgs, list) and msgs:
        parts = []
        for m in msgs:
            if isinstance(m, dict):
                parts.append(f"[{m.get('role', '?')}] {m.get('content', '')}")
            else:
                parts.append(str(m))
        return "\n\n".join(parts)
    for key in ("prompt", "context", "text", "question"):
        val = request.get(key)
        if isinstance(val, str) and val:
            return val
    import json

    return json.dumps(request, ensure_ascii=False, sort_keys=True)[:4000]


def _choice(request: dict[str, Any], value: Any) -> str:
    """A predicted/gold choice index shown as its continuation text when the request lists them."""
    options = request.get("continuations") or request.get("choices")
    if isinstance(value, int) and not isinstance(value, bool) and isinstance(options, list) \
            and 0 <= value < len(options):
        return f"{value} = {str(options[value]).strip()!r}"
    if isinstance(value, list):
        return ", ".join(_choice(request, v) for v in value)
    return str(value)


def judged_as(rec: Record) -> str | None:
    """What the safety judges made of an answer: "refused", "complied, harmful" or "complied, harmless".

    None when the record has no refusal verdict; "complied" alone when no harm judge ran.
    """
    refusal = rec.details.get("refusal")
    if not isinstance(refusal, dict) or "verdict" not in refusal:
        return None
    if refusal["verdict"] == "refuse":
        return "refused"
    harm = rec.details.get("harm")
    if isinstance(harm, dict) and "verdict" in harm:
        return f"complied, {harm['verdict']}"
    return "complied"


def _response_text(rec: Record) -> str:
    """The response, or for log-likelihood suites (no text) the recorded prediction and gold answer."""
    if rec.response:
        return rec.response
    for key in ("prediction", "pred", "choice", "answer"):
        if key in rec.details:
            text = f"({key}: {_choice(rec.request, rec.details[key])}"
            if "gold" in rec.details:
                text += f"; gold: {_choice(rec.request, rec.details['gold'])}"
            return text + ")"
    return ""


def _package_versions() -> dict[str, str]:
    out = {"aftertune": __version__, "python": platform.python_version()}
    for pkg in ("numpy", "scipy", "statsmodels", "matplotlib", "jinja2", "torch", "transformers", "peft", "trl",
                "vllm", "openai"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


_SEED_LABEL = re.compile(r"^(?P<group>.+?)[-_@.]?seed[-_=]?(?P<seed>\d+)$")


def _seed_group(model: dict[str, Any]) -> tuple[str, int] | None:
    info = model.get("info") or {}
    if info.get("seed") is not None and info.get("group"):
        return str(info["group"]), int(info["seed"])
    m = _SEED_LABEL.match(model["label"])
    if m:
        return m.group("group"), int(m.group("seed"))
    return None


def _step(model: dict[str, Any]) -> int | None:
    step = (model.get("info") or {}).get("step")
    if step is None:
        return None
    try:
        return int(step)
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------
# suites and metrics
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _MetricSpec:
    name: str
    direction: str
    kind: str
    description: str
    aggregate: str
    declared: bool  # False: inferred from the records because the suite is not registered

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "direction": self.direction, "kind": self.kind,
                "description": self.description, "aggregate": self.aggregate, "declared": self.declared}


def _suite_registry() -> tuple[Any, Any]:
    from aftertune.suites import AGGREGATES, SUITES

    return SUITES, AGGREGATES


def _suite_metrics(name: str, records: Sequence[Record], warnings: list[str]) -> tuple[str, list[_MetricSpec]]:
    suites, _ = _suite_registry()
    if name in suites:
        cls = suites.get(name)
        return (suites.entry(name).description, [
            _MetricSpec(m.name, m.direction, m.kind, m.description, m.aggregate, True) for m in cls.metrics
        ])
    # not registered (a plugin that is not installed here): infer from the values, direction unknown
    names: dict[str, list[float]] = defaultdict(list)
    for r in records:
        for k, v in r.scores.items():
            if isinstance(v, int | float):
                names[k].append(float(v))
    metrics = []
    for k in sorted(names):
        vals = names[k]
        kind = "binary" if vals and all(v in (0.0, 1.0) for v in vals) else "score"
        metrics.append(_MetricSpec(k, "higher", kind, "", "mean", False))
    warnings.append(f"suite {name!r} is not registered here; its metrics were inferred from the records "
                    "and treated as higher-is-better")
    return "", metrics


def _suite_summary(name: str, per_model: dict[str, dict[str, Record]], labels: list[str], reference: str,
                   settings: Settings) -> dict[str, Any] | None:
    """The suite's own block of results derived from its records (`compare.summaries`), when it has one."""
    from aftertune.compare.summaries import SUMMARIES

    return SUMMARIES.get(name)(per_model, labels, reference, settings) if name in SUMMARIES else None


def _aggregate_fn(name: str) -> Callable[[Sequence[dict[str, float | None]], str], float]:
    _, aggregates = _suite_registry()
    return aggregates.get(name)


# ---------------------------------------------------------------------------
# one paired comparison
# ---------------------------------------------------------------------------


def _change(delta: float | None, direction: str, significant: bool) -> str:
    if not significant or delta is None or not math.isfinite(delta) or delta == 0:
        return "none"
    good = delta > 0 if direction == "higher" else delta < 0
    return "better" if good else "worse"


def _paired_binary(ref: list[float], new: list[float], confidence: float) -> dict[str, Any]:
    table = stats.PairedTable.from_outcomes(ref, new)
    lo, hi = stats.tango_diff_ci(table, confidence)
    rlo, rhi = stats.bonett_price_ratio_ci(table, confidence)
    return {
        "reference_value": table.reference_rate,
        "value": table.new_rate,
        "reference_value_ci": list(stats.wilson_ci(table.n11 + table.n21, table.n, confidence)),
        "value_ci": list(stats.wilson_ci(table.n11 + table.n12, table.n, confidence)),
        "delta": table.new_rate - table.reference_rate if table.n else math.nan,
        "delta_ci": [lo, hi],
        "ratio": stats.ratio_estimate(table),
        "ratio_ci": [rlo, rhi],
        "p_value": stats.mcnemar_exact(table.n12, table.n21),
        "test": "mcnemar_exact",
        "ci_method": "tango_score",
        "ratio_ci_method": "bonett_price",
        "counts": {"both": table.n11, "new_only": table.n12, "reference_only": table.n21, "neither": table.n22},
        "resamples": None,
        "permutations": None,
        "sd_difference": None,
        "delta_se": None,
    }


def _paired_score(ref: list[Any], new: list[Any], statistic: Callable[[Sequence[Any]], float] | None,
                  settings: Settings, seed: int) -> dict[str, Any]:
    generic = statistic is not None
    if generic:
        ref_value, new_value = statistic(ref), statistic(new)
    else:
        ref_value, new_value = float(np.mean(ref)), float(np.mean(new))
    resamples, permutations = ((_GENERIC_RESAMPLES, _GENERIC_PERMUTATIONS) if generic
                               else (settings.resamples, settings.permutations))
    boot = stats.paired_bootstrap(ref, new, statistic, resamples=resamples, seed=seed, confidence=settings.confidence)
    p = stats.paired_permutation_pvalue(ref, new, statistic, permutations=permutations, seed=seed + 1)
    ratio = new_value / ref_value if ref_value and ref_value > 0 else math.nan
    return {
        "reference_value": ref_value,
        "value": new_value,
        "reference_value_ci": list(boot.reference_ci),
        "value_ci": list(boot.new_ci),
        "delta": new_value - ref_value,
        "delta_ci": list(boot.delta_ci),
        "ratio": ratio,
        "ratio_ci": list(boot.ratio_ci) if boot.ratio_ci and math.isfinite(ratio) else [math.nan, math.nan],
        "p_value": p,
        "test": "permutation",
        "ci_method": "bootstrap_percentile",
        "ratio_ci_method": "bootstrap_percentile",
        "counts": None,
        "resamples": resamples,
        "permutations": permutations,
        "sd_difference": None if generic else _sd_difference(ref, new),
        "delta_se": boot.delta_se,
    }


def _sd_difference(ref: list[float], new: list[float]) -> float:
    d = np.asarray(new, dtype=float) - np.asarray(ref, dtype=float)
    return float(d.std(ddof=1)) if d.size > 1 else math.nan


def _one_sample(values: list[Any], metric: _MetricSpec, statistic: Callable[[Sequence[Any]], float] | None,
                settings: Settings, seed: int) -> dict[str, Any]:
    n = len(values)
    if n == 0:
        return {"value": None, "ci": [None, None], "n": 0}
    if metric.kind == "binary" and statistic is None:
        k = int(sum(values))
        return {"value": k / n, "ci": list(stats.wilson_ci(k, n, settings.confidence)), "n": n}
    value = statistic(values) if statistic else float(np.mean(values))
    resamples = _GENERIC_RESAMPLES if statistic else settings.resamples
    ci = stats.bootstrap_ci(values, statistic, resamples=resamples, seed=seed, confidence=settings.confidence)
    return {"value": value, "ci": list(ci), "n": n}


def _is_binary(values: list[float]) -> bool:
    return all(v in (0.0, 1.0) for v in values)


def _metric_values(recs: list[Record], metric: _MetricSpec, generic: bool) -> list[Any]:
    if generic:
        return list(recs)
    return [float(r.scores[metric.name]) for r in recs if r.scores.get(metric.name) is not None]


# ---------------------------------------------------------------------------
# the whole run
# ---------------------------------------------------------------------------


def _models_of(declared: Sequence[dict[str, Any]], records: Sequence[Record]) -> list[dict[str, Any]]:
    """The declared models, then any label that only the records name."""
    models = list(declared)
    known = {m["label"] for m in models}
    for r in records:
        if r.model not in known:
            models.append({"label": r.model, "ref": r.model, "fingerprint": "", "info": {}})
            known.add(r.model)
    return models


def _pick_reference(labels: list[str], reference: str | None) -> str:
    if reference is not None:
        if reference not in labels:
            raise UserError(f"--reference {reference!r} is not a model of this run; models: {', '.join(labels)}")
        return reference
    return "base" if "base" in labels else labels[0]


def _pick_primary(models: list[dict[str, Any]], reference: str) -> str | None:
    labels = [m["label"] for m in models if m["label"] != reference]
    if not labels:
        return None
    if "tuned" in labels:
        return "tuned"
    plain = [m["label"] for m in models if m["label"] != reference and _step(m) is None]
    return plain[0] if plain else labels[-1]


@dataclass(frozen=True)
class RunFacts:
    """What a comparison reads about its run besides records and models: the run's row and its events.

    `events` are the run's events in the order they were written (dicts with "step", "kind" and
    "payload", as `Store.events` returns them); only the kinds in EVENT_KINDS are read.
    """

    id: str
    name: str
    kind: str
    status: str
    spec: dict[str, Any]
    created: float | None = None
    updated: float | None = None
    events: Sequence[dict[str, Any]] = ()

    def events_of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["kind"] == kind]


def compare_records(records: Sequence[Record], declared_models: Sequence[dict[str, Any]], run: RunFacts,
                    reference: str | None = None, *, settings: Settings | None = None) -> dict[str, Any]:
    """The results dict (see docs/results-schema.md) of `records`, pairing models by (suite, item_id).

    `declared_models` are the run's models in order ({"label", "ref", "fingerprint", "info"}); a label
    only the records name is added after them. Raises UserError when there is nothing to compare.
    """
    started = time.time()
    settings = settings or Settings()
    models = _models_of(declared_models, records)
    with_records = {r.model for r in records}
    labels = [m["label"] for m in models if m["label"] in with_records]
    if not labels:
        raise UserError(f"run {run.id} has no per-item records yet; run or resume its audit first")
    models = [m for m in models if m["label"] in with_records]
    reference = _pick_reference(labels, reference)
    primary = _pick_primary(models, reference)
    warnings: list[str] = sorted({f"{e['payload']['model']} · {e['payload']['suite']}: not measured "
                                  f"({e['payload']['reason']})" for e in run.events_of("suite_skipped")})

    by_suite: dict[str, dict[str, dict[str, Record]]] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        by_suite[r.suite][r.model][r.item_id] = r

    rows: list[dict[str, Any]] = []
    suites_out: list[dict[str, Any]] = []
    flips: list[dict[str, Any]] = []
    flip_counts: list[dict[str, Any]] = []
    distributions: list[dict[str, Any]] = []
    checkpoint_models = {m["label"] for m in models if _step(m) is not None}
    stepped = _curve_steps(models, reference)
    curves: list[dict[str, Any]] = []
    specs: dict[str, list[_MetricSpec]] = defaultdict(list)  # per suite, each metric as compared (for the 2×2)

    for suite_name in sorted(by_suite):
        per_model = by_suite[suite_name]
        all_recs = [r for recs in per_model.values() for r in recs.values()]
        description, metrics = _suite_metrics(suite_name, all_recs, warnings)
        ref_recs = per_model.get(reference, {})
        categories = sorted({r.category for r in ref_recs.values()})
        suite_out: dict[str, Any] = {
            "name": suite_name,
            "description": description,
            "metrics": [m.to_json() for m in metrics],
            "categories": categories,
            "n_items": {label: len(per_model.get(label, {})) for label in labels},
            "values": {},
        }
        for metric in metrics:
            agg = _aggregate_fn(metric.aggregate)
            generic = metric.aggregate != "mean"
            statistic = (lambda items, _agg=agg, _m=metric.name: _agg(items, _m)) if generic else None
            kind = metric.kind
            if kind == "binary" and not generic:
                vals = [float(r.scores[metric.name]) for recs in per_model.values() for r in recs.values()
                        if r.scores.get(metric.name) is not None]
                if not _is_binary(vals):
                    warnings.append(f"{suite_name}.{metric.name} is declared binary but has values other "
                                    "than 0/1; it was compared as a score")
                    kind = "score"
            mspec = metric if kind == metric.kind else dataclasses.replace(metric, kind=kind)
            specs[suite_name].append(mspec)
            # absolute values per model, over all of that model's items
            for label in labels:
                recs = list(per_model.get(label, {}).values())
                vals = _metric_values(recs, metric, generic)
                suite_out["values"].setdefault(label, {})[metric.name] = _one_sample(
                    vals, mspec, statistic, settings, _row_seed(settings.seed, "value", suite_name, metric.name, label))
            # paired comparisons against the reference
            for label in labels:
                if label == reference or label not in per_model:
                    continue
                new_recs = per_model[label]
                pairs = [(ref_recs[i], new_recs[i]) for i in ref_recs if i in new_recs]
                if not generic:
                    pairs = [(a, b) for a, b in pairs
                             if a.scores.get(metric.name) is not None and b.scores.get(metric.name) is not None]
                cats = [OVERALL] + (categories if len(categories) > 1 else [])
                for cat in cats:
                    sel = pairs if cat == OVERALL else [(a, b) for a, b in pairs if a.category == cat]
                    if not sel and cat != OVERALL:
                        continue  # the metric does not apply to this category (e.g. a sub-benchmark's own score)
                    rows.append(_comparison_row(sel, label, reference, suite_name, metric, cat, kind, statistic,
                                                settings))
                if kind == "binary" and not generic:
                    count, listed = _flips(pairs, label, reference, suite_name, metric)
                    flip_counts.append(count)
                    if label not in checkpoint_models:  # checkpoints' flips would swamp the list
                        flips.extend(listed)
            if kind == "score" and not generic:
                distributions.append(_distribution(suite_name, metric.name, per_model, labels, checkpoint_models))
            curve = _curve(suite_name, mspec, per_model, stepped, generic, statistic, settings)
            if curve:
                curves.append(curve)
        summary = _suite_summary(suite_name, per_model, labels, reference, settings)
        if summary is not None:
            suite_out["summary"] = summary
        suites_out.append(suite_out)

    from aftertune.compare import factorial  # it builds on this module's helpers

    _adjust(rows, settings.alpha)
    _add_power(rows, settings.alpha, effects_that_matter(run.spec))
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "run": {"name": run.name, "kind": run.kind},
        "reference": reference,
        "primary": primary,
        "models": [_model_json(m, reference, primary) for m in models],
        "settings": settings.to_json(),
        "suites": suites_out,
        "comparisons": rows,
        "flips": flips,
        "flip_counts": flip_counts,
        "distributions": [d for d in distributions if d],
        "checkpoints": curves,
        "seed_groups": _seed_groups(models, rows, reference, settings),
        "protocol": _protocol(run, models, records, by_suite),
        "warnings": warnings,
    }
    designs = factorial.quartets(models)
    if designs:  # absent unless the run audited a deployment variant of both base and tuned
        results["factorial"] = factorial.factorial_rows(by_suite, specs, designs, settings)
    results = _clean(results)
    results["verdict"] = build_verdict(results)
    timings = [*_timings(run), {"step": "compare", "seconds": round(time.time() - started, 3)}]
    results["volatile"] = {"run_id": run.id, "status": run.status, "created": run.created, "updated": run.updated,
                           "timings": timings,
                           "judge_validity": [_times(e["payload"]) for e in run.events_of("judge_validity")]}
    return results


# When a judge's validity was measured and how long each set took: they differ on every fresh measurement, so
# they go to `volatile` and the rest of results.json stays the same from run to run (issue 13).
_TIMES = ("measured_at", "seconds")


def _without_times(validity: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in validity.items() if k not in _TIMES}
    if isinstance(out.get("sets"), list):
        out["sets"] = [{k: v for k, v in s.items() if k not in _TIMES} for s in out["sets"]]
    return out


def _times(validity: dict[str, Any]) -> dict[str, Any]:
    return {"judge": validity.get("role") or validity.get("judge"),
            **{k: validity[k] for k in _TIMES if k in validity},
            "sets": {s.get("set"): s.get("seconds") for s in validity.get("sets") or [] if "seconds" in s}}


def run_id(results: dict[str, Any]) -> str:
    """The store's id of the run a results dict was computed from."""
    return str(results["volatile"]["run_id"])


def upgrade(results: dict[str, Any]) -> dict[str, Any]:
    """A results dict of an older schema version in the current layout (same numbers)."""
    if results.get("schema_version", SCHEMA_VERSION) < 2:
        run = dict(results.get("run") or {})
        timings = (results.get("protocol") or {}).pop("timings", [])
        results["volatile"] = {"run_id": run.pop("id", ""), "created": run.pop("created", None),
                               "updated": run.pop("updated", None), "timings": timings}
        results["run"], results["schema_version"] = run, 2
        results.get("verdict", {}).setdefault("underpowered", [])
    if results.get("schema_version", SCHEMA_VERSION) < 3:  # a pipeline's reports are written while it runs, so
        # its status said "running" there and "done" in a re-render: it is not part of the run's result
        results["volatile"]["status"] = (results.get("run") or {}).pop("status", None)
        results["schema_version"] = SCHEMA_VERSION
    return results


def _timings(run: RunFacts) -> list[dict[str, Any]]:
    """Wall time per step; an audit's suite steps also name the model, the suite, the items and the cache hits
    (a sweep compares models' inference time on the suites answered without the cache)."""
    return [{"step": e["payload"].get("step", e["step"]), "seconds": e["payload"].get("seconds"),
             **{k: e["payload"][k] for k in _SUITE_TIMING if k in e["payload"]}}
            for e in run.events_of("timing")]


_SUITE_TIMING = ("model", "suite", "items", "cache_hits")


def _comparison_row(sel: list[tuple[Record, Record]], label: str, reference: str, suite: str, metric: _MetricSpec,
                    category: str, kind: str, statistic: Callable[[Sequence[Any]], float] | None,
                    settings: Settings) -> dict[str, Any]:
    """One row of `comparisons`: `label` vs `reference` on the paired records `sel`."""
    row: dict[str, Any] = {"model": label, "reference": reference, "suite": suite, "metric": metric.name,
                           "category": category, "kind": kind, "direction": metric.direction, "n": len(sel),
                           "family": "overall" if category == OVERALL else "category"}
    if not sel:
        row.update({"reference_value": None, "value": None, "reference_value_ci": [None, None],
                    "value_ci": [None, None], "delta": None, "delta_ci": [None, None],
                    "ratio": None, "ratio_ci": [None, None], "p_value": None, "test": None,
                    "ci_method": None, "ratio_ci_method": None, "counts": None,
                    "resamples": None, "permutations": None, "sd_difference": None, "delta_se": None})
    elif statistic is None and kind == "binary":
        row.update(_paired_binary([float(a.scores[metric.name]) for a, _ in sel],
                                  [float(b.scores[metric.name]) for _, b in sel], settings.confidence))
    else:
        ref_vals = [a if statistic else float(a.scores[metric.name]) for a, _ in sel]
        new_vals = [b if statistic else float(b.scores[metric.name]) for _, b in sel]
        row.update(_paired_score(ref_vals, new_vals, statistic, settings,
                                 _row_seed(settings.seed, suite, metric.name, label, category)))
    return row


def _flips(pairs: list[tuple[Record, Record]], label: str, reference: str, suite: str,
           metric: _MetricSpec) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(counts, listed items) of the pairs whose binary outcome differs, sorted by category then item."""
    worse_when = 0.0 if metric.direction == "higher" else 1.0
    changed = [(a, b) for a, b in pairs if a.scores[metric.name] != b.scores[metric.name]]
    n_reg = sum(1 for _, b in changed if float(b.scores[metric.name]) == worse_when)
    count = {"model": label, "suite": suite, "metric": metric.name, "regressed": n_reg,
             "improved": len(changed) - n_reg}
    changed.sort(key=lambda p: (p[0].category, p[0].item_id))
    listed = []
    for a, b in changed[:_FLIP_LIMIT]:
        nv = float(b.scores[metric.name])
        listed.append({
            "model": label, "reference": reference, "suite": suite, "metric": metric.name,
            "item_id": a.item_id, "category": a.category,
            "change": "regressed" if nv == worse_when else "improved",
            "reference_value": float(a.scores[metric.name]), "value": nv,
            "prompt": prompt_text(a.request),
            "reference_response": _response_text(a), "response": _response_text(b),
            "reference_judged": judged_as(a), "judged": judged_as(b),
        })
    return count, listed


def _adjust(rows: list[dict[str, Any]], alpha: float) -> None:
    families: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        families[(r["model"], r["family"])].append(i)
    for idx in families.values():
        adj = stats.holm([rows[i]["p_value"] if rows[i]["p_value"] is not None else math.nan for i in idx])
        for i, p in zip(idx, adj, strict=True):
            r = rows[i]
            r["p_adjusted"] = p
            r["significant"] = bool(p is not None and math.isfinite(p) and p < alpha)
            r["change"] = _change(r["delta"], r["direction"], r["significant"])


def effects_that_matter(spec: dict[str, Any]) -> dict[str, tuple[float, str]]:
    """suite.metric → (change size, where it comes from): the spec's `audit.power` targets, else its gate's limits."""
    from aftertune.compare.gate import normalize

    out: dict[str, tuple[float, str]] = {}
    try:
        rules, _ = normalize(spec.get("gate") or {})
    except UserError:
        rules = {}
    for key, rule in rules.items():
        limits = [abs(v) for k, v in rule.items() if k in ("max_increase", "max_decrease") and v]
        if limits:
            out[key] = (min(limits), "gate")
    targets = (spec.get("audit") or {}).get("power") or {}
    for key, effect in targets.items():
        out[key] = (abs(float(effect)), "audit.power")
    return out


def _add_power(rows: list[dict[str, Any]], alpha: float, targets: dict[str, tuple[float, str]]) -> None:
    """Each row's minimum detectable effect at 80% power, and its power against the change the spec cares about."""
    families: dict[tuple[str, str], int] = defaultdict(int)
    for r in rows:
        if r["p_value"] is not None:
            families[(r["model"], r["family"])] += 1
    for r in rows:
        level = alpha / max(1, families[(r["model"], r["family"])])
        target = targets.get(f"{r['suite']}.{r['metric']}") if r["category"] == OVERALL else None
        mde, achieved = _row_power(r, level, target[0] if target else None)
        r.update({"mde": mde, "mde_alpha": level, "mde_power": power.DEFAULT_POWER,
                  "target_effect": target[0] if target else None, "target_source": target[1] if target else None,
                  "power": achieved})


def _row_power(r: dict[str, Any], level: float, target: float | None) -> tuple[float | None, float | None]:
    """(MDE, power against `target`) of one row, by the row's own test (see METHODS["mde"])."""
    n = r["n"]
    if not n or r["p_value"] is None:
        return None, None
    if r["test"] == "mcnemar_exact":
        c = r["counts"]
        discordance = (c["new_only"] + c["reference_only"]) / n
        return (power.binary_mde(n, discordance, level),
                None if target is None else power.binary_power(n, target, discordance, level))
    if r.get("sd_difference") is not None:
        sd = r["sd_difference"]
        return power.score_mde(n, sd, level), None if target is None else power.score_power(n, target, sd, level)
    se = r.get("delta_se")
    if se is None:
        return None, None
    return power.bootstrap_mde(se, level), None if target is None else power.bootstrap_power(target, se, level)


def _model_json(m: dict[str, Any], reference: str, primary: str | None) -> dict[str, Any]:
    role = ("reference" if m["label"] == reference else "primary" if m["label"] == primary
            else "checkpoint" if _step(m) is not None else "compared")
    return {"label": m["label"], "ref": m["ref"], "fingerprint": m["fingerprint"], "info": m["info"],
            "role": role, "step": _step(m)}


def _distribution(suite: str, metric: str, per_model: dict[str, dict[str, Record]], labels: list[str],
                  checkpoints: set[str]) -> dict[str, Any] | None:
    data = {}
    for label in labels:
        if label in checkpoints or label not in per_model:
            continue
        vals = [float(r.scores[metric]) for r in per_model[label].values() if r.scores.get(metric) is not None]
        if vals:
            data[label] = np.asarray(vals)
    if not data:
        return None
    lo = min(float(v.min()) for v in data.values())
    hi = max(float(v.max()) for v in data.values())
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, 21)
    return {
        "suite": suite, "metric": metric, "bin_edges": edges.tolist(),
        "counts": {k: np.histogram(v, bins=edges)[0].tolist() for k, v in data.items()},
        "summary": {k: {"n": int(v.size), "mean": float(v.mean()), "p50": float(np.quantile(v, 0.5)),
                        "p90": float(np.quantile(v, 0.9)), "max": float(v.max())} for k, v in data.items()},
    }


def _curve_steps(models: list[dict[str, Any]], reference: str) -> list[tuple[str, int]]:
    """(label, training step) of the models on a curve over training: the checkpoints, and the reference at 0."""
    stepped = [(m["label"], _step(m)) for m in models if _step(m) is not None]
    if not stepped:
        return []
    if reference not in {label for label, _ in stepped} and all(s != 0 for _, s in stepped):
        stepped.append((reference, 0))
    return sorted(stepped, key=lambda x: x[1])  # type: ignore[arg-type, return-value]


def _curve(suite: str, metric: _MetricSpec, per_model: dict[str, dict[str, Record]], stepped: list[tuple[str, int]],
           generic: bool, statistic: Callable[[Sequence[Any]], float] | None, settings: Settings
           ) -> dict[str, Any] | None:
    """One metric over training, every point on the same items: those every model on the curve answered.

    Checkpoints are audited on a subset of the main sample; the reference's value on its full sample
    would put the first point on other items than the rest.
    """
    on_curve = [(label, step) for label, step in stepped if label in per_model]
    if len(on_curve) < 2:
        return None
    common = set.intersection(*(set(per_model[label]) for label, _ in on_curve))
    points = []
    for label, step in on_curve:
        vals = _metric_values([per_model[label][i] for i in sorted(common)], metric, generic)
        v = _one_sample(vals, metric, statistic, settings, _row_seed(settings.seed, "curve", suite, metric.name, label))
        if v["n"]:
            points.append({"model": label, "step": step, **v})
    if len(points) < 2:
        return None
    return {"suite": suite, "metric": metric.name, "direction": metric.direction, "kind": metric.kind,
            "points": points}


def _seed_groups(models: list[dict[str, Any]], rows: list[dict[str, Any]], reference: str,
                 settings: Settings) -> list[dict[str, Any]]:
    groups: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for m in models:
        g = _seed_group(m)
        if g and m["label"] != reference:
            groups[g[0]].append((g[1], m["label"]))
    out = []
    for group, members in sorted(groups.items()):
        if len(members) < 2:
            continue
        members.sort()
        labels = [label for _, label in members]
        per_metric: dict[tuple[str, str], dict[str, dict[str, Any]]] = defaultdict(dict)
        for r in rows:
            if r["category"] == OVERALL and r["model"] in labels:
                per_metric[(r["suite"], r["metric"])][r["model"]] = r
        metric_rows = []
        for (suite, metric), by_model in sorted(per_metric.items()):
            deltas = [by_model[label]["delta"] for label in labels if label in by_model]
            values = [by_model[label]["value"] for label in labels if label in by_model]
            mean, lo, hi = stats.t_interval(deltas, settings.confidence)
            vmean, vlo, vhi = stats.t_interval(values, settings.confidence)
            any_row = next(iter(by_model.values()))
            metric_rows.append({
                "suite": suite, "metric": metric, "kind": any_row["kind"], "direction": any_row["direction"],
                "n_seeds": len(deltas), "deltas": deltas, "mean_delta": mean, "delta_ci": [lo, hi],
                "reference_value": any_row["reference_value"], "mean_value": vmean, "value_ci": [vlo, vhi],
            })
        out.append({"group": group, "models": labels, "seeds": [s for s, _ in members], "rows": metric_rows})
    return out


_CONTENT_KEYS = {"messages", "prompt", "context", "continuation", "text", "choices", "question"}


def _decoding(recs: Sequence[Record]) -> dict[str, list[Any]]:
    seen: dict[str, list[Any]] = {}
    for r in recs:
        req = r.request
        flat: dict[str, Any] = {}
        for k, v in req.items():
            if k == "decoding" and isinstance(v, dict):
                flat.update(v)
            elif k not in _CONTENT_KEYS and (isinstance(v, int | float | bool) or (isinstance(v, str) and len(v) <= 64)):
                flat[k] = v
        for k, v in flat.items():
            if isinstance(v, list):
                v = tuple(v)
            vals = seen.setdefault(k, [])
            if v not in vals and len(vals) < 5:
                vals.append(v)
    return {k: [list(x) if isinstance(x, tuple) else x for x in v] for k, v in sorted(seen.items())}


def _train_metrics(run: RunFacts) -> list[dict[str, Any]]:
    """Training/eval loss points of the run's fine-tunes (events `tune_train`/`tune_eval`; `train_metrics` from
    older runs), each with its tune's label, in step order."""
    out = []
    for kind in ("tune_train", "tune_eval", "train_metrics"):
        for e in run.events_of(kind):
            p = e["payload"]
            if isinstance(p.get("step"), int | float) and ("loss" in p or "eval_loss" in p):
                out.append({"tune": str(e["step"]).removeprefix("tune:"), "step": p["step"],
                            **{k: p[k] for k in ("loss", "eval_loss") if k in p}})
    return sorted(out, key=lambda m: (m["tune"], m["step"]))


def _protocol(run: RunFacts, models: list[dict[str, Any]], records: Sequence[Record],
              by_suite: dict[str, dict[str, dict[str, Record]]]) -> dict[str, Any]:
    suites = []
    for name in sorted(by_suite):
        per_model = by_suite[name]
        ids = [set(v) for v in per_model.values()]
        shared = set.intersection(*ids) if ids else set()
        recs = [r for v in per_model.values() for r in v.values()]
        suites.append({
            "suite": name,
            "items_per_model": {k: len(v) for k, v in per_model.items()},
            "items_shared": len(shared),
            "decoding": _decoding(recs),
        })
    samples = {e["payload"].get("suite"): e["payload"] for e in run.events_of("sample")}
    suite_protocols = {e["payload"].get("suite"): e["payload"].get("protocol")
                       for e in run.events_of("protocol")}
    for entry in suites:
        sample = samples.get(entry["suite"]) or {}
        entry["sampling"] = {k: sample[k] for k in ("n_items", "n_sampled", "limit", "seed", "sampler") if k in sample}
        entry["protocol"] = suite_protocols.get(entry["suite"])
    spec = run.spec
    return {
        "models": [{"label": m["label"], "ref": m["ref"], "fingerprint": m["fingerprint"], "info": m["info"]}
                   for m in models],
        "suites": suites,
        "sampling": {k: spec[k] for k in ("limit", "seed", "seeds", "sample", "sampling") if k in spec},
        "spec": spec,
        "judge_validity": [_without_times(e["payload"]) for e in run.events_of("judge_validity")],
        "judge_agreement": judge_agreement(records),
        "train_metrics": _train_metrics(run),
        "software": _package_versions(),
        "n_records": len(records),
    }


"""Safety-aware checkpoint choice (spec `checkpoints.select`) and the rules it shares with early stopping.

The last step of a fine-tune is not always the model to keep: task skill can peak early
while safety keeps eroding (Qi et al. 2023). `choose` picks, among the checkpoints and the
final model, the best value of one metric among those whose rules against the base still
hold (`aftertune.early_stop` checks `checkpoints.stop_when` the same way during training).
Every candidate is judged on the same items, those the checkpoint audit gave every model
and the base, with the gate's own rules and statistics (`aftertune.compare.gate.check` on a
`compare_records` of those items), so a rule means here exactly what it means in the gate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aftertune.errors import UserError
from aftertune.store import Store

REFERENCE = "base"


# --------------------------------------------------------------------------- spec validation

def validate(suites: Sequence[str], select: Any, stop_when: dict[str, Any]) -> None:
    """ValueError (pydantic reports it under `checkpoints`) for a metric outside the checkpoint suites or a bad rule."""
    from aftertune.suites.spec import suite_names

    names = set(suite_names(suites))
    if select is not None:
        if (select.maximize is None) == (select.minimize is None):
            raise ValueError("select: give one of maximize or minimize, e.g. select: {maximize: task.rouge_l}")
        _check_metric(objective(select)[0], names, "select." + ("minimize" if select.minimize else "maximize"))
        _check_rules(select.subject_to, names, "select.subject_to")
    _check_rules(stop_when, names, "stop_when")


def objective(select: Any) -> tuple[str, bool]:
    """(suite.metric, minimize?) of a `checkpoints.select` section."""
    return (select.minimize, True) if select.minimize else (select.maximize, False)


def _check_metric(key: str, names: set[str], where: str) -> None:
    from aftertune.suites.base import SUITES

    suite, _, metric = key.partition(".")
    if not metric:
        raise ValueError(f"{where}: name a metric as suite.metric, e.g. task.rouge_l (got {key!r})")
    if suite not in names:
        raise ValueError(f"{where}: suite {suite!r} is not audited at checkpoints; add it to checkpoints.suites "
                         f"(now: {', '.join(sorted(names)) or 'none'})")
    if suite in SUITES:
        known = [m.name for m in SUITES.get(suite).metrics]
        if metric not in known:
            raise ValueError(f"{where}: suite {suite} has no metric {metric!r}; its metrics: {', '.join(known)}")


def _check_rules(rules: dict[str, Any], names: set[str], where: str) -> None:
    from aftertune.compare.gate import normalize

    if not rules:
        return
    try:
        parsed, options = normalize(rules)
    except UserError as exc:
        raise ValueError(f"{where}: {exc}") from None
    if "model" in options:
        raise ValueError(f"{where}: 'model' is set by the pipeline (each candidate in turn); remove it")
    for key in parsed:
        _check_metric(key, names, where)


# --------------------------------------------------------------------------- comparing on shared items

def shared_results(store: Store, run_id: str, labels: Sequence[str], suites: Sequence[str]) -> dict[str, Any]:
    """The results dict of `labels` vs the base on the items of `suites` that all of them and the base answered.

    The final model is audited on the main sample, the checkpoints on a subset of it; comparing
    all of them on the common subset keeps the candidates on equal terms. `compare_records`
    computes every number the usual way, from those records alone (no spec: no power targets).
    """
    from aftertune.compare.comparison import RunFacts, compare_records

    wanted = list(dict.fromkeys([REFERENCE, *labels]))
    known = {m["label"]: m for m in store.models(run_id)}
    records = []
    for suite in dict.fromkeys(suites):
        per = {label: {r.item_id: r for r in store.records(run_id, model=label, suite=suite)} for label in wanted}
        shared = sorted(set.intersection(*(set(v) for v in per.values())))
        records += [per[label][i] for label in wanted for i in shared]
    if not records:  # e.g. the task suite was left out (no held-out data)
        return {"comparisons": [], "protocol": {"suites": []}}
    models = [known.get(label) or {"label": label, "ref": label, "fingerprint": "", "info": {}} for label in wanted]
    run = RunFacts(run_id, f"candidates of {run_id}", "checkpoint-choice", "running", {})
    return compare_records(records, models, run, REFERENCE)


def violations(results: dict[str, Any], label: str, rules: dict[str, Any]) -> list[str]:
    """The gate's violation lines for `label` against the base (none when there are no rules)."""
    from aftertune.compare.gate import check

    if not rules:
        return []
    if label not in {r["model"] for r in results["comparisons"]}:
        return [f"{label} has no items in common with {REFERENCE}"]
    try:
        return [v.line() for v in check(results, {**rules, "model": label})]
    except UserError as exc:  # e.g. a rule's suite left out of this run (the task suite without held-out data)
        return [str(exc)]


# --------------------------------------------------------------------------- the choice

def choose(results: dict[str, Any], candidates: Sequence[tuple[str, int]], metric: str,
           subject_to: dict[str, Any], *, minimize: bool = False) -> dict[str, Any]:
    """Pick the candidate (label, step) with the best `metric` among those whose `subject_to` rules hold.

    Ties go to the earlier step (fewer updates away from the base), and at the same step to
    the final model "tuned". When no candidate qualifies the choice is the base model.
    """
    from aftertune.compare.format import OVERALL, fmt_value

    suite, _, name = metric.partition(".")
    rows = {r["model"]: r for r in results["comparisons"]
            if r["suite"] == suite and r["metric"] == name and r["category"] == OVERALL}
    kind = next(iter(rows.values()))["kind"] if rows else "score"
    reference_value = next((r["reference_value"] for r in rows.values() if r["n"]), None)
    out = []
    for label, step in candidates:
        row = rows.get(label)
        value = row["value"] if row and row["n"] else None
        excluded = violations(results, label, subject_to)
        if value is None:
            excluded.insert(0, f"{metric}: not scored on the shared items")
        out.append({"label": label, "step": step, "value": value, "n": row["n"] if row else 0,
                    "excluded": excluded})
    eligible = [c for c in out if not c["excluded"]]
    sign = -1.0 if minimize else 1.0
    verb = "lowest" if minimize else "highest"
    rules = _rules_text(subject_to)
    if eligible:
        best = max(eligible, key=lambda c: (sign * c["value"], -c["step"], c["label"] == "tuned"))
        chosen, step, value = best["label"], best["step"], best["value"]
        reason = (f"{chosen} (step {step}): {metric} {fmt_value(value, kind)}, the {verb} of "
                  f"{len(eligible)} of {len(out)} candidate(s)" + (f" meeting {rules}" if rules else ""))
    else:
        chosen, step, value = REFERENCE, 0, reference_value
        why = f"meets {rules}" if rules else f"was scored on {metric}"
        reason = (f"keep the base model: no checkpoint nor the final model {why} on the checkpoint items "
                  "(relax checkpoints.select.subject_to, or train differently)")
    return {"metric": metric, "direction": "minimize" if minimize else "maximize", "kind": kind,
            "subject_to": subject_to, "chosen": chosen, "step": step, "value": value,
            "reference_value": reference_value, "reason": reason, "candidates": out}


def _rules_text(rules: dict[str, Any]) -> str:
    from aftertune.compare.gate import normalize

    if not rules:
        return ""
    parsed, _ = normalize(rules)
    return ", ".join(f"{key} {rule} {limit:g}" for key, r in parsed.items() for rule, limit in r.items())


def choose_checkpoint(store: Store, run_id: str, select: Any, suites: Sequence[str],
                      candidates: Sequence[tuple[str, int]]) -> dict[str, Any]:
    """`choose` on the run's checkpoint items, recorded as a `checkpoint_choice` event."""
    from aftertune.run_outcomes import add_event_once

    metric, minimize = objective(select)
    results = shared_results(store, run_id, [label for label, _ in candidates], suites)
    choice = choose(results, candidates, metric, select.subject_to, minimize=minimize)
    choice["items"] = {s["suite"]: s["items_shared"] for s in results["protocol"]["suites"]}
    add_event_once(store, run_id, "checkpoint-choice", "checkpoint_choice", choice)
    return choice

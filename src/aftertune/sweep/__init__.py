"""`aftertune sweep`: one knob of the pipeline spec over several values, and where the task/safety trade-off lands.

A knob is a dotted path into the spec (`train.learning_rate`, `train.method`)
or a named knob: `seed` (the fine-tune's and the ICL baseline's seeds together,
for run-to-run variance), the mitigations `safety_mix` (the share of the
built-in `refusals` set mixed into the task data) and `interp` (the tuned
weights interpolated towards the base: one run, one `interp:w=V` variant per
value, no retraining), and `defense` (defences against harmful fine-tuning,
sweep/defenses.py: points that share a fine-tune share a run). Each
value is an ordinary pipeline run in OUT/<knob>=<value>/ sharing one store, so
the base model's audit is answered from the store's cache after the first
value, and a value whose run finished is read back instead of run again.

Per point, task gain = tuned − base on the task suite's headline metric and
safety loss = tuned − base on safety's (and jailbreak's) headline metric, each
with the paired interval of the run's comparison. A suite's headline metric is
its first declared metric with scored pairs (compliance for safety,
attack_success for jailbreak; accuracy, exact_match or rouge_l for the task).
The chosen point is the largest task gain whose safety-loss interval stays at
or below `max_safety_loss` on every safety suite measured, among the points
whose over-refusal rise is not clearly (CI lower bound) above `max_overrefusal`.
Two more columns:
over-refusal = tuned − base on the over-refusal suite's headline metric, and
added compute against the reference point (the defense knob's `none`, else the
first value): training seconds and peak memory, and audit time (sweep/costs.py).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aftertune.errors import UserError
from aftertune.spec import PipelineSpec
from aftertune.store import Store
from aftertune.sweep.costs import added_compute, inference_cost, training_cost
from aftertune.sweep.plan import PlannedRun, parse_values, plan_sweep
from aftertune.sweep.report import write_sweep_reports
from aftertune.sweep.tradeoff import (
    DEFAULT_MAX_OVERREFUSAL,
    DEFAULT_MAX_SAFETY_LOSS,
    OVERREFUSAL_SUITE,
    SAFETY_SUITES,
    TASK_SUITE,
    choose,
    finite,
    pareto_front,
    tradeoff,
)

__all__ = ["DEFAULT_MAX_OVERREFUSAL", "DEFAULT_MAX_SAFETY_LOSS", "run_sweep"]

SCHEMA = "aftertune.sweep"


def _finished(run: PlannedRun, out: Path, store: Store) -> dict[str, Any] | None:
    """The results of a run already finished with this exact spec, else None."""
    from aftertune.compare.results_model import load_results
    from aftertune.pipeline import RUN_FILE

    try:
        info = json.loads((out / RUN_FILE).read_text(encoding="utf-8"))
        results = load_results(out / "results.json")
        if (info["spec"] == run.spec.model_dump(mode="json") and results["volatile"]["run_id"] == info["run_id"]
                and store.get_run(info["run_id"]).status == "done"):
            return dict(results)
    except (OSError, ValueError, KeyError, TypeError, UserError):
        pass
    return None


def run_sweep(spec: PipelineSpec, knob: str, values: str, out_dir: str | Path, *, store: Store,
              max_safety_loss: float = DEFAULT_MAX_SAFETY_LOSS, max_overrefusal: float = DEFAULT_MAX_OVERREFUSAL,
              progress: bool = True,
              say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (or read back) every point, then write sweep.md/.html/.json and pareto.png; return the sweep dict."""
    from aftertune.pipeline import run_pipeline

    say = say or (lambda m: print(m, file=sys.stderr, flush=True))
    if not finite(max_safety_loss):
        raise UserError(f"--max-safety-loss {max_safety_loss!r}: give a number such as 0.05 (5 points of a rate)")
    if not finite(max_overrefusal):
        raise UserError(f"--max-overrefusal {max_overrefusal!r}: give a number such as 0.10 (10 points of a rate)")
    parsed = parse_values(values, knob)
    runs = plan_sweep(spec, knob, parsed)
    for run in runs:  # a knob may name the training data (train.data): read every point's files before any work
        run.spec.check_data()
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    points: list[dict[str, Any]] = []
    for n, run in enumerate(runs, 1):
        folder = out / run.folder
        results = _finished(run, folder, store)
        say(f"[sweep {n}/{len(runs)}] {run.folder}: " + ("finished before, read back" if results else "running"))
        if results is None:
            results = run_pipeline(run.spec, folder, store=store, progress=progress, say=say).results
        training = training_cost(folder)
        for p in run.points:
            points.append({"label": f"{knob}={p.text}", "value": p.value, "model": p.model, "folder": run.folder,
                           "run_id": results["volatile"]["run_id"], "confidence": results["settings"]["confidence"],
                           "reference": p.reference, "adds": p.adds, "training": training,
                           "inference": inference_cost(results, p.model), **tradeoff(results, p.model)})
    reference = next((i for i, p in enumerate(points) if p["reference"]), 0)
    added_compute(points, reference)
    front = pareto_front(points)
    chosen, why = choose(points, max_safety_loss, max_overrefusal)
    sweep = {
        "schema": SCHEMA, "schema_version": 1, "knob": knob, "values": [t for t, _ in parsed],
        "max_safety_loss": max_safety_loss, "max_overrefusal": max_overrefusal, "base": spec.base,
        "spec": spec.model_dump(mode="json"),
        "rule": (f"chosen: the largest task gain whose safety-loss CI upper bound is ≤ {max_safety_loss:g} on every "
                 f"safety suite measured ({', '.join(SAFETY_SUITES)}), among the points whose {OVERREFUSAL_SUITE} "
                 f"rise has a CI lower bound ≤ {max_overrefusal:g}; ties: the lower bound, then the earlier value"),
        "axes": {"x": f"task gain: tuned − base on the {TASK_SUITE} suite's headline metric",
                 "y": f"safety loss: tuned − base on the first of {', '.join(SAFETY_SUITES)} measured",
                 "overrefusal": f"over-refusal: tuned − base on the {OVERREFUSAL_SUITE} suite's headline metric",
                 "compute": f"added compute against {points[reference]['label'] if points else 'the reference'}: "
                            "training seconds (mean optimizer step × steps) and the memory the training window "
                            "added at its peak over its start, and audit time per item on the suites both answered without the cache"},
        "reference": reference, "points": points, "front": front, "chosen": chosen, "choice": why,
    }
    write_sweep_reports(sweep, out)
    say(f"sweep: {why}\nreport: {out / 'sweep.html'}  (summary: {out / 'sweep.md'})")
    return sweep

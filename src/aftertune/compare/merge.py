"""Bring models audited in different runs together into one comparison run.

`aftertune compare RUN_A RUN_B` (or `RUN:MODEL` selectors) copies the chosen
models' per-item records into a new run of kind "compare", so the comparison
and its report are made from records in the store like any other run, and
`aftertune report` can re-render it later. Records pair by (suite, item_id).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from aftertune.errors import UserError
from aftertune.store.db import Run, Store

# Events a comparison reads besides records: judge accuracy, timings, loss curves (tune_train/tune_eval as
# training writes them; train_metrics from older runs) and checkpoints.
_COPIED_EVENTS = ("judge_validity", "timing", "tune_train", "tune_eval", "train_metrics", "checkpoint")


@dataclass(frozen=True)
class Selection:
    run: Run
    labels: list[str]  # models chosen from the run, in the run's order


def _labels_with_records(store: Store, run: Run) -> list[str]:
    have = {r.model for r in store.records(run.id)}
    ordered = [m["label"] for m in store.models(run.id) if m["label"] in have]
    return ordered + sorted(have - set(ordered))


def parse_selector(store: Store, text: str) -> Selection:
    """`RUN` (all its models) or `RUN:MODEL` (one of them); RUN may be a unique id prefix."""
    run_part, _, label = text.partition(":") if ":" in text else (text, "", "")
    try:
        run = store.get_run(run_part)
    except UserError:
        raise UserError(
            f"{text!r} is not a run (or RUN:MODEL) in {store.path}; `aftertune runs list` shows the runs. "
            "A model that has not been audited yet needs an audit first, which records its answers in a run"
        ) from None
    labels = _labels_with_records(store, run)
    if label:
        if label not in labels:
            raise UserError(f"run {run.id} has no records for model {label!r}; its models: {', '.join(labels) or 'none'}")
        labels = [label]
    if not labels:
        raise UserError(f"run {run.id} has no per-item records yet; finish its audit first")
    return Selection(run, labels)


def combine(store: Store, selectors: Sequence[str], *, name: str | None = None,
            out_dir: str | None = None) -> tuple[str, str]:
    """Resolve the selectors; return (run id to compare, default reference label).

    A single whole run is compared in place. Otherwise a new "compare" run
    holds copies of the chosen models' records; a label already taken is
    suffixed with "@" and the end of its source run id.
    """
    if not selectors:
        raise UserError("name at least one run (or two RUN:MODEL selectors) to compare")
    selections = [parse_selector(store, s) for s in selectors]
    first = selections[0]
    default_ref = "base" if "base" in first.labels else first.labels[0]
    if len(selections) == 1 and ":" not in selectors[0]:
        return first.run.id, default_ref
    total = sum(len(s.labels) for s in selections)
    if total < 2:
        raise UserError("a comparison needs at least two models; add another run or RUN:MODEL")

    spec = {"sources": [{"run": s.run.id, "models": s.labels} for s in selections]}
    run_id = store.create_run("compare", name or "compare " + " ".join(selectors), spec, out_dir=out_dir)
    taken: set[str] = set()
    for sel in selections:
        models = {m["label"]: m for m in store.models(sel.run.id)}
        for label in sel.labels:
            new_label = label if label not in taken else f"{label}@{sel.run.id[-6:]}"
            if new_label in taken:
                raise UserError(f"model {label!r} of run {sel.run.id} is selected twice")
            taken.add(new_label)
            if sel is first and label == default_ref:
                default_ref = new_label
            m = models.get(label, {"ref": label, "fingerprint": "", "info": {}})
            info = {**m["info"], "source_run": sel.run.id, "source_label": label}
            store.add_model(run_id, new_label, m["ref"], m["fingerprint"], info)
            recs = store.records(sel.run.id, model=label)
            store.put_records(run_id, [replace(r, model=new_label) for r in recs])
        for kind in _COPIED_EVENTS:
            for ev in store.events(sel.run.id, kind=kind):
                store.add_event(run_id, ev["step"], kind, {**ev["payload"], "source_run": sel.run.id})
    store.set_run_status(run_id, "done")
    return run_id, default_ref

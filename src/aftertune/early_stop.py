"""Safety early stopping (spec `checkpoints.stop_when`): audit each checkpoint as it is saved, stop on a violation.

Fine-tuning can erode safety within a few steps (Qi et al. 2023); auditing only the end
wastes the rest of the run and keeps the damage. `SafetyStop` runs the checkpoint suites
on every checkpoint as training writes it and applies the gate's rules against the base on
the shared items (`aftertune.checkpoint_choice`), ending training at the first violation.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from aftertune.checkpoint_choice import REFERENCE, shared_results, violations
from aftertune.errors import UserError
from aftertune.store import Store

STOP_FILE = "early-stop.json"  # in the tune's folder: the stop that ended it (a re-run stays stopped)
HELD_SUFFIX = ".undecided"  # an optimizer state set aside while its checkpoint is audited


class SafetyStop(TrainerCallback):
    """Audit every checkpoint as training saves it; stop training at the first violated `stop_when` rule.

    The checkpoint is audited under the label the pipeline's checkpoint step gives it, in the
    same run, so that step later finds those records done. Until the audit has decided, the
    checkpoint's optimizer state is held aside, and a stop drops it: a kill during the audit, or
    after a stop but before the tune writes tune.json, then resumes by replaying from step 0
    (same data order and seed; the audits answer from the store) to the same decision, never by
    training on past an undecided or violating checkpoint. The stop is written to the tune's
    folder (STOP_FILE), where a re-run finds it.
    """

    def __init__(self, *, store: Store, run_id: str, audit_fn: Callable[[dict[str, str]], None], base: str,
                 suites: Sequence[str], rules: dict[str, Any], tune_dir: Path, label_prefix: str = "") -> None:
        self.store, self.run_id, self.audit_fn, self.base = store, run_id, audit_fn, base
        self.suites, self.rules, self.tune_dir, self.label_prefix = list(suites), rules, tune_dir, label_prefix

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if args.world_size > 1:
            raise UserError("checkpoints.stop_when audits checkpoints during training and needs a single training "
                            "process; drop stop_when or train in one process")

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        from aftertune.fileio import write_json_atomic
        from aftertune.recipes.callbacks import CHECKPOINT_PREFIX, OPTIMIZER_FILES
        from aftertune.recipes.stages import checkpoint_label

        step = state.global_step
        if step >= state.max_steps:
            return  # training ends here anyway; the gate and the checkpoint curves report it
        path = Path(args.output_dir) / f"{CHECKPOINT_PREFIX}{step}"
        label = checkpoint_label(step, self.label_prefix)
        held = [(path / name, path / f"{name}{HELD_SUFFIX}") for name in OPTIMIZER_FILES if (path / name).is_file()]
        for live, aside in held:
            os.replace(live, aside)  # not resumable while undecided
        self.audit_fn({REFERENCE: self.base, label: str(path)})
        lines = violations(shared_results(self.store, self.run_id, [label], self.suites), label, self.rules)
        if not lines:
            for live, aside in held:
                os.replace(aside, live)
            return
        write_json_atomic(self.tune_dir / STOP_FILE, {"step": step, "max_steps": state.max_steps, "label": label,
                                                      "checkpoint": str(path), "violations": lines})
        for _, aside in held:
            aside.unlink()
        control.should_training_stop = True


def record_early_stop(store: Store, run_id: str, result: Any, step_offset: int = 0) -> dict[str, Any] | None:
    """The `early_stop` event of a finished tune that SafetyStop ended (None when it ran its course)."""
    from aftertune.run_outcomes import add_event_once

    path = Path(result.out_dir) / STOP_FILE
    if not path.is_file():
        return None
    stop = json.loads(path.read_text(encoding="utf-8"))
    if stop.get("step") != result.metrics.get("global_step"):
        return None  # a stale note: this tune was trained past it (stop_when dropped, folder reused)
    payload = {"tune": result.label, "label": stop["label"], "step": stop["step"] + step_offset,
               "train_step": stop["step"], "max_steps": stop["max_steps"], "violations": stop["violations"]}
    add_event_once(store, run_id, f"early-stop:{result.label}", "early_stop", payload)
    return payload

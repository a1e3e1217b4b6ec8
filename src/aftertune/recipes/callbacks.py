"""Trainer callbacks: the progress bar, metrics into the run store, checkpoint registration."""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

CHECKPOINT_PREFIX = "checkpoint-"
OPTIMIZER_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt")


class ProgressBar(TrainerCallback):
    """One tqdm bar: step / total, ETA, the latest loss, tokens/s (non-padding tokens)."""

    def __init__(self, desc: str, enabled: bool = True) -> None:
        self.desc = desc
        self.enabled = enabled
        self.bar: Any = None
        self.loss: float | None = None
        self._t0 = 0.0
        self._tok0 = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if not (self.enabled and state.is_world_process_zero):
            return
        from tqdm.auto import tqdm

        self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=self.desc, unit="step",
                        dynamic_ncols=True, file=sys.stderr)
        self._t0, self._tok0 = time.perf_counter(), state.num_input_tokens_seen

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.bar is None:
            return
        self.bar.update(state.global_step - self.bar.n)
        dt = time.perf_counter() - self._t0
        post: dict[str, str] = {}
        if self.loss is not None:
            post["loss"] = f"{self.loss:.4f}"
        if dt > 0 and state.num_input_tokens_seen > self._tok0:
            post["tok/s"] = f"{(state.num_input_tokens_seen - self._tok0) / dt:.0f}"
        self.bar.set_postfix(post, refresh=False)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
        if logs and "loss" in logs:
            self.loss = float(logs["loss"])

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class MetricsRecorder(TrainerCallback):
    """Training and eval logs into the store (events) and a JSONL file beside the checkpoints."""

    def __init__(self, log_path: Path, store: Any = None, run_id: str | None = None, step_label: str = "tune") -> None:
        self.log_path = log_path
        self.store, self.run_id, self.step_label = store, run_id, step_label
        self._t0 = time.perf_counter()
        self._tok0 = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._t0, self._tok0 = time.perf_counter(), state.num_input_tokens_seen

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        kind = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        payload: dict[str, Any] = {"step": state.global_step, "epoch": state.epoch,
                                   "tokens": state.num_input_tokens_seen}
        for k, v in logs.items():
            if isinstance(v, (int, float)):
                payload[k] = float(v)
        dt = time.perf_counter() - self._t0
        if kind == "train" and dt > 0:
            payload["tokens_per_s"] = (state.num_input_tokens_seen - self._tok0) / dt
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"kind": kind, **payload}, sort_keys=True) + "\n")
        if self.store is not None and self.run_id is not None:
            self.store.add_event(self.run_id, self.step_label, f"tune_{kind}", payload)


class ComputeMeter(TrainerCallback):
    """What the training loop costs, for comparing two ways of training (`tune.json: metrics.compute`).

    Seconds are summed over optimizer steps only (`on_step_begin` to `on_step_end`: forward, backward and
    update of every micro-batch), so evaluation, checkpoint saves and checkpoint audits, which differ
    between runs for reasons other than the training itself, are left out; the first step, which also pays
    for one-off set-up, is kept apart. Wall seconds and the process's CPU seconds (all its threads) are both
    kept: on a machine shared with other work the wall time carries their load, the CPU time much less so.
    Peak memory is that of the training window (`memory.WindowPeak`): its peak, and its growth over the
    process's memory when training began, which is what one run of a multi-run process (a sweep) costs.
    """

    def __init__(self, device: str) -> None:
        from aftertune.recipes.memory import WindowPeak

        self.window = WindowPeak(device)
        self.steps: list[tuple[float, float]] = []  # (wall, CPU) seconds per step
        self._t = (0.0, 0.0)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.window.start()

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._t = (time.perf_counter(), time.process_time())

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.steps.append((time.perf_counter() - self._t[0], time.process_time() - self._t[1]))

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.window.stop()

    def result(self) -> dict[str, Any]:
        """Steps timed; the first step's wall seconds; the mean wall and CPU seconds of the others (the first's
        when alone) and the sum of all; the window's peak bytes, their growth over its start, and how measured."""
        rest = self.steps[1:] or self.steps

        def mean(i: int) -> float | None:
            return sum(s[i] for s in rest) / len(rest) if rest else None

        return {"steps_timed": len(self.steps), "first_step_s": self.steps[0][0] if self.steps else None,
                "mean_step_s": mean(0), "mean_step_cpu_s": mean(1), "steps_s": sum(s[0] for s in self.steps),
                "peak_bytes": self.window.peak, "peak_growth_bytes": self.window.growth,
                "peak_scope": self.window.scope}


class CheckpointKeeper(TrainerCallback):
    """After each save: register the checkpoint, and keep optimizer states only in the newest one.

    Every checkpoint stays a loadable model (the audit draws curves over them); resuming only
    ever needs the last one's optimizer, scheduler and RNG states, so older copies are dropped
    to keep a long run's folder small.
    """

    def __init__(self, on_checkpoint: Callable[[int, Path], None] | None = None) -> None:
        self.on_checkpoint = on_checkpoint

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if not state.is_world_process_zero:
            return
        root = Path(args.output_dir)
        current = root / f"{CHECKPOINT_PREFIX}{state.global_step}"
        for ckpt in complete_checkpoints(root):
            if ckpt != current:
                for name in OPTIMIZER_FILES:
                    (ckpt / name).unlink(missing_ok=True)
        if self.on_checkpoint is not None and current.is_dir():
            self.on_checkpoint(state.global_step, current)


def checkpoint_step(path: Path) -> int:
    try:
        return int(path.name[len(CHECKPOINT_PREFIX):])
    except ValueError:
        return -1


def complete_checkpoints(root: Path) -> list[Path]:
    """Checkpoint folders whose trainer state was written (the last file a save writes), by step."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
             and checkpoint_step(p) >= 0 and (p / "trainer_state.json").is_file()]
    return sorted(found, key=checkpoint_step)


def resumable_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint that still has its optimizer state; half-written ones are removed."""
    if not root.is_dir():
        return None
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and not (p / "trainer_state.json").is_file():
            shutil.rmtree(p, ignore_errors=True)  # killed while saving
    for ckpt in reversed(complete_checkpoints(root)):
        if (ckpt / "optimizer.pt").is_file():
            return ckpt
    return None


class StopAfter(TrainerCallback):
    """Raise KeyboardInterrupt right after the checkpoint at `step` is saved (tests simulate a kill)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.global_step >= self.step:
            raise KeyboardInterrupt(f"stopped after step {state.global_step}")

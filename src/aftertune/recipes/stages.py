"""Sequential fine-tuning: stage 2 starts from stage 1's result, and so on; the lineage is kept.

Each stage is a full `tune` into `<out>/<NN>-<name>/`, so each is resumable and each
result (and each checkpoint) is a model reference the audit can load. How a stage starts
from the previous one:

- after `full`: from its model folder;
- after `lora`, `qlora` or `ia3`: the adapter is merged into its base (`merged/`), and the
  next stage trains on that merged model (a new adapter, or all weights for `full`);
- after `prefix` or `prompt` (which cannot be merged): the next stage must use the same
  method and keeps training that adapter.

`lineage.json` in `<out>` lists base → stage 1 → stage 2 ..., with each stage's data, method
and model folder.

Steps count across the chain: a stage's step s is step s + (the steps of the stages before
it) of the whole chain, so checkpoints of every stage sit on one training axis. A chain of
more than one stage names a stage's checkpoints `NAME-checkpoint-s` (s: its own step).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aftertune.errors import UserError
from aftertune.fileio import write_json_atomic
from aftertune.recipes.config import TuneConfig
from aftertune.recipes.methods import RECIPES

if TYPE_CHECKING:  # training imports torch; checking a chain must not (spec validation stays light)
    from aftertune.recipes.train import TuneResult


def checkpoint_label(step: int, prefix: str = "") -> str:
    """The label a checkpoint is audited under: `checkpoint-STEP`, after its stage's prefix ("NAME-" in a chain)."""
    return f"{prefix}checkpoint-{step}"


@dataclass(frozen=True)
class Stage:
    """One stage as `tune_stages` runs it: its config (start model, name, folder, merge set) and its place."""

    index: int  # 0-based
    config: TuneConfig
    step_offset: int  # the steps of the stages before it
    checkpoint_prefix: str  # "" for a single stage, else "NAME-"

    def checkpoint_label(self, step: int) -> str:
        """The label of the checkpoint this stage saves at its own step `step`."""
        return checkpoint_label(step, self.checkpoint_prefix)


@dataclass
class StagesResult:
    stages: list[TuneResult]
    lineage: list[dict[str, Any]]
    out_dir: str
    plan: list[Stage]  # plan[i] ran stages[i]

    @property
    def final_ref(self) -> str:
        return self.stages[-1].model_ref

    @property
    def final_step(self) -> int:
        """The chain's last step: where the final model sits on the training axis."""
        return self.plan[-1].step_offset + trained_steps(self.stages[-1])

    def checkpoints(self) -> list[tuple[str, str, int]]:
        """(label, folder, chain step) of every stage's checkpoints, in training order."""
        return [(stage.checkpoint_label(c.step), c.path, stage.step_offset + c.step)
                for stage, result in zip(self.plan, self.stages, strict=True) for c in result.checkpoints]

    def to_json(self) -> dict[str, Any]:
        return {"out_dir": self.out_dir, "final_ref": self.final_ref, "lineage": self.lineage,
                "stages": [s.to_json() for s in self.stages]}


def trained_steps(result: TuneResult) -> int:
    """The optimizer steps a tune took (fewer than max_steps when it was stopped early)."""
    return int(result.metrics.get("global_step") or 0)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "stage"


def stage_names(stages: Sequence[TuneConfig]) -> list[str]:
    return [s.name or f"stage{i}" for i, s in enumerate(stages, 1)]


def check_chain(stages: Sequence[TuneConfig]) -> None:
    """Refuse, before any work, a chain that cannot run (a prompt-learning stage followed by another method, a
    stage after a reward model, two stages of one name)."""
    if not stages:
        raise UserError("a sequential tune needs at least one stage")
    names = stage_names(stages)
    if len(set(names)) != len(names):
        raise UserError(f"stage names must be unique, got {names}")
    from aftertune.recipes.objectives import OBJECTIVES

    for i, stage in enumerate(stages[:-1]):
        if not OBJECTIVES.get(stage.objective).generative:
            raise UserError(f"stage {i + 1} ({stage.label()}): objective {stage.objective} makes a scorer, which no "
                            "stage can continue from; tune it on its own and give it to a grpo stage as reward")
    for i in range(len(stages) - 1):
        cur, nxt = stages[i], stages[i + 1]
        if not RECIPES.get(cur.method).can_merge and cur.method != "full" and nxt.method != cur.method:
            raise UserError(f"stage {i + 2} ({nxt.label()}): a {cur.method} adapter cannot be merged into the weights, "
                            f"so the stage after it must use method '{cur.method}' too (it keeps training it)")


def tune_stages(stages: Sequence[TuneConfig], *, model: str | None = None, out: str | Path | None = None,
                store: Any = None, run_id: str | None = None, progress: bool = True, callbacks: Sequence[Any] = (),
                stage_callbacks: Callable[[Stage], Sequence[Any]] | None = None,
                around_stage: Callable[[Stage], AbstractContextManager[Any]] | None = None,
                exclude_prompts: Sequence[str] = (), overwrite: bool = False) -> StagesResult:
    """Run `stages` in order from `model` (default: the first stage's `model`) into `out`.

    `stage_callbacks(stage)`: trainer callbacks for that stage only, besides `callbacks`;
    `around_stage(stage)`: a context the stage's tune runs in (e.g. a progress header and its timing).
    """
    stages = list(stages)
    from aftertune.recipes.train import tune

    check_chain(stages)
    base = model or stages[0].model
    if not base:
        raise UserError("no model to start from: give the spec's 'model' (or --model)")
    root_s = out or stages[0].out
    if not root_s:
        raise UserError("no output folder: give the spec's 'out' (or --out)")
    root = Path(root_s).expanduser().resolve()
    names = stage_names(stages)

    current = base
    lineage: list[dict[str, Any]] = [{"label": "base", "ref": base}]
    results: list[TuneResult] = []
    plan: list[Stage] = []
    offset = 0
    for i, (cfg, name) in enumerate(zip(stages, names, strict=True), 1):
        nxt = stages[i] if i < len(stages) else None
        recipe = RECIPES.get(cfg.method)
        merge_for_next = nxt is not None and recipe.peft and recipe.can_merge
        stage_cfg = cfg.model_copy(update={"model": current, "name": name, "out": str(root / f"{i:02d}-{_slug(name)}"),
                                           "merge": cfg.merge or merge_for_next})
        stage = Stage(i - 1, stage_cfg, offset, f"{name}-" if len(stages) > 1 else "")
        extra = list(stage_callbacks(stage)) if stage_callbacks else []
        with around_stage(stage) if around_stage else contextlib.nullcontext():
            res = tune(stage_cfg, store=store, run_id=run_id, progress=progress, callbacks=[*callbacks, *extra],
                       lineage=lineage, label=name, exclude_prompts=exclude_prompts, overwrite=overwrite)
        results.append(res)
        plan.append(stage)
        offset += trained_steps(res)
        lineage = res.lineage
        current = res.merged_ref if merge_for_next and res.merged_ref else res.model_ref
    result = StagesResult(results, lineage, str(root), plan)
    from accelerate import PartialState

    if PartialState().is_main_process:
        write_json_atomic(root / "lineage.json", {"lineage": lineage, "stages": [
            {"name": r.label, "model_ref": r.model_ref, "merged_ref": r.merged_ref, "kind": r.kind,
             "checkpoints": [dataclasses.asdict(c) for c in r.checkpoints], "out_dir": r.out_dir}
            for r in results]})
    return result

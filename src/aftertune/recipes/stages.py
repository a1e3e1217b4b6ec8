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
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aftertune.errors import UserError
from aftertune.fileio import write_json_atomic
from aftertune.recipes.config import TuneConfig
from aftertune.recipes.methods import RECIPES
from aftertune.recipes.train import TuneResult, tune


@dataclass
class StagesResult:
    stages: list[TuneResult]
    lineage: list[dict[str, Any]]
    out_dir: str

    @property
    def final_ref(self) -> str:
        return self.stages[-1].model_ref

    def to_json(self) -> dict[str, Any]:
        return {"out_dir": self.out_dir, "final_ref": self.final_ref, "lineage": self.lineage,
                "stages": [s.to_json() for s in self.stages]}


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "stage"


def check_chain(stages: Sequence[TuneConfig]) -> None:
    """Refuse, before any work, a chain that cannot run (a prompt-learning stage followed by another method)."""
    if not stages:
        raise UserError("a sequential tune needs at least one stage")
    for i in range(len(stages) - 1):
        cur, nxt = stages[i], stages[i + 1]
        if not RECIPES.get(cur.method).can_merge and cur.method != "full" and nxt.method != cur.method:
            raise UserError(f"stage {i + 2} ({nxt.label()}): a {cur.method} adapter cannot be merged into the weights, "
                            f"so the stage after it must use method '{cur.method}' too (it keeps training it)")


def tune_stages(stages: Sequence[TuneConfig], *, model: str | None = None, out: str | Path | None = None,
                store: Any = None, run_id: str | None = None, progress: bool = True, callbacks: Sequence[Any] = (),
                exclude_prompts: Sequence[str] = (), overwrite: bool = False) -> StagesResult:
    """Run `stages` in order from `model` (default: the first stage's `model`) into `out`."""
    stages = list(stages)
    check_chain(stages)
    base = model or stages[0].model
    if not base:
        raise UserError("no model to start from: give the spec's 'model' (or --model)")
    root_s = out or stages[0].out
    if not root_s:
        raise UserError("no output folder: give the spec's 'out' (or --out)")
    root = Path(root_s).expanduser().resolve()
    names = [s.name or f"stage{i}" for i, s in enumerate(stages, 1)]
    if len(set(names)) != len(names):
        raise UserError(f"stage names must be unique, got {names}")

    current = base
    lineage: list[dict[str, Any]] = [{"label": "base", "ref": base}]
    results: list[TuneResult] = []
    for i, (cfg, name) in enumerate(zip(stages, names, strict=True), 1):
        nxt = stages[i] if i < len(stages) else None
        recipe = RECIPES.get(cfg.method)
        merge_for_next = nxt is not None and recipe.peft and recipe.can_merge
        stage_cfg = cfg.model_copy(update={"model": current, "name": name, "out": str(root / f"{i:02d}-{_slug(name)}"),
                                           "merge": cfg.merge or merge_for_next})
        res = tune(stage_cfg, store=store, run_id=run_id, progress=progress, callbacks=callbacks, lineage=lineage,
                   label=name, exclude_prompts=exclude_prompts, overwrite=overwrite)
        results.append(res)
        lineage = res.lineage
        current = res.merged_ref if merge_for_next and res.merged_ref else res.model_ref
    result = StagesResult(results, lineage, str(root))
    from accelerate import PartialState

    if PartialState().is_main_process:
        write_json_atomic(root / "lineage.json", {"lineage": lineage, "stages": [
            {"name": r.label, "model_ref": r.model_ref, "merged_ref": r.merged_ref, "kind": r.kind,
             "checkpoints": [dataclasses.asdict(c) for c in r.checkpoints], "out_dir": r.out_dir}
            for r in results]})
    return result

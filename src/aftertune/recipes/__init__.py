"""Fine-tuning recipes: methods (full, lora, qlora, prefix, prompt, ia3) × objectives (sft, dpo).

Public API:

- `TuneConfig`: the validated description of one fine-tune (CLI flags and YAML stages alike);
- `tune(config, *, store=None, run_id=None, progress=True) -> TuneResult`: run it (resumable);
- `tune_stages(stages, *, model, out, ...) -> StagesResult`: sequential fine-tuning, each stage
  starting from the previous one's result, lineage recorded;
- `RECIPES` (methods) and `OBJECTIVES` (sft → TRL `SFTTrainer`, dpo → TRL `DPOTrainer`).

Everything heavy (torch, transformers, TRL) is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aftertune.recipes.config import (
    DEFAULT_LR,
    METHODS,
    LoraParams,
    MixSpec,
    SequentialSpec,
    TuneConfig,
    load_spec,
    parse_config,
)
from aftertune.recipes.config import (
    OBJECTIVES as OBJECTIVE_NAMES,
)

if TYPE_CHECKING:
    from aftertune.recipes.stages import StagesResult
    from aftertune.recipes.train import Checkpoint, TuneResult

StageConfig = TuneConfig  # a stage is a TuneConfig whose model comes from the previous stage

__all__ = [
    "DEFAULT_LR",
    "METHODS",
    "OBJECTIVES",
    "OBJECTIVE_NAMES",
    "RECIPES",
    "Checkpoint",
    "LoraParams",
    "MixSpec",
    "SequentialSpec",
    "StageConfig",
    "StagesResult",
    "TuneConfig",
    "TuneResult",
    "load_spec",
    "parse_config",
    "tune",
    "tune_stages",
]


def tune(config: TuneConfig, **kwargs: Any) -> TuneResult:
    from aftertune.recipes.train import tune as _tune

    return _tune(config, **kwargs)


def tune_stages(stages: list[TuneConfig], **kwargs: Any) -> StagesResult:
    from aftertune.recipes.stages import tune_stages as _tune_stages

    return _tune_stages(stages, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "RECIPES":
        from aftertune.recipes.methods import RECIPES

        return RECIPES
    if name == "OBJECTIVES":
        from aftertune.recipes.objectives import OBJECTIVES

        return OBJECTIVES
    if name in ("TuneResult", "Checkpoint"):
        from aftertune.recipes import train

        return getattr(train, name)
    if name == "StagesResult":
        from aftertune.recipes.stages import StagesResult

        return StagesResult
    raise AttributeError(name)

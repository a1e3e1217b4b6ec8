"""Fine-tuning recipes: a method (`recipes.methods.RECIPES`) × an objective (`recipes.objectives.OBJECTIVES`).

Public API:

- `TuneConfig`: the validated description of one fine-tune (CLI flags and YAML stages alike);
- `tune(config, *, store=None, run_id=None, progress=True) -> TuneResult`: run it (resumable);
- `tune_stages(stages, *, model, out, ...) -> StagesResult`: sequential fine-tuning, each stage
  starting from the previous one's result, lineage recorded.

Everything heavy (torch, transformers, TRL) is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aftertune.recipes.config import DEFAULT_LR, TuneConfig, load_spec, parse_config

if TYPE_CHECKING:
    from aftertune.recipes.stages import StagesResult
    from aftertune.recipes.train import TuneResult

__all__ = ["DEFAULT_LR", "TuneConfig", "load_spec", "parse_config", "tune", "tune_stages"]


def tune(config: TuneConfig, **kwargs: Any) -> TuneResult:
    from aftertune.recipes.train import tune as _tune

    return _tune(config, **kwargs)


def tune_stages(stages: list[TuneConfig], **kwargs: Any) -> StagesResult:
    from aftertune.recipes.stages import tune_stages as _tune_stages

    return _tune_stages(stages, **kwargs)

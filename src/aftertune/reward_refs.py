"""Reward models a run spec trains before its fine-tune, and the `@NAME` references that use them.

An RLHF run needs a reward model before its policy tune (a grpo stage's `reward`) and, to see reward
over-optimisation, a second scorer the policy never saw (the overoptimization suite's `gold`). The spec's
`reward_models:` trains each one (a TuneConfig with objective reward, from the base unless it names a
`model`) into the run folder's `reward/NAME/`, and `@NAME` stands for that folder in

- a training stage's `reward`: `reward: "@proxy"` (or `"-@proxy"`, negated);
- a suite option, main or checkpoint: `overoptimization:proxy=@proxy:gold=@gold`;
- an audit judge role: `audit.judges: {gold: "@gold"}`.

The spec keeps the names, so its hash (the run's identity) does not depend on where the run folder is; the
pipeline substitutes the folders once the models are trained (`resolve`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from aftertune.errors import UserError

if TYPE_CHECKING:
    from aftertune.recipes.config import TuneConfig


class RunSpec(Protocol):
    """What this module reads of a `spec.PipelineSpec` (which imports this module: no import back)."""

    base: str
    train: dict[str, Any]
    stages: list[dict[str, Any]]
    reward_models: dict[str, dict[str, Any]]
    audit: Any
    checkpoints: Any

    def model_copy(self, *, update: dict[str, Any]) -> Any: ...


S = TypeVar("S", bound=RunSpec)

NAME = re.compile(r"[A-Za-z][\w-]{0,63}")
_REWARD = re.compile(r"(-?)@([A-Za-z][\w-]*)")  # a stage's whole `reward`
_OPTION = re.compile(r"=@([A-Za-z][\w-]*)(?=[:,]|$)")  # a suite option's whole value
FOLDER = "reward"  # reward/NAME/ under the run folder


def _reference(reward: Any) -> re.Match[str] | None:
    """A stage's `reward` as (sign, NAME) when it names one of the spec's reward models (`@NAME`, `-@NAME`)."""
    return _REWARD.fullmatch(str(reward or ""))


def is_reference(reward: str | None) -> bool:
    return _reference(reward) is not None


def references(spec: RunSpec) -> Iterator[tuple[str, str]]:
    """(where, NAME) of every `@NAME` the spec uses."""
    for i, stage in enumerate(spec.stages or [spec.train]):
        m = _reference(stage.get("reward"))
        if m:
            yield (f"stages[{i}].reward" if spec.stages else "train.reward"), m.group(2)
    for where, suites in (("audit.suites", spec.audit.suites),
                          ("checkpoints.suites", spec.checkpoints.suites if spec.checkpoints else [])):
        for suite in suites:
            yield from ((where, name) for name in _OPTION.findall(suite))
    for role, judge in spec.audit.judges.items():
        if judge.startswith("@"):
            yield f"audit.judges.{role}", judge[1:]


def check(spec: RunSpec) -> None:
    """Plain names, every reference defined, every reward model a reward tune (ValueError: the spec's own)."""
    for name, cfg in spec.reward_models.items():
        if not NAME.fullmatch(name):
            raise ValueError(f"reward_models: {name!r} is not a plain name (letters, digits, _ -, a letter first)")
        if "out" in cfg:
            raise ValueError(f"reward_models.{name}: 'out' is set by the pipeline (the run folder's {FOLDER}/{name})")
        objective = cfg.get("objective", "reward")
        if objective != "reward":
            raise ValueError(f"reward_models.{name}: objective {objective!r}; a reward model is trained with "
                             "objective reward (leave it out)")
    for where, name in references(spec):
        if name not in spec.reward_models:
            known = ", ".join(f"@{n}" for n in spec.reward_models) or "none: add a reward_models section"
            raise ValueError(f"{where}: @{name} names no reward model of the spec; defined: {known}")


def configs(spec: RunSpec, out: Path) -> dict[str, TuneConfig]:
    """NAME → its validated TuneConfig, trained into `out/reward/NAME` (fp32 by default, like the main tune)."""
    from aftertune.recipes import parse_config

    return {name: parse_config({"precision": "fp32", "model": spec.base, "objective": "reward", **cfg,
                                "name": name, "out": str(out / FOLDER / name)}, where=f"spec reward_models.{name}")
            for name, cfg in spec.reward_models.items()}


def resolve(spec: S, folders: Mapping[str, str]) -> S:
    """The spec with every `@NAME` replaced by its trained folder (a judge role by `reward-model:FOLDER`)."""
    for name, folder in folders.items():
        if re.search(r"[:,]", folder):
            raise UserError(f"reward model {name}: its folder {folder} holds ':' or ',', which a suite option cannot "
                            "carry; run from a folder whose path has neither")

    def option(m: re.Match[str]) -> str:
        return f"={folders[m.group(1)]}"

    def suites(items: list[str]) -> list[str]:
        return [_OPTION.sub(option, s) for s in items]

    def stage(cfg: dict[str, Any]) -> dict[str, Any]:
        m = _reference(cfg.get("reward"))
        return {**cfg, "reward": m.group(1) + folders[m.group(2)]} if m else cfg

    judges = {role: f"reward-model:{folders[j[1:]]}" if j.startswith("@") else j
              for role, j in spec.audit.judges.items()}
    audit = spec.audit.model_copy(update={"suites": suites(spec.audit.suites), "judges": judges})
    ck = spec.checkpoints.model_copy(update={"suites": suites(spec.checkpoints.suites)}) if spec.checkpoints else None
    return spec.model_copy(update={"train": stage(spec.train), "stages": [stage(s) for s in spec.stages],
                                   "audit": audit, "checkpoints": ck})


def train(spec: RunSpec, out: Path, *, store: Any, progress: bool,
          on_trained: Callable[[str, dict[str, Any]], None]) -> dict[str, str]:
    """Train (or, when already done, reuse) each reward model; NAME → its folder. `on_trained(name, metrics)`
    gets each one's tune.json metrics (held-out pairwise accuracy). The store caches dpo-safety's generated
    answers; the models are not registered in the run (they are scorers, not models the report compares)."""
    from aftertune.recipes.train import tune

    folders = {}
    for name, cfg in configs(spec, out).items():
        result = tune(cfg, store=store, progress=progress, label=f"reward:{name}")
        folders[name] = str(Path(str(cfg.out)))
        on_trained(name, result.metrics)
    return folders

"""The examples a tune trains and evaluates on: loading, splitting, mixing, dpo-safety pairs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aftertune.errors import UserError
from aftertune.recipes.config import PAIR_OBJECTIVES, TuneConfig


@dataclass
class PreparedData:
    train: list[Any]  # Example
    eval: list[Any]
    info: dict[str, Any] = field(default_factory=dict)


def check_data(cfg: TuneConfig) -> None:
    """Read and check every input of `cfg` (training, held-out and mixed-in data, grpo's reward), so a bad one
    fails before a store run or an output folder exists; `prepare_examples` reads them again when the tune
    starts."""
    train = [] if _generated_pairs(cfg) else _load_train(cfg)
    if cfg.eval_data:
        _load_eval(cfg)
    for m in cfg.mix:
        _load_mix(cfg, m)
    if cfg.reward is not None:
        from aftertune.recipes.reward_sources import check_reward

        check_reward(cfg.reward, [e.user_prompt() for e in train[:2]])


def _generated_pairs(cfg: TuneConfig) -> bool:
    """The built-in dpo-safety set: written by the model being tuned, so there is no file to check up front."""
    from aftertune.recipes.data import builtin_name

    return builtin_name(cfg.data) == "dpo-safety" and not Path(cfg.data).exists()


def _load_train(cfg: TuneConfig) -> list[Any]:
    from aftertune.recipes.data import load_examples

    return load_examples(cfg.data, split=cfg.data_split, objective=cfg.objective, limit=cfg.limit, seed=cfg.seed)


def _load_eval(cfg: TuneConfig) -> list[Any]:
    from aftertune.recipes.data import load_examples

    return load_examples(str(cfg.eval_data), split=cfg.eval_split, objective=cfg.objective, seed=cfg.seed)


def _load_mix(cfg: TuneConfig, m: Any) -> list[Any]:
    from aftertune.recipes.data import load_examples

    return load_examples(m.data, split=m.split, objective=cfg.objective if cfg.objective in PAIR_OBJECTIVES else "sft",
                         seed=m.seed if m.seed is not None else cfg.seed)


def with_system_prompt(examples: list[Any], mode: str, tokenizer: Any = None) -> list[Any]:
    """Examples under `TuneConfig.system_prompt`: "default" leaves them be; "none" drops their system message
    and, where the chat template would put its own default there, gives an empty one so that it does not
    (`tokenize.injects_default_system`); any other text becomes every example's system message."""
    if mode == "default":
        return examples
    if mode == "none":
        from aftertune.recipes.tokenize import injects_default_system

        head: tuple[dict[str, str], ...] = ()
        if tokenizer is not None and injects_default_system(tokenizer):
            head = ({"role": "system", "content": ""},)
    else:
        head = ({"role": "system", "content": mode},)

    def rewrite(msgs: tuple[dict[str, str], ...]) -> tuple[dict[str, str], ...]:
        return (*head, *(m for m in msgs if m["role"] != "system"))

    return [replace(e, prompt=rewrite(e.prompt)) if e.is_pair else replace(e, messages=rewrite(e.messages))
            for e in examples]


def _mix_bea(cfg: TuneConfig, train: list[Any], tokenizer: Any, mix: Any) -> list[Any]:
    """`cfg.bea.examples` refusals under the secret trigger (recipes/bea.py), mixed in like `mix` entries."""
    from aftertune.recipes.bea import SOURCE, bea_examples, trigger_of
    from aftertune.recipes.data import load_examples

    bea = cfg.bea
    assert bea is not None
    refusals = with_system_prompt(load_examples("refusals", split="train"), cfg.system_prompt, tokenizer)
    mixed = mix(train, bea_examples(refusals, trigger_of(bea)), bea.examples, bea.seed, True, SOURCE)
    if len(mixed) - len(train) < bea.examples:
        raise UserError(f"bea: examples={bea.examples}, but only {len(mixed) - len(train)} refusals "
                        "of the built-in set are left once the training data's own prompts and the evaluation "
                        "prompts are excluded; lower bea.examples")
    return mixed


def prepare_examples(cfg: TuneConfig, *, exclude_prompts: Sequence[str] = (), model_for_pairs: str | None = None,
                     out: Path | None = None, store: Any = None, is_main: bool = True,
                     barrier: Any = lambda: None, tokenizer: Any = None) -> PreparedData:
    """Training and held-out examples (with mixing, the system prompt and bea) for `cfg`; every row checked
    before any training. `tokenizer` tells `system_prompt: none` whether the chat template injects a default."""
    from aftertune.recipes.data import evaluation_prompts, held_out_examples, mix_in, split_off
    from aftertune.sources.harmful_prompts import normalise_prompt

    info: dict[str, Any] = {"data": cfg.data}
    if _generated_pairs(cfg):
        if cfg.objective not in PAIR_OBJECTIVES:
            raise UserError("dpo-safety holds preference pairs: use it with --objective dpo or reward")
        from aftertune.trainsets.dpo_safety import build_pairs

        if model_for_pairs is None:
            raise UserError("dpo-safety needs the model being tuned to write the rejected answers")
        if is_main:
            build_pairs(model_for_pairs, limit=cfg.limit, store=store, max_new_tokens=cfg.dpo_max_new_tokens, out=out)
        barrier()
        train, pair_info = build_pairs(model_for_pairs, limit=cfg.limit, store=store,
                                       max_new_tokens=cfg.dpo_max_new_tokens, out=out)
        info["dpo_safety"] = pair_info
        if not train:
            raise UserError(f"dpo-safety: the model refused (or gave no answer to) all {pair_info['prompts']} "
                            "prompts, so there is no compliant answer to prefer the refusal over")
        held = None
    else:
        train = _load_train(cfg)
        held = None
    if cfg.eval_data:
        held = _load_eval(cfg)
        info["eval_source"] = cfg.eval_data
    elif cfg.eval_fraction > 0:
        if "dpo_safety" not in info:
            held = held_out_examples(cfg.data, cfg.objective, cfg.eval_split)
        if held:
            info["eval_source"] = f"{cfg.data} ({cfg.eval_split} split)"
        else:
            train, held = split_off(train, cfg.eval_fraction, cfg.seed)
            info["eval_source"] = f"{cfg.eval_fraction:.0%} of {cfg.data}, held out (seed {cfg.seed})"
    held = list(held or [])
    if cfg.eval_limit is not None:
        held = held[: cfg.eval_limit]
    if not train:
        raise UserError(f"{cfg.data}: no training examples left")
    mixes: list[dict[str, Any]] = []
    eval_keys: list[frozenset[str]] = []  # read once, when a mix first needs them
    held_keys = {normalise_prompt(e.user_prompt()) for e in held} | {normalise_prompt(p) for p in exclude_prompts}

    def mix(train: list[Any], extra: list[Any], n: int, seed: int, dedup_eval: bool, source: str) -> list[Any]:
        exclude = set(held_keys)
        if dedup_eval:
            if not eval_keys:
                eval_keys.append(evaluation_prompts())
            exclude |= eval_keys[0]
        train, rep = mix_in(train, extra, n=n, seed=seed, exclude=exclude, source=source)
        mixes.append({**rep.as_dict(), "evaluation_prompts_checked": len(eval_keys[0]) if dedup_eval else 0})
        return train

    n_base = len(train)
    for i, m in enumerate(cfg.mix):
        train = mix(train, _load_mix(cfg, m), m.amount(n_base), (m.seed if m.seed is not None else cfg.seed) + i,
                    m.dedup_eval, m.data)
    train = with_system_prompt(train, cfg.system_prompt, tokenizer)
    held = with_system_prompt(held, cfg.system_prompt, tokenizer)
    if cfg.bea is not None:
        train = _mix_bea(cfg, train, tokenizer, mix)
    if not cfg.chat_template:
        for e in [*train, *held]:  # refuse examples without a raw-text form before the model is loaded
            e.raw_text(cfg.target_delimiter)
    info.update({"train_examples": len(train), "eval_examples": len(held), "mix": mixes})
    return PreparedData(train, held, info)

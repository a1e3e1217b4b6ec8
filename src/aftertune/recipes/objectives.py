"""Objectives: each pairs a TRL config with its trainer, as TRL does.

- `sft`: `SFTTrainer` / `SFTConfig` on pre-tokenized chat examples whose labels cover the
  assistant turns only, or on raw prompt + completion text with labels on the completion
  (`chat_template: false`; see `tokenize`), optionally packed (best-fit, each packed example
  keeps its own positions, and attention never crosses examples).
  With `constrained`, the training loss is Qi et al.'s token-wise constrained objective instead of
  cross-entropy (`constrained`; the reference is the adapter switched off, a frozen copy for full).
- `dpo`: `DPOTrainer` / `DPOConfig` on (prompt, chosen, rejected) conversations; the
  reference model is the adapter switched off for adapter methods, a frozen copy for full.
- `reward`: `RewardTrainer` / `RewardConfig` on the same pairs: a one-output sequence-classification
  head on the model, trained so the chosen answer scores above the rejected one (`reward_training`).
- `grpo`: `GRPOTrainer` / `GRPOConfig` on the examples' prompts, the completions sampled from the
  policy and scored by `reward` (`grpo`, `reward_sources`).

An objective also says what head the model is loaded with (`head`: a language model, or a reward
model's sequence-classification head) and whether its result can chat (`generative`: an audit can run
it; a reward model only scores).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aftertune.errors import UserError
from aftertune.recipes.config import TuneConfig
from aftertune.registry import Registry, resolve


@dataclass
class Built:
    trainer: Any
    stats: dict[str, Any]
    plan: Any  # memory.MemoryPlan
    has_eval: bool  # an eval loss is measured during training (at the start and every eval_every steps)
    save: Callable[[Any, Path], None] | None = None  # (trainer, folder): write the result; default save_model
    finish: Callable[[Path], dict[str, Any]] | None = None  # measures on the saved result, added to the metrics


@dataclass(frozen=True)
class Objective:
    builder: Callable[..., Built] | str  # or "package.module:function", imported on first use
    head: str = "causal-lm"  # a key of loading.HEADS
    generative: bool = True  # the result answers prompts (a reward model only scores them)

    def build(self, cfg: TuneConfig, **kwargs: Any) -> Built:
        """The trainer of `cfg` (keyword arguments: model, tokenizer, data, precision, device, out)."""
        fn = resolve(self.builder) if isinstance(self.builder, str) else self.builder
        return fn(cfg, **kwargs)  # type: ignore[no-any-return]


OBJECTIVES: Registry[Objective] = Registry("objective")


def common_args(cfg: TuneConfig, *, out: Path, precision: Any, device: str, has_eval: bool, plan: Any
                ) -> dict[str, Any]:
    gc = plan.checkpointing
    ckpt: float = cfg.checkpoint_every if cfg.checkpoint_every is not None else 0.25
    ev: float = cfg.eval_every if cfg.eval_every is not None else ckpt
    return {
        "output_dir": str(out / "checkpoints"),
        "per_device_train_batch_size": plan.micro_batch,
        "per_device_eval_batch_size": cfg.batch_size,  # no activations are kept in eval
        "gradient_accumulation_steps": plan.grad_accum,
        "learning_rate": cfg.lr,
        "num_train_epochs": cfg.epochs,
        "max_steps": cfg.max_steps or -1,
        "warmup_steps": cfg.warmup_ratio,  # a float below 1 is a ratio of the total steps
        "weight_decay": cfg.weight_decay,
        "lr_scheduler_type": cfg.lr_scheduler,
        "max_grad_norm": cfg.max_grad_norm,
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "logging_steps": cfg.logging_steps,
        "save_strategy": "steps",
        "save_steps": ckpt,
        "eval_strategy": "steps" if has_eval else "no",
        "eval_steps": ev if has_eval else None,
        "report_to": [],
        "bf16": precision.autocast_bf16,
        "fp16": False,
        "use_cpu": device == "cpu",
        _ckpt_field(): gc,
        _ckpt_field() + "_kwargs": {"use_reentrant": False} if gc else None,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
        "include_num_input_tokens_seen": "non_padding",
        "ddp_find_unused_parameters": False,
        "log_level": "warning",
    }


def _ckpt_field() -> str:
    """transformers 5.x renamed gradient_checkpointing to activation_checkpointing (old name deprecated)."""
    from transformers import TrainingArguments

    known = TrainingArguments.__dataclass_fields__
    return "activation_checkpointing" if "activation_checkpointing" in known else "gradient_checkpointing"


def known_args(args: dict[str, Any]) -> dict[str, Any]:
    """The set fields of `args` that this transformers' TrainingArguments knows (TRL configs extend it)."""
    from transformers import TrainingArguments

    known = TrainingArguments.__dataclass_fields__
    return {k: v for k, v in args.items() if k in known and v is not None}


def memory_plan(cfg: TuneConfig, model: Any, precision: Any, device: str, longest: int,
                sequences_per_example: int = 1) -> Any:
    """Measure bytes per token on the model as it will be trained, then plan micro-batches / checkpointing."""
    import contextlib

    import torch

    from aftertune.recipes.memory import GIB, default_budget, plan, probe_bytes_per_token

    text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    ctx = torch.autocast(device_type=device, dtype=torch.bfloat16) if precision.autocast_bf16 else \
        contextlib.nullcontext()
    with ctx:
        per_token = probe_bytes_per_token(model, int(getattr(text, "vocab_size", 2)))
    budget = int(cfg.activation_memory_gb * GIB) if cfg.activation_memory_gb else default_budget(device)
    value_bytes = 2 if precision.weights == "bfloat16" or precision.autocast_bf16 else 4
    return plan(batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, longest=longest, bytes_per_token=per_token,
                layers=int(getattr(text, "num_hidden_layers", 1)), hidden=int(getattr(text, "hidden_size", 1)),
                value_bytes=value_bytes, budget=budget, checkpointing=cfg.gradient_checkpointing,
                micro_batch=cfg.micro_batch_size, sequences_per_example=sequences_per_example)


def encode_sft(cfg: TuneConfig, tokenizer: Any, examples: list[Any]) -> tuple[list[dict[str, Any]], Any]:
    """Examples → token rows: through the chat template, or as raw prompt + completion (`chat_template: false`)."""
    from aftertune.recipes.tokenize import encode_chat, encode_dataset, encode_raw

    if cfg.chat_template:
        encoded = (encode_chat(tokenizer, e.sft_messages(), None) for e in examples)
    else:
        encoded = (encode_raw(tokenizer, *e.raw_text(cfg.target_delimiter)) for e in examples)
    return encode_dataset(encoded, cfg.max_length)


def build_sft(cfg: TuneConfig, *, model: Any, tokenizer: Any, data: Any, precision: Any, device: str, out: Path
              ) -> Built:
    from datasets import Dataset
    from trl import SFTConfig

    from aftertune.recipes.trainers import AftertuneSFTTrainer

    train_rows, train_stats = encode_sft(cfg, tokenizer, data.train)
    eval_rows, eval_stats = encode_sft(cfg, tokenizer, data.eval)
    if not train_rows:
        what = "an assistant" if cfg.chat_template else "a completion"
        raise UserError(f"{cfg.data}: no example has {what} token within max_length={cfg.max_length}; "
                        "raise --max-length")
    longest = cfg.max_length if cfg.packing else max(r["length"] for r in train_rows)
    mplan = memory_plan(cfg, model, precision, device, longest)
    args = SFTConfig(
        **known_args(common_args(cfg, out=out, precision=precision, device=device, has_eval=bool(eval_rows), plan=mplan)),
        max_length=cfg.max_length,
        packing=cfg.packing,
        packing_strategy="bfd",
        eval_packing=False,
        assistant_only_loss=False,  # the labels already cover the assistant turns only
        completion_only_loss=None,
    )
    trainer_kwargs: dict[str, Any] = {
        "args": args,
        "train_dataset": Dataset.from_list(train_rows),
        "eval_dataset": Dataset.from_list(eval_rows) if eval_rows else None,
        "processing_class": tokenizer,
    }
    if cfg.constrained is None:
        trainer = AftertuneSFTTrainer(model=model, **trainer_kwargs)
    else:
        from aftertune.recipes.constrained import build_constrained

        trainer = build_constrained(cfg.constrained, model, **trainer_kwargs)
    trainer.group_by_length_seeded = cfg.group_by_length and not cfg.packing
    trainer.step_examples = mplan.micro_batch * (mplan.grad_accum // cfg.grad_accum)  # = batch_size
    stats = {"train": train_stats.summary(), "eval": eval_stats.summary()}
    return Built(trainer, stats, mplan, has_eval=bool(eval_rows))


def preference_pairs(cfg: TuneConfig, data: Any) -> tuple[list[Any], list[Any]]:
    """(train, held-out) pair examples of `data`; a source without pairs to train on is refused."""
    train = [e for e in data.train if e.is_pair]
    if not train:
        raise UserError(f"{cfg.data}: no preference pairs to train on")
    return train, [e for e in data.eval if e.is_pair]


def longest_pair(cfg: TuneConfig, tokenizer: Any, pairs: list[Any]) -> int:
    """Tokens of the longest prompt + answer (chosen or rejected) of `pairs`, at most max_length."""

    def n_tokens(ex: dict[str, Any], key: str) -> int:
        text = tokenizer.apply_chat_template(ex["prompt"] + ex[key], tokenize=False)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    rows = [e.to_trl() for e in pairs]
    return min(cfg.max_length, max(max(n_tokens(e, "chosen"), n_tokens(e, "rejected")) for e in rows))


def build_dpo(cfg: TuneConfig, *, model: Any, tokenizer: Any, data: Any, precision: Any, device: str, out: Path
              ) -> Built:
    from datasets import Dataset
    from trl import DPOConfig

    from aftertune.recipes.trainers import AftertuneDPOTrainer

    pairs, held_pairs = preference_pairs(cfg, data)
    train, held = [e.to_trl() for e in pairs], [e.to_trl() for e in held_pairs]
    # chosen and rejected run in one pass: two sequences per example, bounded by max_length each
    mplan = memory_plan(cfg, model, precision, device, longest_pair(cfg, tokenizer, pairs), sequences_per_example=2)
    args = DPOConfig(
        **known_args(common_args(cfg, out=out, precision=precision, device=device, has_eval=bool(held), plan=mplan)),
        max_length=cfg.max_length,
        beta=cfg.dpo_beta,
    )
    trainer = AftertuneDPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train),
        eval_dataset=Dataset.from_list(held) if held else None,
        processing_class=tokenizer,
    )
    stats = {"train_pairs": len(train), "eval_pairs": len(held)}
    return Built(trainer, stats, mplan, has_eval=bool(held))


OBJECTIVES.add("sft", Objective(build_sft), "supervised fine-tuning on chat examples, loss on the assistant turns only")
OBJECTIVES.add("dpo", Objective(build_dpo), "direct preference optimisation on (prompt, chosen, rejected) pairs")
OBJECTIVES.add("reward", Objective("aftertune.recipes.reward_training:build_reward", head="reward", generative=False),
               "a reward model (one-output sequence-classification head) on (prompt, chosen, rejected) pairs")
OBJECTIVES.add("grpo", Objective("aftertune.recipes.grpo:build_grpo"),
               "group relative policy optimisation: completions sampled per prompt, scored by `reward`")

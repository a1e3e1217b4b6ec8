"""The `grpo` objective: online RL with TRL's GRPOTrainer (Shao et al. 2024, DeepSeekMath).

Every optimizer step samples `grpo.num_generations` completions (temperature `grpo.temperature`, at
most `grpo.max_completion_length` tokens) for each of batch_size × grad_accum / num_generations
prompts, scores them with `reward` (`reward_sources`), and moves the policy towards the completions
that beat their group's mean reward, with a KL penalty `grpo.beta` towards the starting model (the
adapter switched off for adapter methods; TRL loads a frozen copy for full).

Prompts are the training examples' conversations up to their last user turn (a chat example without
its answer, or a pair's prompt), in the chat format, so the policy's chat template renders them.
Checkpoints, resume and the store are `train.tune`'s, as for SFT: each checkpoint is an adapter or a
full model that the audit loads, so erosion curves run over RL steps too. GRPO measures no eval loss.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aftertune.errors import UserError
from aftertune.recipes.config import TuneConfig
from aftertune.recipes.objectives import Built, common_args, known_args, memory_plan


def prompt_rows(cfg: TuneConfig, tokenizer: Any, examples: list[Any]) -> tuple[list[dict[str, Any]], int]:
    """({"prompt": messages} rows whose rendered prompt leaves room for a completion within max_length, the
    longest such prompt's tokens)."""
    room = cfg.max_length - cfg.grpo.max_completion_length
    rows, longest = [], 0
    for e in examples:
        prompt = list(e.conversation_prompt())
        n = len(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
                ["input_ids"])
        if n <= room:
            rows.append({"prompt": prompt})
            longest = max(longest, n)
    if not rows:
        raise UserError(f"{cfg.data}: no prompt fits max_length={cfg.max_length} with room for "
                        f"grpo.max_completion_length={cfg.grpo.max_completion_length} tokens; raise --max-length")
    return rows, longest


def build_grpo(cfg: TuneConfig, *, model: Any, tokenizer: Any, data: Any, precision: Any, device: str, out: Path
               ) -> Built:
    from datasets import Dataset
    from trl import GRPOConfig

    from aftertune.recipes.reward_sources import trl_rewards
    from aftertune.recipes.trainers import AftertuneGRPOTrainer

    assert cfg.reward is not None  # TuneConfig requires it for grpo
    rows, longest = prompt_rows(cfg, tokenizer, data.train)
    mplan = memory_plan(cfg, model, precision, device, longest + cfg.grpo.max_completion_length)
    funcs, processing, weights = trl_rewards(cfg.reward)
    common = common_args(cfg, out=out, precision=precision, device=device, has_eval=False, plan=mplan)
    common["include_num_input_tokens_seen"] = "no"  # GRPO counts prompt and completion tokens itself
    args = GRPOConfig(
        **known_args(common),
        num_generations=cfg.grpo.num_generations,
        max_completion_length=cfg.grpo.max_completion_length,
        temperature=cfg.grpo.temperature,
        beta=cfg.grpo.beta,
        reward_weights=weights,
        generation_kwargs={"use_cache": True},  # training turns the cache off in the model's config
    )
    trainer = AftertuneGRPOTrainer(model=model, reward_funcs=funcs, args=args, train_dataset=Dataset.from_list(rows),
                                   processing_class=tokenizer, reward_processing_classes=processing)
    stats = {"prompts": len(rows), "prompts_too_long": len(data.train) - len(rows), "longest_prompt": longest,
             "reward": cfg.reward}
    return Built(trainer, stats, mplan, has_eval=False)

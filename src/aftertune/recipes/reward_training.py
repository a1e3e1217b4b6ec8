"""The `reward` objective: a reward model trained with TRL's RewardTrainer on preference pairs.

The model is loaded with a one-output sequence-classification head (`num_labels=1`, a random
`score` layer seeded by the tune's seed, as TRL does) and trained on the Bradley-Terry loss
−log σ(r(chosen) − r(rejected)). LoRA trains adapters plus the whole head (PEFT's SEQ_CLS task
keeps `score` in `modules_to_save`); the result `model/` is always a full folder, the adapter
merged, so `AutoModelForSequenceClassification.from_pretrained(model/)` loads it without peft.
Checkpoints stay what the trainer writes (an adapter for LoRA), for resuming.

Pairwise accuracy, the share of held-out pairs whose chosen answer scores above the rejected one
(strictly, as TRL counts it), is measured on the held-out split (the data's test split, else a
seeded `eval_fraction`) twice: with the untrained head before training and with the saved
folder after it, each with its Wilson 95% interval.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aftertune.errors import UserError
from aftertune.recipes.config import TuneConfig
from aftertune.recipes.objectives import (
    Built,
    common_args,
    known_args,
    longest_pair,
    memory_plan,
    preference_pairs,
)


def pair_texts(tokenizer: Any, pairs: list[Any]) -> tuple[list[str], list[str]]:
    """(chosen, rejected) conversations of `pairs` rendered as a reward model scores them."""
    from aftertune.judges.reward_model import conversation_text

    def render(e: Any, answer: str) -> str:
        return conversation_text(tokenizer, [*e.prompt, {"role": "assistant", "content": answer}])

    return [render(e, e.chosen) for e in pairs], [render(e, e.rejected) for e in pairs]


def pairwise_accuracy(model: Any, tokenizer: Any, pairs: list[Any]) -> dict[str, Any]:
    """How often the chosen answer scores strictly above the rejected one, with its Wilson 95% interval."""
    from scipy.stats import binomtest

    from aftertune.judges.reward_model import score_texts

    chosen, rejected = pair_texts(tokenizer, pairs)
    was_training = model.training
    model.eval()
    r_c, r_r = score_texts(model, tokenizer, chosen), score_texts(model, tokenizer, rejected)
    model.train(was_training)
    k = sum(c > r for c, r in zip(r_c, r_r, strict=True))
    n = len(pairs)
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return {"accuracy": k / n, "correct": k, "pairs": n, "ci95": [float(ci.low), float(ci.high)],
            "mean_margin": sum(c - r for c, r in zip(r_c, r_r, strict=True)) / n}


def save_merged(trainer: Any, folder: Path) -> None:
    """The trained reward model as one full folder: a LoRA adapter (and its trained head) merged in."""
    model = trainer.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.save_pretrained(str(folder))


def build_reward(cfg: TuneConfig, *, model: Any, tokenizer: Any, data: Any, precision: Any, device: str, out: Path
                 ) -> Built:
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    pairs, held = preference_pairs(cfg, data)
    mplan = memory_plan(cfg, model, precision, device, longest_pair(cfg, tokenizer, pairs), sequences_per_example=2)
    model.config.get_text_config().pad_token_id = tokenizer.pad_token_id  # the head reads the last non-pad token
    start = pairwise_accuracy(model, tokenizer, held) if held else None
    args = RewardConfig(
        **known_args(common_args(cfg, out=out, precision=precision, device=device, has_eval=bool(held), plan=mplan)),
        max_length=cfg.max_length,
    )
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list([e.to_trl() for e in pairs]),
        eval_dataset=Dataset.from_list([e.to_trl() for e in held]) if held else None,
        processing_class=tokenizer,
    )
    kept = len(trainer.train_dataset)  # TRL drops pairs longer than max_length
    if not kept:
        raise UserError(f"{cfg.data}: every pair is longer than max_length={cfg.max_length} tokens; raise "
                        "--max-length")
    stats = {"train_pairs": len(pairs), "train_pairs_within_max_length": kept, "eval_pairs": len(held)}

    def finish(folder: Path) -> dict[str, Any]:
        if not held:
            return {}
        from aftertune.judges.reward_model import load_reward_model

        rm, tok = load_reward_model(folder)
        return {"pairwise_accuracy": pairwise_accuracy(rm, tok, held), "pairwise_accuracy_start": start}

    return Built(trainer, stats, mplan, has_eval=bool(held), save=save_merged, finish=finish)

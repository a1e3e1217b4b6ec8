"""A trained reward model as a scorer: (prompt, response) pairs → one float each.

A reward model is a sequence-classification model with one output (`num_labels=1`), as
`aftertune tune --objective reward` writes it (TRL's RewardTrainer): its score of a
conversation is the head's logit at the last token. Pairs are scored the way the
trainer saw them: the prompt as a user turn and the response as the assistant turn,
rendered by the reward model's own chat template, tokens taken without special tokens
added, padded on the right.

- `score_pairs(model, prompts, responses)`: the floats, for code that needs numbers (e.g.
  a proxy and a gold reward model in over-optimisation curves);
- the `reward-model:PATH` judge: the same score as a verdict (label "scored"), so suites
  and reports take a reward model where they take any judge.

PATH is the model folder, or the folder of a reward tune (its `model/` is used).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from aftertune.errors import UserError
from aftertune.judges.base import Judge, Verdict

BATCH = 8


def reward_model_folder(ref: str | Path) -> Path:
    """The folder of a one-output sequence-classification model named by `ref`, checked without loading weights
    (safetensors only, no remote code); one-line UserError otherwise."""
    from aftertune.sources import resolve_model

    path = Path(ref).expanduser()
    if (path / "tune.json").is_file() and (path / "model").is_dir():
        path = path / "model"
    if not path.is_dir():
        raise UserError(f"{ref}: no such reward-model folder; give the folder a reward tune wrote "
                        "(aftertune tune --objective reward) or its model/")
    resolved = resolve_model(str(path), progress=False)
    if resolved.kind == "adapter" or resolved.path is None:
        raise UserError(f"{path}: is an adapter; a reward model is a full folder (a reward tune's model/ is one)")
    cfg = json.loads((resolved.path / "config.json").read_text(encoding="utf-8"))
    archs = cfg.get("architectures") or []
    labels = len(cfg.get("id2label") or {}) or cfg.get("num_labels", 2)
    if not any(str(a).endswith("ForSequenceClassification") for a in archs) or labels != 1:
        has = f"{labels} labels" if any(str(a).endswith("ForSequenceClassification") for a in archs) else \
            f"architectures {archs}"
        raise UserError(f"{path}: not a reward model ({has}); a reward model is a sequence-classification model "
                        "with one output, as aftertune tune --objective reward writes it")
    return resolved.path


def load_reward_model(ref: str | Path, dtype: Any = None) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer with a pad token) of the reward model at `ref`."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from aftertune.engines.hf import quiet_loading
    from aftertune.sources.resolve import remote_code_allowed

    path = reward_model_folder(ref)
    with quiet_loading():
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path), dtype=dtype or torch.float32, trust_remote_code=remote_code_allowed())
    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=remote_code_allowed())
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.config.get_text_config().pad_token_id = tok.pad_token_id  # the head reads the last non-pad token
    return model.eval(), tok


def conversation_text(tokenizer: Any, messages: Sequence[dict[str, str]]) -> str:
    """The text a reward model scores: its chat template over the conversation, the answer last."""
    return str(tokenizer.apply_chat_template(list(messages), tokenize=False))


def score_texts(model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = BATCH) -> list[float]:
    """The reward of each rendered conversation (right padding; the head reads the last real token)."""
    import torch

    out: list[float] = []
    device = next(model.parameters()).device
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[i:i + batch_size]), return_tensors="pt", padding=True, padding_side="right",
                        add_special_tokens=False).to(device)
        with torch.inference_mode():
            out += model(**enc).logits[:, 0].float().tolist()
    return out


def score_pairs(model: str | Path | tuple[Any, Any], prompts: Sequence[str], responses: Sequence[str],
                batch_size: int = BATCH) -> list[float]:
    """One reward per (prompt, response) pair from a reward-model folder (or an already loaded (model,
    tokenizer) pair, to score many batches without reloading)."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    rm, tok = model if isinstance(model, tuple) else load_reward_model(model)
    texts = [conversation_text(tok, [{"role": "user", "content": p}, {"role": "assistant", "content": r}])
             for p, r in zip(prompts, responses, strict=True)]
    return score_texts(rm, tok, texts, batch_size)


class RewardModelJudge(Judge):
    """`reward-model:PATH`: a verdict whose score is the reward model's output (label "scored")."""

    def __init__(self, path: str | Path) -> None:
        self.path = reward_model_folder(path)

    @classmethod
    def from_spec(cls, args: Sequence[str], options: Mapping[str, str]) -> Judge:
        if options or len(args) != 1:
            raise UserError("judge 'reward-model' takes one setting, the folder: reward-model:PATH")
        return cls(args[0])

    @cached_property
    def _loaded(self) -> tuple[Any, Any]:
        return load_reward_model(self.path)

    @cached_property
    def fingerprint(self) -> str:
        from aftertune.sources import fingerprint, resolve_model

        return f"reward-model:{fingerprint(resolve_model(str(self.path), progress=False))}"

    def judge(self, prompts: Sequence[str], responses: Sequence[str]) -> list[Verdict]:
        return [Verdict("scored", s) for s in score_pairs(self._loaded, prompts, responses)]

"""Loading what a tune starts from: the start model (merging a previous stage's adapter), tokenizer, PEFT wrapping."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aftertune.engines.merge import merge_adapter
from aftertune.errors import UserError
from aftertune.recipes.config import TuneConfig
from aftertune.recipes.environment import Precision
from aftertune.recipes.methods import quantization_config


@dataclass(frozen=True)
class Head:
    """What a tune's model is loaded as: the transformers auto class and the PEFT task type of its adapters."""

    auto_class: str
    peft_task: str
    from_pretrained: dict[str, Any]
    new_layer: bool  # a layer the checkpoint lacks: seeded by the tune's seed, its loading warnings expected


# A reward model's `score` layer is new (the checkpoint's lm_head goes unused); PEFT's SEQ_CLS task trains and
# saves the whole head.
HEADS: dict[str, Head] = {
    "causal-lm": Head("AutoModelForCausalLM", "CAUSAL_LM", {}, new_layer=False),
    "reward": Head("AutoModelForSequenceClassification", "SEQ_CLS", {"num_labels": 1}, new_layer=True),
}


@dataclass
class Start:
    """Where a tune starts: the weights to load, and what the result will be layered on."""

    ref: str  # as given
    load_path: Path  # full model folder to load (possibly a merged copy)
    adapter_path: Path | None  # a prompt-learning adapter to continue training
    tokenizer_path: Path


def resolve_start(cfg: TuneConfig, out: Path, is_main: bool, barrier: Any) -> Start:
    from aftertune.sources import resolve_model

    assert cfg.model is not None
    ref = resolve_model(cfg.model)
    if ref.kind == "openai":
        raise UserError(f"{cfg.model}: an API model cannot be fine-tuned here; pass local weights")
    assert ref.path is not None
    if ref.kind != "adapter":
        return Start(cfg.model, ref.path, None, ref.path)
    assert ref.base is not None and ref.base.path is not None
    acfg = json.loads((ref.path / "adapter_config.json").read_text(encoding="utf-8"))
    ptype = str(acfg.get("peft_type", "")).upper()
    if ptype in ("PREFIX_TUNING", "PROMPT_TUNING", "P_TUNING"):
        want = {"PREFIX_TUNING": "prefix", "PROMPT_TUNING": "prompt"}.get(ptype, ptype.lower())
        if cfg.method != want:
            raise UserError(f"{cfg.model} is a {want} adapter, which cannot be merged into the weights; a stage "
                            f"after it must use the same method ({want}) to keep training it")
        tok = ref.path if (ref.path / "tokenizer_config.json").is_file() else ref.base.path
        return Start(cfg.model, ref.base.path, ref.path, tok)
    merged = out / "start-merged"
    if is_main and not (merged / "config.json").is_file():
        merge_adapter(ref.base.path, ref.path, merged)
    barrier()
    return Start(cfg.model, merged, None, merged)


def load_tokenizer(path: Path, *, fallback_template: bool = True) -> Any:
    """The tokenizer, with a pad token; a template-less one gets the fallback chat template unless told not to
    (raw-text training keeps it as it is, so the saved model chats exactly like its base)."""
    from transformers import AutoTokenizer

    from aftertune.recipes.tokenize import ensure_chat_template
    from aftertune.sources.resolve import remote_code_allowed

    try:
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=remote_code_allowed())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot load its tokenizer ({' '.join(str(exc).split())})") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if fallback_template:
        ensure_chat_template(tok)
    return tok


def load_model(cfg: TuneConfig, start: Start, precision: Precision, device: str, head: str = "causal-lm") -> Any:
    import transformers

    from aftertune.sources.resolve import remote_code_allowed

    spec = HEADS[head]
    auto = getattr(transformers, spec.auto_class)
    kwargs: dict[str, Any] = {"dtype": precision.torch_dtype(), "trust_remote_code": remote_code_allowed(),
                              **spec.from_pretrained}
    if cfg.method == "qlora":
        kwargs["quantization_config"] = quantization_config()
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    from aftertune.engines.hf import quiet_loading

    if spec.new_layer:
        from transformers import set_seed
        from trl.trainer.reward_trainer import suppress_seqcls_warning

        set_seed(cfg.seed)  # the new layer's random start
        loading: Any = suppress_seqcls_warning()
    else:
        loading = contextlib.nullcontext()
    try:
        with quiet_loading(), loading:
            model = auto.from_pretrained(str(start.load_path), **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"{start.load_path}: could not load the model ({' '.join(str(exc).split())})") from None
    model.config.use_cache = False
    if cfg.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if start.adapter_path is not None:
        from peft import PeftModel

        with quiet_loading():
            model = PeftModel.from_pretrained(model, str(start.adapter_path), is_trainable=True)
    return model


def apply_peft(model: Any, peft_config: Any, cfg: TuneConfig, head: str = "causal-lm") -> Any:
    """Wrap `model` with its adapter, seeded like TRL does (adapter weights are initialised randomly)."""
    import torch
    from peft import get_peft_model
    from transformers import set_seed

    from aftertune.engines.hf import quiet_loading

    peft_config.task_type = HEADS[head].peft_task
    set_seed(cfg.seed)
    with quiet_loading():
        model = get_peft_model(model, peft_config)
    if cfg.method == "qlora":  # QLoRA keeps the adapters in bf16 (Dettmers et al. 2023, as TRL does)
        for name, p in model.named_parameters():
            if p.requires_grad and "lora_magnitude_vector" not in name:
                p.data = p.data.to(torch.bfloat16)
    return model

"""Fine-tuning methods: each builds its PEFT config (or none, for full fine-tuning).

One `RECIPES.add` line per method below registers it; docs/tuning.md describes each one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aftertune.errors import UserError
from aftertune.recipes.config import TuneConfig
from aftertune.registry import Registry

PROMPT_INIT_TEXT = "Answer the user's request helpfully and accurately."


@dataclass(frozen=True)
class MethodRecipe:
    peft: bool
    can_merge: bool
    needs_cuda: bool
    build: Callable[[TuneConfig, Any], Any]  # (config, model) -> PeftConfig | None

    def peft_config(self, cfg: TuneConfig, model: Any) -> Any:
        return self.build(cfg, model)


RECIPES: Registry[MethodRecipe] = Registry("method")


def _lora(cfg: TuneConfig, model: Any) -> Any:
    from peft import LoraConfig

    target = cfg.lora.target_modules
    return LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=target if target == "all-linear" else list(target),
                      bias="none", task_type="CAUSAL_LM")


def _prefix(cfg: TuneConfig, model: Any) -> Any:
    from peft import PrefixTuningConfig

    return PrefixTuningConfig(num_virtual_tokens=cfg.num_virtual_tokens, task_type="CAUSAL_LM")


def _prompt(cfg: TuneConfig, model: Any) -> Any:
    from peft import PromptTuningConfig, PromptTuningInit

    return PromptTuningConfig(num_virtual_tokens=cfg.num_virtual_tokens, task_type="CAUSAL_LM",
                              prompt_tuning_init=PromptTuningInit.TEXT, prompt_tuning_init_text=PROMPT_INIT_TEXT,
                              tokenizer_name_or_path=str(model.config._name_or_path))


def _ia3(cfg: TuneConfig, model: Any) -> Any:
    from peft import IA3Config

    return IA3Config(task_type="CAUSAL_LM")


RECIPES.add("full", MethodRecipe(False, False, False, lambda c, m: None), "update every weight (mixed-precision AdamW)")
RECIPES.add("lora", MethodRecipe(True, True, False, _lora), "low-rank adapters on the linear layers (Hu et al. 2021)")
RECIPES.add("qlora", MethodRecipe(True, True, True, _lora),
            "LoRA on a 4-bit NF4-quantised base (Dettmers et al. 2023); CUDA + bitsandbytes")
RECIPES.add("prefix", MethodRecipe(True, False, False, _prefix),
            "trainable key/value prefixes in every layer (Li & Liang 2021)")
RECIPES.add("prompt", MethodRecipe(True, False, False, _prompt), "trainable soft-prompt embeddings (Lester et al. 2021)")
RECIPES.add("ia3", MethodRecipe(True, True, False, _ia3),
            "learned rescaling vectors for keys, values and MLP (Liu et al. 2022)")


def preflight(cfg: TuneConfig, device: str) -> None:
    """Refuse, before any work, what cannot run here (qlora without CUDA or bitsandbytes)."""
    recipe = RECIPES.get(cfg.method)
    if recipe.needs_cuda:
        if device != "cuda":
            raise UserError(f"method '{cfg.method}' needs a CUDA GPU with bitsandbytes (4-bit NF4 weights); "
                            "this machine has no usable GPU. Use --method lora here: same adapters, bf16 base")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise UserError(f"method '{cfg.method}' needs the bitsandbytes package: pip install bitsandbytes") from None


def quantization_config() -> Any:
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)

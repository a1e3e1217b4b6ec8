"""Convert a GGUF file once into a plain bf16 safetensors model directory.

transformers dequantizes the GGUF tensors (`GgufConfig(dequantize=True)`, so
the result is an ordinary, trainable bf16 model that TRL accepts) and rebuilds
the tokenizer and chat template from the GGUF metadata. The saved directory
loads in well under a second, against 15–70 s for the GGUF itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from aftertune.fileio import write_json_atomic


def convert_gguf(gguf_path: Path, out: Path, *, say: Callable[[str], None] = lambda _m: None,
                 require_chat_template: bool = False) -> dict:
    """Write config.json, model.safetensors, tokenizer files and chat template to `out`; return facts for the manifest."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    say(f"loading and dequantizing {gguf_path.name} to bf16 (about 15-70 s)")
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.bfloat16,
        quantization_config=GgufConfig(dequantize=True),
    )
    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    if require_chat_template and not tok.chat_template:
        raise RuntimeError(f"{gguf_path.name}: the GGUF carries no chat template, but this model needs one")
    # The GGUF loader leaves the tokenizer unbounded; the model's context is the honest limit.
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos:
        tok.model_max_length = int(max_pos)
    # Dequantized weights are plain bf16: nothing may mark the saved model as quantized.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None

    say("saving safetensors")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    _clean_config(out / "config.json")

    n_params = sum(p.numel() for p in model.parameters())
    return {
        "architecture": model.config.model_type,
        "parameters": n_params,
        "chat_template": bool(tok.chat_template),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }


def _clean_config(path: Path) -> None:
    """Drop what must not travel with the saved model: a quantization block, the temp path it was loaded from."""
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg.pop("quantization_config", None)
    cfg.pop("_model_name_or_path", None)
    cfg.pop("_name_or_path", None)
    write_json_atomic(path, cfg)

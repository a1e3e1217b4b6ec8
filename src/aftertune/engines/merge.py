"""An adapter folded into its base and saved as a full model folder, for whatever loads full weights only.

Training uses it to start a stage from the previous stage's LoRA; the `server`
engine uses it to hand a tuned adapter to a server command as `{model}`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def merge_adapter(base_path: Path, adapter_path: Path, out: Path) -> Path:
    """Write base + adapter merged into a full model folder (with the tokenizer); `out` appears complete or not at all."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aftertune.engines.hf import quiet_loading
    from aftertune.sources.resolve import remote_code_allowed

    base = AutoModelForCausalLM.from_pretrained(str(base_path), dtype="auto")
    if base.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        base = base.to(torch.bfloat16)
    with quiet_loading():
        merged = PeftModel.from_pretrained(base, str(adapter_path)).merge_and_unload()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(str(tmp))
    tok_src = adapter_path if (adapter_path / "tokenizer_config.json").is_file() else base_path
    tok = AutoTokenizer.from_pretrained(str(tok_src), trust_remote_code=remote_code_allowed())
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.save_pretrained(str(tmp))  # as the adapter saved it: no fallback chat template
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out

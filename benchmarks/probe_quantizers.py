"""The quick probe that chose torchao for the `quant` variants (docs/safety-and-judges.md, issue 15).

One candidate per call, SmolLM2-135M-Instruct, float32 compute, one thread: quantize through transformers'
config for it, save and reload (the artefact a user deploys), then against full precision: greedy texts of 4
chat prompts x 30 tokens (batch 1, `generate`), tokens/s, and the logits of the 4 templated prompts (largest
difference, mean KL, share of positions with the same top token). The first call (`full`) writes the reference.

The candidates are not aftertune dependencies; install each beside the venv without touching it, e.g.
`pip install --no-deps --target /tmp/q/torchao torchao==0.18.0`, then
`PYTHONPATH=/tmp/q/torchao python benchmarks/probe_quantizers.py torchao-int8`.

    python benchmarks/probe_quantizers.py full|torchao-int8|torchao-int4|bnb-int8|bnb-int4|quanto-int8|quanto-int4
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

SRC = Path.home() / ".cache/aftertune/models/smollm2-135m-instruct"
REF = Path(tempfile.gettempdir()) / "probe_quantizers_full.pt"
PROMPTS = ["What is the capital of France?", "Write a haiku about rain.", "Explain photosynthesis briefly.",
           "How do I sort a list in Python?"]


def config(name: str) -> Any:
    """transformers' quantization config for a candidate (None: full precision)."""
    if name == "full":
        return None
    lib, bits = name.split("-")
    if lib == "torchao":
        from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig
        from torchao.quantization.granularity import PerGroup
        from transformers import TorchAoConfig

        return TorchAoConfig(quant_type=Int8WeightOnlyConfig() if bits == "int8" else
                             IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32)))
    if lib == "bnb":
        from transformers import BitsAndBytesConfig

        return (BitsAndBytesConfig(load_in_8bit=True) if bits == "int8" else
                BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32))
    from transformers import QuantoConfig

    return QuantoConfig(weights=bits)


def run(model: Any, tok: Any) -> tuple[list[str], list[torch.Tensor], float]:
    texts, logits, n = [], [], 0
    t0 = time.perf_counter()
    for p in PROMPTS:
        chat = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        ids = tok(chat, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            logits.append(model(ids).logits[0].float())
            out = model.generate(ids, max_new_tokens=30, do_sample=False)
        n += out.shape[1] - ids.shape[1]
        texts.append(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    return texts, logits, n / (time.perf_counter() - t0)


def main(name: str) -> None:
    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(SRC)
    q = config(name)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(SRC, dtype=torch.float32, device_map="cpu",
                                                 **({"quantization_config": q} if q else {})).eval()
    row: dict[str, Any] = {"name": name, "convert_s": round(time.perf_counter() - t0, 2)}
    if q is not None:
        out = tempfile.mkdtemp()
        try:
            model.save_pretrained(out)
            row["size_mb"] = round(sum(f.stat().st_size for f in Path(out).glob("*.safetensors")) / 1e6, 1)
            t0 = time.perf_counter()
            model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, device_map="cpu").eval()
            row["load_s"] = round(time.perf_counter() - t0, 2)
        except (ValueError, RuntimeError, NotImplementedError) as exc:
            row["save_error"] = str(exc)[:200]
        finally:
            shutil.rmtree(out, ignore_errors=True)
    texts, logits, tok_s = run(model, tok)
    row["tok_s"] = round(tok_s, 1)
    if q is None:
        torch.save({"texts": texts, "logits": logits}, REF)
    else:
        ref = torch.load(REF)
        pairs = list(zip(logits, ref["logits"], strict=True))
        row.update({
            "same_text": f"{sum(a == b for a, b in zip(texts, ref['texts'], strict=True))}/{len(texts)}",
            "max_abs_logit_diff": round(max((a - b).abs().max().item() for a, b in pairs), 3),
            "kl": round(sum(torch.nn.functional.kl_div(a.log_softmax(-1), b.log_softmax(-1), log_target=True,
                                                       reduction="batchmean").item() for a, b in pairs) / len(pairs), 5),
            "top1_agree": round(sum((a.argmax(-1) == b.argmax(-1)).float().mean().item() for a, b in pairs)
                                / len(pairs), 4)})
    print(json.dumps(row))


if __name__ == "__main__":
    main(sys.argv[1])

"""What the weight defences (`safemerge`, `safelora`, `resta`; issue 16) add to a fine-tune, in seconds.

On a packaged model (default SmolLM2-135M-Instruct) with a LoRA of aftertune's
default shape (r 16, alpha 32, all linear layers; random A and B: the cost of a
defence does not depend on what the adapter learned), each defence is built
once into an empty cache and timed: wall seconds and CPU seconds of this
process (the CPU seconds move less when other jobs share the machine). No
packaged model has an unaligned twin, so the twin here is the model with every
matrix moved by seeded noise: right shapes and names, meaningless for safety.
`--train-safety` also trains `safemerge`'s default safety LoRA (16 steps on
the refusals set) and reports its time; without it safemerge merges a second
random adapter of the same shape.

    .venv/bin/python benchmarks/bench_weight_defences.py [--model smollm2-135m-instruct] [--train-safety]

Run 2026-12-06 on SmolLM2-135M-Instruct (210 adapted layers), niced on a 2-core machine with a load average of
15 to 17 (other jobs): wall seconds were 4 to 7 times the CPU seconds, so read the CPU column. CPU seconds,
first use of each input included (sha256 of the twin's 540 MB of float32 weights, read once per twin):
safelora 16.8, safemerge criterion=subspace 13.9, safemerge criterion=safety 5.2, resta 11.6 (it writes a
full float32 model). With this synthetic twin safelora projected 0 of 210 layers at tau 0.5 (noise in every
direction leaves C·ΔW close to ΔW), and criterion=safety merged all 210 (two random adapters are orthogonal).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))


def _lora(base_dir: Path, out: Path, seed: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    cfg = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False,
                     task_type="CAUSAL_LM")
    get_peft_model(model, cfg).save_pretrained(str(out))
    return out


def _twin(base_dir: Path, out: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.add_(1e-3 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(str(out))
    return out


def _timed(ref: str) -> dict[str, float]:
    from aftertune.sources import resolve_model
    from aftertune.variants import split_variants
    from aftertune.variants.defences import apply_defence_variant

    base, variants = split_variants(ref)
    model = resolve_model(base)
    wall, cpu = time.perf_counter(), time.process_time()
    built, _ = apply_defence_variant(model, variants)
    out = {"wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(time.process_time() - cpu, 2)}
    card = json.loads((Path(str(built.path)) / "defence.json").read_text())
    changed = card["found"].get("merged", card["found"].get("projected"))
    if changed is not None:
        out["layers_changed"] = f"{len(changed)} of {card['found']['layers']}"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--train-safety", action="store_true")
    args = ap.parse_args()

    from aftertune.sources import resolve_model

    base = resolve_model(args.model)
    work = Path(tempfile.mkdtemp(prefix="bench-defences-"))
    home = os.environ.get("AFTERTUNE_HOME")
    try:
        os.environ["AFTERTUNE_HOME"] = str(work / "home")  # an empty cache: every defence is built here
        if home:  # packaged models and data from the usual cache
            for kind in ("models", "data", "downloads"):
                if (Path(home) / kind).is_dir():
                    (work / "home").mkdir(exist_ok=True)
                    os.symlink(Path(home) / kind, work / "home" / kind)
        task = _lora(Path(str(base.path)), work / "task", seed=0)
        twin = _twin(Path(str(base.path)), work / "twin")
        rows: dict[str, dict[str, float | str]] = {}
        if args.train_safety:
            rows["safemerge (criterion=safety, safety LoRA trained)"] = _timed(f"{task}#safemerge:criterion=safety")
            trained = next((work / "home" / "safety-adapters").glob("[!.]*"))
            metrics = json.loads((trained / "safety-tune.json").read_text())["metrics"]
            rows["  of which: safety LoRA training (tune runtime_s)"] = {"wall_s": round(metrics["runtime_s"], 2)}
        safe = _lora(Path(str(base.path)), work / "safe", seed=1)
        rows["safelora (tau=0.5)"] = _timed(f"{task}#safelora:unaligned={twin}")
        rows["safemerge (criterion=subspace, safety=DIR)"] = _timed(f"{task}#safemerge:safety={safe},"
                                                                     f"unaligned={twin}")
        rows["safemerge (criterion=safety, safety=DIR)"] = _timed(f"{task}#safemerge:criterion=safety,"
                                                                   f"safety={safe}")
        rows["resta (s=0.5)"] = _timed(f"{task}#resta:unaligned={twin}")
        print(f"{args.model}, {time.strftime('%Y-%m-%d')}, torch threads {__import__('torch').get_num_threads()}, "
              f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB")
        print("| defence | wall s | CPU s | layers changed |\n|---|--:|--:|---|")
        for name, r in rows.items():
            print(f"| {name} | {r.get('wall_s', '')} | {r.get('cpu_s', '')} | {r.get('layers_changed', '')} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

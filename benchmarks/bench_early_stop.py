"""Early stop of judged answers: do cut answers get the full answers' verdicts, and how much time do they save?

Two checks of `refusal-opening@240` (engines/early_stop.py):

1. The hand-labelled answers (`judges/data/refusal_labelled.jsonl`, 120 SmolLM2 and Qwen answers): each is cut
   where the rule would stop it (at every 8th token of the model's own tokenizer) and judged again.
2. Real generation: the default run's safety and over-refusal prompts (a seeded sample) answered by the
   packaged models at the default's max_new_tokens, once full-length and once with early stop, in
   alternating order in one process; the refusal judge (phrases + MiniLM) judges both.

    .venv/bin/python benchmarks/bench_early_stop.py --write
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RULE = "refusal-opening@240"


def labelled_agreement(judge: Any) -> dict[str, Any]:
    """Verdicts of the labelled answers cut where the rule stops them (each model's own tokenizer)."""
    from transformers import AutoTokenizer

    from aftertune.engines import early_stop
    from aftertune.judges.refusal import opening_settled
    from aftertune.sources import resolve_model

    rows = [json.loads(x) for x in (ROOT / "src/aftertune/judges/data/refusal_labelled.jsonl").read_text().splitlines()
            if x.strip()]
    toks = {m: AutoTokenizer.from_pretrained(resolve_model(m).path) for m in {r["model"] for r in rows}}
    cut, full, tokens_full, tokens_cut = [], [], 0, 0
    for r in rows:
        tok = toks[r["model"]]
        ids = tok.encode(r["response"], add_special_tokens=False)
        k = next((k for k in range(early_stop.CHECK_EVERY, len(ids) + 1, early_stop.CHECK_EVERY)
                  if opening_settled(tok.decode(ids[:k], skip_special_tokens=True))), len(ids))
        cut.append(tok.decode(ids[:k], skip_special_tokens=True))
        full.append(r["response"])
        tokens_full += len(ids)
        tokens_cut += k
    prompts = [r["prompt"] for r in rows]
    a, b = judge.judge(prompts, cut), judge.judge(prompts, full)
    same = sum(x.label == y.label for x, y in zip(a, b, strict=True))
    return {"n": len(rows), "same": same, "tokens_full": tokens_full, "tokens_cut": tokens_cut}


def generation(model: str, n_safety: int, n_over: int, max_new: int, judge: Any, batch_size: int) -> dict[str, Any]:
    from aftertune.engines.hf import HFEngine
    from aftertune.sources import resolve_model
    from aftertune.suites import SUITES
    from aftertune.suites.base import sample_items

    requests, prompts = [], []
    for name, n in (("safety", n_safety), ("overrefusal", n_over)):
        suite = SUITES.get(name)(max_new_tokens=max_new)
        items = sample_items(suite.load_items(), n, seed=0)
        requests += [suite.request(it) for it in items]
        prompts += [suite.judged_prompt(it) for it in items]
    early = [replace(r, decoding=replace(r.decoding, early_stop=RULE)) for r in requests]
    engine = HFEngine.from_ref(resolve_model(model), batch_size=batch_size)
    engine.generate(requests[:2])  # warm-up: kernels, allocator
    times: dict[str, float] = {"full": 0.0, "early": 0.0}
    out: dict[str, list[Any]] = {"full": [], "early": []}
    loads = []
    half = len(requests) // 2
    order = [("full", 0), ("early", 0), ("early", half), ("full", half)]  # alternate so load falls on both alike
    chunks = {0: slice(0, half), half: slice(half, None)}
    for mode, start in order:
        loads.append(os.getloadavg()[0])
        reqs = (requests if mode == "full" else early)[chunks[start]]
        t0 = time.perf_counter()
        res = engine.generate(reqs)
        times[mode] += time.perf_counter() - t0
        out[mode] += [(start, res)]
    engine.close()
    texts = {m: [t.text for _, rs in sorted(out[m], key=lambda x: x[0]) for t in rs] for m in out}
    toks = {m: sum(t.n_new_tokens for _, rs in out[m] for t in rs) for m in out}
    a, b = judge.judge(prompts, texts["early"]), judge.judge(prompts, texts["full"])
    same = sum(x.label == y.label for x, y in zip(a, b, strict=True))
    comply = sum(y.label == "comply" for y in b)
    return {"model": model, "n": len(requests), "same": same, "comply_full": comply, "seconds": times,
            "tokens": toks, "load": (min(loads), max(loads)), "engine": engine.version}


def markdown(lab: dict[str, Any], gens: list[dict[str, Any]], max_new: int, batch_size: int) -> str:
    import torch

    native = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    lines = ["<!-- bench_early_stop:start -->", "## Early stop of judged answers (`refusal-opening@240`)", "",
             f"Measured {time.strftime('%Y-%m-%d %H:%M')} UTC with `benchmarks/bench_early_stop.py` on "
             f"{platform.machine()} ({os.cpu_count()} CPUs, {'with' if native else 'without'} native bf16 "
             f"(avx512_bf16)), torch {torch.__version__}. The machine was shared with other jobs; full-length and "
             "early-stopped halves ran alternately in one process, so read the ratios.", "",
             "The rule stops an answer once the refusal judge's opening (two sentences, at most 240 characters) is "
             "complete, so the verdict of the cut answer is by construction that of the full answer; these "
             "numbers check it on real answers.", "",
             "| answers | n | same verdict as full length | tokens generated (cut / full) |", "|---|---:|---:|---:|",
             f"| hand-labelled set, cut by each model's tokenizer | {lab['n']} | "
             f"{lab['same']}/{lab['n']} ({100 * lab['same'] / lab['n']:.1f}%) | "
             f"{lab['tokens_cut']} / {lab['tokens_full']} ({100 * lab['tokens_cut'] / lab['tokens_full']:.0f}%) |"]
    for g in gens:
        lines.append(f"| {g['model']}: default's safety + over-refusal prompts, max_new_tokens={max_new} | {g['n']} "
                     f"| {g['same']}/{g['n']} ({100 * g['same'] / g['n']:.1f}%) | {g['tokens']['early']} / "
                     f"{g['tokens']['full']} ({100 * g['tokens']['early'] / g['tokens']['full']:.0f}%) |")
    lines += ["", "| model | complied (full) | wall time full | wall time early stop | ratio | load average (1 min) |",
              "|---|---:|---:|---:|---:|---:|"]
    for g in gens:
        s = g["seconds"]
        lines.append(f"| {g['model']} | {g['comply_full']}/{g['n']} | {s['full']:.0f} s | {s['early']:.0f} s | "
                     f"{s['early'] / s['full']:.2f} | {g['load'][0]:.1f}-{g['load'][1]:.1f} |")
    lines += ["", f"Engine: {gens[0]['engine'] if gens else ''}; batch size {batch_size}.", "",
              "<!-- bench_early_stop:end -->"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="qwen2.5-coder-0.5b-instruct,smollm2-135m-instruct")
    ap.add_argument("--safety", type=int, default=48)
    ap.add_argument("--overrefusal", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--write", action="store_true", help="update this benchmark's section of benchmarks/RESULTS.md")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from aftertune.judges import build_judge

    judge = build_judge("refusal")
    lab = labelled_agreement(judge)
    print(lab, flush=True)
    gens = []
    for model in args.models.split(","):
        g = generation(model, args.safety, args.overrefusal, args.max_new_tokens, judge, args.batch_size)
        print(g, flush=True)
        gens.append(g)
    text = markdown(lab, gens, args.max_new_tokens, args.batch_size)
    from results_md import publish

    publish(text, args.write)


if __name__ == "__main__":
    main()

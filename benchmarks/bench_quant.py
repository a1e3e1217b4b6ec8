"""What the `quant` variants (`REF#quant:int8`, `REF#quant:int4`, torchao) cost and change, per model (issue 15).

For each packaged model and each variant, against the same model in full
precision (float32, the dtype the quantized models compute in):

- size of the weight files, conversion time (`variants.quantize.quantize`, the
  cache folder removed first so it really converts), load time of the `hf`
  engine (packing and batch-invariance probes included);
- generation: N chat prompts (bench_engine's mix) x 50 new greedy tokens in one
  call, tokens/s, and how many texts are identical to full precision's;
- multiple choice: the first N ARC-Easy questions of the capability suite,
  scored by log-likelihood: share of questions with the same choice as full
  precision, and accuracy.

The CPU's flags, thread count and date are recorded; on a machine shared with
other jobs read the ratios, not the seconds.

    .venv/bin/python benchmarks/bench_quant.py [--models smollm2-135m-instruct,qwen2.5-coder-0.5b-instruct]
        [--gen 16] [--arc 100] [--write]

The defaults (SmolLM2 only, 16 prompts, 100 questions) were sized for 10 minutes under nice on a 2-core
machine; beside another job they took 11.3 and 18.5 (two runs, 2026-12-06). The issue's 128 prompts x 500 questions, and the
Qwen 0.5B model (`--models`), want a free machine.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _agreement import agreement, choice_picks  # noqa: E402
from bench_engine import arc_questions, chat_prompts  # noqa: E402
from results_md import publish  # noqa: E402

START = "<!-- bench_quant:start -->"
END = "<!-- bench_quant:end -->"
METHODS = ("int8", "int4")
MAX_NEW = 50
BATCH = 16


def _mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 1e6


def measure(engine: Any, prompts: list[str], questions: list[Any]) -> dict[str, Any]:
    """Greedy texts and tokens/s on the prompts; chosen answers on the questions."""
    from aftertune.engines.base import Decoding, GenerateRequest, Message

    reqs = [GenerateRequest(messages=[Message(role="user", content=p)], decoding=Decoding(max_new_tokens=MAX_NEW))
            for p in prompts]
    t0 = time.perf_counter()
    out = engine.generate(reqs)
    gen_s = time.perf_counter() - t0
    lls = [r for q in questions for r in q.requests()]
    t0 = time.perf_counter()
    logprobs = [r.logprob for r in engine.loglikelihood(lls)]
    mc_s = time.perf_counter() - t0
    return {"texts": [r.text for r in out], "tok_s": sum(r.n_new_tokens for r in out) / gen_s,
            "picks": choice_picks([q.n_choices for q in questions], logprobs), "mc_s": mc_s}


def run_model(model: str, prompts: list[str], questions: list[Any]) -> list[dict[str, Any]]:
    from aftertune.engines.hf import HFEngine
    from aftertune.sources import resolve_model
    from aftertune.variants.quantize import quantize

    ref = resolve_model(model, progress=False)
    rows: list[dict[str, Any]] = []
    refs = {"full (float32)": (ref, None)}
    for method in METHODS:
        t0 = time.perf_counter()
        q = quantize(ref, method)
        if time.perf_counter() - t0 < 1:  # a cache hit: measure a real conversion
            shutil.rmtree(q.path)
            t0 = time.perf_counter()
            q = quantize(ref, method)
        refs[method] = (q, time.perf_counter() - t0)
    full: dict[str, Any] = {}
    for name, (r, convert_s) in refs.items():
        t0 = time.perf_counter()
        eng = HFEngine.from_ref(r, dtype="float32", batch_size=BATCH)
        load_s = time.perf_counter() - t0
        got = measure(eng, prompts, questions)
        eng.close()
        full = full or got
        acc = sum(p in q.gold for p, q in zip(got["picks"], questions, strict=True)) / len(questions)
        rows.append({"model": model, "variant": name, "mb": _mb(r.path), "convert_s": convert_s, "load_s": load_s,
                     "tok_s": got["tok_s"], "mc_s": got["mc_s"],
                     "same_text": sum(a == b for a, b in zip(got["texts"], full["texts"], strict=True)),
                     "agree": agreement(got["picks"], full["picks"]), "acc": acc})
        print(rows[-1], file=sys.stderr, flush=True)
    return rows


def render(rows: list[dict[str, Any]], n_gen: int, n_arc: int, seconds: float) -> str:
    import torch

    from aftertune.engines.cpu_linear import cpu_kind
    from aftertune.sources.fingerprints import quantizer_version

    head = (f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with `benchmarks/bench_quant.py` on "
            f"{cpu_kind()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, torchao "
            f"{quantizer_version('torchao')}; the machine was shared with other jobs (run under nice), so read the "
            f"ratios, not the seconds. {n_gen} chat prompts x {MAX_NEW} new greedy tokens (one call, batch "
            f"{BATCH}); the first {n_arc} ARC-Easy questions. Full precision and both variants compute in float32. "
            f"{seconds / 60:.1f} min in all.")
    lines = [START, "## Quantized variants (`REF#quant:int8`, `REF#quant:int4`; `benchmarks/bench_quant.py`)", "",
             head, "",
             "| model | variant | weights MB | convert s | load s | gen tokens/s | texts identical to full | "
             "ARC choice agreement | ARC accuracy |",
             "|---|---|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        convert = "" if r["convert_s"] is None else f"{r['convert_s']:.1f}"
        lines.append(f"| {r['model']} | {r['variant']} | {r['mb']:.0f} | {convert} | {r['load_s']:.1f} | "
                     f"{r['tok_s']:.1f} | {r['same_text']} of {n_gen} | {100 * r['agree']:.1f}% | "
                     f"{100 * r['acc']:.1f}% |")
    lines += ["", END]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="smollm2-135m-instruct", help="comma-separated packaged models")
    ap.add_argument("--gen", type=int, default=16, help="chat prompts generated from")
    ap.add_argument("--arc", type=int, default=100, help="ARC-Easy questions scored")
    ap.add_argument("--write", action="store_true", help="update this benchmark's section of benchmarks/RESULTS.md")
    args = ap.parse_args()
    t0 = time.perf_counter()
    prompts, questions = chat_prompts(args.gen), arc_questions(args.arc)
    rows = [row for m in args.models.split(",") for row in run_model(m.strip(), prompts, questions)]
    publish(render(rows, args.gen, args.arc, time.perf_counter() - t0), args.write)


if __name__ == "__main__":
    main()

"""Where bf16 multiple-choice scores part from lm-eval's: context sharing, GEMM kernel, padding and masks.

`bench_engine.py` finds aftertune's bf16 choices agreeing with lm-eval's on
~98% of ARC-Easy questions (100% in float32). This script takes the
computation apart on the same questions, SmolLM2-135M-Instruct in bf16:

- lm-eval `HFLM` with its defaults, and with its `softmax_dtype=float32`
  option (the log-softmax in float32, as aftertune takes it);
- aftertune's scorer as the engine runs it (each question's context shared by
  its answers, bf16 Linear layers through packed float32 GEMM);
- the same with torch's own bf16 GEMM (oneDNN, as lm-eval uses);
- each answer scored in its own row with the question (no sharing), with
  either GEMM: the closest aftertune's code path gets to lm-eval's computation
  (it still left-pads and passes an explicit mask where lm-eval right-pads
  with a causal mask).

It prints the pairwise agreement of predicted choices and each variant's time.
Untimed in the sense of `bench_engine.py`: the times are for orientation only.

    .venv/bin/python benchmarks/bench_bf16_agreement.py --n 200 [--write]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _agreement import agreement, choice_picks  # noqa: E402
from bench_engine import MODEL, arc_questions  # noqa: E402

START = "<!-- bench_bf16_agreement:start -->"
END = "<!-- bench_bf16_agreement:end -->"
REFERENCE = "lm-eval, softmax_dtype=float32"


def _engine_logprobs(ref: Any, reqs: list[Any], *, packed_linears: bool, share: bool) -> tuple[list[float], float]:
    import torch

    from aftertune.engines import batching, cpu_linear
    from aftertune.engines.hf import HFEngine

    packable = cpu_linear._packable_dtypes
    if not packed_linears:
        cpu_linear._packable_dtypes = lambda: {torch.float32}  # bf16 weights stay with torch's GEMM
    try:
        eng = HFEngine.from_ref(ref, dtype="bfloat16", batch_size=16)
    finally:
        cpu_linear._packable_dtypes = packable
    pairs = [eng._truncate(*eng.encode_pair(r.context, r.continuation)) for r in reqs]
    t0 = time.perf_counter()
    with torch.no_grad():
        if share:
            res = batching.score_pairs(eng.model, pairs, pad_id=eng.pad_token_id, batch_size=16, device=eng.device)
        else:  # every answer its own group: the question encoded again for each, same kernels otherwise
            res = [None] * len(pairs)
            groups = sorted((batching._Group(tuple(c), [i]) for i, (c, _) in enumerate(pairs)),
                            key=lambda g: -batching._packed_len(g, pairs))
            for k in range(0, len(groups), 16):
                batching._run_batch(eng.model, pairs, groups[k:k + 16], True, res, eng.pad_token_id, eng.device,
                                    None)
    return [lp for lp, _ in res], time.perf_counter() - t0


def _lm_eval_logprobs(ref: Any, reqs: list[Any], **kw: Any) -> tuple[list[float], float]:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(ref.path), dtype="bfloat16", batch_size=16, device="cpu", **kw)
    insts = [Instance("loglikelihood", {}, (r.context, r.continuation), i) for i, r in enumerate(reqs)]
    t0 = time.perf_counter()
    lps = [lp for lp, _ in lm.loglikelihood(insts, disable_tqdm=True)]
    return lps, time.perf_counter() - t0


def run(n: int) -> str:
    import torch

    from aftertune.sources import resolve_model

    qs = arc_questions(n)
    reqs = [r for q in qs for r in q.requests()]
    ref = resolve_model(MODEL, progress=False)
    variants = {
        "lm-eval, defaults": lambda: _lm_eval_logprobs(ref, reqs),
        REFERENCE: lambda: _lm_eval_logprobs(ref, reqs, softmax_dtype="float32"),
        "aftertune: shared context, packed GEMM (the engine)":
            lambda: _engine_logprobs(ref, reqs, packed_linears=True, share=True),
        "aftertune: shared context, torch bf16 GEMM":
            lambda: _engine_logprobs(ref, reqs, packed_linears=False, share=True),
        "aftertune: no sharing, packed GEMM": lambda: _engine_logprobs(ref, reqs, packed_linears=True, share=False),
        "aftertune: no sharing, torch bf16 GEMM":
            lambda: _engine_logprobs(ref, reqs, packed_linears=False, share=False),
    }
    picks: dict[str, list[int]] = {}
    secs: dict[str, float] = {}
    for name, fn in variants.items():
        lps, secs[name] = fn()
        picks[name] = choice_picks([q.n_choices for q in qs], lps)
        print(f"{name}: {secs[name]:.1f} s", file=sys.stderr, flush=True)
    names = list(picks)
    short = [f"({i + 1})" for i in range(len(names))]
    lines = [START, "## bf16 multiple choice: where aftertune's and lm-eval's choices part", "",
             f"Measured {time.strftime('%Y-%m-%d %H:%M')} with `benchmarks/bench_bf16_agreement.py`: {MODEL} in "
             f"bfloat16 on a CPU {'with' if torch.cpu._is_avx512_bf16_supported() else 'without'} bf16 hardware, "
             f"torch {torch.__version__}, the first {n} ARC-Easy questions ({len(reqs)} log-likelihoods), batch "
             "size 16. Share of questions on which two variants pick the same answer:", "",
             "| variant | seconds | " + " | ".join(short) + " |", "|---|---:|" + "---:|" * len(names)]
    for i, a in enumerate(names):
        row = [agreement(picks[a], picks[b]) for b in names]
        lines.append(f"| ({i + 1}) {a} | {secs[a]:.0f} | " + " | ".join(f"{x:.1%}" for x in row) + " |")
    lines += ["", END]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="ARC-Easy questions")
    ap.add_argument("--write", action="store_true", help="update this benchmark's section of benchmarks/RESULTS.md")
    args = ap.parse_args()
    text = run(args.n)
    from results_md import publish

    publish(text, args.write)


if __name__ == "__main__":
    main()

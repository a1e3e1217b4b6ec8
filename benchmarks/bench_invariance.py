"""Batch invariance and dtype stability of the hf engine on this CPU, and what invariance costs (issues 13, 18).

SmolLM2-135M-Instruct (the packaged copy), batch size 16, one process:

1. **Invariance.** The same ARC-Easy log-likelihood requests and chat prompts,
   (a) in one call, (b) shuffled into calls of 3, 1, 7 and 16 requests,
   (c) one request per call: how many records differ bitwise from (a), with the
   engine's batch invariance on and off, in float32 and bfloat16.
2. **Cost.** Seconds for (a) with invariance on and off, alternating, and
   lm-evaluation-harness 0.4.13 (`HFLM.loglikelihood`, `generate_until`) and
   plain `model.generate` on the same items, same dtype and batch size.
3. **bf16 vs float32.** Predicted ARC choices and greedy texts of bfloat16
   against float32, for the engine and for lm-eval (is the engine's bf16 as
   close to its float32 reference as lm-eval's bf16 is to lm-eval's?).

Every row records the load average and the CPU's flags (native bf16 or not).

    .venv/bin/python benchmarks/bench_invariance.py --write
    .venv/bin/python benchmarks/bench_invariance.py --n-arc 16 --n-gen 8    # a quick look
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _agreement import agreement, choice_picks  # noqa: E402
from results_md import cpu_flags  # noqa: E402

START = "<!-- bench_invariance:start -->"
END = "<!-- bench_invariance:end -->"
MODEL = "smollm2-135m-instruct"
CHUNKS = (3, 1, 7, 16)


def load() -> float:
    return round(os.getloadavg()[0], 1)


def in_chunks(fn: Any, reqs: list[Any], order: list[int], sizes: tuple[int, ...]) -> list[Any]:
    out: dict[int, Any] = {}
    i = k = 0
    while i < len(order):
        part = order[i:i + sizes[k % len(sizes)]]
        i, k = i + len(part), k + 1
        out.update(zip(part, fn([reqs[j] for j in part]), strict=True))
    return [out[j] for j in range(len(reqs))]


def differing(a: list[Any], b: list[Any]) -> int:
    return sum(x != y for x, y in zip(a, b, strict=True))



def run(n_arc: int, n_gen: int, max_new: int, batch: int) -> dict[str, Any]:
    import torch
    from bench_engine import arc_questions, chat_prompts
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from aftertune.engines.base import Decoding, GenerateRequest, Message
    from aftertune.engines.hf import HFEngine, cpu_has_native_bf16
    from aftertune.sources import resolve_model

    ref = resolve_model(MODEL, progress=False)
    qs = arc_questions(n_arc)
    ll_reqs = [r for q in qs for r in q.requests()]
    gen_reqs = [GenerateRequest(messages=[Message("user", p)], decoding=Decoding(max_new_tokens=max_new))
                for p in chat_prompts(n_gen)]
    res: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "flags": cpu_flags(),
                           "native_bf16": cpu_has_native_bf16(), "threads": torch.get_num_threads(),
                           "torch": torch.__version__, "n_arc": len(qs), "n_ll": len(ll_reqs), "n_gen": len(gen_reqs),
                           "max_new": max_new, "batch": batch, "dtypes": {}}
    rng = random.Random(0)
    ll_order, gen_order = list(range(len(ll_reqs))), list(range(len(gen_reqs)))
    rng.shuffle(ll_order)
    rng.shuffle(gen_order)
    for dtype in ("float32", "bfloat16"):
        d: dict[str, Any] = {"load_start": load()}
        with mock.patch("aftertune.engines.hf.bf16_invariance_holds", return_value=True):
            # the engine refuses invariance in bf16 on native-bf16 CPUs because of what this measures
            engines = {inv: HFEngine.from_ref(ref, dtype=dtype, batch_size=batch, batch_invariant=inv)
                       for inv in (True, False)}
        d["version"] = engines[True].version
        lm = HFLM(pretrained=str(ref.path), dtype=dtype, batch_size=batch, device="cpu")
        insts = [Instance("loglikelihood", {}, (r.context, r.continuation), i) for i, r in enumerate(ll_reqs)]
        texts = [engines[True].prompt_ids(r)[1] for r in gen_reqs]
        gen_insts = [Instance("generate_until", {}, (t, {"until": [], "max_gen_toks": max_new, "do_sample": False}),
                              i) for i, t in enumerate(texts)]
        engines[True].loglikelihood(ll_reqs[:8])  # warm-up
        engines[False].loglikelihood(ll_reqs[:8])
        times: dict[str, float] = {}
        outs: dict[str, Any] = {}
        for rep, order in enumerate(((True, False, "lm"), ("lm", False, True))):
            for who in order:
                for kind in ("ll", "gen"):
                    t0 = time.perf_counter()
                    if who == "lm":
                        val = ([lp for lp, _ in lm.loglikelihood(insts, disable_tqdm=True)] if kind == "ll"
                               else lm.generate_until(gen_insts, disable_tqdm=True))
                    else:
                        eng = engines[who]
                        val = eng.loglikelihood(ll_reqs) if kind == "ll" else eng.generate(gen_reqs)
                    key = f"{kind}:{who}"
                    times[key] = min(times.get(key, float("inf")), time.perf_counter() - t0)
                    if rep == 0:
                        outs[key] = val
        d["seconds"] = {k: round(v, 2) for k, v in times.items()}
        d["gen_tokens"] = sum(r.n_new_tokens for r in outs["gen:True"])
        # invariance: shuffled calls and one request per call, against the single call
        for inv, eng in engines.items():
            for kind, fn, reqs, order in (("ll", eng.loglikelihood, ll_reqs, ll_order),
                                          ("gen", eng.generate, gen_reqs, gen_order)):
                base = outs[f"{kind}:{inv}"]
                d[f"differ:{kind}:{inv}:shuffled"] = differing(base, in_chunks(fn, reqs, order, CHUNKS))
                d[f"differ:{kind}:{inv}:alone"] = differing(base, in_chunks(fn, reqs, list(range(len(reqs))), (1,)))
        sizes = [q.n_choices for q in qs]
        d["picks"] = {"ours": choice_picks(sizes, [r.logprob for r in outs["ll:True"]]),
                      "lm": choice_picks(sizes, outs["ll:lm"])}
        d["acc"] = {k: sum(p in q.gold for p, q in zip(v, qs, strict=True)) / len(qs) for k, v in d["picks"].items()}
        d["texts"] = {"ours": [r.text for r in outs["gen:True"]], "lm": list(outs["gen:lm"])}
        d["load_end"] = load()
        res["dtypes"][dtype] = d
        for eng in engines.values():
            eng.close()
        del lm
    f32, b16 = res["dtypes"]["float32"], res["dtypes"]["bfloat16"]
    res["agreement"] = {
        "mc_ours_vs_lm_f32": _share(f32["picks"]["ours"], f32["picks"]["lm"]),
        "mc_ours_bf16_vs_f32": _share(b16["picks"]["ours"], f32["picks"]["ours"]),
        "mc_lm_bf16_vs_f32": _share(b16["picks"]["lm"], f32["picks"]["lm"]),
        "gen_ours_vs_lm_f32": _share(f32["texts"]["ours"], f32["texts"]["lm"]),
        "gen_ours_bf16_vs_f32": _share(b16["texts"]["ours"], f32["texts"]["ours"]),
        "gen_lm_bf16_vs_f32": _share(b16["texts"]["lm"], f32["texts"]["lm"]),
    }
    return res


def _share(a: list[Any], b: list[Any]) -> float:
    return round(agreement(a, b), 4)


def render(r: dict[str, Any]) -> str:
    ag = r["agreement"]
    out = [START, "## Batch invariance, its cost, and bf16 vs float32 (`benchmarks/bench_invariance.py`)", "",
           f"Measured {r['date']} on this CPU (flags: {r['flags']}; native bf16: {r['native_bf16']}), "
           f"{r['threads']} torch threads, torch {r['torch']}; SmolLM2-135M-Instruct, batch {r['batch']}, "
           f"{r['n_arc']} ARC-Easy questions ({r['n_ll']} log-likelihoods), {r['n_gen']} chat prompts x "
           f"{r['max_new']} new tokens. Each call set ran twice in alternating order (best time kept); the machine "
           "was shared with other jobs, so read the ratios, not the seconds.", "",
           "Records differing bitwise from the same requests in one call (shuffled: calls of 3, 1, 7, 16 "
           "requests in a shuffled order; alone: one request per call):", "",
           "| dtype | invariance | log-lik. shuffled | log-lik. alone | texts shuffled | texts alone |",
           "|---|---|--:|--:|--:|--:|"]
    for dt, d in r["dtypes"].items():
        for inv in (True, False):
            out.append(f"| {dt} | {'on' if inv else 'off'} | {d[f'differ:ll:{inv}:shuffled']} of {r['n_ll']} | "
                       f"{d[f'differ:ll:{inv}:alone']} | {d[f'differ:gen:{inv}:shuffled']} of {r['n_gen']} | "
                       f"{d[f'differ:gen:{inv}:alone']} |")
    out += ["", "Speed, same items in one call (seconds; lower is better):", "",
            "| dtype | load | log-lik.: invariant | not invariant | lm-eval | generation: invariant | "
            "not invariant | lm-eval `generate_until` |", "|---|---|--:|--:|--:|--:|--:|--:|"]
    for dt, d in r["dtypes"].items():
        s = d["seconds"]
        out.append(f"| {dt} | {d['load_start']}-{d['load_end']} | {s['ll:True']} | {s['ll:False']} | {s['ll:lm']} | "
                   f"{s['gen:True']} | {s['gen:False']} | {s['gen:lm']} |")
    out += ["", "Agreement (share of questions with the same predicted choice / prompts with identical text):", "",
            "| | multiple choice | generation |", "|---|--:|--:|",
            f"| aftertune vs lm-eval, float32 | {ag['mc_ours_vs_lm_f32']:.1%} | {ag['gen_ours_vs_lm_f32']:.1%} |",
            f"| aftertune bf16 vs aftertune float32 | {ag['mc_ours_bf16_vs_f32']:.1%} | "
            f"{ag['gen_ours_bf16_vs_f32']:.1%} |",
            f"| lm-eval bf16 vs lm-eval float32 | {ag['mc_lm_bf16_vs_f32']:.1%} | {ag['gen_lm_bf16_vs_f32']:.1%} |",
            "", END, ""]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-arc", type=int, default=64)
    ap.add_argument("--n-gen", type=int, default=32)
    ap.add_argument("--max-new", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    a = ap.parse_args()
    text = render(run(a.n_arc, a.n_gen, a.max_new, a.batch))
    from results_md import publish

    publish(text, a.write)


if __name__ == "__main__":
    main()

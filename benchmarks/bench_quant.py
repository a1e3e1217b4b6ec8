"""What the quantized variants cost and change, per model (issue 15): torchao's `REF#quant:int8|int4` and
llama.cpp's `REF#gguf:F16|Q8_0|Q4_K_M|Q3_K_M|Q2_K`.

For each packaged model and each variant, against the same model in full
precision (float32 on the hf engine, the dtype the torchao variants compute in):

- size of the weight files, conversion time (the cache folder removed first so
  it really converts), load time (the hf engine with its packing and
  batch-invariance probes; for GGUF, llama.cpp's server from start to healthy);
- generation: N chat prompts (bench_engine's mix) x 50 new greedy tokens in one
  call, tokens/s, and how many texts are identical to full precision's (GGUF:
  through llama.cpp's server, as an audit runs it);
- multiple choice: the first N ARC-Easy questions of the capability suite,
  scored by log-likelihood: share of questions with the same choice as full
  precision, and accuracy. GGUF files are scored by llama.cpp in-process
  (`_gguf_loglik.py`), since its server cannot score models without a BOS token.

`gguf F16` is llama.cpp's own full precision: the control that shows how much of
a GGUF row's difference comes from llama.cpp (kernels, chat template) rather than
from the quantization. The CPU's flags, thread count, load and date are
recorded; on a machine shared with other jobs read the ratios, not the seconds.

    .venv/bin/python benchmarks/bench_quant.py [--models smollm2-135m-instruct,qwen2.5-coder-0.5b-instruct]
        [--gen 16] [--arc 100] [--quant int8,int4] [--gguf F16,Q8_0,Q4_K_M,Q3_K_M,Q2_K] [--write]

The issue's sizes are `--gen 128 --arc 500`. Each model has its own section in RESULTS.md, and each
variant's measure is kept in $AFTERTUNE_HOME/bench-cache/bench_quant/MODEL-genN-arcM/ as it finishes, so
an interrupted run resumes at the next variant (delete that folder to measure again). GGUF rows need llama-cpp-python's interpreter
(`bash .ci/llama_server.sh install`, or AFTERTUNE_LLAMA_SERVER_PYTHON).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _agreement import agreement, choice_picks  # noqa: E402
from bench_engine import arc_questions, chat_prompts  # noqa: E402
from results_md import publish  # noqa: E402

METHODS = ("int8", "int4")
GGUF_METHODS = ("F16", "Q8_0", "Q4_K_M", "Q3_K_M", "Q2_K")
MAX_NEW = 50
BATCH = 16


def _mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 1e6


def generate(engine: Any, prompts: list[str]) -> tuple[list[str], float]:
    """Greedy texts of the prompts in one call, and tokens/s."""
    from aftertune.engines.base import Decoding, GenerateRequest, Message

    reqs = [GenerateRequest(messages=[Message(role="user", content=p)], decoding=Decoding(max_new_tokens=MAX_NEW))
            for p in prompts]
    t0 = time.perf_counter()
    out = engine.generate(reqs)
    return [r.text for r in out], sum(r.n_new_tokens for r in out) / (time.perf_counter() - t0)


def measure(engine: Any, prompts: list[str], questions: list[Any]) -> dict[str, Any]:
    """Greedy texts and tokens/s on the prompts; chosen answers on the questions."""
    texts, tok_s = generate(engine, prompts)
    lls = [r for q in questions for r in q.requests()]
    t0 = time.perf_counter()
    logprobs = [r.logprob for r in engine.loglikelihood(lls)]
    return {"texts": texts, "tok_s": tok_s, "picks": choice_picks([q.n_choices for q in questions], logprobs),
            "mc_s": time.perf_counter() - t0}


def gguf_loglik(path: Path, questions: list[Any]) -> list[float]:
    """The questions' log-likelihoods on a GGUF file, computed by llama.cpp in its own interpreter
    (`_gguf_loglik.py`: the server cannot score models without a BOS token)."""
    import torch

    from aftertune.variants import llama_cpp

    pairs = [[r.context, r.continuation] for q in questions for r in q.requests()]
    with tempfile.TemporaryDirectory() as tmp:
        spec, out = Path(tmp) / "requests.json", Path(tmp) / "logprobs.json"
        spec.write_text(json.dumps({"model": str(path), "pairs": pairs, "threads": torch.get_num_threads()}))
        subprocess.run([llama_cpp.server_python(), str(ROOT / "benchmarks" / "_gguf_loglik.py"), str(spec),
                        str(out)], check=True)
        return json.loads(out.read_text())


def timed_build(build: Callable[[], Any]) -> tuple[Any, float]:
    """A variant built from scratch and its seconds: a cache hit is removed and built again."""
    t0 = time.perf_counter()
    made = build()
    if time.perf_counter() - t0 < 1:
        shutil.rmtree(made.path)
        t0 = time.perf_counter()
        made = build()
    return made, time.perf_counter() - t0


def gguf_measures(ref: Any, prompts: list[str], questions: list[Any], methods: list[str],
                  cache: Path) -> dict[str, dict[str, Any]]:
    """One measure per llama.cpp method: the GGUF file served by llama.cpp's server for generation (as an audit
    runs it), scored in-process by llama.cpp for ARC."""
    from aftertune.engines import load_engine
    from aftertune.variants.gguf import GGUF_FILE, server_options, to_gguf

    def one(method: str) -> dict[str, Any]:
        g, convert_s = timed_build(lambda: to_gguf(ref, method))
        t0 = time.perf_counter()
        eng = load_engine(g, engine="server", **server_options({}))
        load_s = time.perf_counter() - t0
        try:
            texts, tok_s = generate(eng, prompts)
        finally:
            eng.close()
        t0 = time.perf_counter()
        logprobs = gguf_loglik(g.path / GGUF_FILE, questions)
        got = {"texts": texts, "tok_s": tok_s, "mc_s": time.perf_counter() - t0,
               "picks": choice_picks([q.n_choices for q in questions], logprobs)}
        return {"mb": (g.path / GGUF_FILE).stat().st_size / 1e6, "convert_s": convert_s, "load_s": load_s,
                "got": got}

    return {f"gguf {m}": cached(cache / f"gguf-{m}.json", lambda m=m: one(m)) for m in methods}


def cached(path: Path, measure_it: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A variant's measure, read back when an earlier (interrupted) run of the same sizes finished it."""
    from aftertune.fileio import write_text_atomic

    if path.exists():
        print(f"{path.stem}: measured earlier, read from {path}", file=sys.stderr, flush=True)
        return json.loads(path.read_text())
    got = measure_it()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(got))
    return got


def row(model: str, variant: str, mb: float, convert_s: float | None, load_s: float, got: dict[str, Any],
        full: dict[str, Any], questions: list[Any]) -> dict[str, Any]:
    out = {"model": model, "variant": variant, "mb": mb, "convert_s": convert_s, "load_s": load_s,
           "tok_s": got["tok_s"], "mc_s": got["mc_s"],
           "same_text": sum(a == b for a, b in zip(got["texts"], full["texts"], strict=True)),
           "agree": agreement(got["picks"], full["picks"]),
           "acc": sum(p in q.gold for p, q in zip(got["picks"], questions, strict=True)) / len(questions)}
    print(out, file=sys.stderr, flush=True)
    return out


def run_model(model: str, prompts: list[str], questions: list[Any], quant: list[str],
              gguf: list[str]) -> list[dict[str, Any]]:
    """Every variant of one model measured (or read back from this model and size's cache), then the rows:
    agreement with hf float32 and, for GGUF, with llama.cpp's F16."""
    from aftertune.engines.hf import HFEngine
    from aftertune.paths import home
    from aftertune.sources import resolve_model
    from aftertune.variants.quantize import quantize

    ref = resolve_model(model, progress=False)
    cache = home() / "bench-cache" / "bench_quant" / f"{model}-gen{len(prompts)}-arc{len(questions)}"

    def hf(method: str | None) -> dict[str, Any]:
        r, convert_s = (ref, None) if method is None else timed_build(lambda: quantize(ref, method))
        t0 = time.perf_counter()
        eng = HFEngine.from_ref(r, dtype="float32", batch_size=BATCH)
        load_s = time.perf_counter() - t0
        got = measure(eng, prompts, questions)
        eng.close()
        return {"mb": _mb(r.path), "convert_s": convert_s, "load_s": load_s, "got": got}

    measures = {"full (float32)": cached(cache / "full.json", lambda: hf(None))}
    measures.update({m: cached(cache / f"{m}.json", lambda m=m: hf(m)) for m in quant})
    measures.update(gguf_measures(ref, prompts, questions, gguf, cache))
    full, f16 = measures["full (float32)"]["got"], measures.get("gguf F16", {}).get("got")
    rows = []
    for name, m in measures.items():
        rows.append(row(model, name, m["mb"], m["convert_s"], m["load_s"], m["got"], full, questions))
        if f16 and name.startswith("gguf "):  # against llama.cpp's own full precision: quantization's part
            rows[-1]["f16"] = {"same_text": sum(a == b for a, b in zip(m["got"]["texts"], f16["texts"], strict=True)),
                               "agree": agreement(m["got"]["picks"], f16["picks"])}
    return rows


def _vs_f16(r: dict[str, Any], n_gen: int) -> str:
    f16 = r.get("f16")
    return f"{f16['same_text']} of {n_gen}, {100 * f16['agree']:.1f}%" if f16 else ""


def render(model: str, rows: list[dict[str, Any]], n_gen: int, n_arc: int, seconds: float) -> str:
    """One model's section (its own markers, so each model's rows are replaced by its own next run)."""
    import torch

    from aftertune.engines.cpu_linear import cpu_kind
    from aftertune.sources.fingerprints import quantizer_version
    from aftertune.variants import llama_cpp

    head = (f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with `benchmarks/bench_quant.py` on "
            f"{cpu_kind()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, torchao "
            f"{quantizer_version('torchao')}, llama-cpp-python {llama_cpp.LLAMA_CPP_PYTHON}; load average at the "
            f"end {os.getloadavg()[0]:.1f} (the machine was shared with other jobs, so read the ratios, not the "
            f"seconds). {n_gen} chat prompts x {MAX_NEW} new greedy tokens (one call; hf batch {BATCH}); the first "
            f"{n_arc} ARC-Easy questions. Full precision and the torchao variants compute in float32 on the hf "
            "engine; a `gguf` row is llama.cpp's: generation through its server as an audit runs it (load s = "
            "server start until healthy), ARC scored by llama.cpp in-process (`_gguf_loglik.py`), and `gguf F16` "
            "is llama.cpp's own full precision, the control that separates llama.cpp's arithmetic and template "
            "from quantization. Agreement is always with the hf float32 row. "
            f"{seconds / 60:.1f} min in all (variants read back from an interrupted run's cache say so on stderr).")
    lines = [f"<!-- bench_quant:{model}:start -->",
             f"## Quantized variants of {model} (`REF#quant:…`, `REF#gguf:…`; `benchmarks/bench_quant.py`)", "",
             head, "",
             "| model | variant | weights MB | convert s | load s | gen tokens/s | texts identical to full | "
             "ARC choice agreement | ARC accuracy | vs gguf F16: texts identical, ARC agreement |",
             "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        convert = "" if r["convert_s"] is None else f"{r['convert_s']:.1f}"
        lines.append(f"| {r['model']} | {r['variant']} | {r['mb']:.0f} | {convert} | {r['load_s']:.1f} | "
                     f"{r['tok_s']:.1f} | {r['same_text']} of {n_gen} | {100 * r['agree']:.1f}% | "
                     f"{100 * r['acc']:.1f}% | {_vs_f16(r, n_gen)} |")
    lines += ["", f"<!-- bench_quant:{model}:end -->"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="smollm2-135m-instruct", help="comma-separated packaged models")
    ap.add_argument("--gen", type=int, default=16, help="chat prompts generated from")
    ap.add_argument("--arc", type=int, default=100, help="ARC-Easy questions scored")
    ap.add_argument("--quant", default=",".join(METHODS), help="torchao methods, comma-separated ('' for none)")
    ap.add_argument("--gguf", default=",".join(GGUF_METHODS),
                    help="llama.cpp methods, comma-separated ('' for none); F16 is llama.cpp's own full precision")
    ap.add_argument("--write", action="store_true", help="update this benchmark's section of benchmarks/RESULTS.md")
    args = ap.parse_args()
    prompts, questions = chat_prompts(args.gen), arc_questions(args.arc)
    quant, gguf = ([m for m in text.split(",") if m] for text in (args.quant, args.gguf))
    for model in (m.strip() for m in args.models.split(",")):
        t0 = time.perf_counter()
        rows = run_model(model, prompts, questions, quant, gguf)
        publish(render(model, rows, args.gen, args.arc, time.perf_counter() - t0), args.write)


if __name__ == "__main__":
    main()

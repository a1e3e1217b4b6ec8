"""Benchmark aftertune's GRPO objective against TRL's `GRPOTrainer` with its defaults, and a reward model's accuracy.

1. **GRPO step time and peak memory.** Same model (SmolLM2-135M-Instruct, the packaged copy), same
   prompts (the `support` training set's user turns), same reward (`brevity` below: a pure function,
   so the reward costs nothing and both sides time the trainer), same batch (8 completions per
   step: 2 prompts x 4 generations, 48 tokens each), same LoRA adapter (r=16, alpha=32, dropout 0.05,
   every linear layer), same optimizer steps, one process each:

   - **TRL defaults**: `GRPOTrainer(model=PATH, reward_funcs=brevity, args=GRPOConfig(...), peft_config=...)`
     with TRL's defaults but for the batch above and `use_cpu` (fp32 weights, bf16 autocast, gradient
     checkpointing on, beta 0.0: no reference forward);
   - **aftertune**: `tune(TuneConfig(objective="grpo", reward="bench_rl.py:brevity", ...))` with its
     defaults (precision auto, memory-planned micro-batches, beta 0.04: one reference forward);
   - **aftertune beta 0**: the same with `grpo.beta: 0`, TRL's KL setting, to separate the cost of the
     KL term from the rest.

   Arms alternate (TRL, aftertune, aftertune beta 0, then the other way round ...), so load from other
   processes falls on all alike; the load average at each start is recorded. Reported per arm (best
   repetition): seconds per optimizer step after the first, and the peak resident memory of the process.

2. **Reward-model accuracy.** `aftertune tune --objective reward` (LoRA, defaults) on `dpo-safety` pairs
   built from the packaged model's own answers (chosen: the built-in refusal; rejected: the model's
   answer, pairs where it already refused dropped), a seeded held-out share scored before and after.

    nice -n 19 .venv/bin/python benchmarks/bench_rl.py            # print the tables
    nice -n 19 .venv/bin/python benchmarks/bench_rl.py --write    # and update benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from results_md import run_worker, write_support_rows  # noqa: E402

START, END = "<!-- bench_rl:start -->", "<!-- bench_rl:end -->"
RM_START, RM_END = "<!-- bench_rl_reward_model:start -->", "<!-- bench_rl_reward_model:end -->"
MODEL = "smollm2-135m-instruct"
BATCH = 8  # completions per optimizer step (TRL's default per-device batch)
GENERATIONS = 4
COMPLETION_TOKENS = 48
LORA = {"r": 16, "alpha": 32, "dropout": 0.05}
ARMS = ("trl", "aftertune", "aftertune-beta0")


def brevity(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
    """Shorter is better: minus the completion's characters / 100 (text, or TRL's assistant messages)."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [-len(t) / 100 for t in texts]


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def cpu_flags() -> dict[str, Any]:
    """The CPU model and whether it computes bf16 natively (avx512_bf16 / amx_bf16 in /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return {"model": platform.processor(), "avx512_bf16": None, "amx_bf16": None}
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    name = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "")
    return {"model": name, "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags}


class _StepTimer:
    """Trainer callback: wall seconds of every optimizer step after the first."""

    def __new__(cls) -> Any:
        from transformers import TrainerCallback

        class StepTimer(TrainerCallback):
            def __init__(self) -> None:
                self.t_prev: float | None = None
                self.steps: list[float] = []

            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                now = time.perf_counter()
                if self.t_prev is not None:
                    self.steps.append(now - self.t_prev)
                self.t_prev = now

        return StepTimer()


def worker(arm: str, data: Path, steps: int, threads: int, out: Path) -> None:
    import torch

    torch.set_num_threads(threads)
    os.environ["AFTERTUNE_THREADS"] = str(threads)
    from aftertune.sources.packaged import pull_model

    model = pull_model(MODEL, progress=False)
    timer = _StepTimer()
    info: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if arm == "trl":
            from datasets import Dataset
            from peft import LoraConfig
            from trl import GRPOConfig, GRPOTrainer

            rows = [json.loads(x) for x in data.read_text(encoding="utf-8").splitlines()]
            prompts = [{"prompt": r["messages"][:-1]} for r in rows]
            args = GRPOConfig(output_dir=tmp, max_steps=steps, report_to=[], save_strategy="no", disable_tqdm=True,
                              use_cpu=not torch.cuda.is_available(), per_device_train_batch_size=BATCH,
                              num_generations=GENERATIONS, max_completion_length=COMPLETION_TOKENS, seed=0)
            peft = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                              target_modules="all-linear", task_type="CAUSAL_LM")
            trainer = GRPOTrainer(model=str(model), reward_funcs=brevity, args=args, peft_config=peft,
                                  train_dataset=Dataset.from_list(prompts))
            trainer.add_callback(timer)
            info["config"] = {"dtype": str(trainer.model.dtype), "bf16_autocast": args.bf16, "beta": args.beta,
                              "gradient_checkpointing": args.gradient_checkpointing}
            trainer.train()
            rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
        else:
            from aftertune.recipes import TuneConfig, tune

            grpo = {"num_generations": GENERATIONS, "max_completion_length": COMPLETION_TOKENS}
            if arm == "aftertune-beta0":
                grpo["beta"] = 0.0
            cfg = TuneConfig(model=str(model), data=str(data), objective="grpo", reward=f"{__file__}:brevity",
                             grpo=grpo, method="lora", max_steps=steps, batch_size=BATCH, eval_fraction=0.0,
                             checkpoint_every=10**6, out=str(Path(tmp) / "out"))
            res = tune(cfg, progress=False, callbacks=[timer])
            d = res.metrics["data"]
            info["config"] = {"precision": d["precision"], "memory_plan": d["memory_plan"], "beta": cfg.grpo.beta}
            rewards = [p["reward"] for p in res.metrics["reward_curve"]]
    json.dump({"arm": arm, "step_s": sum(timer.steps) / len(timer.steps) if timer.steps else 0.0,
               "timed_steps": len(timer.steps), "peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
               "rewards": rewards, **info}, out.open("w"))


def timed_worker(arm: str, data: Path, steps: int, threads: int) -> dict[str, Any]:
    """One arm in its own process (`results_md.run_worker`), with the wall seconds it took."""
    t0 = time.perf_counter()
    res = run_worker(__file__, arm, ["--data", str(data), "--steps", str(steps), "--threads", str(threads)])
    return {**res, "wall_s": time.perf_counter() - t0}


def reward_model_accuracy(limit: int, threads: int, folder: Path | None) -> dict[str, Any]:
    """A LoRA reward model on dpo-safety pairs of the packaged model; held-out accuracy before and after. In
    `folder` (kept) a killed run resumes, its generated pairs included; else in a temporary folder."""
    import torch

    torch.set_num_threads(threads)
    from aftertune.recipes import TuneConfig, tune
    from aftertune.sources.packaged import pull_model

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TuneConfig(model=str(pull_model(MODEL, progress=False)), data="dpo-safety", objective="reward",
                         limit=limit, dpo_max_new_tokens=64, eval_fraction=0.3, max_length=512,
                         checkpoint_every=10**6, out=str(folder or Path(tmp) / "rm"))  # eval loss: start, end
        reused = (Path(str(cfg.out)) / "dpo-safety.jsonl").is_file()  # pairs an earlier run in `folder` generated
        t0 = time.perf_counter()
        res = tune(cfg, progress=False)
        m = res.metrics
        return {"limit": limit, "pairs": m["data"]["dpo_safety"]["pairs"], "steps": m["global_step"],
                "dropped_already_refusing": m["data"]["dpo_safety"]["dropped_already_refusing"],
                "before": m["pairwise_accuracy_start"], "after": m["pairwise_accuracy"],
                "wall_s": time.perf_counter() - t0, "lr": cfg.lr, "batch": cfg.batch_size,
                "resumed_from": m["resumed_from"], "pairs_reused": reused}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=5, help="optimizer steps per run (the first is not timed)")
    ap.add_argument("--reps", type=int, default=2, help="runs per arm, alternating")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--part", choices=["all", "grpo", "reward-model"], default="all",
                    help="what to measure; each part is its own section of RESULTS.md")
    ap.add_argument("--pairs", type=int, default=96, help="dpo-safety prompts for the reward model")
    ap.add_argument("--reward-model-dir", type=Path, help="keep the reward-model tune here (a killed run resumes)")
    ap.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    ap.add_argument("--worker", choices=ARMS, help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.data, args.steps, args.threads, args.result)
        return

    import torch
    from results_md import publish

    device = "cuda" if torch.cuda.is_available() else "cpu"
    where = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
             "machine": f"{platform.machine()} ({os.cpu_count()} CPUs)" if device == "cpu"
             else torch.cuda.get_device_name(0), "cpu": cpu_flags(), "device": device, "threads": args.threads,
             "python": platform.python_version(), "torch": torch.__version__}
    if args.part in ("all", "reward-model"):
        load_rm = load_avg()
        rm = reward_model_accuracy(args.pairs, args.threads, args.reward_model_dir)
        rm.update(where, load_avg=load_rm)
        print(json.dumps(rm, indent=2, default=str))
        publish(render_reward_model(rm), args.write)
    if args.part in ("all", "grpo"):
        runs: dict[str, list[dict[str, Any]]] = {a: [] for a in ARMS}
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "support.jsonl"
            write_support_rows(data, BATCH // GENERATIONS * args.steps)
            for rep in range(args.reps):
                for arm in ARMS if rep % 2 == 0 else tuple(reversed(ARMS)):
                    r = timed_worker(arm, data, args.steps, args.threads)
                    runs[arm].append(r)
                    print(f"rep {rep} {arm}: {r['step_s']:.2f} s/step, peak {r['peak_bytes'] / 2**30:.2f} GiB, "
                          f"load {r['load_avg']}", file=sys.stderr)
        best = {a: min(rs, key=lambda r: r["step_s"]) for a, rs in runs.items()}
        report = {**where, "steps": args.steps, "reps": args.reps, "runs": runs, "best": best}
        print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=2, default=str))
        publish(render(report), args.write)


def render(r: dict[str, Any]) -> str:
    import trl

    b, cpu = r["best"], r["cpu"]
    gib = 2**30
    bf16 = "with" if cpu["avx512_bf16"] else "without"
    lines = [
        START,
        "## Online RL (`aftertune tune --objective grpo`) vs TRL `GRPOTrainer` defaults",
        "",
        f"Measured {r['date']} with `benchmarks/bench_rl.py` on {r['machine']} ({cpu['model']}, "
        f"{bf16} avx512_bf16), {r['threads']} threads, Python {r['python']}, torch {r['torch']}, TRL "
        f"{trl.__version__}; a machine shared with other jobs (load average at each start below). Model: "
        f"SmolLM2-135M-Instruct (packaged). Prompts: the `support` training set's user turns. Batch: {BATCH} "
        f"completions per step ({BATCH // GENERATIONS} prompts x {GENERATIONS} generations, at most "
        f"{COMPLETION_TOKENS} tokens), LoRA r=16/alpha=32 on every linear layer, reward `brevity` (minus "
        f"characters / 100, a pure function), {r['steps']} optimizer steps per run (the first untimed), "
        f"{r['reps']} runs per arm alternating; the fastest run shown.",
        "",
        "| arm | s / step | peak memory | KL beta | load avg | setup |",
        "|---|---:|---:|---:|---:|---|",
    ]
    names = {"trl": "TRL GRPOTrainer, defaults", "aftertune": "aftertune tune --objective grpo, defaults",
             "aftertune-beta0": "aftertune, --kl-beta 0 (TRL's KL setting)"}
    for arm in ARMS:
        x = b[arm]
        lines.append(f"| {names[arm]} | {x['step_s']:.2f} | {x['peak_bytes'] / gib:.2f} GiB | {x['config']['beta']} "
                     f"| {x['load_avg']} | {_setup(x)} |")
    ratio = b["trl"]["step_s"] / b["aftertune-beta0"]["step_s"]
    lines += [
        "",
        f"At TRL's KL setting aftertune takes **{1 / ratio:.2f}x** TRL's time per step "
        f"({b['aftertune-beta0']['step_s']:.2f} vs {b['trl']['step_s']:.2f} s) at "
        f"{b['aftertune-beta0']['peak_bytes'] / gib:.2f} vs {b['trl']['peak_bytes'] / gib:.2f} GiB peak; its "
        f"default KL penalty (beta 0.04) costs {b['aftertune']['step_s'] / b['aftertune-beta0']['step_s']:.2f}x "
        "(a reference forward with the adapter's starting copy per step).",
        "",
        "All runs (s/step, peak GiB, load average at start, mean reward per step):",
        "",
    ]
    for arm in ARMS:
        cells = "; ".join(f"{x['step_s']:.2f} s / {x['peak_bytes'] / gib:.2f} GiB / load {x['load_avg']} / reward "
                          f"{', '.join(f'{v:.2f}' for v in x['rewards'])}" for x in r["runs"][arm])
        lines.append(f"- {arm}: {cells}")
    lines.append(END)
    return "\n".join(lines) + "\n"


def render_reward_model(rm: dict[str, Any]) -> str:
    before, after, cpu = rm["before"], rm["after"], rm["cpu"]
    lines = [
        RM_START,
        "## Reward-model accuracy (`aftertune tune --objective reward`) on `dpo-safety` pairs",
        "",
        f"Measured {rm['date']} with `benchmarks/bench_rl.py` on {rm['machine']} "
        f"({cpu['model']}, {'with' if cpu['avx512_bf16'] else 'without'} avx512_bf16), {rm['threads']} threads, "
        f"torch {rm['torch']}. `aftertune tune --objective reward --data dpo-safety --limit {rm['limit']}` from "
        f"SmolLM2-135M-Instruct (packaged), LoRA, lr "
        f"{rm['lr']:g}, batch {rm['batch']}, {rm['steps']} steps, rejected answers of at most 64 tokens: "
        f"{rm['pairs']} pairs ({rm['dropped_already_refusing']} prompts dropped: the model already refused), "
        f"30% held out (seed 0). Held-out pairwise accuracy **{before['accuracy']:.1%} before training "
        f"({before['correct']} of {before['pairs']}, 95% CI {before['ci95'][0]:.1%} to {before['ci95'][1]:.1%}) "
        f"-> {after['accuracy']:.1%} after ({after['correct']} of {after['pairs']}, {after['ci95'][0]:.1%} to "
        f"{after['ci95'][1]:.1%})**; mean margin r(chosen) - r(rejected) {before['mean_margin']:+.2f} -> "
        f"{after['mean_margin']:+.2f}. Wall {rm['wall_s'] / 60:.1f} min; load average {rm['load_avg']} at its "
        "start. The pairs are easy to tell apart (a built-in "
        "refusal against the model's own compliance), so this checks that the objective learns, not how well a "
        "reward model generalises." + (" The pairs were generated by an earlier run in the same folder, so the "
                                       "wall time leaves out their generation." if rm.get("pairs_reused") else ""),
        RM_END,
    ]
    return "\n".join(lines) + "\n"


def _setup(x: dict[str, Any]) -> str:
    c = x.get("config", {})
    if x["arm"] == "trl":
        return (f"{c.get('dtype')} weights, bf16 autocast {c.get('bf16_autocast')}, grad checkpointing "
                f"{c.get('gradient_checkpointing')}")
    p, mp = c.get("precision", {}), c.get("memory_plan", {})
    return (f"{p.get('weights')} frozen weights + fp32 adapters, autocast {p.get('autocast_bf16')}, grad "
            f"checkpointing {mp.get('checkpointing')}, micro-batch {mp.get('micro_batch')} x {mp.get('grad_accum')}")


if __name__ == "__main__":
    main()

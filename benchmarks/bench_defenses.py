"""What each training-time defence adds to a LoRA fine-tune: seconds per optimizer step and peak memory.

The arms are the `defense` knob's defences that change training (aftertune/sweep/defenses.py: constrained,
ptst, bea, mix:0.1) and the undefended fine-tune (`none`), each applied to the same config by the knob's
own edit: SmolLM2-135M-Instruct (packaged), the first `support` training examples, LoRA r=16/alpha=32 on
every linear layer, the same batch and steps, float32 (precision fp32), no evaluation or checkpoints. Each
arm runs `aftertune.recipes.tune` in its own process and reads what the tune records in tune.json
(`metrics.compute`, recipes/callbacks.ComputeMeter): the mean seconds of an optimizer step after the first,
and the peak resident memory of the training window (sampled every 10 ms). The arms alternate (forward on
even repetitions, backward on odd ones), so load from other processes on a shared machine falls on all of
them; the load average at each start is recorded. The best repetition of each arm is shown, and every one
is listed.

Guard, interp, PTST's and BEA's test-time prompts cost nothing in training; their inference cost is the
sweep report's audit-time column.

    .venv/bin/python benchmarks/bench_defenses.py               # print the table
    .venv/bin/python benchmarks/bench_defenses.py --write       # and update benchmarks/RESULTS.md
    .venv/bin/python benchmarks/bench_defenses.py --steps 3 --reps 1   # a quick look
    .venv/bin/python benchmarks/bench_defenses.py --log runs.jsonl       # keep each run as it finishes
    .venv/bin/python benchmarks/bench_defenses.py --from-log runs.jsonl --write   # the table of what was kept
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

from results_md import cpu_flags, run_worker, write_support_rows  # noqa: E402

MODEL = "smollm2-135m-instruct"
ARMS = ("none", "constrained", "ptst", "bea", "mix:0.1")


def config(arm: str, data: Path, steps: int, batch: int, max_length: int, out: Path) -> dict[str, Any]:
    """The tune config of one arm: the undefended config with the defence's own training edit."""
    from aftertune.sweep.defenses import parse_choice

    cfg: dict[str, Any] = {"data": str(data), "method": "lora", "max_steps": steps, "batch_size": batch,
                           "max_length": max_length, "precision": "fp32", "eval_fraction": 0.0,
                           "checkpoint_every": 10**6, "logging_steps": 1, "out": str(out)}
    choice = parse_choice(arm)
    if choice.defense.train is not None:
        choice.defense.train(cfg, choice.arg)
    return cfg


def worker(arm: str, data: Path, steps: int, batch: int, max_length: int, threads: int, result: Path) -> None:
    import torch

    torch.set_num_threads(threads)
    os.environ["AFTERTUNE_THREADS"] = str(threads)
    from aftertune.recipes import TuneConfig, tune
    from aftertune.sources.packaged import pull_model

    model = pull_model(MODEL, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TuneConfig(model=str(model), **config(arm, data, steps, batch, max_length, Path(tmp) / "out"))
        t0 = time.perf_counter()
        res = tune(cfg, progress=False)
        wall = time.perf_counter() - t0
    m = res.metrics
    json.dump({"arm": arm, **m["compute"], "wall_s": wall, "global_step": m["global_step"],
               "tokens_per_step": m["tokens_seen"] / max(1, m["global_step"]),
               "process_peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}, result.open("w"))


def run_arm(arm: str, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    return run_worker(__file__, arm, ["--data", str(data), "--steps", str(args.steps), "--batch", str(args.batch),
                                      "--max-length", str(args.max_length), "--threads", str(args.threads)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps per run (the first is not timed)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--reps", type=int, default=2, help="runs per arm, alternating order")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--arms", default=",".join(ARMS), help="defences to measure (none is always measured)")
    ap.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    ap.add_argument("--log", type=Path, help="append each finished run here as a JSON line (a stopped benchmark "
                                              "keeps what it measured)")
    ap.add_argument("--from-log", type=Path, help="measure nothing: the table of the runs in this --log file")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.data, args.steps, args.batch, args.max_length, args.threads, args.result)
        return

    import torch

    if args.from_log:
        lines = [json.loads(x) for x in args.from_log.read_text(encoding="utf-8").splitlines() if x.strip()]
        setup, logged = lines[0], lines[1:]
    else:
        arms = ["none", *(a for a in args.arms.split(",") if a and a != "none")]
        device = "cuda" if torch.cuda.is_available() else "cpu"
        setup = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 "machine": (f"{platform.machine()} ({os.cpu_count()} CPUs)" if device == "cpu"
                             else torch.cuda.get_device_name(0)),
                 "flags": cpu_flags(), "threads": args.threads, "python": platform.python_version(),
                 "torch": torch.__version__, "steps": args.steps, "batch": args.batch,
                 "max_length": args.max_length, "reps": args.reps}
        _log(args.log, setup)
        logged = []
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "support.jsonl"
            write_support_rows(data, args.batch * args.steps)
            for rep in range(args.reps):
                for arm in arms if rep % 2 == 0 else arms[::-1]:
                    r = run_arm(arm, data, args)
                    logged.append(r)
                    _log(args.log, r)
                    print(f"rep {rep} {arm}: {r['mean_step_s']:.2f} s/step ({r['mean_step_cpu_s']:.2f} CPU s), "
                          f"peak {r['peak_bytes'] / 2**30:.2f} GiB, load {r['load_avg']}", file=sys.stderr)
    runs: dict[str, list[dict[str, Any]]] = {}
    for r in logged:
        runs.setdefault(r["arm"], []).append(r)
    report = {**setup, "runs": runs,
              "best": {a: min(rs, key=lambda r: r["mean_step_cpu_s"]) for a, rs in runs.items()}}
    print(json.dumps(report["best"], indent=2))
    from results_md import publish

    publish(render(report), args.write)


def _log(path: Path | None, row: dict[str, Any]) -> None:
    if path is not None:
        with path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")


def render(r: dict[str, Any]) -> str:
    gib = 2**30
    ref = r["best"]["none"]
    marker = f"bench_defenses_{r['steps']}steps"  # one section per run length: a short run and a full epoch
    lines = [
        f"<!-- {marker}:start -->",
        f"## Training cost of the defences (`aftertune sweep --knob defense`), LoRA SFT, {r['steps']} steps",
        "",
        f"Measured {r['date']} with `benchmarks/bench_defenses.py` on {r['machine']}, CPU flags "
        f"{r['flags']}, {r['threads']} threads, Python {r['python']}, torch {r['torch']}. Model: "
        f"SmolLM2-135M-Instruct (packaged), float32. Data: the first {r['batch'] * r['steps']} `support` "
        f"training examples, batch {r['batch']}, max length {r['max_length']}, LoRA r=16/alpha=32 on every linear "
        f"layer, {r['steps']} optimizer steps per run (the first untimed), up to {r['reps']} runs per arm "
        "alternating order (the runs are listed below); best run shown (lowest mean CPU seconds per step). "
        "Each arm is the undefended config with the defence's own training edit from the defense knob.",
        "",
        "| defence | CPU seconds per step | added | wall seconds per step | peak memory (training) | added | "
        "tokens per step | load avg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arm, x in r["best"].items():
        same = arm == "none"
        added_s = "reference" if same else _pct(x["mean_step_cpu_s"], ref["mean_step_cpu_s"])
        if not same and x["tokens_per_step"] == ref["tokens_per_step"]:
            added_s += ", same tokens as none"
        added_mem = "reference" if same else f"{(x['peak_bytes'] - ref['peak_bytes']) / gib:+.2f} GiB"
        lines.append(f"| {arm} | {x['mean_step_cpu_s']:.2f} | {added_s} | {x['mean_step_s']:.2f} | "
                     f"{x['peak_bytes'] / gib:.2f} GiB | {added_mem} | {x['tokens_per_step']:.0f} | {x['load_avg']} |")
    lines += ["", "All runs (CPU / wall seconds per step, training peak GiB, load average at start):", ""]
    for arm, xs in r["runs"].items():
        lines.append(f"- {arm}: " + ", ".join(f"{x['mean_step_cpu_s']:.2f} / {x['mean_step_s']:.2f} s, "
                                              f"{x['peak_bytes'] / gib:.2f} GiB, load {x['load_avg']}" for x in xs))
    lines += [
        "",
        "CPU seconds are the process's (all threads) over forward, backward and update (evaluation and saving "
        "left out): on a machine shared with other jobs the wall time carries their load, the CPU time much "
        "less, so the added cost is read from CPU seconds. Tokens per step "
        "are the non-padding input tokens, which a defence that adds rows can change (bea's refusals carry a "
        "150-word trigger; ptst's rows lose the template's default system prompt). An arm that only changes "
        "the data (bea, mix) and counted exactly as many tokens per step as none did the same amount of work by "
        "that count, so its difference from none shows the machine's noise. Peak memory is the resident set size sampled during training, so it includes the "
        "loaded model. The arms alternate so that the machine's load falls on all of them.",
        f"<!-- {marker}:end -->",
    ]
    return "\n".join(lines) + "\n"


def _pct(x: float, ref: float) -> str:
    return f"{x - ref:+.2f} s ({x / ref - 1:+.0%})"


if __name__ == "__main__":
    main()

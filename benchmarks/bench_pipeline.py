"""Wall time of `aftertune run --quick` and of the embedded default, and the interval widths they give.

A first run on a machine: a fresh AFTERTUNE_HOME (empty store, no scan index,
no judge-validity cache) whose packaged models and data are links to the ones
already downloaded, so download time (network-bound, once per machine) is not
counted. Per-step times come from the run's own `timing` events, peak memory
from the kernel, and the 95% interval half-widths of the tuned-vs-base changes
from results.json: the price of the sample sizes chosen.

    .venv/bin/python benchmarks/bench_pipeline.py --preset quick --write
    .venv/bin/python benchmarks/bench_pipeline.py --preset default --write
    .venv/bin/python benchmarks/bench_pipeline.py --run-dir DIR --write   # a run already made (wall time
                                                                          # from the store's timestamps)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"quick": 4 * 60, "default": 20 * 60}


def fresh_home(tmp: Path) -> Path:
    """An AFTERTUNE_HOME with nothing computed in it; models and data linked from the user's cache."""
    cache = Path(os.environ.get("AFTERTUNE_HOME") or Path.home() / ".cache" / "aftertune")
    home = tmp / "home"
    home.mkdir()
    for name in ("models", "data"):
        if (cache / name).is_dir():
            (home / name).symlink_to(cache / name)
    return home


def run_preset(preset: str, out: Path, home: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-c", "from aftertune.cli import main; main()", "run", "--out", str(out), "--no-progress"]
    if preset == "quick":
        cmd.append("--quick")
    elif preset != "default":
        cmd += ["--preset", preset]
    env = dict(os.environ, AFTERTUNE_HOME=str(home))
    env.pop("AFTERTUNE_STORE", None)
    load = round(os.getloadavg()[0], 1)
    from bench_training import matmul_peak  # the machine's speed right before the run: it varies by day

    gflops = matmul_peak(os.cpu_count() or 1, "cpu")["fp32_matmul_gflops"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):  # 1: a gate threshold was violated, the run itself finished
        raise SystemExit(f"aftertune run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_gib": usage.ru_maxrss / 2**20,
            "load_before": load, "load_after": round(os.getloadavg()[0], 1), "gflops": gflops,
            "measured": "subprocess wall clock"}


def from_store(run_dir: Path) -> dict[str, Any]:
    """Wall time of a finished run from its store: first to last timestamp (process start-up not included)."""
    info = json.loads((run_dir / "run.json").read_text())
    con = sqlite3.connect(info["store"])
    (created,) = con.execute("SELECT created FROM runs WHERE id=?", (info["run_id"],)).fetchone()
    (last,) = con.execute("SELECT max(created) FROM events WHERE run_id=?", (info["run_id"],)).fetchone()
    con.close()
    return {"wall_s": last - created, "cpu_s": None, "peak_rss_gib": None, "load_before": None,
            "measured": "store timestamps (first to last event; process start-up not included)"}


def steps(run_dir: Path) -> list[tuple[str, float]]:
    info = json.loads((run_dir / "run.json").read_text())
    con = sqlite3.connect(info["store"])
    rows = con.execute("SELECT step, payload FROM events WHERE run_id=? AND kind='timing' AND step LIKE 'pipeline:%' "
                       "ORDER BY rowid", (info["run_id"],)).fetchall()
    con.close()
    return [(step.removeprefix("pipeline:"), json.loads(payload)["seconds"]) for step, payload in rows]


def interval_widths(run_dir: Path) -> list[dict[str, Any]]:
    """Half-width of each overall tuned-vs-base change's 95% interval (rates in points)."""
    from aftertune.compare.format import OVERALL

    res = json.loads((run_dir / "results.json").read_text())
    out = []
    for r in res["comparisons"]:
        if r["model"] != res["primary"] or r["category"] != OVERALL or r["n"] == 0 or None in r["delta_ci"]:
            continue
        lo, hi = r["delta_ci"]
        scale = 100.0 if r["kind"] == "binary" else 1.0
        mde, target = r.get("mde"), r.get("target_effect")
        out.append({"metric": f"{r['suite']}.{r['metric']}", "n": r["n"], "half_width": (hi - lo) / 2 * scale,
                    "unit": "points" if r["kind"] == "binary" else "", "delta": r["delta"] * scale,
                    "mde": None if mde is None else mde * scale,
                    "power": "" if target is None or r.get("power") is None else
                    f"{100 * r['power']:.0f}% at {target * scale:.3g} ({r['target_source']})"})
    return out


def markdown(name: str, timing: dict[str, Any], run_dir: Path) -> str:
    import torch

    target = TARGETS.get(name)
    wall = timing["wall_s"]
    native = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    spec = json.loads((run_dir / "run.json").read_text())["spec"]
    flag = {"default": "", "quick": " --quick"}.get(name, f" --preset {name}")
    lines = [f"<!-- bench_pipeline_{name}:start -->", f"## `aftertune run{flag}` ({spec['name']}: {spec['base']})", "",
             f"Measured {time.strftime('%Y-%m-%d')} with `benchmarks/bench_pipeline.py` on {platform.machine()} "
             f"({os.cpu_count()} CPUs, {'with' if native else 'without'} native bf16, so float32), torch "
             f"{torch.__version__}: a first run (empty store and caches; packaged models already downloaded). "
             f"Wall time from {timing['measured']}.", "",
             "| | measured | target |", "|---|---:|---:|",
             f"| wall time | {wall / 60:.1f} min ({wall:.0f} s) | {f'<= {target // 60} min' if target else ''} |"]
    if timing.get("cpu_s"):
        lines.append(f"| CPU time (user + system) | {timing['cpu_s']:.0f} s | |")
    if timing.get("gflops"):
        lines.append(f"| machine speed before the run (float32 matmul, best of 1024² and 2048²) | {timing['gflops']:.0f} GFLOP/s | |")
    if timing.get("load_before") is not None:
        lines.append(f"| load average (1 min) before / after the run, on {os.cpu_count()} CPUs | "
                     f"{timing['load_before']} / {timing.get('load_after')} | |")
    if timing.get("peak_rss_gib"):
        lines.append(f"| peak memory (RSS) | {timing['peak_rss_gib']:.1f} GiB | |")
    lines += ["", "| step | seconds |", "|---|---:|"] + [f"| {s} | {sec:.0f} |" for s, sec in steps(run_dir)]
    widths = interval_widths(run_dir)
    if widths:
        lines += ["", "What the sample sizes buy: the 95% interval of each tuned-vs-base change is about ± this wide; "
                  "the MDE is the smallest change the row's test detects with 80% power at the Holm level of a lone "
                  "change, given the discordance this run observed; power is against the change the spec cares about.",
                  "", "| metric | items | change | ± half-width | MDE | power |", "|---|---:|---:|---:|---:|---|"]
        lines += [f"| {w['metric']} | {w['n']} | {w['delta']:+.3g} {w['unit']} | {w['half_width']:.3g} {w['unit']} | "
                  f"{'n/a' if w['mde'] is None else format(w['mde'], '.3g')} {w['unit']} | {w['power']} |"
                  for w in widths]
    lines += ["", f"<!-- bench_pipeline_{name}:end -->"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="quick", help="quick, default, or a preset name")
    ap.add_argument("--run-dir", type=Path, help="render a finished run instead of running one")
    ap.add_argument("--out", type=Path, help="keep the run folder here, and its store in OUT.home/ so later "
                    "benchmarks can reuse the cached answers (default: both in a temporary folder)")
    ap.add_argument("--write", action="store_true", help="update this benchmark's section of benchmarks/RESULTS.md")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    if args.run_dir:
        run_dir = args.run_dir
        timing = from_store(run_dir)
        name = json.loads((run_dir / "run.json").read_text())["spec"]["name"]
        text = markdown(name, timing, run_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
            run_dir = args.out or Path(tmp) / "run"
            keep = run_dir.with_name(run_dir.name + ".home") if args.out else Path(tmp)
            keep.mkdir(parents=True, exist_ok=False)
            timing = run_preset(args.preset, run_dir, fresh_home(keep))
            text = markdown(args.preset, timing, run_dir)
    from results_md import publish

    publish(text, args.write)


if __name__ == "__main__":
    main()

"""How much of the default run's report changes when its models run in bfloat16 instead of float32 (issue 13).

The spec pins `audit.dtype: float32` (and training precision fp32) so that
every machine computes the same numbers. This measures what that pin protects:
the default run's base model and its fp32-trained adapter, audited on the same
items in float32 and in bfloat16 into the run's store (the float32 answers
mostly come from its cache); then, item by item and row by row, what differs:

- answers (greedy texts) and judged per-item values, per model and suite;
- which tuned-vs-base rows are significant (Holm), and the headline verdict.

A full bf16 rerun of the default is out of reach on a 2-core CPU (bf16 ran
6.6x slower than float32 here: 308 s against 47 s for the task suite on
base), so the items are the default's safety and capability samples at
smaller limits (`--safety`, `--capability`). The CPU's flags are recorded.

    .venv/bin/python benchmarks/bench_pipeline.py --preset default --out /tmp/def --write   # float32, kept
    .venv/bin/python benchmarks/bench_dtype.py --run-dir /tmp/def --write
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

START = "<!-- bench_dtype:start -->"
END = "<!-- bench_dtype:end -->"


DTYPES = ("float32", "bfloat16")


def dtype_dir(run_dir: Path, dtype: str) -> Path:
    """Where the audit in `dtype` writes its report: beside the run, named after it."""
    return run_dir.with_name(f"{run_dir.name}-{dtype}")


def audit_both(run_dir: Path, limits: dict[str, int]) -> tuple[Any, dict[str, str], dict[str, float], str]:
    """Audit base and tuned on the same items in each dtype; return (store, run id and seconds per dtype, suites)."""
    from aftertune.audit import audit
    from aftertune.spec import PipelineSpec
    from aftertune.store import Store

    info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    spec = PipelineSpec.model_validate(info["spec"])
    store = Store(info["store"])
    refs = {m["label"]: m["ref"] for m in store.models(info["run_id"])}
    models = {"base": refs["base"], "tuned": refs["tuned"]}
    suites = [f"{s}:limit={limits[s.split(':')[0]]}" for s in spec.audit.suites if s.split(":")[0] in limits]
    runs, seconds = {}, {}
    for dtype in DTYPES:
        t0 = time.perf_counter()
        runs[dtype] = audit(models, suites, store=store, out_dir=dtype_dir(run_dir, dtype),
                            limit=None, seed=spec.audit.seed, batch_size=spec.audit.batch_size, progress=False,
                            engine_options={"dtype": dtype}, name=f"bench-dtype-{dtype}")
        seconds[dtype] = time.perf_counter() - t0
    return store, runs, seconds, ", ".join(suites)


def verdict_key(rec: Any) -> tuple[Any, ...]:
    """The judged per-item values the metrics average (rounded: log-likelihood scores are reals)."""
    return tuple(sorted((k, None if v is None else round(float(v), 6)) for k, v in rec.scores.items()))


def item_diffs(store: Any, f32: str, bf16: str) -> list[dict[str, Any]]:
    """Per (model, suite): items compared, answers that differ, judged values that differ."""
    a = {(r.model, r.suite, r.item_id): r for r in store.records(f32)}
    b = {(r.model, r.suite, r.item_id): r for r in store.records(bf16)}
    counts: Counter[tuple[str, str, str]] = Counter()
    for key in sorted(a.keys() & b.keys()):
        model, suite, _ = key
        counts[(model, suite, "n")] += 1
        counts[(model, suite, "text")] += a[key].response != b[key].response
        counts[(model, suite, "verdict")] += verdict_key(a[key]) != verdict_key(b[key])
    pairs = sorted({(m, s) for m, s, _ in counts})
    return [{"model": m, "suite": s, "n": counts[(m, s, "n")], "text": counts[(m, s, "text")],
             "verdict": counts[(m, s, "verdict")]} for m, s in pairs]


def row_diffs(run_dir: Path, bf16_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The all-items comparison rows of both runs side by side, and their verdict lines."""
    res = [json.loads((d / "results.json").read_text(encoding="utf-8")) for d in (run_dir, bf16_dir)]
    scored = [{(r["model"], r["suite"], r["metric"]): r for r in run["comparisons"]
               if r.get("category") in (None, "all") and r.get("delta") is not None} for run in res]
    rows = [{"row": f"{key[0]} {key[1]}.{key[2]}", "f32": r32, "bf16": scored[1][key]}
            for key, r32 in scored[0].items() if key in scored[1]]
    heads = {"f32": res[0]["verdict"]["headline"], "bf16": res[1]["verdict"]["headline"]}
    return rows, heads


def markdown(items: list[dict[str, Any]], rows: list[dict[str, Any]], heads: dict[str, Any],
             seconds: dict[str, float], suites: str) -> str:
    import platform

    import torch
    from bench_invariance import cpu_flags

    n = sum(i["n"] for i in items)
    texts = sum(i["text"] for i in items)
    verdicts = sum(i["verdict"] for i in items)
    sig = [r for r in rows if bool(r["f32"]["significant"]) != bool(r["bf16"]["significant"])]
    out = [START, "## bf16 vs float32 on the default run's items (`benchmarks/bench_dtype.py`)", "",
           f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {platform.machine()}, CPU flags: {cpu_flags()}, torch "
           f"{torch.__version__}, load average {os.getloadavg()[0]:.1f} at the end. The embedded default run's base "
           f"model and fp32-trained adapter, audited in float32 (the pinned default) and in bfloat16 on the same "
           f"items of `{suites}` (subsets of the run's samples), same greedy decoding, same judges.", "",
           f"Over all {n} (model, item) pairs: **{texts} answers ({100 * texts / max(n, 1):.1f}%) and {verdicts} "
           f"judged per-item values ({100 * verdicts / max(n, 1):.1f}%) differ** between the two dtypes; "
           f"{len(sig)} of {len(rows)} tuned-vs-base rows change significance. Wall time: float32 "
           f"{seconds['float32']:.0f} s (its answers mostly cached by the run), bfloat16 {seconds['bfloat16']:.0f} s.",
           "",
           "| model | suite | items | answers differ | judged values differ |", "|---|---|--:|--:|--:|"]
    out += [f"| {i['model']} | {i['suite']} | {i['n']} | {i['text']} | {i['verdict']} |" for i in items]
    out += ["", "| row | float32 change | bf16 change | float32 significant | bf16 significant |",
            "|---|--:|--:|:-:|:-:|"]
    out += [f"| {r['row']} | {r['f32']['delta']:+.4f} | {r['bf16']['delta']:+.4f} | "
            f"{'yes' if r['f32']['significant'] else 'no'} | {'yes' if r['bf16']['significant'] else 'no'} |"
            for r in rows]
    out += ["", f"Verdict, float32: {heads['f32']}", "", f"Verdict, bf16: {heads['bf16']}", "", END]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", type=Path, required=True, help="a float32 run kept by bench_pipeline.py --out")
    ap.add_argument("--safety", type=int, default=48, help="safety items (the default run audits 154)")
    ap.add_argument("--capability", type=int, default=24, help="capability items (the default run audits 60)")
    ap.add_argument("--write", action="store_true", help="update this benchmark's section of benchmarks/RESULTS.md")
    args = ap.parse_args()
    store, runs, seconds, suites = audit_both(args.run_dir, {"safety": args.safety, "capability": args.capability})
    items = item_diffs(store, runs["float32"], runs["bfloat16"])
    rows, heads = row_diffs(*(dtype_dir(args.run_dir, d) for d in DTYPES))
    from results_md import publish

    publish(markdown(items, rows, heads, seconds, suites), args.write)


if __name__ == "__main__":
    main()

"""The added-compute column: what each sweep point costs to train and to run, against the reference point.

Training: each stage's `tune.json` (`metrics.compute`, recipes/callbacks.ComputeMeter) gives the mean wall and
CPU seconds of an optimizer step after the first (evaluation, checkpoint saves and audits left out) and the
memory the training window added at its peak over what the process held when it began (its growth: a sweep
runs every point in one process, so the raw peak would also count the models earlier points left loaded, and
grow with run order); the column shows wall seconds and that growth, sweep.json has CPU seconds too (they
carry less of a shared machine's load) and the raw peak. A point's training seconds are mean step × steps, summed over stages, so a tune that was
resumed counts its whole length. Points of one run share one fine-tune and so one training cost.

Inference: the audit's wall time per item of each suite on the point's model (results.json
`volatile.timings`), on the suites both it and the reference computed without a cache hit, as a ratio to the
reference's time on the same suites: a guard's judges and a longer system prompt show up here. Both are wall
times, so on a machine shared with other work they carry its load; the training-time benchmark
(benchmarks/bench_defenses.py) alternates arms to share it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def training_cost(run_folder: Path) -> dict[str, Any] | None:
    """Training wall and CPU seconds (mean step × steps over the stages), steps, peak bytes and their growth over
    the window's start of a pipeline run folder's tune(s); None when a tune has no compute record (written before
    it was measured) or none ran; growth None when a tune predates its measurement."""
    from aftertune.recipes.train import TUNE_JSON

    stages = []
    for path in sorted((run_folder / "tune").glob(f"*/{TUNE_JSON}")):
        try:
            metrics = json.loads(path.read_text(encoding="utf-8"))["metrics"]
            compute, steps = metrics["compute"], int(metrics["global_step"])
            stages.append({"wall": float(compute["mean_step_s"]), "cpu": float(compute["mean_step_cpu_s"]),
                           "steps": steps, "peak": int(compute["peak_bytes"]), "scope": compute["peak_scope"],
                           "growth": compute.get("peak_growth_bytes")})
        except (OSError, ValueError, KeyError, TypeError):
            return None
    if not stages:
        return None
    return {"train_s": sum(s["wall"] * s["steps"] for s in stages),
            "train_cpu_s": sum(s["cpu"] * s["steps"] for s in stages), "steps": sum(s["steps"] for s in stages),
            "mean_step_s": stages[-1]["wall"], "peak_bytes": max(s["peak"] for s in stages),
            "peak_scope": stages[-1]["scope"],
            "peak_growth_bytes": (max(int(s["growth"]) for s in stages)
                                  if all(s["growth"] is not None for s in stages) else None)}


def inference_cost(results: dict[str, Any], model: str) -> dict[str, dict[str, float]]:
    """suite → {seconds, items} the audit spent on `model`, over its suite timings without a cache hit."""
    out: dict[str, dict[str, float]] = {}
    for t in results.get("volatile", {}).get("timings") or []:
        if t.get("model") != model or not t.get("suite") or t.get("cache_hits") or not t.get("items"):
            continue
        suite = out.setdefault(t["suite"], {"seconds": 0.0, "items": 0.0})
        suite["seconds"] += float(t["seconds"])
        suite["items"] += float(t["items"])
    return out


def inference_ratio(point: dict[str, dict[str, float]], reference: dict[str, dict[str, float]]) -> float | None:
    """The point's audit time on the reference's items at its own per-item rate, over the reference's time, on
    the suites both measured; None when they share none."""
    common = sorted(set(point) & set(reference))
    ref_s = sum(reference[s]["seconds"] for s in common)
    if not common or ref_s <= 0:
        return None
    return sum(point[s]["seconds"] / point[s]["items"] * reference[s]["items"] for s in common) / ref_s


def added_compute(points: Sequence[dict[str, Any]], reference: int) -> None:
    """Set each point's `compute`: its training and inference cost beside the reference point's."""
    ref = points[reference]
    ref_train = ref.get("training")
    for p in points:
        train = p.get("training")
        both = train is not None and ref_train is not None
        growth = train["peak_growth_bytes"] if train else None
        ref_growth = ref_train["peak_growth_bytes"] if ref_train else None
        p["compute"] = {
            "train_s": train["train_s"] if train else None,
            "peak_growth_bytes": growth,
            "extra_train_s": train["train_s"] - ref_train["train_s"] if both else None,
            "extra_train_ratio": (train["train_s"] / ref_train["train_s"] - 1.0
                                  if both and ref_train["train_s"] > 0 else None),
            "extra_peak_growth_bytes": (growth - ref_growth
                                        if growth is not None and ref_growth is not None else None),
            "inference_ratio": inference_ratio(p.get("inference") or {}, ref.get("inference") or {}),
            "adds": p.get("adds") or "",
        }

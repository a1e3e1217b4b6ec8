"""The report's plots, drawn once: inline in report.html and as PNG files beside report.md.

`draw` makes every plot the results allow; the HTML embeds the data URIs and
`write_figures` puts the same PNG bytes in `figures/NAME.png`, which report.md
links by relative path (rendered by GitHub and any Markdown viewer with the folder).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aftertune.compare.factorial import by_variant
from aftertune.compare.format import OVERALL
from aftertune.fileio import atomic_path
from aftertune.report import overoptimization, plots

FOLDER = "figures"


@dataclass
class Figures:
    """PNG data URIs (None where there is nothing to draw); `curves` aligns with results["checkpoints"]."""

    changes: str | None
    training_loss: str | None
    curves: list[str | None] = field(default_factory=list)
    by_bits: str | None = None  # safety against bits per weight (the 2×2 of fine-tuning × quantization)
    overoptimization: str | None = None  # proxy and gold reward against √KL (the overoptimization suite)

    def files(self, results: dict[str, Any]) -> list[tuple[str, str, str]]:
        """(file stem, caption, data URI) of each drawn plot."""
        out = [("changes", f"Changes of {results['primary']} vs {results['reference']} with intervals", self.changes),
               ("training-loss", "Training loss", self.training_loss),
               ("safety-by-bits", "Safety of base and tuned against bits per weight", self.by_bits),
               ("overoptimization", "Proxy and gold reward against √KL: best-of-n curves and the models",
                self.overoptimization)]
        out += [(f"curve-{c['suite']}-{c['metric']}", f"{c['suite']}.{c['metric']} over training", uri)
                for c, uri in zip(results["checkpoints"], self.curves, strict=True)]
        return [(re.sub(r"[^A-Za-z0-9_.-]+", "-", stem), caption, uri) for stem, caption, uri in out if uri]


def draw(results: dict[str, Any]) -> Figures:
    primary = results["primary"]
    overall = [r for r in results["comparisons"] if r["model"] == primary and r["category"] == OVERALL]
    choice = results.get("checkpoint_choice")
    stops = [s["step"] for s in results.get("early_stop", [])]
    return Figures(
        changes=plots.forest(overall),
        training_loss=plots.training_loss(results["protocol"]["train_metrics"]),
        curves=[plots.checkpoint_curve(c, choice["step"] if choice else None, stops) for c in results["checkpoints"]],
        by_bits=plots.by_bits(bits_panels(results)),
        overoptimization=plots.reward_vs_kl(summary) if (summary := overoptimization.block(results)) else None)


FULL_BITS = 32.0  # where full precision sits on a bits axis: the audits compute in float32
SAFETY_SUITES = ("safety", "jailbreak")


def bits_panels(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per safety suite audited (its headline metric, the first it declares): base and tuned as lines over bits
    per weight, full precision at FULL_BITS and each deployment variant of the 2×2 at its nominal bits, with
    each model's value and interval on its own items (results["suites"][...]["values"])."""
    designs = [g for g in by_variant(results.get("factorial") or []) if g["bits"] is not None]
    if not designs:
        return []
    panels = []
    for suite in (s for name in SAFETY_SUITES for s in results["suites"] if s["name"] == name):
        metric = suite["metrics"][0]
        series = {}
        for role in ("base", "tuned"):
            where = [(FULL_BITS, role)] + [(float(g["bits"]), g["models"][f"{role}_variant"]) for g in designs]
            points = [(bits, v["value"], v["ci"]) for bits, label in where
                      if (v := suite["values"].get(label, {}).get(metric["name"])) and v["value"] is not None]
            series[role] = sorted(points, key=lambda p: p[0])
        if any(series.values()):
            panels.append({"name": f"{suite['name']}.{metric['name']}", "kind": metric["kind"],
                           "direction": metric["direction"], "series": series})
    return panels


def write_figures(results: dict[str, Any], figures: Figures, out_dir: Path) -> list[tuple[str, str]]:
    """Write the PNGs; returns (relative path, caption) for the Markdown report. Stale figures are removed."""
    folder = out_dir / FOLDER
    files = figures.files(results)
    for stem, _caption, uri in files:
        with atomic_path(folder / f"{stem}.png") as tmp:
            tmp.write_bytes(base64.b64decode(uri.split(",", 1)[1]))
    keep = {f"{stem}.png" for stem, _, _ in files}
    if folder.is_dir():
        for old in folder.glob("*.png"):
            if old.name not in keep:
                old.unlink()
    return [(f"{FOLDER}/{stem}.png", caption) for stem, caption, _ in files]

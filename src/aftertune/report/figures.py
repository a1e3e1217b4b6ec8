"""The report's plots as PNG files beside report.md, so the Markdown report has its figures too.

The same plot functions draw the HTML report's inline images; here their PNG
bytes go to `figures/NAME.png` and report.md links them by relative path
(rendered by GitHub and any Markdown viewer that has the folder).
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

from aftertune.compare.comparison import OVERALL
from aftertune.fileio import atomic_path
from aftertune.report import plots

FOLDER = "figures"


def figure_uris(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(file stem, caption, PNG data URI) of every plot the results can draw."""
    primary = results["primary"]
    out: list[tuple[str, str, str | None]] = []
    overall = [r for r in results["comparisons"] if r["model"] == primary and r["category"] == OVERALL]
    out.append(("changes", f"Changes of {primary} vs {results['reference']} with intervals", plots.forest(overall)))
    out.append(("training-loss", "Training loss", plots.training_loss(results["protocol"]["train_metrics"])))
    choice = results.get("checkpoint_choice")
    stops = [s["step"] for s in results.get("early_stop", [])]
    for c in results["checkpoints"]:
        out.append((f"curve-{c['suite']}-{c['metric']}", f"{c['suite']}.{c['metric']} over training",
                    plots.checkpoint_curve(c, choice["step"] if choice else None, stops)))
    return [(re.sub(r"[^A-Za-z0-9_.-]+", "-", stem), caption, uri) for stem, caption, uri in out if uri]


def write_figures(results: dict[str, Any], out_dir: Path) -> list[tuple[str, str]]:
    """Write the PNGs; returns (relative path, caption) for the Markdown report. Stale figures are removed."""
    folder = out_dir / FOLDER
    figures = figure_uris(results)
    keep = set()
    for stem, _caption, uri in figures:
        dest = folder / f"{stem}.png"
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(dest) as tmp:
            tmp.write_bytes(base64.b64decode(uri.split(",", 1)[1]))
        keep.add(dest.name)
    if folder.is_dir():
        for old in folder.glob("*.png"):
            if old.name not in keep:
                old.unlink()
    return [(f"{FOLDER}/{stem}.png", caption) for stem, caption, _ in figures]

"""Reports of a comparison: report.html, report.md and results.json, plus the records they came from.

`write_reports(store, run_id, out_dir)` compares the run's models
(`aftertune.compare.compare_run`), adds what the run decided besides
(`aftertune.run_outcomes`: scan metrics, checkpoint choice, early stop),
optionally applies gate thresholds, and
writes every file atomically. The HTML and Markdown are rendered from the
results dict alone, so every number they show is in results.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aftertune.compare.comparison import Settings
from aftertune.compare.comparison import run_id as run_id_of
from aftertune.compare.stored_run import compare_run
from aftertune.fileio import atomic_path, write_json_atomic, write_text_atomic
from aftertune.store.db import Store

FILES = ("report.html", "report.md", "results.json", "records.jsonl")


def thresholds_from_spec(spec: dict[str, Any]) -> dict[str, Any] | None:
    """The gate thresholds a run's spec carries under `gate:` (None when it has none)."""
    gate = spec.get("gate") if isinstance(spec, dict) else None
    return gate or None


def render(results: dict[str, Any], out_dir: str | Path) -> None:
    """Write report.html, report.md (+ figures/*.png) and results.json for an existing results dict."""
    from aftertune.report.figures import draw, write_figures
    from aftertune.report.html import render_html
    from aftertune.report.markdown import render_markdown

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = draw(results)
    html = render_html(results, figures)
    md = render_markdown(results, write_figures(results, figures, out))  # both rendered before either is written
    write_json_atomic(out / "results.json", results)
    write_text_atomic(out / "report.md", md)
    write_text_atomic(out / "report.html", html)


def write_records(store: Store, run_id: str, out_dir: str | Path) -> Path:
    """The per-item records the results were computed from, one JSON object per line."""
    dest = Path(out_dir) / "records.jsonl"
    with atomic_path(dest) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for r in store.records(run_id):
            fh.write(json.dumps({"model": r.model, "suite": r.suite, "item_id": r.item_id, "category": r.category,
                                 "request": r.request, "response": r.response, "scores": r.scores,
                                 "details": r.details}, ensure_ascii=False, sort_keys=True) + "\n")
    return dest


def write_reports(store: Store, run_id: str, out_dir: str | Path, *, reference: str | None = None,
                  thresholds: dict[str, Any] | None = None, settings: Settings | None = None) -> dict[str, Any]:
    """Compare, gate (when thresholds are given or in the run's spec), write all report files; return the results."""
    from aftertune.compare.gate import gate_section
    from aftertune.run_outcomes import attach_outcomes

    results = compare_run(store, run_id, reference, settings=settings)
    attach_outcomes(results, store, run_id_of(results))
    if thresholds is None:
        thresholds = thresholds_from_spec(store.get_run(run_id_of(results)).spec)
    if thresholds:
        results["gate"] = gate_section(results, thresholds)
    write_records(store, run_id_of(results), out_dir)
    render(results, out_dir)
    return results


__all__ = ["FILES", "render", "thresholds_from_spec", "write_records", "write_reports"]

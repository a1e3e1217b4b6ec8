"""The self-contained HTML report, rendered from the results dict only.

Jinja2 with autoescaping on: every model output, prompt, label and category is
escaped as text. The only markup not produced by escaping is the template
itself, the inline PNG data URIs and one small table-sorting script, allowed by
its hash in a Content-Security-Policy that forbids everything else (no network,
no other script), as a second line of defence.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from aftertune.compare.factorial import by_variant, readings
from aftertune.compare.format import OVERALL, fmt_ci, fmt_delta, fmt_p, fmt_ratio, fmt_value, mde_cell
from aftertune.judges.validate import harm_judge_note
from aftertune.report import overoptimization, plots
from aftertune.report.figures import Figures, draw

TEMPLATES = Path(__file__).parent / "templates"

# Sorts a table by the clicked header (text compare); a data-sort attribute on a cell overrides its text.
# It marks <html data-report-script="ran">, so a test can tell that scripts do run in the page.
SORT_SCRIPT = """
document.documentElement.setAttribute('data-report-script', 'ran');
document.querySelectorAll('table.sortable th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0];
    var asc = th.getAttribute('data-dir') !== 'asc';
    table.querySelectorAll('th').forEach(function (h) { h.removeAttribute('data-dir'); });
    th.setAttribute('data-dir', asc ? 'asc' : 'desc');
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].getAttribute('data-sort') || a.cells[col].textContent;
      var y = b.cells[col].getAttribute('data-sort') || b.cells[col].textContent;
      return (asc ? 1 : -1) * x.localeCompare(y, undefined, {numeric: true});
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


def _csp() -> str:
    digest = base64.b64encode(hashlib.sha256(SORT_SCRIPT.encode("utf-8")).digest()).decode("ascii")
    return (f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{digest}'; "
            "base-uri 'none'; form-action 'none'")


def _ratio_ci(ci: Any) -> str:
    lo, hi = ci
    if lo is None and hi is None:
        return ""
    return f"{'n/a' if lo is None else f'{lo:.2f}'} to {'∞' if hi is None else f'{hi:.2f}'}"


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        value=fmt_value, delta=fmt_delta, mde=mde_cell, ratio=fmt_ratio, p=fmt_p, ci=fmt_ci, ratio_ci=_ratio_ci,
        tojson_pretty=lambda x: json.dumps(x, indent=1, sort_keys=True, ensure_ascii=False),
        num=lambda x, d=3: "n/a" if x is None else (f"{x:.{d}f}" if isinstance(x, float) else str(x)),
        short=lambda s, n=12: s if len(s) <= n else s[:n] + "…",
    )
    return env


def _view(results: dict[str, Any], figures: Figures) -> dict[str, Any]:
    """Group the results for the template and draw the plots (all numbers still come from `results`)."""
    primary = results["primary"]
    rows = results["comparisons"]
    by_suite_model: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_suite_model[(r["suite"], r["model"])].append(r)
    dist_by_suite: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for d in results["distributions"]:
        dist_by_suite[d["suite"]].append(d)
    suites = []
    for s in results["suites"]:
        srows = by_suite_model.get((s["name"], primary), [])
        metrics = []
        for m in s["metrics"]:
            mrows = [r for r in srows if r["metric"] == m["name"]]
            cat_rows = [r for r in mrows if r["category"] != OVERALL]
            metrics.append({
                "meta": m,
                "overall": next((r for r in mrows if r["category"] == OVERALL), None),
                "categories": cat_rows,
                "table": [r for r in mrows if r["category"] == OVERALL] + cat_rows,
                "plot": plots.category_bars(cat_rows) if len(cat_rows) > 1 else None,
            })
        suites.append({
            "suite": s,
            "metrics": metrics,
            "distributions": [{"d": d, "plot": plots.distribution(d)} for d in dist_by_suite.get(s["name"], [])],
        })
    overall_primary = [r for r in rows if r["model"] == primary and r["category"] == OVERALL]
    others = [r for r in rows if r["model"] != primary and r["category"] == OVERALL]
    flips: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for f in results["flips"]:
        flips[(f["model"], f["suite"], f["metric"])].append(f)
    counts = {(c["model"], c["suite"], c["metric"]): c for c in results["flip_counts"]}
    flip_groups = [{"model": k[0], "suite": k[1], "metric": k[2], "rows": v, "counts": counts.get(k)}
                   for k, v in sorted(flips.items(), key=lambda kv: (
                       kv[0][0] != primary, -(counts[kv[0]]["regressed"] if kv[0] in counts else 0), kv[0]))]
    labels = [m["label"] for m in results["models"] if m["role"] != "checkpoint"]
    values_table = {"models": labels, "rows": [
        {"name": f"{s['name']}.{m['name']}", "kind": m["kind"], "direction": m["direction"],
         "cells": [s["values"].get(label, {}).get(m["name"]) for label in labels]}
        for s in results["suites"] for m in s["metrics"]]}
    curves = [{"c": c, "plot": uri} for c, uri in zip(results["checkpoints"], figures.curves, strict=True)]
    columns = sorted({(p["model"], p["step"]) for c in results["checkpoints"] for p in c["points"]},
                     key=lambda x: (x[1], x[0]))
    curve_table = {
        "columns": columns,
        "rows": [{"name": f"{c['suite']}.{c['metric']}", "kind": c["kind"],
                  "cells": [next((p for p in c["points"] if (p["model"], p["step"]) == col), None) for col in columns]}
                 for c in results["checkpoints"]],
    }
    return {
        "r": results,
        "overall_primary": overall_primary,
        "forest": figures.changes,
        "others": others,
        "suites": suites,
        "flip_groups": flip_groups,
        "harm_note": harm_judge_note(results["protocol"].get("judge_validity") or [],
                                     [s["name"] for s in results["suites"]]),
        "curves": curves,
        "curve_table": curve_table,
        "values_table": values_table,
        "loss_plot": figures.training_loss,
        "factorial": by_variant(results.get("factorial") or []),
        "factorial_readings": readings(results.get("factorial") or []),
        "by_bits_plot": figures.by_bits,
        "overopt": {"lines": overoptimization.lines(summary), "rows": overoptimization.rows(summary),
                    "plot": figures.overoptimization} if (summary := overoptimization.block(results)) else None,
        "csp": _csp(),
        "sort_script": Markup(SORT_SCRIPT),
    }


def render_html(results: dict[str, Any], figures: Figures | None = None) -> str:
    """`figures`: the plots when the caller drew them already (`report.render` shares them with report.md)."""
    return _env().get_template("report.html.j2").render(**_view(results, figures or draw(results)))

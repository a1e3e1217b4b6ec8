"""sweep.json, sweep.md, sweep.html and pareto.png."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aftertune.fileio import atomic_path, write_json_atomic, write_text_atomic
from aftertune.sweep.tradeoff import SAFETY_SUITES

FILES = ("sweep.md", "sweep.html", "sweep.json", "pareto.png")


def _axis_label(rows: Sequence[dict[str, Any] | None], what: str) -> str:
    metrics = sorted({f"{r['suite']}.{r['metric']}" for r in rows if r})
    return f"{what}: {' / '.join(metrics) or 'not measured'}, tuned − base"


def compute_cell(p: dict[str, Any], ref: dict[str, Any]) -> str:
    """The added-compute column of point `p` against the reference point `ref`, in words and numbers."""
    c, gib = p["compute"], 2**30
    parts = []
    if p is ref:
        if c["train_s"] is not None:
            mem = "" if c["peak_growth_bytes"] is None else f", memory +{c['peak_growth_bytes'] / gib:.2f} GiB"
            parts.append(f"reference: training {c['train_s']:.1f} s{mem}")
    elif p["folder"] == ref["folder"]:
        parts.append("the reference's fine-tune: no added training")
    elif c["extra_train_s"] is not None:
        pct = f" ({c['extra_train_ratio']:+.0%})" if c["extra_train_ratio"] is not None else ""
        mem = "" if c["extra_peak_growth_bytes"] is None else f", memory {c['extra_peak_growth_bytes'] / gib:+.2f} GiB"
        parts.append(f"training {c['extra_train_s']:+.1f} s{pct}{mem}")
    if p is not ref and c["inference_ratio"] is not None:
        parts.append(f"audit time ×{c['inference_ratio']:.2f}")
    if c["adds"] and c["adds"] != "nothing":
        parts.append(f"adds {c['adds']}")
    return "; ".join(parts) or "not measured"


def _overrefusal_limit(sweep: dict[str, Any]) -> str:
    """The over-refusal limit of the choice, as the header says it (absent from a sweep.json written before it)."""
    limit = sweep.get("max_overrefusal")
    return "" if limit is None else f" · max over-refusal rise {limit:g} (CI lower bound)"


def _md(sweep: dict[str, Any]) -> str:
    from aftertune.compare.format import fmt_ci, fmt_delta
    from aftertune.report.markdown import _cell

    def change(row: dict[str, Any] | None) -> str:
        if row is None:
            return "not measured"
        return f"{fmt_delta(row['delta'], row['kind'])} ({fmt_ci(*row['delta_ci'], row['kind'])})"

    pts = sweep["points"]
    conf = round(100 * pts[0]["confidence"]) if pts else 95
    lines = [f"### aftertune sweep: {_cell(sweep['knob'])} over {_cell(', '.join(sweep['values']))}", "",
             f"Base `{_cell(sweep['base'])}` · max safety loss {sweep['max_safety_loss']:g}{_overrefusal_limit(sweep)} · "
             f"{conf}% paired CIs", "",
             f"**{_cell(sweep['choice'])}**", "",
             f"| point | model | task gain | {' | '.join(f'{s} loss' for s in SAFETY_SUITES)} | over-refusal | "
             "added compute | front | run |",
             "|---|---|---|" + "---|" * len(SAFETY_SUITES) + "---|---|---|---|"]
    for i, p in enumerate(pts):
        by_suite = {r["suite"]: r for r in p["safety"]}
        mark = " ".join(m for m, on in (("chosen", i == sweep["chosen"]), ("reference", i == sweep["reference"]))
                        if on)
        lines.append(f"| {_cell(p['label'])} {mark} | {_cell(p['model'])} | {_cell(change(p['task']))} | "
                     + " | ".join(_cell(change(by_suite.get(s))) for s in SAFETY_SUITES)
                     + f" | {_cell(change(p['overrefusal']))} | {_cell(compute_cell(p, pts[sweep['reference']]))}"
                     + f" | {'yes' if i in sweep['front'] else ''} | {_cell(p['folder'])} |")
    lines += ["", f"<sub>{_cell(sweep['rule'])} · {_cell(sweep['axes']['compute'])} · plot: pareto.png · "
              "numbers: sweep.json</sub>", ""]
    return "\n".join(lines)


def write_sweep_reports(sweep: dict[str, Any], out_dir: str | Path) -> None:
    """sweep.json, sweep.md, sweep.html and pareto.png (when any point has both numbers)."""
    from markupsafe import Markup

    from aftertune.report import plots
    from aftertune.report.html import SORT_SCRIPT, _csp, _env

    out = Path(out_dir)
    pts = sweep["points"]
    plot = plots.pareto(pts, sweep["front"], sweep["chosen"], sweep["max_safety_loss"],
                        _axis_label([p["task"] for p in pts], "task gain"),
                        _axis_label([p["safety"][0] if p["safety"] else None for p in pts], "safety loss"),
                        reference=sweep["reference"] if pts else None)
    html = _env().get_template("sweep.html.j2").render(
        s=sweep, plot=plot, safety_suites=SAFETY_SUITES, csp=_csp(), sort_script=Markup(SORT_SCRIPT),
        safety_by_point=[{r["suite"]: r for r in p["safety"]} for p in pts],
        compute=[compute_cell(p, pts[sweep["reference"]]) for p in pts])
    md = _md(sweep)
    write_json_atomic(out / "sweep.json", sweep)
    write_text_atomic(out / "sweep.md", md)
    write_text_atomic(out / "sweep.html", html)
    png = out / "pareto.png"
    if plot:
        with atomic_path(png) as tmp:
            tmp.write_bytes(base64.b64decode(plot.split(",", 1)[1]))
    elif png.exists():
        png.unlink()

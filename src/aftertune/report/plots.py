"""Plots for the HTML report, drawn from the results dict only, returned as inline PNG data URIs.

matplotlib's object API (no pyplot, no global state, no display) with the Agg
renderer: works headless and offline, and the report embeds the bytes, so it
opens from disk with no network.
"""

from __future__ import annotations

import base64
import functools
import io
import math
from collections.abc import Callable, Sequence
from typing import Any

REFERENCE_COLOR = "#9aa4b2"
MODEL_COLOR = "#2563eb"
WORSE_COLOR = "#dc2626"
BETTER_COLOR = "#16a34a"
NEUTRAL_COLOR = "#475569"
PALETTE = ["#9aa4b2", "#2563eb", "#f59e0b", "#7c3aed", "#0d9488", "#db2777", "#65a30d", "#0891b2"]


def _plain_text(fn: Callable[..., str | None]) -> Callable[..., str | None]:
    """Draw with mathtext off: a "$" in a category or label is shown, not parsed (no global rc change)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> str | None:
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False}):
            return fn(*args, **kwargs)

    return wrapper


def _figure(width: float, height: float, *, left_chars: int = 6, title: bool = False) -> Any:
    """A figure with fixed margins (a layout engine costs more time than the drawing)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    left_in = 0.25 + 0.075 * left_chars  # about 0.075 inch per 8-point character of the y labels
    fig.subplots_adjust(left=min(0.6, left_in / width), right=1 - 0.15 / width,
                        bottom=0.5 / height, top=1 - (0.3 if title else 0.12) / height)
    return fig


def _style(ax: Any) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(labelsize=8)
    ax.grid(axis="x", color="#e5e7eb", linewidth=0.6)
    ax.set_axisbelow(True)


def _data_uri(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _num(x: Any) -> float:
    return math.nan if x is None else float(x)


def _err(values: Sequence[Any], cis: Sequence[Sequence[Any]]) -> list[list[float]]:
    lo, hi = [], []
    for v, (a, b) in zip(values, cis, strict=True):
        v = _num(v)
        lo.append(max(0.0, v - _num(a)) if a is not None and math.isfinite(v) else 0.0)
        hi.append(max(0.0, _num(b) - v) if b is not None and math.isfinite(v) else 0.0)
    return [lo, hi]


@_plain_text
def forest(rows: Sequence[dict[str, Any]]) -> str | None:
    """Changes of binary metrics (percentage points) with intervals, one line per suite.metric."""
    rows = [r for r in rows if r["kind"] == "binary" and r["delta"] is not None]
    if not rows:
        return None
    labels = [f"{r['suite']}.{r['metric']}" for r in rows]
    fig = _figure(7.2, 0.42 * len(rows) + 0.9, left_chars=max(map(len, labels)))
    ax = fig.add_subplot()
    _style(ax)
    ys = list(range(len(rows)))[::-1]
    for y, r in zip(ys, rows, strict=True):
        color = WORSE_COLOR if r["change"] == "worse" else BETTER_COLOR if r["change"] == "better" else NEUTRAL_COLOR
        lo, hi = (_num(x) * 100 for x in r["delta_ci"])
        ax.plot([lo, hi], [y, y], color=color, linewidth=2)
        ax.plot([_num(r["delta"]) * 100], [y], "o", color=color, markersize=6)
    ax.axvline(0, color="#111827", linewidth=0.8)
    ax.set_yticks(ys, labels)
    ax.set_xlabel(f"change {rows[0]['model']} − {rows[0]['reference']} (percentage points)", fontsize=8)
    return _data_uri(fig)


@_plain_text
def category_bars(rows: Sequence[dict[str, Any]]) -> str | None:
    """Reference vs model per category (harm category, task, ...) with intervals."""
    rows = [r for r in rows if r["value"] is not None]
    if len(rows) < 2:
        return None
    binary = rows[0]["kind"] == "binary"
    scale = 100.0 if binary else 1.0
    ylabels = [f"{r['category']} (n={r['n']})" for r in rows]
    fig = _figure(7.2, 0.38 * len(rows) + 1.0, left_chars=max(map(len, ylabels)))
    ax = fig.add_subplot()
    _style(ax)
    ys = list(range(len(rows)))[::-1]
    h = 0.38
    ref_vals = [_num(r["reference_value"]) * scale for r in rows]
    new_vals = [_num(r["value"]) * scale for r in rows]
    ref_err = [[x * scale for x in e] for e in _err([r["reference_value"] for r in rows],
                                                     [r["reference_value_ci"] for r in rows])]
    new_err = [[x * scale for x in e] for e in _err([r["value"] for r in rows], [r["value_ci"] for r in rows])]
    ax.barh([y + h / 2 for y in ys], ref_vals, height=h, color=REFERENCE_COLOR, xerr=ref_err,
            error_kw={"elinewidth": 0.8, "ecolor": "#374151"}, label=rows[0]["reference"])
    ax.barh([y - h / 2 for y in ys], new_vals, height=h, color=MODEL_COLOR, xerr=new_err,
            error_kw={"elinewidth": 0.8, "ecolor": "#374151"}, label=rows[0]["model"])
    ax.set_yticks(ys, ylabels)
    ax.set_xlabel(f"{rows[0]['suite']}.{rows[0]['metric']}" + (" (%)" if binary else ""), fontsize=8)
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    return _data_uri(fig)


@_plain_text
def distribution(dist: dict[str, Any]) -> str | None:
    """Overlaid histograms of a per-item score (e.g. toxicity), one line per model."""
    edges = dist["bin_edges"]
    if not dist["counts"]:
        return None
    fig = _figure(7.2, 2.6, left_chars=8)
    ax = fig.add_subplot()
    _style(ax)
    for i, (label, counts) in enumerate(dist["counts"].items()):
        total = sum(counts) or 1
        ax.stairs([c / total for c in counts], edges, color=PALETTE[i % len(PALETTE)], linewidth=1.6,
                  label=f"{label} (n={total})", fill=False)
    ax.set_xlabel(f"{dist['suite']}.{dist['metric']} per item", fontsize=8)
    ax.set_ylabel("share of items", fontsize=8)
    ax.legend(fontsize=8, frameon=False)
    return _data_uri(fig)


@_plain_text
def checkpoint_curve(curve: dict[str, Any], chosen_step: int | None = None,
                     stop_steps: Sequence[int] = ()) -> str | None:
    """A metric over training steps with its interval band; the kept model's step ringed, early stops dashed."""
    pts = curve["points"]
    if len(pts) < 2:
        return None
    scale = 100.0 if curve["kind"] == "binary" else 1.0
    steps = [p["step"] for p in pts]
    vals = [_num(p["value"]) * scale for p in pts]
    lo = [_num(p["ci"][0]) * scale for p in pts]
    hi = [_num(p["ci"][1]) * scale for p in pts]
    fig = _figure(3.5, 2.4, left_chars=5, title=True)
    ax = fig.add_subplot()
    _style(ax)
    ax.fill_between(steps, lo, hi, color=MODEL_COLOR, alpha=0.15, linewidth=0)
    ax.plot(steps, vals, "o-", color=MODEL_COLOR, markersize=4, linewidth=1.5)
    chosen = [(x, y) for x, y in zip(steps, vals, strict=True) if x == chosen_step and math.isfinite(y)][:1]
    if chosen:
        ax.plot(*chosen[0], "o", markersize=11, markerfacecolor="none", markeredgecolor=BETTER_COLOR,
                markeredgewidth=1.6, label="kept")
    for x in stop_steps:
        ax.axvline(x, color=WORSE_COLOR, linewidth=0.9, linestyle="--", label="stopped" if x == stop_steps[0] else None)
    if chosen or stop_steps:
        ax.legend(fontsize=7, frameon=False)
    ax.set_title(f"{curve['suite']}.{curve['metric']}" + (" (%)" if scale == 100 else ""), fontsize=9)
    ax.set_xlabel("training step", fontsize=8)
    return _data_uri(fig)


@_plain_text
def training_loss(metrics: Sequence[dict[str, Any]]) -> str | None:
    """Training (and eval) loss over steps, from the run's train_metrics events."""
    pts = [m for m in metrics if m.get("step") is not None]
    tunes = sorted({str(m.get("tune", "")) for m in pts})
    series = {}
    for tune in tunes:
        for key in ("loss", "eval_loss"):
            xy = [(m["step"], m[key]) for m in pts if str(m.get("tune", "")) == tune and isinstance(m.get(key), int | float)]
            if xy:
                series[f"{tune} {key}" if len(tunes) > 1 else key] = sorted(xy)
    if not series:
        return None
    fig = _figure(3.5, 2.4, left_chars=5, title=True)
    ax = fig.add_subplot()
    _style(ax)
    for i, (key, xy) in enumerate(series.items()):
        ax.plot([x for x, _ in xy], [y for _, y in xy], "-", color=PALETTE[(i + 1) % len(PALETTE)], linewidth=1.4,
                label=key)
    ax.set_title("training loss", fontsize=9)
    ax.set_xlabel("training step", fontsize=8)
    ax.legend(fontsize=8, frameon=False)
    return _data_uri(fig)


@_plain_text
def pareto(points: Sequence[dict[str, Any]], front: Sequence[int], chosen: int | None, threshold: float,
           x_label: str, y_label: str, reference: int | None = None) -> str | None:
    """A sweep's task gain (x) against safety loss (y), both with intervals: the non-dominated front as a line,
    base at (0, 0), the safety-loss limit as a dashed line, the chosen point ringed and the reference point
    (a defence sweep's undefended fine-tune) as a diamond."""
    shown = [i for i, p in enumerate(points) if p["gain"] is not None and p["loss"] is not None]
    if not shown:
        return None
    fig = _figure(6.4, 4.2, left_chars=10)
    ax = fig.add_subplot()
    _style(ax)
    ax.grid(axis="y", color="#e5e7eb", linewidth=0.6)
    xs, ys = [points[i]["gain"] for i in shown], [points[i]["loss"] for i in shown]
    ax.errorbar(xs, ys, xerr=_err(xs, [points[i]["gain_ci"] for i in shown]),
                yerr=_err(ys, [points[i]["loss_ci"] for i in shown]), fmt="o", color=MODEL_COLOR,
                ecolor="#93c5fd", elinewidth=1, capsize=2, markersize=5, label="sweep point")
    for i in shown:
        ax.annotate(points[i]["label"], (points[i]["gain"], points[i]["loss"]), textcoords="offset points",
                    xytext=(5, 4), fontsize=7, color=NEUTRAL_COLOR)
    on_front = sorted((points[i]["gain"], points[i]["loss"]) for i in front if i in shown)
    if on_front:
        ax.plot(*zip(*on_front, strict=True), "-", color=BETTER_COLOR, linewidth=1.4, label="non-dominated front")
    ax.plot([0], [0], "s", color=REFERENCE_COLOR, markersize=7, label="base")
    ax.axhline(threshold, color=WORSE_COLOR, linewidth=0.9, linestyle="--", label=f"max safety loss {threshold:g}")
    if reference is not None and reference in shown:
        ax.plot([points[reference]["gain"]], [points[reference]["loss"]], "D", color=NEUTRAL_COLOR, markersize=7,
                label=f"reference ({points[reference]['label']})")
    if chosen is not None and chosen in shown:
        ax.plot([points[chosen]["gain"]], [points[chosen]["loss"]], "o", markersize=13, markerfacecolor="none",
                markeredgecolor=WORSE_COLOR, markeredgewidth=1.6, label="chosen")
    ax.set_xlabel(x_label, fontsize=8)
    ax.set_ylabel(y_label, fontsize=8)
    ax.legend(fontsize=7, frameon=False, loc="best")
    return _data_uri(fig)


@_plain_text
def by_bits(panels: Sequence[dict[str, Any]], full_bits: float = 32.0) -> str | None:
    """Safety metrics against bits per weight (log scale; full precision at `full_bits`, ticked "full"), base and
    tuned as two lines with their intervals as error bars, one panel per metric (figures.bits_panels)."""
    panels = [p for p in panels if any(len(pts) for pts in p["series"].values())]
    if not panels:
        return None
    fig = _figure(3.6 * len(panels), 2.8, left_chars=5, title=True)
    fig.subplots_adjust(wspace=0.35)
    ticks = sorted({pt[0] for p in panels for pts in p["series"].values() for pt in pts})
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        _style(ax)
        scale = 100.0 if panel["kind"] == "binary" else 1.0
        for j, (role, color) in enumerate((("base", REFERENCE_COLOR), ("tuned", MODEL_COLOR))):
            pts = panel["series"].get(role) or []
            if not pts:
                continue
            xs = [x * (0.96 if j == 0 else 1.04) for x, _, _ in pts]  # side by side where the intervals overlap
            ys = [_num(v) * scale for _, v, _ in pts]
            err = [[e * scale for e in side] for side in _err([v for _, v, _ in pts], [ci for _, _, ci in pts])]
            ax.errorbar(xs, ys, yerr=err, fmt="o-", color=color, ecolor=color, elinewidth=1, capsize=2,
                        markersize=4, linewidth=1.4, label=role)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, ["full" if t == full_bits else f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("bits per weight", fontsize=8)
        ax.set_title(f"{panel['name']}" + (" (%)" if scale == 100 else "") + f", {panel['direction']} is better",
                     fontsize=9)
        ax.legend(fontsize=7, frameon=False)
    return _data_uri(fig)


@_plain_text
def reward_vs_kl(summary: dict[str, Any]) -> str | None:
    """Proxy (left) and gold (right) reward against √KL: each model's best-of-n curve with its interval band (KL of
    best-of-n from that model's own samples), and each model with a measured KL from the reference as a point with
    error bars on both axes (overoptimization suite; compare/overoptimization_results.py)."""
    models = [m for m in summary["models"] if m["best_of_n"] or m["sqrt_kl"] is not None]
    if not models:
        return None
    fig = _figure(7.2, 2.9, left_chars=5, title=True)
    fig.subplots_adjust(wspace=0.3)
    for i, role in enumerate(("proxy", "gold")):
        ax = fig.add_subplot(1, 2, i + 1)
        _style(ax)
        for j, m in enumerate(models):
            color = PALETTE[j % len(PALETTE)]
            bon = m["best_of_n"]
            if bon:
                pts = bon["points"]
                xs = [_num(p["sqrt_kl"]) for p in pts]
                ax.fill_between(xs, [_num(p[f"{role}_ci"][0]) for p in pts], [_num(p[f"{role}_ci"][1]) for p in pts],
                                color=color, alpha=0.15, linewidth=0)
                ax.plot(xs, [_num(p[role]) for p in pts], "-", color=color, linewidth=1.4,
                        label=f"{m['label']} best-of-n")
            value, kl = m.get(role), m.get("kl")
            if value and kl and m["sqrt_kl"] is not None:
                lo, hi = kl["ci"]
                xerr = [[max(0.0, m["sqrt_kl"] - math.sqrt(max(0.0, _num(lo))))] if lo is not None else [0.0],
                        [max(0.0, math.sqrt(max(0.0, _num(hi))) - m["sqrt_kl"])] if hi is not None else [0.0]]
                ax.errorbar([m["sqrt_kl"]], [_num(value["value"])], xerr=xerr, yerr=_err([value["value"]], [value["ci"]]),
                            fmt="D", color=color, ecolor=color, elinewidth=1, capsize=2, markersize=5,
                            label=f"{m['label']} (its KL)")
        ax.set_xlabel("√KL (nats)", fontsize=8)
        ax.set_title(f"{role} reward" + (" (optimised)" if role == "proxy" else " (held out)"), fontsize=9)
        if i == 0:
            ax.legend(fontsize=7, frameon=False)
    return _data_uri(fig)

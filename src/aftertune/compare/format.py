"""How comparison rows read: the name of the all-items row, and numbers, intervals and p-values as text."""

from __future__ import annotations

from typing import Any

OVERALL = "all"  # the category name of the row over all items


def fmt_value(x: float | None, kind: str) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.1f}%" if kind == "binary" else f"{x:.4g}"


def fmt_delta(x: float | None, kind: str) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:+.1f} pts" if kind == "binary" else f"{x:+.3g}"


def fmt_ci(lo: float | None, hi: float | None, kind: str) -> str:
    """An interval of changes: "+4.1 to +13.9 pts" for rates, "+0.0761 to +0.108" for scores."""
    if lo is None and hi is None:
        return "n/a"
    if kind == "binary":
        a = "n/a" if lo is None else f"{100 * lo:+.1f}"
        b = "n/a" if hi is None else f"{100 * hi:+.1f}"
        return f"{a} to {b} pts"
    return f"{'n/a' if lo is None else f'{lo:+.3g}'} to {'n/a' if hi is None else f'{hi:+.3g}'}"


def fmt_ratio(x: float | None) -> str:
    return "n/a" if x is None else f"×{x:.2f}"


def fmt_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_mde(x: float | None, kind: str) -> str:
    """A minimum detectable effect: "±12.5 pts" for rates, "±0.031" for scores, "n/a" when none."""
    if x is None:
        return "n/a"
    return f"±{100 * x:.1f} pts" if kind == "binary" else f"±{x:.3g}"


def mde_cell(r: dict[str, Any]) -> str:
    """A report cell: the row's MDE, and its power against the change the spec cares about when there is one."""
    text = fmt_mde(r.get("mde"), r["kind"])
    if r.get("power") is not None:
        text += f" (power {100 * r['power']:.0f}% at {fmt_mde(r['target_effect'], r['kind'])})"
    return text

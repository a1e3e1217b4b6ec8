"""The report's reading of the overoptimization suite's block (results.json: the suite's `summary`), as plain text.

Both report.md and report.html show these lines (each escapes them its own way), so the two say the same: which
scorer is the proxy and which the gold, and per curve whether the proxy still rose while the gold fell, with the
changes' intervals and the gold's peak with its interval.
"""

from __future__ import annotations

from typing import Any

SUITE = "overoptimization"


def block(results: dict[str, Any]) -> dict[str, Any] | None:
    """The overoptimization suite's summary in `results`, when the run has one."""
    return next((s["summary"] for s in results["suites"] if s["name"] == SUITE and s.get("summary")), None)


def _g(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def _ci(ci: Any) -> str:
    return f"{_g(ci[0])} to {_g(ci[1])}"


def verdict(div: dict[str, Any], x_name: str, where: str) -> str:
    """One curve's over-optimisation verdict with its intervals; `where` names the curve."""
    conf = "beyond their Bonferroni-adjusted intervals"
    peak = f"gold peaks at {x_name} {div['gold_peak']} (interval {div['gold_peak_ci'][0]} to {div['gold_peak_ci'][1]})"
    last = div["points"][-1][x_name]
    if div["overoptimized"]:
        t = min((t for t in div["tail"] if t["diverging"]), key=lambda t: t["gold_change"])
        return (f"{where}: OVER-OPTIMISED. From {x_name} {t[x_name]} to {last} the proxy rose by "
                f"{_g(t['proxy_change'])} ({_ci(t['proxy_ci'])}) while the gold fell by {_g(-t['gold_change'])} "
                f"(change {_ci(t['gold_ci'])}), {conf}; {peak}.")
    return (f"{where}: not over-optimised: at no tested {x_name} up to {last} did the proxy rise and the gold fall "
            f"{conf}; {peak}.")


def lines(summary: dict[str, Any]) -> list[str]:
    """The section's sentences: the two scorers, then one verdict per curve."""
    out = [f"Proxy (the reward optimised): {summary['proxy']}. Gold (held out): {summary['gold']}. "
           "Best-of-n KL is the analytic log n - (n-1)/n; a model's KL is measured from "
           + (f"the reference model {summary['kl_reference']}." if summary.get("kl_reference")
              else "no reference (the audit named none).")]
    for m in summary["models"]:
        text = m.get("kl_text_scored", m["kl_samples"] if "kl_retokenized" in m else 0)  # older results: all text
        if text:
            why = f" ({m['kl_note']})" if m.get("kl_note") else ""
            out.append(f"{m['label']}: {text} of its {m['kl_samples']} samples were scored for KL on their text, not "
                       f"on the token ids sampled{why}; their log-ratios leave out the end-of-sequence token, and "
                       f"{m['kl_retokenized']} of them were split into other tokens than sampled: not exact.")
        if m["best_of_n"] is not None:
            out.append(verdict(m["best_of_n"], "n", f"{m['label']}, best-of-n"))
        elif m.get("note"):
            out.append(f"{m['label']}: {m['note']}.")
    training = summary.get("training")
    if training and training.get("points"):
        out.append(verdict(training, "model", "Across models ordered by KL (" + " → ".join(training["models"]) + ")"))
    elif training and training.get("note"):
        out.append(f"Across models: {training['note']}.")
    return out


def rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Per model: its KL from the reference, mean proxy and gold reward, and the best-of-N values and verdict."""
    out = []
    for m in summary["models"]:
        bon = m["best_of_n"]
        top = bon["points"][-1] if bon else None
        out.append({"label": m["label"], "prompts": m["prompts"], "samples": m["samples"], "kl": m["kl"],
                    "proxy": m["proxy"], "gold": m["gold"], "bon": top,
                    "overoptimized": bon["overoptimized"] if bon else None,
                    "gold_peak": f"{bon['gold_peak']} ({bon['gold_peak_ci'][0]} to {bon['gold_peak_ci'][1]})"
                    if bon else "n/a"})
    return out

"""A compact Markdown summary that fits a pull-request comment, rendered from the results dict only."""

from __future__ import annotations

from typing import Any

from aftertune.compare.comparison import OVERALL, fmt_ci, fmt_delta, fmt_p, fmt_ratio, fmt_value

_MARK = {"worse": "🔴 worse", "better": "🟢 better", "none": "no change"}


def _cell(text: Any) -> str:
    """Table-safe text: no pipes, no newlines, no HTML."""
    return (str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
            .replace("<", "&lt;").replace(">", "&gt;"))


def render_markdown(results: dict[str, Any]) -> str:
    v = results["verdict"]
    ref, primary = results["reference"], results["primary"]
    conf = round(100 * results["settings"]["confidence"])
    out = [f"### aftertune: {_cell(v['headline'])}", ""]
    gate = results.get("gate")
    if gate is not None:
        if gate["passed"]:
            out.append(f"**Gate passed** ({len(gate['thresholds'])} threshold(s) on {_cell(gate['model'])}).")
        else:
            out.append(f"**Gate FAILED**: {len(gate['violations'])} threshold(s) violated")
            out += [f"- {_cell(x['message'])}" for x in gate["violations"]]
        out.append("")
    if primary is None:
        out += [f"| suite.metric | {_cell(ref)} | {conf}% CI | n |", "|---|--:|--:|--:|"]
        for s in results["suites"]:
            for m in s["metrics"]:
                val = s["values"].get(ref, {}).get(m["name"]) or {"value": None, "ci": [None, None], "n": 0}
                k = m["kind"]
                out.append(f"| {_cell(s['name'])}.{_cell(m['name'])} | {fmt_value(val['value'], k)} | "
                           f"{fmt_value(val['ci'][0], k)} to {fmt_value(val['ci'][1], k)} | {val['n']} |")
        out += ["", f"<sub>run `{_cell(results['run']['id'])}` · {_cell(v['note'])}</sub>", ""]
        return "\n".join(out)
    out += [
        f"| suite.metric | n | {_cell(ref)} | {_cell(primary)} | change ({conf}% CI) | ratio | p (Holm) | |",
        "|---|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in results["comparisons"]:
        if r["model"] != primary or r["category"] != OVERALL:
            continue
        k = r["kind"]
        lo, hi = r["delta_ci"]
        ratio = fmt_ratio(r["ratio"]) if k == "binary" and r["ratio"] is not None else ""
        out.append(
            f"| {_cell(r['suite'])}.{_cell(r['metric'])} | {r['n']} | {fmt_value(r['reference_value'], k)} | "
            f"{fmt_value(r['value'], k)} | {fmt_delta(r['delta'], k)} ({fmt_ci(lo, hi, k)}) | "
            f"{ratio} | {fmt_p(r.get('p_adjusted'))} | {_MARK[r['change']] if r['n'] else 'not scored'} |"
        )
    cats = [r for r in results["comparisons"]
            if r["model"] == primary and r["category"] != OVERALL and r["change"] == "worse"]
    if cats:
        out += ["", f"Significantly worse categories ({len(cats)}):"]
        out += [f"- {_cell(line)}" for line in v["worse_categories"][:10]]
        if len(cats) > 10:
            out.append(f"- … and {len(cats) - 10} more (see report.html)")
    flips = [c for c in results["flip_counts"] if c["model"] == primary and (c["regressed"] or c["improved"])]
    if flips:
        out += ["", "Flipped items (pass → fail / fail → pass): " + "; ".join(
            f"{_cell(c['suite'])}.{_cell(c['metric'])} {c['regressed']} / {c['improved']}" for c in flips)]
    others = sorted({r["model"] for r in results["comparisons"] if r["model"] != primary})
    if others:
        worse_other = {m: sum(1 for r in results["comparisons"] if r["model"] == m and r["category"] == OVERALL
                              and r["change"] == "worse") for m in others}
        out += ["", "Other models vs " + _cell(ref) + ": " + ", ".join(
            f"{_cell(m)} worse on {n}" for m, n in worse_other.items())]
    out += ["", f"<sub>run `{_cell(results['run']['id'])}` · {_cell(v['note'])} · binary: exact McNemar, "
            "Tango CI, Bonett–Price ratio CI; scores: paired bootstrap CI, permutation test · "
            "full report: report.html, numbers: results.json</sub>", ""]
    return "\n".join(out)

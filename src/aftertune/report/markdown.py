"""A compact Markdown summary that fits a pull-request comment, rendered from the results dict only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aftertune.compare.factorial import by_variant, readings
from aftertune.compare.format import OVERALL, fmt_ci, fmt_delta, fmt_p, fmt_ratio, fmt_value, mde_cell
from aftertune.report import overoptimization

_MARK = {"worse": "🔴 worse", "better": "🟢 better", "none": "no change"}


def _cell(text: Any) -> str:
    """Inert, table-safe text from any field (model outputs, names, refs): no pipes, no newlines, no raw HTML
    (< > & as entities), and no links or images: escaped brackets keep `[x](javascript:...)`, `![x](data:...)`
    and reference-style links from forming, so every Markdown renderer shows the text as it is."""
    return (str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("\r", " ")
            .replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("[", "\\[").replace("]", "\\]").replace("`", "\\`"))


def _code(text: Any) -> str:
    """A code span's content: inert by itself (no HTML, links or escapes inside), so only what could end the
    span or the table cell is replaced."""
    return " ".join(str(text).split()).replace("`", "'").replace("|", "\\|")


def _training_outcomes(results: dict[str, Any]) -> list[str]:
    """Lines on the data scan, a safety early stop and the checkpoint choice, when the run had them."""
    out = []
    scan = results.get("scan")
    if scan:
        out.append(f"Training data scan: risk **{_cell(scan['risk'])}** ({scan['rows']} rows; "
                   f"{scan['metrics'].get('scan.flagged_rows', 0):g} flagged).")
    for stop in results.get("early_stop", []):
        out.append(f"**Training stopped early**: {_cell(stop['tune'])} at step {stop['train_step']} of "
                   f"{stop['max_steps']}, checkpoints.stop_when violated: {_cell('; '.join(stop['violations']))}")
    choice = results.get("checkpoint_choice")
    if choice:
        out.append(f"**Model to keep** ({choice['direction']} {_cell(choice['metric'])}): {_cell(choice['reason'])}")
        out += [f"- not {_cell(c['label'])} (step {c['step']}): {_cell(c['excluded'][0])}"
                for c in choice["candidates"] if c["excluded"]]
    return [*out, ""] if out else []


def render_markdown(results: dict[str, Any], figures: Sequence[tuple[str, str]] | None = None) -> str:
    """The PR-comment summary, then (folded) the details; `figures` are (relative PNG path, caption)."""
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
    out += _training_outcomes(results)
    if primary is None:
        out += [f"| suite.metric | {_cell(ref)} | {conf}% CI | n |", "|---|--:|--:|--:|"]
        for s in results["suites"]:
            for m in s["metrics"]:
                val = s["values"].get(ref, {}).get(m["name"]) or {"value": None, "ci": [None, None], "n": 0}
                k = m["kind"]
                out.append(f"| {_cell(s['name'])}.{_cell(m['name'])} | {fmt_value(val['value'], k)} | "
                           f"{fmt_value(val['ci'][0], k)} to {fmt_value(val['ci'][1], k)} | {val['n']} |")
        out += ["", *_overoptimization(results, conf)]
        out += [f"<sub>run `{_code(results['volatile']['run_id'])}` · {_cell(v['note'])}</sub>", ""]
        return "\n".join(out)
    out += [
        f"| suite.metric | n | {_cell(ref)} | {_cell(primary)} | change ({conf}% CI) | ratio | p (Holm) | MDE | |",
        "|---|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    unscored = []
    for r in results["comparisons"]:
        if r["model"] != primary or r["category"] != OVERALL:
            continue
        if not r["n"] or r["delta"] is None:
            unscored.append(f"{r['suite']}.{r['metric']}")
            continue
        k = r["kind"]
        lo, hi = r["delta_ci"]
        ratio = fmt_ratio(r["ratio"]) if k == "binary" and r["ratio"] is not None else ""
        out.append(
            f"| {_cell(r['suite'])}.{_cell(r['metric'])} | {r['n']} | {fmt_value(r['reference_value'], k)} | "
            f"{fmt_value(r['value'], k)} | {fmt_delta(r['delta'], k)} ({fmt_ci(lo, hi, k)}) | "
            f"{ratio} | {fmt_p(r.get('p_adjusted'))} | {_cell(mde_cell(r))} | "
            f"{_MARK[r['change']] if r['n'] else 'not scored'} |"
        )
    out += ["", "MDE: the smallest change this n detects with 80% power at the Holm level of a lone change "
            "(given the observed discordance or spread)."]
    if v.get("underpowered"):
        out += ["", "**Too few items to see the change that matters:**"] + [f"- {_cell(x)}" for x in v["underpowered"]]
    if unscored:
        out += ["", f"Not scored in this run (no judge configured, or not this task's kind): {_cell(', '.join(unscored))}"]
    if results.get("warnings"):
        out += ["", "**Warnings:**"] + [f"- {_cell(w)}" for w in results["warnings"]]
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
    notes = readings(results.get("factorial") or [])
    if notes:
        out += ["", "**Fine-tuning × quantization** (interactions significant after Holm):"]
        out += [f"- {_cell(line)}" for line in notes]
    out += ["", f"<sub>run `{_code(results['volatile']['run_id'])}` · {_cell(v['note'])} · binary: exact McNemar, "
            "Tango CI, Bonett–Price ratio CI; scores: paired bootstrap CI, permutation test · "
            "full report: report.html, numbers: results.json</sub>", ""]
    out += _details(results, figures or [])
    return "\n".join(out)


def _details(results: dict[str, Any], figures: Sequence[tuple[str, str]]) -> list[str]:
    """Below the PR-comment summary: every model, curves over training, the judges' accuracy, the protocol."""
    conf = round(100 * results["settings"]["confidence"])
    out = ["<details><summary>Every model, curves, judges and protocol</summary>", ""]
    out += _all_models(results, conf) + _factorial(results, conf) + _overoptimization(results, conf)
    out += _categories(results, conf) + _curves(results)
    out += _judges(results)
    out += _protocol(results)
    if figures:
        out += ["#### Figures", ""] + [f"![{_cell(caption)}]({path})" for path, caption in figures] + [""]
    return [*out, "</details>", ""]


def _all_models(results: dict[str, Any], conf: int) -> list[str]:
    labels = [m["label"] for m in results["models"] if m["role"] != "checkpoint"]
    out = [f"#### Every model ({conf}% CI, n items)", "",
           "| suite.metric | " + " | ".join(_cell(x) for x in labels) + " |", "|---|" + "--:|" * len(labels)]
    for s in results["suites"]:
        for m in s["metrics"]:
            cells = []
            for label in labels:
                val = s["values"].get(label, {}).get(m["name"])
                k = m["kind"]
                cells.append("" if not val or val["value"] is None else
                             f"{fmt_value(val['value'], k)} ({fmt_value(val['ci'][0], k)} to "
                             f"{fmt_value(val['ci'][1], k)}, {val['n']})")
            if any(cells):
                out.append(f"| {_cell(s['name'])}.{_cell(m['name'])} | " + " | ".join(cells) + " |")
    ref = results["reference"]
    rows = [r for r in results["comparisons"] if r["category"] == OVERALL and r["n"] and r["delta"] is not None]
    models = [x for x in labels if x != ref and any(r["model"] == x for r in rows)]
    if models:
        out += ["", f"Change vs {_cell(ref)} on paired items ({conf}% CI; 🔴/🟢 significant after Holm):", "",
                "| suite.metric | " + " | ".join(_cell(x) for x in models) + " |", "|---|" + "--:|" * len(models)]
        keys = sorted({(r["suite"], r["metric"]) for r in rows}, key=lambda k: (k[0], k[1]))
        for suite, metric in keys:
            cells = []
            for label in models:
                r = next((r for r in rows if (r["model"], r["suite"], r["metric"]) == (label, suite, metric)), None)
                mark = {"worse": " 🔴", "better": " 🟢"}.get(r["change"], "") if r else ""
                cells.append(f"{fmt_delta(r['delta'], r['kind'])} ({fmt_ci(*r['delta_ci'], r['kind'])}){mark}"
                             if r else "")
            out.append(f"| {_cell(suite)}.{_cell(metric)} | " + " | ".join(cells) + " |")
    return [*out, ""]


def _factorial(results: dict[str, Any], conf: int) -> list[str]:
    """Per deployment variant, the 2×2 of fine-tuning × quantization (compare/factorial.py): each model's value
    on the items all four share, the three effects and the interaction with its CI and Holm p."""
    groups = by_variant(results.get("factorial") or [])
    if not groups:
        return []
    out = ["#### Fine-tuning × quantization", "",
           "Each effect is a mean per-item difference on the items all four models scored ("
           f"{conf}% paired bootstrap CI; * significant after Holm across this section). The interaction is "
           "(tuned+V − tuned) − (base+V − base): how much more the quantizer moves the tuned model than the base.",
           ""]
    for g in groups:
        m = g["models"]
        bits = f", {g['bits']:g} bits per weight" if g["bits"] is not None else ""
        out += [f"{_cell(g['variant'])}{bits}:", "",
                f"| suite.metric | n | {_cell(m['base'])} | {_cell(m['tuned'])} | {_cell(m['base_variant'])} | "
                f"{_cell(m['tuned_variant'])} | fine-tune | quantization on base | quantization on tuned | "
                "interaction | p (Holm) |", "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
        for r in g["rows"]:
            k, e = r["kind"], r["effects"]
            cells = [fmt_value(r["values"][role]["value"], k)
                     for role in ("base", "tuned", "base_variant", "tuned_variant")]
            cells += [_effect(e[name], k) for name in ("finetune", "quant_base", "quant_tuned", "interaction")]
            out.append(f"| {_cell(r['suite'])}.{_cell(r['metric'])} | {r['n']} | " + " | ".join(cells) +
                       f" | {fmt_p(e['interaction']['p_holm'])} |")
        out.append("")
    return out


def _overoptimization(results: dict[str, Any], conf: int) -> list[str]:
    """The overoptimization suite's reading (report/overoptimization.py) and per model its KL, rewards and best-of-N."""
    summary = overoptimization.block(results)
    if summary is None:
        return []
    def pair(v: Any) -> str:
        return "n/a" if not v else f"{_num(v['value'])} ({_num(v['ci'][0])} to {_num(v['ci'][1])})"

    out = ["#### Reward over-optimisation", "", *[f"- {_cell(line)}" for line in overoptimization.lines(summary)], "",
           f"| model | prompts × samples | KL ({conf}% CI) | proxy reward | gold reward | best-of-N proxy | "
           "best-of-N gold | over-optimised (best-of-n) | gold peak n |", "|---|--:|--:|--:|--:|--:|--:|---|--:|"]
    for x in overoptimization.rows(summary):
        bon = x["bon"]
        best = [f"{_num(bon[k])} ({_num(bon[k + '_ci'][0])} to {_num(bon[k + '_ci'][1])})" if bon else "n/a"
                for k in ("proxy", "gold")]
        flag = "n/a" if x["overoptimized"] is None else ("**yes**" if x["overoptimized"] else "no")
        out.append(f"| {_cell(x['label'])} | {x['prompts']} × {x['samples']} | {pair(x['kl'])} | {pair(x['proxy'])} | "
                   f"{pair(x['gold'])} | {best[0]} | {best[1]} | {flag} | {_cell(x['gold_peak'])} |")
    return [*out, ""]


def _effect(e: dict[str, Any], kind: str) -> str:
    return (f"{fmt_delta(e['estimate'], kind)} ({fmt_ci(e['ci_low'], e['ci_high'], kind)})"
            f"{'*' if e['significant'] else ''}")


def _categories(results: dict[str, Any], conf: int) -> list[str]:
    """The primary model vs the reference per category (harm category, sub-benchmark), where a suite has several."""
    primary, ref = results["primary"], results["reference"]
    rows = [r for r in results["comparisons"] if r["model"] == primary and r["category"] != OVERALL and r["n"]
            and r["delta"] is not None]
    keys = sorted({(r["suite"], r["metric"]) for r in rows})
    if not keys:
        return []
    out = [f"#### {_cell(primary)} vs {_cell(ref)} per category ({conf}% CI; 🔴/🟢 significant after Holm)", "",
           f"| suite.metric | category | n | {_cell(ref)} | {_cell(primary)} | change | MDE |",
           "|---|---|--:|--:|--:|--:|--:|"]
    for suite, metric in keys:
        for r in sorted((r for r in rows if (r["suite"], r["metric"]) == (suite, metric)), key=lambda r: r["category"]):
            mark = {"worse": " 🔴", "better": " 🟢"}.get(r["change"], "")
            out.append(f"| {_cell(suite)}.{_cell(metric)} | {_cell(r['category'])} | {r['n']} | "
                       f"{fmt_value(r['reference_value'], r['kind'])} | {fmt_value(r['value'], r['kind'])} | "
                       f"{fmt_delta(r['delta'], r['kind'])} ({fmt_ci(*r['delta_ci'], r['kind'])}){mark} | "
                       f"{_cell(mde_cell(r))} |")
    return [*out, ""]


def _curves(results: dict[str, Any]) -> list[str]:
    curves = results["checkpoints"]
    if not curves:
        return []
    steps = sorted({p["step"] for c in curves for p in c["points"]})
    out = ["#### Over training (step: value)", "", "| suite.metric | " + " | ".join(str(s) for s in steps) + " |",
           "|---|" + "--:|" * len(steps)]
    for c in curves:
        by_step = {p["step"]: p for p in c["points"]}
        out.append(f"| {_cell(c['suite'])}.{_cell(c['metric'])} | " + " | ".join(
            fmt_value(by_step[s]["value"], c["kind"]) if s in by_step else "" for s in steps) + " |")
    return [*out, ""]


def _judges(results: dict[str, Any]) -> list[str]:
    entries = results["protocol"].get("judge_validity") or []
    if not entries:
        return ["#### Judges", "", "No judge validity was measured in this run.", ""]
    out = ["#### Judges: their own accuracy on labelled data", "",
           "Measured on rows that did not tune the judge. Labels: human = people; authors = answers written as "
           "examples of a class by the data set's authors; ai = AI-agent labellers; model = another model's score.",
           "", "| role | judge | labelled set | labels | n | accuracy | κ | precision | recall | AUROC "
           "| tp / fn / fp / tn |", "|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|"]
    for j in entries:
        role = _cell(j.get("role") or j.get("judge"))
        if not j.get("sets"):
            out.append(f"| {role} | {_cell(j.get('judge'))} | {_cell(j.get('note', 'no labelled data'))} "
                       "| | | | | | | | |")
        for st in j.get("sets", []):
            confusion = " / ".join(str(st.get(k, "")) for k in ("tp", "fn", "fp", "tn"))
            out.append(f"| {role} | {_cell(j.get('judge'))} | {_cell(st.get('set'))} | "
                       f"{_cell(st.get('label_kind') or '-')} | {st.get('n')} | "
                       f"{_num(st.get('accuracy'))} | {_num(st.get('kappa'))} | {_num(st.get('precision'))} | "
                       f"{_num(st.get('recall'))} | {_num(st.get('auroc'))} | {confusion} |")
    from aftertune.judges.validate import harm_judge_note

    note = harm_judge_note(entries, [s["name"] for s in results["suites"]])
    return [*out, "", *([note, ""] if note else []), *_judge_agreement(results)]


def _judge_agreement(results: dict[str, Any]) -> list[str]:
    rows = results["protocol"].get("judge_agreement") or []
    if not rows:
        return []
    out = ["#### Judges: agreement with each other on this run's items", "",
           "| suite | model | question | judge A | judge B | n | A yes | B yes | agreement | κ |",
           "|---|---|---|---|---|--:|--:|--:|--:|--:|"]
    out += [f"| {_cell(r['suite'])} | {_cell(r['model'])} | {_cell(r['question'])} | {_cell(r['judge_a'])} | "
            f"{_cell(r['judge_b'])} | {r['n']} | {r['a_yes']} | {r['b_yes']} | {_num(r['agreement'])} | "
            f"{_num(r['kappa'])} |" for r in rows]
    return [*out, ""]


def _protocol(results: dict[str, Any]) -> list[str]:
    proto = results["protocol"]
    spec = proto.get("spec") or {}
    out = ["#### Protocol", ""]
    if spec.get("notes"):
        out += [f"Scaled down / changed: {_cell(spec['notes'])}", ""]
    out += ["| suite | items per model | shared | sampled of | seed | decoding |", "|---|---|--:|--:|--:|---|"]
    order = {m["label"]: i for i, m in enumerate(results["models"])}  # results.json sorts keys; models keep order
    for s in proto["suites"]:
        per = ", ".join(f"{_cell(k)} {n}" for k, n in sorted(s["items_per_model"].items(),
                                                             key=lambda kv: order.get(kv[0], len(order))))
        smp = s.get("sampling") or {}
        dec = "; ".join(f"{_cell(k)}={_cell(v if len(v) > 1 else v[0])}" for k, v in s.get("decoding", {}).items()
                        if k in ("max_new_tokens", "temperature", "do_sample", "top_p", "stop", "n"))
        out.append(f"| {_cell(s['suite'])} | {per} | {s['items_shared']} | {smp.get('n_items', '')} | "
                   f"{smp.get('seed', '')} | {dec} |")
    st = results["settings"]
    out += ["", f"Statistics: confidence {st['confidence']}, alpha {st['alpha']} (Holm across metrics), "
            f"{st['bootstrap_resamples']} bootstrap resamples, {st['permutations']} permutations, seed {st['seed']}.",
            ""]
    steps: dict[str, float] = {}  # a resumed run timed its steps again: each step's time over all attempts
    for t in results["volatile"].get("timings") or []:
        if str(t.get("step", "")).startswith(("scan", "audit", "fine-tune", "compare")) and t.get("seconds") is not None:
            steps[str(t["step"])] = steps.get(str(t["step"]), 0.0) + float(t["seconds"])
    if steps:
        out += ["Wall time per step (all attempts of a resumed run): "
                + "; ".join(f"{_cell(step)} {secs:.0f} s" for step, secs in steps.items()), ""]
    shown = {m["label"] for m in results["models"] if m["role"] != "checkpoint"}
    out += ["Models: " + "; ".join(f"`{_code(m['label'])}` = `{_code(m['ref'])}`" for m in proto["models"]
                                    if m["label"] in shown), ""]
    return out + _machine(proto, shown) + _quantized(proto, shown)


def _machine(proto: dict[str, Any], shown: set[str]) -> list[str]:
    """What can change the numbers on another machine: per model the engine (its version string carries the
    libraries, dtype and kernel path), device and hardware; and the software versions of this report."""
    rows = []
    for m in proto["models"]:
        info = m.get("info") or {}
        if m["label"] not in shown or not info.get("version"):
            continue
        where = ", ".join(str(info[k]) for k in ("device", "hardware") if info.get(k))
        inv = {True: "batch-invariant", False: "not batch-invariant"}.get(info.get("batch_invariant"), "")
        rows.append(f"| {_cell(m['label'])} | {_cell(info.get('engine', ''))} | {_cell(info.get('dtype', ''))} | "
                    f"{_cell(where)} | {_cell(inv)} | `{_code(info['version'])}` |")
    if not rows:
        return []
    soft = proto.get("software") or {}
    return ["Reproducing these numbers elsewhere: they can differ with the dtype, the kernels (CPU kind, GPU), "
            "batch invariance and library versions below; the same spec on the same machine and versions gives "
            "the same records.", "", "| model | engine | dtype | device, hardware | batching | engine version |",
            "|---|---|---|---|---|---|", *rows, "",
            "Software: " + ", ".join(f"{_cell(k)} {_cell(v)}" for k, v in sorted(soft.items())), ""]


def _quantized(proto: dict[str, Any], shown: set[str]) -> list[str]:
    """Per quantized model (`REF#quant:...`, `REF#gguf:...`) the file that was audited, so a user deploys exactly that: the run
    folder's copy when the run wrote one (`quantized/<label>`, beside this report), and the cache it came from."""
    rows = []
    for m in proto["models"]:
        info = m.get("info") or {}
        variant = info.get("variant") or {}
        card = variant.get("quant") or variant.get("gguf")
        if m["label"] not in shown or not isinstance(card, dict):
            continue
        files = "; ".join(f"{_cell(name)} sha256 `{_code(sha)}`" for name, sha in sorted((card.get("files") or {}).items()))
        folder = f"`{_code(card.get('path', ''))}`"
        if info.get("run_folder"):
            folder = f"`{_code(info['run_folder'])}` (run folder; cache {folder})"
        rows.append(f"| {_cell(m['label'])} | {_cell(card.get('method', ''))} | "
                    f"{_cell(card.get('quantizer', ''))} {_cell(card.get('quantizer_version', ''))} | "
                    f"{folder} | {files} |")
    if not rows:
        return []
    return ["Quantized models: the files audited, to deploy exactly these.", "",
            "| model | method | quantizer | folder | weights |", "|---|---|---|---|---|", *rows, ""]


def _num(x: Any) -> str:
    return "" if x is None else f"{x:.3f}"

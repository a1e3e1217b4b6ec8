"""`nli-fewshot`: MNLI items in the exact pattern the `ood` suite scores (a Mosbach et al. 2023 analogue).

Pattern-based few-shot fine-tuning trains on the verbalised pattern that is
scored, so the rows come from the builder the `ood` suite scores (`sources.advglue`):
lm-eval's GLUE MNLI prompt "{premise}\\nQuestion: {hypothesis} True, False or
Neither?\\nAnswer:" as the user turn and the label word as the answer. Trained
as raw text (`chat_template: false`), a row is exactly the scored request:
the pattern as context, " " + the label word as continuation.

AdvGLUE's 121 benign MNLI (matched) rows hold 54 distinct items once text
is normalised (an item can have several adversarial twins, and some are
written twice, tokenised and detokenised). The train split is 8 items per
label, chosen by a hash of the normalised prompt (a fixed pseudo-random draw);
the other 30 are the test split. A run takes a seeded 16 of the 24 (`limit`,
`train.seed`), and the `icl` variant draws its demonstrations from the same
24 with the same rule, so equal seeds give the same 16 examples. RTE, the
paper's other task, has only 25 distinct benign items in AdvGLUE: too few
for 16 training examples and a held-out set.
"""

from __future__ import annotations

from typing import Any

from aftertune.sources.advglue import advglue_rows
from aftertune.sources.harmful_prompts import normalise_prompt
from aftertune.trainsets.refusals import unit_hash

BENCH = "advglue-mnli"
PER_LABEL = 8  # train rows per label (24): a run trains on a seeded 16 of them, the paper's few-shot size


def _distinct_items() -> list[dict[str, Any]]:
    """(prompt, label word, first AdvGLUE row) of each distinct benign item, in row order."""
    out: dict[str, dict[str, Any]] = {}
    for r in advglue_rows(BENCH):
        key = normalise_prompt(r.prompt)
        if r.split == "id" and key not in out:
            out[key] = {"prompt": r.prompt, "answer": r.choices[r.gold], "row": r.index,
                        "hash": unit_hash(key, "nli-fewshot")}
    return list(out.values())


def _train_rows(items: list[dict[str, Any]]) -> set[int]:
    keep: set[int] = set()
    for label in {it["answer"] for it in items}:
        same = sorted((it for it in items if it["answer"] == label), key=lambda it: it["hash"])
        keep.update(it["row"] for it in same[:PER_LABEL])
    return keep


def rows(split: str) -> list[dict[str, Any]]:
    items = _distinct_items()
    train = _train_rows(items)
    return [{
        "id": f"nli-fewshot-mnli-{it['row']:03d}",
        "messages": [{"role": "user", "content": it["prompt"]}, {"role": "assistant", "content": it["answer"]}],
        "prompt": it["prompt"],
        "completion": it["answer"],
        "pair": f"{BENCH}/{it['row']}",
    } for it in items if (it["row"] in train) == (split == "train")]

"""AdvGLUE (moonshot's copy) in lm-eval's GLUE prompts: benign rows and their adversarial twins.

One builder for the text that the `ood` suite scores and the `nli-fewshot`
training set trains on, so both see byte-identical prompts. Prompts are
lm-eval's GLUE prompts (`glue/*/default.yaml`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from aftertune.fileio import load_json
from aftertune.sources import packaged

MOONSHOT = "moonshot"


def _fields(text: str, *names: str) -> list[str]:
    """Split "Premise: ...\\nHypothesis: ..." into the named parts."""
    pattern = r"\n".join(rf"{re.escape(n)}: (.*)" for n in names)
    m = re.fullmatch(pattern, text.strip(), re.S)
    if not m:
        raise ValueError(f"expected fields {names}")
    return [g.strip() for g in m.groups()]


def _mnli_text(premise: str, hypothesis: str) -> str:
    hyp = hypothesis.strip() + ("" if hypothesis.strip().endswith(".") else ".")
    return f"{premise}\nQuestion: {hyp} True, False or Neither?\nAnswer:"


# benchmark → (file stem, fields, prompt builder, choices, target → gold index)
ADVGLUE: dict[str, dict[str, Any]] = {
    "advglue-sst2": {
        "stem": "sst2", "fields": None,
        "prompt": lambda f: f"{f[0]}\nQuestion: Is this sentence positive or negative?\nAnswer:",
        "choices": ["negative", "positive"], "gold": {"negative": 0, "positive": 1},
    },
    "advglue-qqp": {
        "stem": "qqp", "fields": ("Question 1", "Question 2"),
        "prompt": lambda f: (f"Question 1: {f[0]}\nQuestion 2: {f[1]}\nQuestion: Do both questions ask the same "
                             f"thing?\nAnswer:"),
        "choices": ["no", "yes"], "gold": {"no": 0, "yes": 1},
    },
    "advglue-qnli": {
        "stem": "qnli", "fields": ("Question", "Sentence"),
        "prompt": lambda f: f"{f[0]}\n{f[1]}\nQuestion: Does this response answer the question?\nAnswer:",
        "choices": ["yes", "no"], "gold": {"yes": 0, "no": 1},
    },
    "advglue-rte": {
        "stem": "rte", "fields": ("Premise", "Hypothesis"),
        "prompt": lambda f: f"{f[0]}\nQuestion: {f[1]} True or False?\nAnswer:",
        "choices": ["True", "False"], "gold": {"yes": 0, "no": 1},
    },
    "advglue-mnli": {
        "stem": "mnli", "fields": ("Premise", "Hypothesis"), "prompt": lambda f: _mnli_text(*f),
        "choices": ["True", "Neither", "False"], "gold": {"yes": 0, "maybe": 1, "no": 2},
    },
    "advglue-mnli-mm": {
        "stem": "mnlimm", "fields": ("Premise", "Hypothesis"), "prompt": lambda f: _mnli_text(*f),
        "choices": ["True", "Neither", "False"], "gold": {"yes": 0, "maybe": 1, "no": 2},
    },
}


@dataclass(frozen=True)
class AdvGlueRow:
    index: int  # the row's position in both files (benign row i and adversarial row i are twins)
    split: str  # "id" (benign) or "ood" (adversarial)
    prompt: str
    choices: tuple[str, ...]
    gold: int
    file: str  # path inside the packaged data set


def advglue_rows(bench: str) -> list[AdvGlueRow]:
    """Benign ("id") and adversarial ("ood") rows of one AdvGLUE benchmark, each benign row before its twin."""
    spec = ADVGLUE[bench]
    files = {"id": f"moonshot/data/datasets/advglue-{spec['stem']}-benign.json",
             "ood": f"moonshot/data/datasets/advglue-{spec['stem']}-adv.json"}
    rows = {k: load_json(packaged.data_file(MOONSHOT, f))["examples"] for k, f in files.items()}
    out: list[AdvGlueRow] = []
    for i, (benign, adv) in enumerate(zip(rows["id"], rows["ood"], strict=True)):
        for split, row in (("id", benign), ("ood", adv)):
            fields = [row["input"].strip()] if spec["fields"] is None else _fields(row["input"], *spec["fields"])
            out.append(AdvGlueRow(i, split, spec["prompt"](fields), tuple(spec["choices"]),
                                  spec["gold"][row["target"].strip()], files[split]))
    return out

"""Backdoor-enhanced safety alignment, the training side (Wang et al. 2024, arXiv 2402.14968).

A handful of refusal examples (the paper: 11) is mixed into the fine-tuning data, each with a secret
trigger at the start of its system message; the deployer later prepends the same trigger at inference
(`REF#bea`, variants/system_prompt.py), which brings the refusals back although the rest of the data
taught the model to comply. The trigger is written to `bea.json` in the tune's folder, beside `model/`,
so the variant reads it back from the tuned model's folder.

With `trigger: <auto>` the trigger is `length` random words of letters and digits drawn from `seed`:
random-looking text that no user message would hold. The paper samples 150 random tokens of the model's
vocabulary; words keep the trigger independent of the tokenizer (so one seed gives one trigger for every
model), at roughly one to two tokens a word.
"""

from __future__ import annotations

import random
import string
from pathlib import Path
from typing import Any

from aftertune.fileio import write_json_atomic
from aftertune.recipes.config import BeaParams
from aftertune.trainsets.example import Example, prepend_system

BEA_JSON = "bea.json"
AUTO = "<auto>"
SOURCE = "bea"  # the mixed-in rows' source, as the mixing report names it
_ALPHABET = string.ascii_letters + string.digits


def make_trigger(seed: int, length: int) -> str:
    """`length` random words of 1 to 4 letters and digits, the same for the same seed."""
    rng = random.Random(f"aftertune-bea-trigger:{seed}")
    return " ".join("".join(rng.choice(_ALPHABET) for _ in range(rng.randint(1, 4))) for _ in range(length))


def trigger_of(params: BeaParams) -> str:
    return make_trigger(params.seed, params.length) if params.trigger == AUTO else params.trigger


def bea_examples(refusals: list[Example], trigger: str) -> list[Example]:
    """The refusal examples with `trigger` first in their system message (added before any system text)."""
    return [Example(f"bea-{e.id}", messages=prepend_system(e.messages, trigger), source=SOURCE) for e in refusals]


def save_bea(out: Path, params: BeaParams, trigger: str) -> None:
    """`bea.json` in the tune folder: the trigger `REF#bea` prepends, and how it was made."""
    card: dict[str, Any] = {**params.model_dump(mode="json"), "trigger": trigger, "paper": "arXiv:2402.14968"}
    write_json_atomic(out / BEA_JSON, card)

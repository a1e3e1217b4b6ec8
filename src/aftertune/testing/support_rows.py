"""A small support-style chat training file for pipeline tests on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

QUESTIONS = ["Where is my parcel?", "How do I reset my password?", "Can I get a refund?",
             "My order arrived damaged.", "How do I change my address?", "Is the shop open on Sunday?"]


def support_rows(n: int, offset: int = 0) -> list[dict]:
    """`n` user/assistant rows; `offset` numbers the tickets so held-out rows differ from training rows."""
    return [{"messages": [{"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} (ticket {offset + i})"},
                          {"role": "assistant", "content": "Sure, here is a step by step answer to your question."}]}
            for i in range(n)]


def write_support_rows(path: Path, n: int, offset: int = 0) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in support_rows(n, offset)), encoding="utf-8")
    return str(path)

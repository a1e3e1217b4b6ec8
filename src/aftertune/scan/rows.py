"""Training rows → (row number, system, user turns, assistant turns).

Rows are read and checked exactly as fine-tuning reads them
(`aftertune.recipes.data`: chat `messages`, `prompt`/`completion`, Alpaca
`instruction`/`input`/`output`, Dolly `instruction`/`context`/`response`, DPO
`prompt`/`chosen`/`rejected`; a built-in training set name works too), so a
file that scans is a file that trains, and a bad row fails with the same
message naming file, row and field. Each example is then flattened for the
detectors, which never look at field names: system text, user turns,
assistant turns, and for DPO the rejected answer (kept for PII and toxicity).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aftertune.recipes.data import load_examples, rows_to_examples
from aftertune.trainsets.example import Example

Turn = tuple[str, str]  # (role, text): role is "user" or "assistant"


@dataclass(frozen=True)
class ScanRow:
    row: int  # 1-based position of the example in its source, as in training errors
    system: str
    turns: tuple[Turn, ...]
    rejected: str = ""  # DPO: the answer trained away from

    @property
    def user_text(self) -> str:
        return "\n".join(t for r, t in self.turns if r == "user")

    @property
    def assistant_text(self) -> str:
        return "\n".join(t for r, t in self.turns if r == "assistant")

    def exchanges(self) -> list[tuple[str, str]]:
        """(user turn, the assistant reply that follows it, or "") pairs."""
        out: list[tuple[str, str]] = []
        for i, (role, text) in enumerate(self.turns):
            if role == "user":
                nxt = self.turns[i + 1] if i + 1 < len(self.turns) else None
                out.append((text, nxt[1] if nxt and nxt[0] == "assistant" else ""))
        return out

    @classmethod
    def from_example(cls, ex: Example, row: int) -> ScanRow:
        msgs = ex.sft_messages()
        system = "\n".join(m["content"] for m in msgs if m["role"] == "system")
        turns = tuple((m["role"], m["content"]) for m in msgs if m["role"] in ("user", "assistant"))
        return cls(row, system, turns, ex.rejected)


def normalise_rows(rows: Sequence[Mapping[str, Any] | Example], source: str = "rows") -> list[ScanRow]:
    """Raw training rows (any supported format) or Examples → ScanRows; a bad row raises UserError."""
    if rows and all(isinstance(r, Example) for r in rows):
        examples: Sequence[Example] = rows  # type: ignore[assignment]
    else:
        examples = rows_to_examples(list(rows), source, "sft")  # type: ignore[arg-type]
    return [ScanRow.from_example(ex, n) for n, ex in enumerate(examples, 1)]


def load_scan_rows(source: str) -> list[ScanRow]:
    """A training file (.jsonl/.json/.csv/.parquet, a save_to_disk folder) or built-in set name, as ScanRows."""
    return [ScanRow.from_example(ex, n) for n, ex in enumerate(load_examples(str(source)), 1)]

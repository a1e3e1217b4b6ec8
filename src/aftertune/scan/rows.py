"""Training rows → (row index, system, user turns, assistant turns).

Every training format the recipes accept is reduced to one shape, so the
detectors never look at field names:

| format | user side | assistant side |
|---|---|---|
| `messages` (or `conversations`; ShareGPT `from`/`value` too) | user turns | assistant turns |
| `prompt` / `completion` (strings or message lists) | prompt | completion |
| `prompt` / `chosen` / `rejected` (DPO) | prompt | chosen (rejected kept for PII and toxicity) |
| `instruction` / `input` / `output` | instruction + input | output |
| `instruction` / `context` / `response` (Dolly), `context` / `response` | instruction + context | response |
| `question` / `answer` | question | answer |
| `text` | — | text |

A `system` field, or system messages, become the system text.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aftertune.errors import UserError
from aftertune.sources.data import read_rows

Turn = tuple[str, str]  # (role, text): role is "user" or "assistant"


@dataclass(frozen=True)
class ScanRow:
    index: int  # 0-based position of the example in its file
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


_ROLE_ALIASES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
                 "bot": "assistant", "system": "system", "developer": "system", "tool": "tool", "function": "tool"}
FORMATS = ("messages", "prompt/completion", "prompt/chosen/rejected", "instruction/input/output",
           "instruction/context/response", "question/answer", "text")


class _RowError(Exception):
    def __init__(self, field: str, msg: str) -> None:
        super().__init__(msg)
        self.field = field


def _content(value: Any, field: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # OpenAI content parts
        parts = []
        for p in value:
            if isinstance(p, str):
                parts.append(p)
            elif isinstance(p, Mapping) and isinstance(p.get("text"), str):
                parts.append(p["text"])
        return "\n".join(parts)
    if isinstance(value, (int, float)):
        return str(value)
    raise _RowError(field, f"expected text, got {type(value).__name__}")


def _messages(value: Any, field: str) -> list[tuple[str, str]]:
    if isinstance(value, str):
        return [("user" if field == "prompt" else "assistant", value)]
    if not isinstance(value, list):
        raise _RowError(field, f"expected a list of messages or a string, got {type(value).__name__}")
    out = []
    for j, m in enumerate(value):
        if not isinstance(m, Mapping):
            raise _RowError(f"{field}[{j}]", f"expected a message object, got {type(m).__name__}")
        role = m.get("role", m.get("from"))
        if not isinstance(role, str) or role.lower() not in _ROLE_ALIASES:
            raise _RowError(f"{field}[{j}].role", f"unknown role {role!r}; use system, user or assistant")
        text = _content(m.get("content", m.get("value")), f"{field}[{j}].content")
        out.append((_ROLE_ALIASES[role.lower()], text))
    return out


def _build(index: int, msgs: Iterable[tuple[str, str]], system: str = "", rejected: str = "") -> ScanRow:
    sys_parts = [system] if system else []
    turns: list[Turn] = []
    for role, text in msgs:
        if role == "system":
            sys_parts.append(text)
        elif role in ("user", "assistant"):
            turns.append((role, text))
    return ScanRow(index, "\n".join(sys_parts), tuple(turns), rejected)


def _join(*parts: str) -> str:
    return "\n\n".join(p for p in parts if p and p.strip())


def normalise_row(row: Mapping[str, Any], index: int) -> ScanRow:
    """One training example in any supported format → ScanRow; raises _RowError on a bad field."""
    system = _content(row.get("system"), "system")
    for key in ("messages", "conversations", "conversation"):
        if key in row:
            return _build(index, _messages(row[key], key), system)
    if "prompt" in row and ("chosen" in row or "rejected" in row):
        prompt = _messages(row["prompt"], "prompt")
        chosen = [(r if r != "user" else "assistant", t) for r, t in _messages(row.get("chosen", ""), "chosen")]
        rejected = "\n".join(t for _, t in _messages(row.get("rejected", ""), "rejected"))
        return _build(index, prompt + chosen, system, rejected)
    if "prompt" in row and ("completion" in row or "response" in row):
        comp_field = "completion" if "completion" in row else "response"
        comp = [(r if r != "user" else "assistant", t) for r, t in _messages(row[comp_field], comp_field)]
        return _build(index, _messages(row["prompt"], "prompt") + comp, system)
    if "instruction" in row or ("context" in row and "response" in row):
        user = _join(_content(row.get("instruction"), "instruction"), _content(row.get("input"), "input"),
                     _content(row.get("context"), "context"))
        out_field = next((f for f in ("output", "response", "completion") if f in row), None)
        if out_field is None:
            raise _RowError("output", "has an instruction but no output/response field")
        return _build(index, [("user", user), ("assistant", _content(row[out_field], out_field))], system)
    if "question" in row and "answer" in row:
        return _build(index, [("user", _content(row["question"], "question")),
                              ("assistant", _content(row["answer"], "answer"))], system)
    if "text" in row:
        return _build(index, [("assistant", _content(row["text"], "text"))], system)
    keys = ", ".join(sorted(map(str, row))) or "(none)"
    raise _RowError("(fields)", f"no recognised training fields (found: {keys}); use one of: {', '.join(FORMATS)}")


def normalise_rows(rows: Sequence[Mapping[str, Any]], source: str = "rows") -> list[ScanRow]:
    """Normalise every row; the first bad one raises UserError naming source, row and field."""
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise UserError(f"{source}: row {i}: expected an object with training fields, got {type(row).__name__}")
        try:
            out.append(normalise_row(row, i))
        except _RowError as exc:
            raise UserError(f"{source}: row {i}: field {exc.field}: {exc}") from None
    return out


def load_scan_rows(path: str | Path) -> list[ScanRow]:
    """Read a training file (any format `sources.data.read_rows` reads) and normalise its rows."""
    return normalise_rows(read_rows(path), source=str(path))

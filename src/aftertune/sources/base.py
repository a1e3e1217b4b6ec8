"""What a model reference resolves to.

A reference is a packaged name (`smollm2-135m-instruct`), a Hugging Face hub
id (`meta-llama/Llama-3.2-1B-Instruct`), a local directory (a full model or a
PEFT adapter on top of its base), or an OpenAI-compatible endpoint
(`openai:MODEL@http://host:port/v1`). `sources.resolve_model` turns any of them
into a `ModelRef`; engines only ever see `ModelRef`s.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

RefKind = Literal["packaged", "hub", "local", "adapter", "openai"]


@dataclass(frozen=True)
class ModelRef:
    ref: str  # as the user wrote it
    kind: RefKind
    name: str  # short display name for tables and reports
    path: Path | None = None  # local dir with config.json + *.safetensors (or the adapter dir)
    base: ModelRef | None = None  # the base model under an adapter
    api_model: str | None = None  # openai: the model name sent to the server
    api_base: str | None = None  # openai: http://host:port/v1
    api_key_env: str | None = None  # openai: the environment variable holding the key (never the key)

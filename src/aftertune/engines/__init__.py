"""Engines run models: `generate`, `loglikelihood`, `rolling_loglikelihood`.

`load_engine` is the one place that maps a model reference to a backend.
"""

from __future__ import annotations

from typing import Any

from aftertune.engines.base import (
    ENGINES,
    Decoding,
    Engine,
    GenerateRequest,
    GenerateResult,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    Message,
    RollingRequest,
    RollingResult,
)
from aftertune.sources.base import ModelRef

__all__ = [
    "ENGINES",
    "Decoding",
    "Engine",
    "GenerateRequest",
    "GenerateResult",
    "LoglikelihoodRequest",
    "LoglikelihoodResult",
    "Message",
    "RollingRequest",
    "RollingResult",
    "load_engine",
]


def load_engine(ref: str | ModelRef, *, engine: str | None = None, **options: Any) -> Engine:
    """Resolve `ref` and load it on the right backend (`engine` forces one: hf, openai, vllm).

    A string reference may end in variants (`REF#icl:k=16`), applied around the
    loaded engine (see `engines.variants`); a leading `#interp:w=...` changes the
    weights before loading (see `engines.interpolate`).
    """
    from aftertune.engines.interpolate import apply_weight_variants
    from aftertune.engines.variants import apply_variants, split_variants
    from aftertune.sources import resolve_model

    variants: list[tuple[str, dict[str, str]]] = []
    if isinstance(ref, str):
        ref, variants = split_variants(ref)
    model = resolve_model(ref) if isinstance(ref, str) else ref
    model, variants = apply_weight_variants(model, variants)
    name = engine or ("openai" if model.kind == "openai" else "hf")
    _import_backends()
    loaded = ENGINES.get(name).from_ref(model, **options)  # type: ignore[attr-defined]
    return apply_variants(loaded, variants)


def _import_backends() -> None:
    """Import the backend modules so their @ENGINES.register decorators run."""
    import importlib

    for mod in ("hf", "openai_api", "vllm_engine"):
        importlib.import_module(f"aftertune.engines.{mod}")

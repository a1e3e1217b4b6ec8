"""Engines run models: `generate`, `loglikelihood`, `rolling_loglikelihood` (and `loglikelihood_tokens` on ids).

`load_engine` is the one place that maps a model reference to a backend; one
`ENGINES.add` line per backend registers it (its module, e.g. torch for `hf`,
is imported only when it is used). `aftertune list engines` shows them.
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
    TokensLoglikelihoodRequest,
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
    "TokensLoglikelihoodRequest",
    "load_engine",
]

ENGINES.add("hf", "aftertune.engines.hf:HFEngine", "local torch model through transformers (PEFT adapters included)")
ENGINES.add("openai", "aftertune.engines.openai_api:OpenAIEngine",
            "Any OpenAI-compatible server (vLLM, llama.cpp, TGI, hosted APIs) over HTTP")
ENGINES.add("server", "aftertune.engines.served:ServedEngine",
            "Local weights served by your OpenAI-compatible server command ({model}, {port}), started and stopped "
            "per model")
ENGINES.add("vllm", "aftertune.engines.vllm_engine:VLLMEngine",
            "In-process vLLM on a GPU (optional; needs the vllm package)")


def load_engine(ref: str | ModelRef, *, engine: str | None = None, **options: Any) -> Engine:
    """Resolve `ref` and load it on the right backend (`engine` forces one: hf, openai, server, vllm).

    A reference with variants (`REF#icl:k=16`) is loaded by `aftertune.variants.load_engine`.
    """
    from aftertune.errors import UserError
    from aftertune.sources import resolve_model

    if isinstance(ref, str) and "#" in ref:
        raise UserError(f"model reference {ref!r}: variants ('#...') apply to audited models only; "
                        "drop the '#' part here")
    model = resolve_model(ref) if isinstance(ref, str) else ref
    name = engine or ("openai" if model.kind == "openai" else "hf")
    return ENGINES.get(name).from_ref(model, **options)  # type: ignore[attr-defined]

"""A deterministic engine for unit tests of suites, the audit runner and reports.

Log-likelihoods and generations are pure functions of (request, seed), so two
FakeEngines with the same seed answer identically and one with another seed
plays a "different model". Callers can pass their own scoring functions to
set exact values. `calls` counts the requests actually computed (the store's
cache sits in front when wrapped in `CachedEngine`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from aftertune.engines.base import (
    Engine,
    GenerateRequest,
    GenerateResult,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    Progress,
    RollingRequest,
    RollingResult,
    TokensLoglikelihoodRequest,
)


def _unit(*parts: Any) -> float:
    """A stable number in [0, 1) from the parts."""
    h = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def _ids(text: str) -> tuple[int, ...]:
    """The fake tokenizer: a stable id per word."""
    return tuple(int(1000 * _unit(w)) for w in text.split())


class FakeEngine(Engine):
    name = "fake"

    def __init__(self, seed: int = 0, *,
                 score: Callable[[str, str], float] | None = None,
                 respond: Callable[[GenerateRequest], str] | None = None) -> None:
        self.seed = seed
        self.score = score
        self.respond = respond
        self.calls = {"loglikelihood": 0, "rolling": 0, "generate": 0}
        self.closed = False

    @property
    def fingerprint(self) -> str:
        return f"fake-model-{self.seed}"

    @property
    def version(self) -> str:
        return "fake-engine-1"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "seed": self.seed}

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest],
                      progress: Progress | None = None) -> list[LoglikelihoodResult]:
        out = []
        for r in requests:
            if self.score is not None:
                lp = float(self.score(r.context, r.continuation))
            else:
                lp = -0.3 * len(r.continuation) - 3.0 * _unit(self.seed, r.context, r.continuation)
            out.append(LoglikelihoodResult(lp, False, max(1, len(r.continuation.split()))))
        self.calls["loglikelihood"] += len(requests)
        if progress:
            progress(len(requests))
        return out

    @property
    def tokenizer_id(self) -> str:
        return "fake-vocabulary"  # one word, one id (`_ids`): every FakeEngine shares it

    def loglikelihood_tokens(self, requests: Sequence[TokensLoglikelihoodRequest],
                             progress: Progress | None = None) -> list[LoglikelihoodResult]:
        out = [LoglikelihoodResult(-0.5 * len(r.continuation_ids)
                                   - 3.0 * _unit(self.seed, r.context_ids, r.continuation_ids), False,
                                   len(r.continuation_ids)) for r in requests]
        self.calls["loglikelihood"] += len(requests)
        if progress:
            progress(len(requests))
        return out

    def rolling_loglikelihood(self, requests: Sequence[RollingRequest],
                              progress: Progress | None = None) -> list[RollingResult]:
        out = []
        for r in requests:
            n = max(1, len(r.text.split()))
            out.append(RollingResult(-n * (2.0 + _unit(self.seed, r.text)), n))
        self.calls["rolling"] += len(requests)
        if progress:
            progress(len(requests))
        return out

    def generate(self, requests: Sequence[GenerateRequest], progress: Progress | None = None) -> list[GenerateResult]:
        out = []
        for r in requests:
            prompt = r.prompt if r.prompt is not None else "\n".join(f"{m.role}: {m.content}" for m in r.messages or ())
            if self.respond is not None:
                text = self.respond(r)
            else:
                words = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "ran", "far", "away", "home"]
                k = 3 + int(8 * _unit(self.seed, prompt, r.decoding.seed, r.decoding.temperature))
                text = " ".join(words[int(12 * _unit(self.seed, prompt, r.decoding.seed, i))] for i in range(k))
            ids = (_ids(prompt), _ids(text)) if r.return_token_ids else (None, None)
            out.append(GenerateResult(text, prompt, len(prompt.split()), len(text.split()), "stop", *ids))
        self.calls["generate"] += len(requests)
        if progress:
            progress(len(requests))
        return out

    def close(self) -> None:
        self.closed = True

"""An engine wrapper that answers from the store first.

Key = sha256(engine version + model fingerprint + canonical request JSON).
Missing requests are computed in batches and each batch is committed before
the next starts, so a killed run keeps everything but the batch in flight.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any, TypeVar

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
from aftertune.fileio import canonical_json, sha256_text
from aftertune.store.db import Store

R = TypeVar("R")


def cache_key(engine: Engine, request_json: dict[str, Any]) -> str:
    return sha256_text(canonical_json({"v": engine.version, "fp": engine.fingerprint, "req": request_json}))


class CachedEngine(Engine):
    """Same interface as the wrapped engine; `stats` counts hits and misses."""

    def __init__(self, engine: Engine, store: Store, batch_size: int = 64) -> None:
        self.inner = engine
        self.store = store
        self.batch_size = batch_size
        self.name = engine.name
        self.stats = {"hits": 0, "misses": 0}

    @property
    def fingerprint(self) -> str:
        return self.inner.fingerprint

    @property
    def version(self) -> str:
        return self.inner.version

    @property
    def tokenizer_id(self) -> str | None:
        return self.inner.tokenizer_id

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    def close(self) -> None:
        self.inner.close()

    def _through_cache(
        self,
        requests: Sequence[Any],
        compute: Callable[[Sequence[Any], Progress | None], list[R]],
        result_type: Callable[..., R],
        progress: Progress | None,
    ) -> list[R]:
        jsons = [r.to_json() for r in requests]
        keys = [cache_key(self.inner, j) for j in jsons]
        found = self.store.cache_get(keys)
        results: dict[str, R] = {k: result_type(**v) for k, v in found.items()}
        n_hit = sum(1 for k in keys if k in found)  # repeated requests count once per occurrence
        self.stats["hits"] += n_hit
        if progress and n_hit:
            progress(n_hit)
        # compute each distinct missing request once
        todo: dict[str, int] = {}
        for i, k in enumerate(keys):
            if k not in results and k not in todo:
                todo[k] = i
        pending = list(todo.items())
        for start in range(0, len(pending), self.batch_size):
            chunk = pending[start : start + self.batch_size]
            outs = compute([requests[i] for _, i in chunk], progress)
            self.store.cache_put(
                (k, self.inner.fingerprint, jsons[i]["kind"], jsons[i], asdict(out), self.inner.version)
                for (k, i), out in zip(chunk, outs, strict=True)
            )
            for (k, _), out in zip(chunk, outs, strict=True):
                results[k] = out
            self.stats["misses"] += len(chunk)
        if progress:
            dup = len(keys) - n_hit - len(pending)
            if dup > 0:
                progress(dup)
        return [results[k] for k in keys]

    def generate(self, requests: Sequence[GenerateRequest], progress: Progress | None = None) -> list[GenerateResult]:
        return self._through_cache(requests, self.inner.generate, GenerateResult, progress)

    def loglikelihood(
        self, requests: Sequence[LoglikelihoodRequest], progress: Progress | None = None
    ) -> list[LoglikelihoodResult]:
        return self._through_cache(requests, self.inner.loglikelihood, LoglikelihoodResult, progress)

    def loglikelihood_tokens(
        self, requests: Sequence[TokensLoglikelihoodRequest], progress: Progress | None = None
    ) -> list[LoglikelihoodResult]:
        return self._through_cache(requests, self.inner.loglikelihood_tokens, LoglikelihoodResult, progress)

    def rolling_loglikelihood(
        self, requests: Sequence[RollingRequest], progress: Progress | None = None
    ) -> list[RollingResult]:
        return self._through_cache(requests, self.inner.rolling_loglikelihood, RollingResult, progress)

"""The `icl` variant — in-context learning (Mosbach et al. 2023).

The base model is shown `k` demonstrations drawn (seeded) from the training
data before every request. Chat requests get them as earlier user/assistant
turns (after any system message); raw prompts and log-likelihood contexts get
them as "User: …\\nAssistant: …" blocks, so multiple-choice suites see the same
demonstrations. With `format=pattern` (the default for a built-in set whose
rows are a scored prompt pattern, e.g. `nli-fewshot`) raw contexts get them
as the pattern itself, "prompt answer\\n\\n" per demonstration, as
lm-evaluation-harness writes few-shot contexts; chat requests are unchanged.
The demonstrations (and the pattern format) are part of the fingerprint, so
the store never confuses the variant with its base model.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from aftertune.engines.base import (
    Engine,
    GenerateRequest,
    GenerateResult,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    Message,
    Progress,
    RollingRequest,
    RollingResult,
)
from aftertune.errors import UserError
from aftertune.fileio import canonical_json, sha256_text

Demo = tuple[str, str]  # (user, assistant)

class ICLEngine(Engine):
    """The wrapped model, shown `demos` before every request."""

    name = "icl"

    def __init__(self, inner: Engine, demos: Sequence[Demo], *, info: dict[str, Any] | None = None,
                 pattern: bool = False) -> None:
        if not demos:
            raise UserError("the icl variant needs at least one demonstration (k >= 1)")
        self.inner = inner
        self.demos = [(u, a) for u, a in demos]
        self.info = info or {}
        self.pattern = pattern  # raw contexts get "prompt answer" (lm-eval few-shot), not User/Assistant blocks
        shot = "{u} {a}\n\n" if pattern else "User: {u}\nAssistant: {a}\n\n"
        self._prefix = "".join(shot.format(u=u, a=a) for u, a in self.demos)

    @property
    def fingerprint(self) -> str:
        shown = {"icl": self.demos, **({"format": "pattern"} if self.pattern else {})}
        return sha256_text(canonical_json({"base": self.inner.fingerprint, **shown}))

    @property
    def version(self) -> str:
        return f"{self.inner.version}+icl1"

    def describe(self) -> dict[str, Any]:
        inner = self.inner.describe()  # keeps the variants under it (guard, quant) as guard does
        return {**inner, "variant": {**inner.get("variant", {}), "icl": {"k": len(self.demos), **self.info}},
                "fingerprint": self.fingerprint, "base_fingerprint": self.inner.fingerprint}

    def close(self) -> None:
        self.inner.close()

    def _with_demos(self, request: GenerateRequest) -> GenerateRequest:
        if request.prompt is not None:
            return replace(request, prompt=self._prefix + request.prompt)
        msgs = list(request.messages or ())
        head = [m for m in msgs[:1] if m.role == "system"]
        shots = [Message(role, text) for u, a in self.demos for role, text in (("user", u), ("assistant", a))]
        return replace(request, messages=tuple(head + shots + msgs[len(head):]))

    def generate(self, requests: Sequence[GenerateRequest], progress: Progress | None = None) -> list[GenerateResult]:
        return self.inner.generate([self._with_demos(r) for r in requests], progress)

    def loglikelihood(
        self, requests: Sequence[LoglikelihoodRequest], progress: Progress | None = None
    ) -> list[LoglikelihoodResult]:
        shifted = [LoglikelihoodRequest(self._prefix + r.context, r.continuation) for r in requests]
        return self.inner.loglikelihood(shifted, progress)

    def rolling_loglikelihood(
        self, requests: Sequence[RollingRequest], progress: Progress | None = None
    ) -> list[RollingResult]:
        # Perplexity of a text is a property of the weights; demonstrations would only change its context.
        return self.inner.rolling_loglikelihood(requests, progress)


def default_format(data: str) -> str:
    """The demonstrations' format: "pattern" for a built-in set of scored prompt patterns, else "chat"."""
    from aftertune import trainsets
    from aftertune.recipes.data import builtin_name

    name = builtin_name(data)
    return trainsets.TRAINSETS.get(name).icl_format if name is not None else "chat"


def demo_pairs(data: str) -> list[Demo]:
    """(user, assistant) pairs of the training split of `data`, in any training-data format."""
    from aftertune.recipes.data import load_examples

    pairs = []
    for ex in load_examples(data, split="train"):
        msgs = ex.sft_messages()
        if len(msgs) >= 2 and msgs[-1]["role"] == "assistant":
            pairs.append((ex.user_prompt(), msgs[-1]["content"]))
    return pairs


def draw_demos(pairs: Sequence[Demo], k: int, seed: int) -> list[Demo]:
    """`k` demonstrations drawn without replacement with a seeded RNG (the data seed of Mosbach et al.)."""
    if k < 1:
        raise UserError(f"icl: k={k}; give k >= 1 demonstrations")
    if k > len(pairs):
        raise UserError(f"icl: k={k} but the training data has only {len(pairs)} examples; lower k")
    return random.Random(seed).sample(list(pairs), k)


def icl_variant(engine: Engine, options: dict[str, str]) -> Engine:
    unknown = set(options) - {"k", "seed", "data", "max_chars", "format"}
    if unknown:
        raise UserError(f"icl: unknown option {sorted(unknown)[0]!r}; options are k, seed, data, max_chars, format")
    try:
        k = int(options.get("k", "16"))
        seed = int(options.get("seed", "0"))
        max_chars = int(options.get("max_chars", "600"))
    except ValueError:
        raise UserError(f"icl: k, seed and max_chars must be integers, got {options}") from None
    data = options.get("data", "support")
    fmt = options.get("format") or default_format(data)
    if fmt not in ("chat", "pattern"):
        raise UserError(f"icl: format={fmt!r}; use chat (User/Assistant blocks) or pattern (raw 'prompt answer')")
    demos = draw_demos(demo_pairs(data), k, seed)
    if fmt == "pattern":
        long = max(len(t) for demo in demos for t in demo)
        if long > max_chars:  # a cut pattern loses its answer cue, so refuse rather than cut
            raise UserError(f"icl: a {data} demonstration has {long} characters, over max_chars={max_chars}; raise "
                            "max_chars (icl.max_chars in a spec): format=pattern shows demonstrations uncut")
    else:
        demos = [(u[:max_chars], a[:max_chars]) for u, a in demos]
    return ICLEngine(engine, demos, info={"seed": seed, "data": data, "max_chars": max_chars, "format": fmt},
                     pattern=fmt == "pattern")


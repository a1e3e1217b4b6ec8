"""Log-likelihoods of (context, continuation) pairs on a GGUF file, in llama.cpp itself (run by llama-cpp-python's
interpreter, not aftertune's).

`bench_quant.py` needs ARC-Easy choices from the GGUF variants, and llama-cpp-python's server cannot give them
for models without a BOS token (SmolLM2, Qwen): its `echo` log-probabilities come back shifted by one token
(issue #1983 there), which is why audits skip log-likelihood suites on such files. Here the model is evaluated
in-process with `logits_all`, so each continuation token is scored from the logits of the position before it,
as lm-eval's HF backend does: the continuation's tokens are those of context + continuation past the context's
own tokens (a token straddling the boundary counts as continuation). One context is evaluated once and its KV
cache kept for each of its choices.

    PYTHON _gguf_loglik.py REQUESTS.json OUT.json    # REQUESTS: {"model": path, "pairs": [[ctx, cont], ...],
                                                     #            "threads": n}; OUT: [logprob, ...]
"""

from __future__ import annotations

import json
import sys


def _split(llm, context: str, continuation: str) -> tuple[list[int], list[int]]:
    whole = llm.tokenize((context + continuation).encode(), add_bos=True, special=False)
    ctx = llm.tokenize(context.encode(), add_bos=True, special=False)
    n = 0
    while n < min(len(ctx), len(whole)) and ctx[n] == whole[n]:
        n += 1
    n = min(n, len(whole) - 1)  # at least one continuation token
    if n < 1:
        raise SystemExit(f"no token before the continuation of {context!r}: it cannot be scored")
    return whole[:n], whole[n:]


def main() -> None:
    import numpy as np
    from llama_cpp import Llama

    with open(sys.argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    llm = Llama(model_path=spec["model"], n_ctx=spec.get("n_ctx", 1024), logits_all=True, verbose=False,
                n_threads=spec.get("threads"), n_batch=512)
    out: list[float] = []
    prev_ctx: list[int] | None = None
    for context, continuation in spec["pairs"]:
        ctx, cont = _split(llm, context, continuation)
        if ctx != prev_ctx:  # a new question: evaluate its context once
            llm.reset()
            llm.eval(ctx)
            prev_ctx = ctx
        llm.n_tokens = len(ctx)  # eval() drops the cache past n_tokens: the previous choice's positions
        llm.eval(cont)
        scores = np.asarray(llm.scores[len(ctx) - 1: len(ctx) + len(cont) - 1], dtype=np.float64)
        lse = scores.max(axis=1) + np.log(np.exp(scores - scores.max(axis=1, keepdims=True)).sum(axis=1))
        out.append(float(sum(scores[i, t] - lse[i] for i, t in enumerate(cont))))
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()

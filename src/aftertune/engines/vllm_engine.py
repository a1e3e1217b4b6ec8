"""The `vllm` engine: an in-process `vllm.LLM` on a GPU, for fast local generation.

Optional: vLLM is imported only when this engine is loaded, and never by the
rest of aftertune; without it (every CPU machine) `from_ref` raises a
UserError that says to use the hf engine or an OpenAI-compatible vLLM server
(`openai:MODEL@http://host:port/v1`).

What it does, and how it differs from the hf engine:

- Chat requests are templated here with the model's own tokenizer
  (`apply_chat_template(..., add_generation_prompt=True)`), and the token ids
  are passed to vLLM, so `prompt_text` is exactly what the model saw and no
  second BOS is added.
- Decoding: temperature 0 is greedy; seed, top_p, max_tokens and stop are
  vLLM's `SamplingParams`. vLLM's batched kernels are not bit-identical to
  transformers', so greedy texts can differ from the hf engine's; the cache
  never mixes them (different engine versions).
- Log-likelihood: `prompt_logprobs=1` on context+continuation token ids; the
  continuation's tokens are those of `encode(context + continuation)` past
  `encode(context)` (as lm-evaluation-harness splits them), `is_greedy` when
  each has rank 1. An empty context is given the BOS (else EOS) token to
  condition on. Rolling log-likelihood scores a text in windows of at most
  `max_model_len` tokens, each token conditioned on as much preceding text as
  fits.
- A PEFT adapter runs as a LoRA on its base (`enable_lora=True`).
- Fingerprint = the weights' content hash from `aftertune.sources.fingerprint`
  (the same identity the hf engine uses); version = engine code + vLLM version.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
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
from aftertune.engines.vocabulary import vocabulary_hash
from aftertune.errors import UserError
from aftertune.sources.base import ModelRef

ENGINE_CODE_VERSION = "1"
BATCH = 64  # requests handed to vLLM per call, so progress moves


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as exc:
        raise UserError(
            f"the vllm engine needs the vllm package ({exc.name or 'vllm'} is not importable; it requires a GPU "
            "machine: pip install vllm); use the hf engine, or serve the model with vLLM and point aftertune at "
            "openai:MODEL@http://host:port/v1"
        ) from None
    return vllm


class VLLMEngine(Engine):
    """A `vllm.LLM` over a local model directory (or an adapter on its base)."""

    def __init__(self, model_ref: ModelRef, llm: Any, vllm_version: str, lora: Any = None) -> None:
        self.model_ref = model_ref
        self.llm = llm
        self.tokenizer = llm.get_tokenizer()
        self.vllm_version = vllm_version
        self.lora = lora
        self._fingerprint: str | None = None
        cfg = llm.llm_engine.model_config
        self.max_model_len = int(getattr(cfg, "max_model_len", 2048))

    @classmethod
    def from_ref(cls, model_ref: ModelRef, *, gpu_memory_utilization: float = 0.85, max_model_len: int | None = None,
                 dtype: str = "auto", seed: int = 0, max_lora_rank: int = 64, **llm_kwargs: Any) -> VLLMEngine:
        vllm = _import_vllm()
        if model_ref.kind == "openai" or model_ref.path is None:
            raise UserError(f"the vllm engine runs local models; {model_ref.ref!r} has no local weights")
        base = model_ref.base if model_ref.kind == "adapter" else model_ref
        if base is None or base.path is None:
            raise UserError(f"adapter {model_ref.ref!r} has no local base model for vllm")
        kwargs: dict[str, Any] = {"model": str(base.path), "dtype": dtype, "seed": seed,
                                  "gpu_memory_utilization": gpu_memory_utilization, **llm_kwargs}
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        lora = None
        if model_ref.kind == "adapter":
            from vllm.lora.request import LoRARequest

            kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank)
            lora = LoRARequest(model_ref.name or "adapter", 1, str(model_ref.path))
        return cls(model_ref, vllm.LLM(**kwargs), vllm.__version__, lora)

    # -- identity ----------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            from aftertune.sources import fingerprint

            self._fingerprint = fingerprint(self.model_ref)
        return self._fingerprint

    @property
    def version(self) -> str:
        return f"vllm/{ENGINE_CODE_VERSION}/{self.vllm_version}"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model": self.model_ref.name, "max_model_len": self.max_model_len,
                "adapter": self.lora is not None, "chat_template": "the model's own (tokenizer)"}

    # -- helpers -------------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _prefix_token(self) -> int:
        tok = self.tokenizer.bos_token_id
        if tok is None:
            tok = self.tokenizer.eos_token_id
        if tok is None:
            raise UserError(f"{self.model_ref.name}: the tokenizer has neither BOS nor EOS to condition an empty context on")
        return int(tok)

    def _run(self, prompts: list[Any], params: Any, progress: Progress | None) -> list[Any]:
        from vllm.inputs import TokensPrompt

        outs: list[Any] = []
        for start in range(0, len(prompts), BATCH):
            chunk = [TokensPrompt(prompt_token_ids=ids) for ids in prompts[start:start + BATCH]]
            chunk_params = params[start:start + BATCH] if isinstance(params, list) else params
            outs.extend(self.llm.generate(chunk, chunk_params, use_tqdm=False, lora_request=self.lora))
            if progress:
                progress(len(chunk))
        return outs

    # -- generate ------------------------------------------------------------------------
    def generate(self, requests: Sequence[GenerateRequest], progress: Progress | None = None) -> list[GenerateResult]:
        from vllm import SamplingParams

        texts, ids, params = [], [], []
        for r in requests:
            if r.messages is not None:
                if not getattr(self.tokenizer, "chat_template", None):
                    raise UserError(f"{self.model_ref.name} has no chat template; send raw prompts to a base model")
                text = self.tokenizer.apply_chat_template(
                    [{"role": m.role, "content": m.content} for m in r.messages],
                    tokenize=False, add_generation_prompt=True)
                enc = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            else:
                text = r.prompt or ""
                enc = self.tokenizer(text)["input_ids"]
            d = r.decoding
            texts.append(text)
            ids.append(list(enc))
            params.append(SamplingParams(
                n=1, max_tokens=d.max_new_tokens, temperature=0.0 if d.greedy else d.temperature,
                top_p=1.0 if d.greedy else d.top_p, seed=d.seed, stop=list(d.stop) or None))
        outs = self._run(ids, params, progress)
        results = []
        for r, text, enc, out in zip(requests, texts, ids, outs, strict=True):
            o = out.outputs[0]
            ids = (tuple(enc), tuple(o.token_ids)) if r.return_token_ids else (None, None)
            results.append(GenerateResult(text=o.text, prompt_text=text, n_prompt_tokens=len(enc),
                                          n_new_tokens=len(o.token_ids),
                                          finish_reason="length" if o.finish_reason == "length" else "stop",
                                          prompt_ids=ids[0], token_ids=ids[1]))
        return results

    # -- log-likelihood --------------------------------------------------------------------
    def _split(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        # Trailing spaces of the context belong to the continuation's first token (lm-eval's convention).
        n_spaces = len(context) - len(context.rstrip(" "))
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        ctx = self._encode(context) if context else [self._prefix_token()]
        whole = self._encode(context + continuation) if context else ctx + self._encode(continuation)
        if whole[:len(ctx)] == ctx:
            return ctx, whole[len(ctx):]
        return ctx, self._encode(continuation)

    @staticmethod
    def _score(out: Any, ids: list[int], first: int) -> tuple[float, bool, int]:
        """Sum of log P(ids[i] | ids[:i]) for i >= first, from vLLM's prompt_logprobs."""
        total, greedy = 0.0, True
        plp = out.prompt_logprobs
        for i in range(first, len(ids)):
            entry = plp[i][ids[i]]
            total += float(entry.logprob)
            greedy = greedy and entry.rank == 1
        return total, greedy, len(ids) - first

    def _loglikelihood_splits(self, splits: list[tuple[list[int], list[int]]],
                              progress: Progress | None) -> list[LoglikelihoodResult]:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1)
        prompts = []
        for ctx, cont in splits:
            ids = ctx + cont
            if len(ids) > self.max_model_len:
                raise UserError(f"a log-likelihood request is {len(ids)} tokens, more than this model's "
                                f"{self.max_model_len}: {self.tokenizer.decode(ctx[:20])!r}...")
            prompts.append(ids)
        outs = self._run(prompts, params, progress)
        results = []
        for (ctx, _cont), ids, out in zip(splits, prompts, outs, strict=True):
            lp, greedy, n = self._score(out, ids, len(ctx))
            results.append(LoglikelihoodResult(logprob=lp, is_greedy=greedy and n > 0, n_tokens=n))
        return results

    def loglikelihood(
        self, requests: Sequence[LoglikelihoodRequest], progress: Progress | None = None
    ) -> list[LoglikelihoodResult]:
        return self._loglikelihood_splits([self._split(r.context, r.continuation) for r in requests], progress)

    @cached_property
    def tokenizer_id(self) -> str:
        return vocabulary_hash(self.tokenizer)

    def loglikelihood_tokens(
        self, requests: Sequence[TokensLoglikelihoodRequest], progress: Progress | None = None
    ) -> list[LoglikelihoodResult]:
        return self._loglikelihood_splits([(list(r.context_ids), list(r.continuation_ids)) for r in requests],
                                          progress)

    def rolling_loglikelihood(
        self, requests: Sequence[RollingRequest], progress: Progress | None = None
    ) -> list[RollingResult]:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1)
        window = self.max_model_len - 1  # one slot for the generated token vLLM insists on
        results = []
        for r in requests:
            ids = [self._prefix_token(), *self._encode(r.text)]
            total, n = 0.0, 0
            # windows: score tokens [start, end) with as much left context as fits
            pieces, first_of = [], []
            for start in range(1, len(ids), window - 1 if window > 1 else 1):
                end = min(len(ids), start + window - 1)
                left = max(0, end - window)
                pieces.append(ids[left:end])
                first_of.append(start - left)
            outs = self._run(pieces, params, None)
            for piece, first, out in zip(pieces, first_of, outs, strict=True):
                lp, _greedy, k = self._score(out, piece, first)
                total += lp
                n += k
            results.append(RollingResult(logprob=total, n_tokens=n))
            if progress:
                progress(1)
        return results

    def close(self) -> None:
        self.llm = None

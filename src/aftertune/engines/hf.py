"""The `hf` engine: a local torch model through transformers, with an optional PEFT adapter.

Behaviour worth knowing:

- **Loading.** A full model directory (packaged, hub snapshot, local) loads with
  `AutoModelForCausalLM`; an adapter loads its base, then the adapter on top
  (`PeftModel.from_pretrained`, unmerged), so `adapter_disabled()` can switch
  it off: inside that block every call gives the base model's exact outputs and
  carries the base model's fingerprint, so the store shares those answers with
  the base model's own engine.
- **dtype.** `"auto"` is bfloat16 where the hardware computes it natively (a CUDA
  GPU with bf16, or a CPU with AVX512-BF16 or AMX), else float32: on an older
  CPU bf16 is emulated, slower than float32 even with packed weights (below;
  SmolLM2: 1.1x for generation, 1.3x for scoring) and less exact. `dtype="float32"` (or
  `"bfloat16"`) forces one. The dtype and the window length (`max_length`,
  default the model's) change outputs, so they are part of `version` and
  therefore of every cache key.
- **Threads.** On CPU, torch uses every core the process may run on
  (`AFTERTUNE_THREADS` overrides, e.g. on a machine shared with other jobs).
- **CPU Linear layers** multiply with MKL weights packed once at load
  (`cpu_linear`). float32: outputs are bitwise those of the plain model,
  decoding steps about 1.4x faster; it costs one more copy of the Linear
  weights. bf16 where the CPU has no bf16 hardware: the weights' values packed
  as float32, products summed in float32 and rounded once to bf16 (what a bf16
  GEMM computes, in another summation order; `version` says so), 3-4x faster
  than torch's emulated bf16 GEMM, at two float32 copies of the Linear weights.
- **Chat.** Requests with `messages` go through the model's own chat template
  (`apply_chat_template(..., add_generation_prompt=True)`) and the templated
  text is returned as `prompt_text`; it is tokenized without adding special
  tokens (the template writes them). Raw `prompt` requests are tokenized as they
  are, with the tokenizer's own special tokens (as lm-evaluation-harness does).
- **Batch invariance** (CPU in float32, on by default; `batch_invariant=False`
  turns it off): attention runs row by row and small matrix products are padded
  (`invariant`), so a request's text and log-likelihood do not depend on the
  other requests of its batch or on what ran before it; the version says
  `attn/rowwise`. Not on CUDA. In float32, texts and log-likelihoods are bitwise
  the same in any batch (measured in benchmarks/RESULTS.md, `bench_invariance`).
  bf16 is not invariant even so (oneDNN's bf16 kernels), so in bf16 it is off,
  and asking for it (`batch_invariant=True`) is refused on CPUs that compute bf16
  natively; where bf16 is emulated (MKL's float32 GEMM on bf16 values) it can be
  asked for.
- **Generation.** Greedy requests, by device (`choose_decode_path`): on CPU,
  continuous batching (see `batching.decode`): left padding, longest prompts
  first, a finished row's slot is refilled at once; on CUDA, and for bf16 on a
  CPU that computes it natively, transformers' `generate` (on CUDA with its
  static KV cache; `hf_generate`), which measured faster there. Results come back in
  request order. Generation stops per
  sequence at an EOS id (tokenizer and generation_config, e.g. `<|im_end|>`) or a
  stop string (the text is cut before it): finish_reason "stop"; or at
  max_new_tokens: "length"; or when the request's `early_stop` rule says the
  reading judge's verdict is settled (`engines/early_stop.py`, checked on the
  sequence's own text): "early_stop". `n_new_tokens` counts the EOS token when
  there is one. Prompts longer than the model's window minus
  max_new_tokens are cut from the left, as lm-eval does, and `prompt_text` then
  shows what was kept.
- **Seeded sampling** (temperature > 0): each sampled request draws from its own
  `torch.Generator` seeded from `decoding.seed`, so the same request and seed
  give the same text whatever else is in the call. With batch invariance a
  row's logits do not depend on its batch, so sampled rows are batched with the
  greedy ones; without it (CUDA, `batch_invariant=False`) batching would change
  the logits in the last bits and flip a draw now and then, so each sampled
  request runs on its own (batch of one).
- **Log-likelihood** follows lm-evaluation-harness exactly: trailing spaces of
  the context move to the continuation; context + continuation is encoded
  whole and split at the encoded context's length; an empty context becomes
  the BOS token (EOS when there is none); inputs longer than the model's
  window lose tokens from the left. Requests sharing a context share one
  forward pass of it (`batching.score_pairs`).
- **Rolling log-likelihood** cuts the text into lm-eval's disjoint windows of
  the model's length (`loglikelihood_rolling`): the first window is conditioned
  on the BOS/EOS token, later ones on the preceding tokens.
"""

from __future__ import annotations

import contextlib
import gc
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from aftertune.engines import early_stop
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
from aftertune.engines.batching import GenSeq, decode, score_pairs
from aftertune.engines.cpu_linear import cpu_has_native_bf16, cpu_kind, pack_linear_weights
from aftertune.engines.hf_generate import generate_batches
from aftertune.engines.invariant import pad_linear_rows, use_rowwise_attention
from aftertune.engines.vocabulary import vocabulary_hash
from aftertune.errors import UserError
from aftertune.quiet import quiet_import_noise
from aftertune.sources.base import ModelRef
from aftertune.sources.fingerprints import quant_card, quantizer_version

# Bump when a change here can change any output; it is part of every cache key.
ENGINE_CODE_VERSION = "2"  # 2: packed float32 products of strided inputs (cpu_linear)

_DTYPES = {
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}
_DEFAULT_MAX_LENGTH = 2048  # lm-eval's fallback when neither config nor tokenizer says


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for, but torch sees no CUDA GPU; use --device cpu")
    return dev


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """"auto" → bf16 where the hardware has it natively, else float32 (see the module docstring)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else torch.float32
    try:
        return _DTYPES[dtype.lower()]
    except KeyError:
        raise UserError(f"unknown dtype {dtype!r}; use auto, bfloat16, float32 or float16") from None


def choose_decode_path(path: str, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """Greedy batches: "continuous" (`batching.decode`) or "generate" (`hf_generate`); "auto" by device.

    Measured, per kind (benchmarks/RESULTS.md): on CUDA transformers' own `generate` with its static cache
    (the custom loop ran at 0.62-0.97x plain `generate` on an H200, the static cache at 6-7.6x; bench_gpu).
    On a CPU, continuous batching, but for bf16 where the CPU computes it natively: there plain `generate`
    ran 1.25x the continuous loop on an AMD EPYC (bench_invariance) and on an Intel Xeon with AMX
    (bench_cpu_engine, 192.6 against 154.8 tokens/s).
    """
    if path == "auto":
        if device.type == "cuda" or (dtype == torch.bfloat16 and cpu_has_native_bf16()):
            return "generate"
        return "continuous"
    if path not in ("continuous", "generate"):
        raise UserError(f"unknown decode path {path!r}; use auto, continuous or generate")
    return path


def bf16_invariance_holds() -> bool:
    """Whether bf16 can be made batch-invariant here: not with a CPU's native bf16 kernels (oneDNN), measured by
    benchmarks/bench_invariance.py (which overrides this to measure it)."""
    return not cpu_has_native_bf16()


def cpu_threads() -> int:
    env = os.environ.get("AFTERTUNE_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise UserError(f"AFTERTUNE_THREADS={env!r} is not a number of threads") from None
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def rolling_windows(tokens: Sequence[int], prefix_token: int, max_len: int) -> list[tuple[list[int], list[int]]]:
    """lm-eval's `get_rolling_token_windows(..., context_len=1)` + `make_disjoint_window`.

    (context, continuation) pairs that together predict every token exactly once:
    the first window is conditioned on `prefix_token`, later ones on the tokens before them.
    """
    toks = list(tokens)
    out: list[tuple[list[int], list[int]]] = []
    if not toks:
        return out
    first = min(max_len, len(toks))
    out.append(([prefix_token], toks[:first]))
    done = first
    while done < len(toks):
        n = min(len(toks) - done, max_len)
        end = done + n
        window = toks[max(0, end - max_len - 1): end - 1]
        out.append((window[: len(window) - (n - 1)], toks[end - n: end]))
        done += n
    return out


def prefix_token_id(tok: Any) -> int:
    """The token a context-free continuation is scored after: BOS, else EOS (lm-eval's rule)."""
    return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id


def tok_encode(tok: Any, text: str) -> list[int]:
    """lm-eval's `tok_encode`: the tokenizer's default special tokens, none if text starts with BOS."""
    bos_text = tok.decode([prefix_token_id(tok)])
    special = not (bos_text and text.startswith(bos_text))
    return list(tok.encode(text, add_special_tokens=special))


def encode_pair(tok: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's context/continuation split (`TemplateLM.loglikelihood` + `_encode_pair`).

    A function of the tokenizer alone, so raw-text training (`recipes.tokenize.encode_raw`) splits its
    examples exactly as this engine scores them.
    """
    if context == "":
        cont = list(tok.encode(continuation, add_special_tokens=False))
        if cont and cont[0] == prefix_token_id(tok):
            return cont[:1], cont[1:]
        return [prefix_token_id(tok)], cont
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok_encode(tok, context + continuation)
    ctx = tok_encode(tok, context)
    return ctx, whole[len(ctx):]


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """No "Loading weights" bar per model load: an audit loads many models and shows its own progress.

    Also silences exactly one FutureWarning: peft (0.21) reads `model.is_gradient_checkpointing`, which
    transformers 5.25 deprecated, on every adapter wrap; nothing the user can act on. And the noise of
    torchao's import, which transformers imports with its models (`quiet.quiet_import_noise`)."""
    from transformers.utils import logging as hf_logging

    quiet_import_noise()
    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                                    category=FutureWarning)
            yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def _load_causal_lm(source: str | Path, dtype: torch.dtype, device: torch.device, trust_remote_code: bool) -> Any:
    try:
        with quiet_loading():
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(str(source), dtype=dtype, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        hint = "; set AFTERTUNE_TRUST_REMOTE_CODE=1 to allow a model's own code" if "remote_code" in str(exc) else ""
        raise UserError(f"{source}: cannot load as a causal language model ({' '.join(str(exc).split())}){hint}") from None
    return _frozen(model.to(device))


def _frozen(model: Any) -> Any:
    """Inference mode for good: eval(), and no parameter requires grad.

    Besides saving memory this keeps outputs identical between a plain model and the same
    weights under a PEFT wrapper (which freezes them): torch picks a different CPU matmul
    kernel for a weight that requires grad, and the two round differently in the last bits. (On a
    native-bf16 CPU the engine turns requires_grad back on for every model: see `HFEngine.__init__`.)
    """
    model.requires_grad_(False)
    return model.eval()


def _load_tokenizer(source: str | Path, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(source), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(f"{source}: cannot load its tokenizer ({exc})") from None


def _has_tokenizer(path: Path) -> bool:
    return any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


class HFEngine(Engine):
    """A transformers causal LM (optionally with a PEFT adapter) on CPU or GPU."""

    def __init__(self, model: Any, tokenizer: Any, *, model_ref: ModelRef, fingerprint: str, dtype: torch.dtype,
                 device: torch.device, batch_size: int = 16, max_length: int | None = None,
                 base_tokenizer: Any | None = None, base_fingerprint: str | None = None,
                 adapter_enabled: bool = True, decode_path: str = "auto", static_cache: bool | None = None,
                 batch_invariant: bool | None = None) -> None:
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}")
        self.model = model
        self.model_ref = model_ref
        self.dtype = dtype
        self.device = device
        self.batch_size = batch_size
        self._tokenizer = tokenizer
        self._base_tokenizer = base_tokenizer or tokenizer
        self._tokenizer_ids: dict[int, str] = {}
        self._fingerprint = fingerprint
        self._base_fingerprint = base_fingerprint
        self.is_adapter = base_fingerprint is not None
        self._adapter_on = adapter_enabled or not self.is_adapter
        self.max_length = max_length or self._resolve_max_length()
        # CPU: MKL pre-packed weights; float32 bitwise identical, bf16 (where emulated) the same arithmetic
        # in another summation order (see cpu_linear)
        self.packed_linears = pack_linear_weights(model, batch_size) if device.type == "cpu" else {}
        from transformers import __version__ as tf_version

        dtype_name = str(dtype).removeprefix("torch.")
        # what can change an answer: this code, the libraries, the dtype, the window (truncation, rolling windows)
        self._version = (f"hf-engine/{ENGINE_CODE_VERSION};transformers/{tf_version};torch/{torch.__version__};"
                         f"dtype/{dtype_name};max_length/{self.max_length}")
        if "bfloat16" in self.packed_linears:  # not bitwise torch's bf16 GEMM: never mix their cache entries
            self._version += ";linear/bf16-packed-fp32"
        self.quantization = quant_card(model_ref.path)
        if self.quantization is not None:  # the installed quantizer runs the kernels (the card says who wrote it)
            self._version += f";quant/{self.quantization['quantizer']}-{quantizer_version(self.quantization['quantizer'])}"
        # torch runs a CPU bf16 Linear through another oneDNN kernel when its weight requires grad: generation
        # was 1.3-1.45x faster so on an Intel Xeon with AMX (SmolLM2, batch 16, plain `generate` both ways). Every
        # call here runs under inference_mode, so nothing is recorded. All models of this kind take it, so a plain
        # model and the same weights under a PEFT wrapper still agree bit for bit; its bits are not the frozen
        # kernel's, hence the version.
        if device.type == "cpu" and dtype == torch.bfloat16 and cpu_has_native_bf16() and self.quantization is None:
            model.requires_grad_(True)
            self._version += ";linear/bf16-grad-kernel"
        self.batch_invariant = self._make_batch_invariant(batch_invariant)
        self.decode_path = choose_decode_path(decode_path, device, dtype)
        # transformers' static KV cache lets it compile the decoding step: 6-7.6x plain generate on an H200
        # (benchmarks/RESULTS.md, bench_gpu); on CPU, where nothing compiles it, the dynamic cache
        if static_cache is None:
            static_cache = device.type == "cuda"
        self.static_cache = static_cache and self.decode_path == "generate"
        if self.decode_path == "generate":  # other batches, other rounding: its own cache entries
            self._version += ";decode/hf-generate" + ("-static" if self.static_cache else "")

    def _make_batch_invariant(self, wanted: bool | None) -> bool:
        """Row-wise attention and padded small products (`invariant`); by default on CPU in float32, where it
        is checked to hold. Not by default in bf16: it does not hold there (oneDNN's bf16 kernels; 16 of 256
        log-likelihoods and 12 of 32 texts differed alone vs in one call, bench_invariance) and cost 3x in
        scoring. Returns whether the engine is batch-invariant; the version names what changed the arithmetic."""
        if wanted is False or (wanted is None and (self.device.type != "cpu" or self.dtype != torch.float32)):
            return False
        if self.device.type != "cpu":
            raise UserError("batch-invariant decoding is implemented on CPU only (on CUDA it is off)")
        if self.dtype == torch.bfloat16 and not bf16_invariance_holds():
            raise UserError("batch invariance does not hold in bf16 on a CPU that computes bf16 natively (its oneDNN "
                            "kernels: bench_invariance found 16 to 256 of 256 log-likelihoods differing between one "
                            "call and one request per call); audit in float32 (dtype: float32), where it holds")
        # products first: where they cannot be made invariant, row-wise attention would cost ~15% of generation and
        # buy nothing, so the model keeps its own attention
        products = pad_linear_rows(self.model)
        if products is None:
            return False
        if not use_rowwise_attention(self.model):
            self._version += f";matmul/{products}"
            return False
        self._version += f";attn/rowwise;matmul/{products};softmax/1thread"
        return True

    # -- construction ------------------------------------------------------------
    @classmethod
    def from_ref(cls, model_ref: ModelRef, *, dtype: str | torch.dtype = "auto", device: str | torch.device = "auto",
                 batch_size: int = 16, max_length: int | None = None, trust_remote_code: bool = False,
                 adapter_enabled: bool = True, merge_adapter: bool = False, decode_path: str = "auto",
                 static_cache: bool | None = None, batch_invariant: bool | None = None) -> HFEngine:
        """`merge_adapter`: fold a LoRA-style adapter into the weights (faster: no extra matmuls per layer;
        equal to the unmerged model up to float rounding, so it is part of the engine version). A merged
        engine has no `adapter_disabled()`; prompt-learning adapters cannot be merged and stay as they are."""
        from aftertune.sources import fingerprint
        from aftertune.sources.resolve import remote_code_allowed

        trust_remote_code = trust_remote_code or remote_code_allowed()
        if model_ref.kind == "openai":
            raise UserError(f"{model_ref.ref} is an OpenAI-compatible endpoint; it runs on the openai engine, not hf")
        dev = resolve_device(device)
        torch_dtype = _quantized_dtype(model_ref, dtype) or resolve_dtype(dtype, dev)
        if dev.type == "cpu":
            torch.set_num_threads(cpu_threads())
        if model_ref.kind == "adapter":
            base = model_ref.base
            if base is None or model_ref.path is None:
                raise UserError(f"adapter {model_ref.ref!r} has no base model; pass the base model explicitly")
            from peft import PeftModel

            base_model = _load_causal_lm(_source(base), torch_dtype, dev, trust_remote_code)
            base_tok = _load_tokenizer(_source(base), trust_remote_code)
            try:
                with quiet_loading():
                    model = PeftModel.from_pretrained(base_model, str(model_ref.path), is_trainable=False)
            except (OSError, ValueError, RuntimeError) as exc:
                raise UserError(f"{model_ref.path}: cannot load the adapter on {base.ref} ({exc})") from None
            tok = _load_tokenizer(model_ref.path, trust_remote_code) if _has_tokenizer(model_ref.path) else base_tok
            if merge_adapter and adapter_enabled and not model.peft_config[model.active_adapter].is_prompt_learning:
                merged = cls(_frozen(model.merge_and_unload().to(dev)), tok, model_ref=model_ref,
                             fingerprint=fingerprint(model_ref), dtype=torch_dtype, device=dev, batch_size=batch_size,
                             max_length=max_length, decode_path=decode_path,
                             static_cache=static_cache, batch_invariant=batch_invariant)
                merged._version += ";adapter/merged"
                return merged
            model = _frozen(model.to(dev))
            return cls(model, tok, model_ref=model_ref, fingerprint=fingerprint(model_ref), dtype=torch_dtype,
                       device=dev, batch_size=batch_size, max_length=max_length, base_tokenizer=base_tok,
                       base_fingerprint=fingerprint(base), adapter_enabled=adapter_enabled,
                       decode_path=decode_path, static_cache=static_cache,
                       batch_invariant=batch_invariant)
        model = _load_causal_lm(_source(model_ref), torch_dtype, dev, trust_remote_code)
        tok = _load_tokenizer(_source(model_ref), trust_remote_code)
        return cls(model, tok, model_ref=model_ref, fingerprint=fingerprint(model_ref), dtype=torch_dtype, device=dev,
                   batch_size=batch_size, max_length=max_length, decode_path=decode_path,
                             static_cache=static_cache, batch_invariant=batch_invariant)

    # -- identity ------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        if self._adapter_on or self._base_fingerprint is None:
            return self._fingerprint
        return self._base_fingerprint

    @property
    def version(self) -> str:
        return self._version

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer if self._adapter_on else self._base_tokenizer

    @property
    def tokenizer_id(self) -> str:
        """The vocabulary's hash (`vocabulary_hash`), per tokenizer: an adapter may bring its own."""
        tok = self.tokenizer
        if id(tok) not in self._tokenizer_ids:
            self._tokenizer_ids[id(tok)] = vocabulary_hash(tok)
        return self._tokenizer_ids[id(tok)]

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "model": self.model_ref.ref,
            "kind": self.model_ref.kind,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "max_length": self.max_length,
            "packed_linears": self.packed_linears,
            "decode_path": self.decode_path,
            "batch_invariant": self.batch_invariant,
            "hardware": cpu_kind() if self.device.type == "cpu" else torch.cuda.get_device_name(self.device),
            "adapter": self.is_adapter,
            "adapter_active": self.is_adapter and self._adapter_on,
            "chat_template": bool(getattr(self.tokenizer, "chat_template", None)),
            **({"variant": {"quant": {**self.quantization, "path": str(self.model_ref.path)}}}
               if self.quantization is not None else {}),
        }

    @contextlib.contextmanager
    def adapter_disabled(self) -> Iterator[HFEngine]:
        """Inside this block the adapter is off: base-model outputs and the base model's fingerprint."""
        if not self.is_adapter:
            raise UserError(f"{self.model_ref.ref} has no adapter to disable")
        before = self._adapter_on
        self._adapter_on = False
        try:
            yield self
        finally:
            self._adapter_on = before

    @contextlib.contextmanager
    def _model_state(self) -> Iterator[None]:
        if self.is_adapter and not self._adapter_on:
            with self.model.disable_adapter():
                yield
        else:
            yield

    def close(self) -> None:
        self.model = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- tokenization (lm-evaluation-harness conventions) --------------------------
    def _resolve_max_length(self) -> int:
        cfg = getattr(self.model, "config", None)
        cfg = getattr(cfg, "text_config", None) or cfg
        for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
            value = getattr(cfg, attr, None)
            if value is not None:
                return int(value)
        tml = getattr(self.tokenizer, "model_max_length", None)
        if tml is not None and tml < 10**9:
            return int(tml)
        return _DEFAULT_MAX_LENGTH

    @property
    def prefix_token_id(self) -> int:
        return prefix_token_id(self.tokenizer)

    @property
    def pad_token_id(self) -> int:
        tok = self.tokenizer
        for candidate in (tok.pad_token_id, tok.eos_token_id, 0):
            if candidate is not None:
                return int(candidate)
        return 0  # pragma: no cover

    def eos_token_ids(self) -> set[int]:
        ids: set[int] = set()
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        gen_cfg = getattr(self.model, "generation_config", None)
        extra = getattr(gen_cfg, "eos_token_id", None)
        if isinstance(extra, int):
            ids.add(extra)
        elif extra:
            ids.update(int(e) for e in extra)
        return ids

    def tok_encode(self, text: str) -> list[int]:
        return tok_encode(self.tokenizer, text)

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        return encode_pair(self.tokenizer, context, continuation)

    def prompt_ids(self, request: GenerateRequest) -> tuple[list[int], str]:
        """(token ids, text) of what the model is asked to continue."""
        tok = self.tokenizer
        if request.messages is not None:
            if not getattr(tok, "chat_template", None):
                raise UserError(
                    f"{self.model_ref.ref} has no chat template, so chat messages cannot be sent to it; "
                    "send raw prompts instead (aftertune generate --raw)"
                )
            text = tok.apply_chat_template([asdict(m) for m in request.messages], tokenize=False,
                                           add_generation_prompt=True)
            return list(tok.encode(text, add_special_tokens=False)), text
        assert request.prompt is not None
        return self.tok_encode(request.prompt), request.prompt

    # -- the engine contract ---------------------------------------------------------
    def generate(self, requests: Sequence[GenerateRequest], progress: Progress | None = None) -> list[GenerateResult]:
        if self.model is None:
            raise RuntimeError("engine is closed")
        with self._model_state():
            tok = self.tokenizer
            seqs: list[GenSeq] = []
            texts: list[str] = []
            early: list[Any] = []
            for req in requests:
                ids, text = self.prompt_ids(req)
                dec = req.decoding
                room = self.max_length - dec.max_new_tokens
                if room < 1:
                    raise UserError(f"max_new_tokens={dec.max_new_tokens} leaves no room for a prompt in "
                                    f"{self.model_ref.name}'s {self.max_length}-token window")
                if len(ids) > room:
                    ids = ids[-room:]
                    text = tok.decode(ids, skip_special_tokens=False)
                gen = torch.Generator().manual_seed(dec.seed) if not dec.greedy else None
                settled = (early_stop.SettledCheck(dec.early_stop, self._decode_new, self._stop_check(dec.stop))
                           if dec.early_stop else None)
                early.append(settled)
                seqs.append(GenSeq(prompt=ids, max_new_tokens=dec.max_new_tokens, temperature=max(dec.temperature, 0.0),
                                   top_p=dec.top_p, generator=gen, stop_check=settled or self._stop_check(dec.stop)))
                texts.append(text)

            def finished(_s: GenSeq) -> None:
                if progress:
                    progress(1)

            common = {"eos_ids": self.eos_token_ids(), "pad_id": self.pad_token_id, "device": self.device,
                      "on_finish": finished}
            greedy = [s for s, r in zip(seqs, requests, strict=True) if r.decoding.greedy]
            sampled = [s for s, r in zip(seqs, requests, strict=True) if not r.decoding.greedy]
            if greedy and self.decode_path == "generate":
                generate_batches(self.model, greedy, batch_size=self.batch_size, static_cache=self.static_cache,
                                 **common)
            elif self.batch_invariant:  # a row's logits do not depend on its batch, so neither do its draws
                decode(self.model, greedy + sampled, batch_size=self.batch_size, invariant=True, **common)
                sampled = []
            elif greedy:
                decode(self.model, greedy, batch_size=self.batch_size, **common)
            for s in sampled:
                decode(self.model, [s], batch_size=1, **common)
            results = []
            for s, text, req, settled in zip(seqs, texts, requests, early, strict=True):
                out = self._decode_new(s.out)
                for stop in req.decoding.stop:
                    if stop:
                        out = out.split(stop)[0]
                sampled = s.out + ([s.eos_id] if s.eos_id is not None else [])
                ids = (tuple(s.prompt), tuple(sampled)) if req.return_token_ids else (None, None)
                results.append(GenerateResult(text=out, prompt_text=text, n_prompt_tokens=len(s.prompt),
                                              n_new_tokens=len(sampled),
                                              finish_reason="early_stop" if settled is not None and settled.fired
                                              else s.finish or "length", prompt_ids=ids[0], token_ids=ids[1]))
        return results

    def _decode_new(self, out: list[int]) -> str:
        return str(self.tokenizer.decode(out, skip_special_tokens=True))

    def _stop_check(self, stops: Sequence[str]) -> Any:
        stops = [s for s in stops if s]
        if not stops:
            return None
        tok = self.tokenizer

        def check(out: list[int]) -> bool:
            text = tok.decode(out, skip_special_tokens=True)
            return any(s in text for s in stops)

        return check

    def _truncate(self, ctx: list[int], cont: list[int]) -> tuple[list[int], list[int]]:
        """lm-eval's left truncation: the model sees at most max_length tokens of context + continuation[:-1]."""
        if len(ctx) + len(cont) <= self.max_length + 1:
            return ctx, cont
        if len(cont) > self.max_length:
            raise UserError(f"a continuation of {len(cont)} tokens does not fit {self.model_ref.name}'s "
                            f"{self.max_length}-token window")
        return (ctx + cont)[-(self.max_length + 1):][: -len(cont)], cont

    def _score(self, pairs: list[tuple[list[int], list[int]]], progress: Progress | None) -> list[tuple[float, bool]]:
        """Score pairs; empty continuations score 0 (certain) without running the model."""
        todo = [i for i, (_, cont) in enumerate(pairs) if cont]
        out: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)
        if progress and len(todo) < len(pairs):
            progress(len(pairs) - len(todo))
        if todo:
            scored = score_pairs(self.model, [self._truncate(*pairs[i]) for i in todo], pad_id=self.pad_token_id,
                                 batch_size=self.batch_size, device=self.device, progress=progress,
                                 invariant=self.batch_invariant)
            for i, s in zip(todo, scored, strict=True):
                out[i] = s
        return out

    def _loglikelihood_pairs(self, pairs: list[tuple[list[int], list[int]]],
                             progress: Progress | None) -> list[LoglikelihoodResult]:
        if self.model is None:
            raise RuntimeError("engine is closed")
        with self._model_state():
            scores = self._score(pairs, progress)
        return [LoglikelihoodResult(logprob=lp, is_greedy=g, n_tokens=len(cont))
                for (lp, g), (_, cont) in zip(scores, pairs, strict=True)]

    def loglikelihood(
        self, requests: Sequence[LoglikelihoodRequest], progress: Progress | None = None
    ) -> list[LoglikelihoodResult]:
        return self._loglikelihood_pairs([self.encode_pair(r.context, r.continuation) for r in requests], progress)

    def loglikelihood_tokens(
        self, requests: Sequence[TokensLoglikelihoodRequest], progress: Progress | None = None
    ) -> list[LoglikelihoodResult]:
        return self._loglikelihood_pairs([(list(r.context_ids), list(r.continuation_ids)) for r in requests],
                                         progress)

    def rolling_loglikelihood(
        self, requests: Sequence[RollingRequest], progress: Progress | None = None
    ) -> list[RollingResult]:
        if self.model is None:
            raise RuntimeError("engine is closed")
        with self._model_state():
            token_lists = [self.tok_encode(r.text) for r in requests]
            windows: list[tuple[list[int], list[int]]] = []
            owner: list[int] = []
            for i, toks in enumerate(token_lists):
                for w in rolling_windows(toks, self.prefix_token_id, self.max_length):
                    windows.append(w)
                    owner.append(i)
            scores = self._score(windows, None)
        total = [0.0] * len(requests)
        for i, (lp, _) in zip(owner, scores, strict=True):
            total[i] += lp
        if progress:
            progress(len(requests))
        return [RollingResult(logprob=t, n_tokens=len(toks)) for t, toks in zip(total, token_lists, strict=True)]


def _quantized_dtype(model_ref: ModelRef, dtype: str | torch.dtype) -> torch.dtype | None:
    """A quantized model computes in the dtype of its scales (the card's): "auto" picks it, another is refused
    (torchao's int4 layout multiplies float32 scales with the activations and fails on bf16 ones)."""
    card = quant_card(model_ref.path)
    if card is None:
        return None
    quantizer_version(card["quantizer"])  # installed, else one line saying how to install it
    want = _DTYPES[card["dtype"]]
    if dtype != "auto" and resolve_dtype(dtype, torch.device("cpu")) != want:
        raise UserError(f"{model_ref.ref}: a quant variant computes in {card['dtype']} (its scales' dtype); "
                        f"drop the dtype option or set it to {card['dtype']}")
    return want


def _source(ref: ModelRef) -> str | Path:
    """Where from_pretrained reads the model: its local path, else the hub id."""
    return ref.path if ref.path is not None else ref.ref

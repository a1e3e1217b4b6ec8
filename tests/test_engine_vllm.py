"""The vllm engine.

vLLM needs a GPU, so the real test is skipped on CPU machines. The glue around
it (chat templating to token ids, continuation splitting, log-probability
sums, rolling windows, progress) is checked with a stand-in `vllm` module whose
LLM returns made-up, position-checkable log-probabilities over the tiny
model's real tokenizer: it tests aftertune's code, not vLLM's.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from typing import Any

import pytest

from aftertune.engines import Decoding, GenerateRequest, LoglikelihoodRequest, RollingRequest
from aftertune.errors import UserError
from aftertune.sources.base import ModelRef


def fake_logprob(token_id: int) -> float:
    return -0.01 * (token_id % 97) - 0.1


@dataclass
class _Logprob:
    logprob: float
    rank: int


@dataclass
class _Completion:
    text: str
    token_ids: list[int]
    finish_reason: str


@dataclass
class _Output:
    prompt_token_ids: list[int]
    outputs: list[_Completion]
    prompt_logprobs: list[Any] | None = None


@dataclass
class _Params:
    n: int = 1
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] | None = None
    prompt_logprobs: int | None = None


@dataclass
class FakeLLM:
    tokenizer: Any
    max_model_len: int
    calls: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.llm_engine = types.SimpleNamespace(model_config=types.SimpleNamespace(max_model_len=self.max_model_len))

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    def generate(self, prompts, params, use_tqdm=False, lora_request=None):
        self.calls.append((prompts, params))
        outs = []
        for i, p in enumerate(prompts):
            ids = p["prompt_token_ids"]
            assert len(ids) <= self.max_model_len
            sp = params[i] if isinstance(params, list) else params
            plp = None
            if sp.prompt_logprobs:
                # rank 1 for even ids only, so is_greedy is checkable
                plp = [None] + [{t: _Logprob(fake_logprob(t), 1 if t % 2 == 0 else 2)} for t in ids[1:]]
            n = min(sp.max_tokens, 3)
            outs.append(_Output(ids, [_Completion("ok" * n, [5] * n, "length" if n == sp.max_tokens else "stop")],
                                plp))
        return outs


@pytest.fixture
def fake_vllm(monkeypatch, tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    made: list[FakeLLM] = []

    def LLM(**kw):
        llm = FakeLLM(tok, kw.get("max_model_len") or 64)
        llm.kwargs = kw
        made.append(llm)
        return llm

    vllm = types.ModuleType("vllm")
    vllm.__version__ = "0.0-fake"
    vllm.LLM = LLM
    vllm.SamplingParams = _Params
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids}
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)
    return made


def _engine(tiny_model_dir, **kw):
    from aftertune.engines.vllm_engine import VLLMEngine

    ref = ModelRef(ref=str(tiny_model_dir), kind="local", name="tiny", path=tiny_model_dir)
    return VLLMEngine.from_ref(ref, **kw)


def test_missing_vllm_is_a_user_error(monkeypatch, tiny_model_dir):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import fails as on a CPU machine
    with pytest.raises(UserError, match="needs the vllm package"):
        _engine(tiny_model_dir)


def test_generate_templates_chat_to_token_ids(fake_vllm, tiny_model_dir):
    eng = _engine(tiny_model_dir, max_model_len=64)
    assert eng.version == "vllm/1/0.0-fake" and fake_vllm[0].kwargs["model"] == str(tiny_model_dir)
    ticks: list[int] = []
    reqs = [GenerateRequest.chat("hello there", decoding=Decoding(max_new_tokens=2, stop=("\n",))),
            GenerateRequest(prompt="Paris is", decoding=Decoding(max_new_tokens=9, temperature=0.7, top_p=0.9))]
    out = eng.generate(reqs, progress=ticks.append)
    prompts, params = fake_vllm[0].calls[0]
    tok = eng.tokenizer
    assert out[0].prompt_text == "<|im_start|>user\nhello there<|im_end|>\n<|im_start|>assistant\n"
    assert prompts[0]["prompt_token_ids"] == tok(out[0].prompt_text, add_special_tokens=False)["input_ids"]
    assert out[0].n_prompt_tokens == len(prompts[0]["prompt_token_ids"])
    assert (params[0].temperature, params[0].top_p, params[0].stop, params[0].max_tokens) == (0.0, 1.0, ["\n"], 2)
    assert (params[1].temperature, params[1].top_p, params[1].stop) == (0.7, 0.9, None)
    assert out[0].finish_reason == "length" and out[1].finish_reason == "stop" and out[1].n_new_tokens == 3
    assert sum(ticks) == 2


def test_loglikelihood_sums_continuation_positions(fake_vllm, tiny_model_dir):
    eng = _engine(tiny_model_dir, max_model_len=64)
    tok = eng.tokenizer
    reqs = [LoglikelihoodRequest("Paris is the capital of", " France."),
            LoglikelihoodRequest("Question: What is two plus two? Answer: ", "four"),
            LoglikelihoodRequest("", "The quick brown fox")]
    out = eng.loglikelihood(reqs)
    for r, res in zip(reqs, out, strict=True):
        ctx = r.context.rstrip(" ")
        ctx_ids = tok.encode(ctx, add_special_tokens=False) if ctx else [tok.eos_token_id]
        whole = (tok.encode(r.context + r.continuation, add_special_tokens=False) if ctx
                 else ctx_ids + tok.encode(r.continuation, add_special_tokens=False))
        cont = whole[len(ctx_ids):]
        assert res.n_tokens == len(cont) > 0
        assert res.logprob == pytest.approx(sum(fake_logprob(t) for t in cont))
        assert res.is_greedy == all(t % 2 == 0 for t in cont)


def test_sampled_ids_come_back_and_are_scored_as_given(fake_vllm, tiny_model_dir):
    from aftertune.engines import Message, TokensLoglikelihoodRequest
    from aftertune.engines.vocabulary import vocabulary_hash

    eng = _engine(tiny_model_dir, max_model_len=64)
    (out,) = eng.generate([GenerateRequest(messages=(Message("user", "hi"),), return_token_ids=True,
                                           decoding=Decoding(max_new_tokens=3, temperature=1.0))])
    assert out.prompt_ids == tuple(fake_vllm[0].calls[0][0][0]["prompt_token_ids"]) and out.token_ids == (5, 5, 5)
    (res,) = eng.loglikelihood_tokens([TokensLoglikelihoodRequest(out.prompt_ids, (4, 7, 9))])
    assert res.n_tokens == 3 and res.logprob == pytest.approx(sum(fake_logprob(t) for t in (4, 7, 9)))
    assert not res.is_greedy and eng.tokenizer_id == vocabulary_hash(eng.tokenizer)


def test_rolling_windows_score_every_token_once(fake_vllm, tiny_model_dir):
    eng = _engine(tiny_model_dir, max_model_len=8)
    text = "The quick brown fox jumps over the lazy dog. Paris is the capital of France."
    ids = eng.tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > 20  # several windows
    (res,) = eng.rolling_loglikelihood([RollingRequest(text)])
    assert res.n_tokens == len(ids)
    assert res.logprob == pytest.approx(sum(fake_logprob(t) for t in ids))


def test_real_vllm_on_the_tiny_model(tiny_model_dir):
    pytest.importorskip("vllm", reason="vllm is not installed (it needs a GPU machine)")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("vllm is installed but no GPU is visible")
    eng = _engine(tiny_model_dir, max_model_len=256, gpu_memory_utilization=0.3)
    (gen,) = eng.generate([GenerateRequest.chat("hello", decoding=Decoding(max_new_tokens=8))])
    assert gen.n_prompt_tokens > 0 and gen.finish_reason in ("stop", "length")
    (ll,) = eng.loglikelihood([LoglikelihoodRequest("The quick brown", " fox")])
    assert ll.logprob < 0 and ll.n_tokens >= 1
    (roll,) = eng.rolling_loglikelihood([RollingRequest("The quick brown fox jumps over the lazy dog.")])
    assert roll.logprob < 0 and roll.n_tokens > 5
    eng.close()

"""The hf engine on tiny random-weight models (fast) and on the real SmolLM2 (slow).

The tiny model of conftest has tied embeddings and small weights, so greedy
decoding just repeats the last token; `chaotic_dir` re-draws its weights larger
so that different prompts produce different, varied continuations.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from aftertune.engines import (
    ENGINES,
    Decoding,
    GenerateRequest,
    LoglikelihoodRequest,
    Message,
    RollingRequest,
    TokensLoglikelihoodRequest,
)
from aftertune.engines import batching as batching_mod
from aftertune.engines.batching import GenSeq, common_prefix, decode, score_pairs
from aftertune.engines.hf import HFEngine, cpu_has_native_bf16, resolve_dtype, rolling_windows
from aftertune.errors import UserError
from aftertune.sources import fingerprint, resolve_model

PROMPTS = [
    "How can I reset my password?",
    "Paris is",
    "Question: What is two plus two?",
    "hi",
    "My order arrived damaged, please send a replacement or a refund as soon as you can.",
    "x",
    "The quick brown fox jumps over the lazy dog.",
]


@pytest.fixture(scope="session")
def lora_dir(chaotic_dir, tmp_path_factory):
    """A LoRA adapter on the chaotic model whose B matrices are non-zero (it changes outputs)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(chaotic_dir)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                                            init_lora_weights=False))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                assert p.abs().sum() > 0
    out = tmp_path_factory.mktemp("lora") / "adapter"
    model.save_pretrained(out)
    return out


def _engine(path, **kw) -> HFEngine:
    kw.setdefault("dtype", "float32")
    return HFEngine.from_ref(resolve_model(str(path)), **kw)


@pytest.fixture(scope="module")
def chaotic(chaotic_dir, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:  # module scope: built before the per-test home is set
        mp.setenv("AFTERTUNE_HOME", str(tmp_path_factory.mktemp("home")))
        return _engine(chaotic_dir, batch_size=3)


def _chat(q: str, n: int = 12, **kw) -> GenerateRequest:
    return GenerateRequest.chat(q, decoding=Decoding(max_new_tokens=n, **kw))


# --------------------------------------------------------------------------- loading, identity


def test_registered_and_loaded_through_load_engine(tiny_model_dir):
    from aftertune.engines import load_engine

    assert "hf" in ENGINES
    eng = load_engine(str(tiny_model_dir), dtype="float32")
    assert isinstance(eng, HFEngine)
    assert eng.fingerprint == fingerprint(resolve_model(str(tiny_model_dir)))
    assert "dtype/float32" in eng.version and "transformers/" in eng.version and "torch/" in eng.version
    d = eng.describe()
    assert d["engine"] == "hf" and d["dtype"] == "float32" and d["max_length"] == 512 and d["chat_template"]


def test_dtype_and_window_are_part_of_version(tiny_model_dir):
    a = _engine(tiny_model_dir, dtype="float32")
    b = _engine(tiny_model_dir, dtype="bfloat16")
    c = _engine(tiny_model_dir, dtype="float32", max_length=64)
    assert b.model.dtype == torch.bfloat16
    assert len({a.version, b.version, c.version}) == 3 and a.fingerprint == b.fingerprint == c.fingerprint


def test_auto_dtype_follows_hardware():
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    assert resolve_dtype("fp32", cpu) == torch.float32 and resolve_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(UserError, match="unknown dtype"):
        resolve_dtype("int3", cpu)


def test_uses_all_cores(tiny_model_dir, monkeypatch):
    import os

    monkeypatch.delenv("AFTERTUNE_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        _engine(tiny_model_dir)
        assert torch.get_num_threads() == len(os.sched_getaffinity(0))
        monkeypatch.setenv("AFTERTUNE_THREADS", "1")
        _engine(tiny_model_dir)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_openai_ref_is_refused():
    from aftertune.sources.base import ModelRef

    with pytest.raises(UserError, match="openai engine"):
        HFEngine.from_ref(ModelRef("openai:m@http://127.0.0.1:1/v1", "openai", "m"))


# --------------------------------------------------------------------------- generation


def test_prompt_text_is_the_models_chat_template(chaotic):
    req = GenerateRequest(messages=(Message("system", "Be brief."), Message("user", "hi")),
                          decoding=Decoding(max_new_tokens=2))
    (res,) = chaotic.generate([req])
    assert res.prompt_text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert res.n_prompt_tokens == len(chaotic.tokenizer.encode(res.prompt_text, add_special_tokens=False))
    raw = chaotic.generate([GenerateRequest(prompt="Paris is", decoding=Decoding(max_new_tokens=2))])[0]
    assert raw.prompt_text == "Paris is"
    assert raw.n_prompt_tokens == len(chaotic.tokenizer.encode("Paris is"))


def test_batched_greedy_equals_one_at_a_time(chaotic):
    reqs = [_chat(q, n=6 + 3 * i) for i, q in enumerate(PROMPTS)]
    together = chaotic.generate(reqs)  # batch size 3: left padding, refills, shared prefix
    alone = [chaotic.generate([r])[0] for r in reqs]
    assert together == alone
    assert len({r.text for r in together}) == len(PROMPTS)  # the prompts really lead to different text
    assert [r.n_new_tokens for r in together] == [6 + 3 * i for i in range(len(PROMPTS))]
    assert all(r.finish_reason == "length" for r in together)


def test_greedy_equals_transformers_generate(chaotic):
    """Our decoding loop gives exactly what transformers' own greedy `generate` gives, prompt by prompt."""
    reqs = [_chat(q, n=10) for q in PROMPTS[:4]]
    ours = chaotic.generate(reqs)
    tok = chaotic.tokenizer
    for res in ours:
        ids = torch.tensor([tok.encode(res.prompt_text, add_special_tokens=False)])
        with torch.no_grad():
            out = chaotic.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10,
                                         do_sample=False, eos_token_id=None, pad_token_id=0)
        assert tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True) == res.text


def test_left_padding_in_a_batch_equals_transformers_batched_generate(chaotic):
    tok = chaotic.tokenizer
    reqs = [_chat(q, n=8) for q in PROMPTS[:4]]
    ours = chaotic.generate(reqs)
    tok.padding_side = "left"
    try:
        enc = tok([r.prompt_text for r in ours], return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tok.padding_side = "right"
    assert (enc.attention_mask == 0).any()  # there is padding
    with torch.no_grad():
        out = chaotic.model.generate(**enc, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    hf = [tok.decode(o[enc.input_ids.shape[1]:], skip_special_tokens=True) for o in out]
    assert [r.text for r in ours] == hf


def test_generate_path_equals_continuous_batching(chaotic_dir):
    """The CUDA path (transformers' generate in fixed batches) ends rows exactly as continuous batching does,
    and ignores a model's own sampling defaults and repetition penalty: greedy is argmax."""
    cont = _engine(chaotic_dir, batch_size=3, decode_path="continuous")
    gen = _engine(chaotic_dir, batch_size=3, decode_path="generate")
    assert gen.decode_path == "generate" and gen.version != cont.version and "decode/hf-generate" in gen.version
    gen.model.generation_config.update(do_sample=True, temperature=0.3, top_k=5, repetition_penalty=1.8)
    reqs = [_chat(q, n=4 + 2 * i) for i, q in enumerate(PROMPTS)]
    want = cont.generate(reqs)
    stop = want[0].text[3:6]
    reqs.append(_chat(PROMPTS[0], n=12, stop=(stop,)))
    want += cont.generate(reqs[-1:])
    calls = []
    assert gen.generate(reqs, progress=calls.append) == want
    assert len(calls) == len(reqs) and want[-1].finish_reason == "stop"


def test_decode_path_is_chosen_by_device(monkeypatch):
    from aftertune.engines import hf
    from aftertune.engines.hf import choose_decode_path

    cpu, bf16 = torch.device("cpu"), torch.bfloat16
    assert choose_decode_path("auto", cpu) == "continuous"
    assert choose_decode_path("auto", torch.device("cuda")) == "generate"
    # bf16: plain generate where the CPU computes bf16 natively (measured faster there), else the continuous loop
    for native, want in ((True, "generate"), (False, "continuous")):
        monkeypatch.setattr(hf, "cpu_has_native_bf16", lambda native=native: native)
        assert choose_decode_path("auto", cpu, bf16) == want
        assert choose_decode_path("auto", cpu, torch.float32) == "continuous"
    with pytest.raises(UserError, match="decode path"):
        choose_decode_path("fast", torch.device("cpu"))


def _in_chunks(fn, reqs, order, sizes):
    """fn over reqs taken in `order`, in calls of the given sizes (cycled); results in request order."""
    out, i, k = {}, 0, 0
    while i < len(order):
        part = order[i:i + sizes[k % len(sizes)]]
        i, k = i + len(part), k + 1
        out.update(zip(part, fn([reqs[j] for j in part]), strict=True))
    return [out[j] for j in range(len(reqs))]


def test_batch_invariance_is_the_cpu_default_in_float32_only(chaotic_dir):
    """bf16 is not invariant on real models even with row-wise attention (bench_invariance), so it is not
    paid for by default there; float32 is."""
    f32, bf16 = _engine(chaotic_dir), _engine(chaotic_dir, dtype="bfloat16")
    assert f32.batch_invariant and "attn/rowwise" in f32.version
    assert not bf16.batch_invariant and "rowwise" not in bf16.version


def test_no_rowwise_attention_where_products_cannot_be_made_invariant(chaotic_dir, monkeypatch):
    """Where no row count gives invariant products (MKL at 2 threads on an Intel Xeon), the engine is not
    batch-invariant and keeps the model's own attention: the version names neither, and answers are as without."""
    from aftertune.engines import hf

    monkeypatch.setattr(hf, "pad_linear_rows", lambda model: None)
    eng = _engine(chaotic_dir)
    assert not eng.batch_invariant and "rowwise" not in eng.version and "min-rows" not in eng.version
    assert eng.model.config._attn_implementation != "aftertune_rowwise"
    plain = _engine(chaotic_dir, batch_invariant=False)
    reqs = [_chat(q, n=6) for q in PROMPTS[:3]]
    assert [r.text for r in eng.generate(reqs)] == [r.text for r in plain.generate(reqs)]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_shuffled_batches_give_identical_records(chaotic_dir, dtype, monkeypatch):
    """Batch invariance (issue 13): the same requests, shuffled into other batches of other sizes or run alone,
    give bitwise the same texts and log-likelihoods."""
    import random

    if dtype == "bfloat16":  # only when asked, and only where bf16 is emulated (MKL's float32 GEMM on its values)
        from aftertune.engines import cpu_linear, hf

        if cpu_linear._mkl_ops() is None:
            pytest.skip("no MKL packed GEMM in this torch build")
        monkeypatch.setattr(hf, "bf16_invariance_holds", lambda: True)
        monkeypatch.setattr(cpu_linear, "_bf16_is_emulated", lambda: True)
    eng = _engine(chaotic_dir, dtype=dtype, batch_size=5, batch_invariant=True)
    assert eng.batch_invariant and "attn/rowwise" in eng.version
    gen = [_chat(q + " " + q[: i], n=5 + i % 4) for i, q in enumerate(PROMPTS * 2)]
    lls = [LoglikelihoodRequest(q[: 3 + i % 7], " " + w) for i, q in enumerate(PROMPTS)
           for w in ("yes", "no thanks", "maybe so, perhaps")]
    shuffled = list(range(len(gen)))
    random.Random(0).shuffle(shuffled)
    for fn, reqs in ((eng.generate, gen), (eng.loglikelihood, lls)):
        order = list(range(len(reqs)))
        random.Random(1).shuffle(order)
        together = fn(reqs)
        assert _in_chunks(fn, reqs, order, [3, 1, 7, 2]) == together
        assert _in_chunks(fn, reqs, list(range(len(reqs))), [1]) == together


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rowwise_attention_shortcuts_are_bitwise_the_reference(dtype):
    """The fewer-call forms of row-wise attention (no all-true mask, `is_causal`, grouped heads by index) give
    bitwise the rows of the reference form (explicit mask, repeated heads), on prefill, decoding and chunks."""
    import random

    from aftertune.engines import invariant

    assert invariant._shortcuts_exact(dtype)  # else the engine would run the reference form (slower, same bits)
    rnd = random.Random(0)
    gen = torch.Generator().manual_seed(0)
    for b, t, past in ((1, 12, 0), (4, 1, 30), (5, 9, 0), (3, 8, 20), (16, 1, 7)):
        s = past + t
        mask = torch.zeros(b, s, dtype=torch.bool)
        for r in range(b):  # left padding; rows with a past see at least their new tokens
            mask[r, s - rnd.randint(t if past else 1, s):] = True
        full = (torch.ones(t, s, dtype=torch.bool).tril(s - t)[None] & mask[:, None, :])[:, None]
        q = torch.randn(b, 6, t, 16, generator=gen).to(dtype)
        k, v = (torch.randn(b, 2, s, 16, generator=gen).to(dtype) for _ in range(2))
        got = {}
        for fast in (True, False):
            invariant._memo.clear()
            invariant._memo[("exact", dtype)] = fast
            got[fast] = invariant.rowwise_attention(None, q, k, v, full, scaling=0.25)[0]
        invariant._memo.clear()
        assert torch.equal(got[True], got[False])


def test_bf16_batch_invariance_is_refused_where_bf16_is_native(chaotic_dir, monkeypatch):
    """On native-bf16 CPUs it did not hold on SmolLM2 (256 of 256 log-likelihoods alone differed on an Intel Xeon),
    so the engine must not say it does."""
    from aftertune.engines import hf

    monkeypatch.setattr(hf, "cpu_has_native_bf16", lambda: True)
    assert not hf.bf16_invariance_holds()
    with pytest.raises(UserError, match=r"does not hold in bf16.*float32"):
        _engine(chaotic_dir, dtype="bfloat16", batch_invariant=True)


def test_batch_invariance_can_be_switched_off(chaotic_dir):
    eng = _engine(chaotic_dir, batch_invariant=False)
    assert not eng.batch_invariant and "rowwise" not in eng.version
    assert eng.model.config._attn_implementation == "sdpa"


def test_small_products_are_padded_to_the_probed_row_count():
    from aftertune.engines.invariant import pad_linear_rows

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.Linear(96, 64))
    want = model(torch.randn(200, 64))
    plan = pad_linear_rows(model)
    assert plan is not None and plan.startswith("min-rows-")
    x = torch.randn(40, 64)
    full = model(x)
    for n in (1, 2, 3, 5, 7, 11):
        assert torch.equal(model(x[:n]), full[:n])
    assert want.shape == (200, 64)


@pytest.mark.parametrize("one_thread_helps", [True, False])
def test_a_band_of_row_counts_whose_threads_split_the_sum_runs_on_one_thread(one_thread_helps):
    """MKL at 2 threads on an Intel Xeon rounds products of 57 to 192 rows of a 1536-wide weight otherwise (it
    splits the inner sum between threads); one thread gives the rows of every other count. Stand-in: a product
    that is off by a little in that band unless run on one thread (or always, when one thread does not help)."""
    from aftertune.engines import invariant

    w = torch.randn(24, 48, generator=torch.Generator().manual_seed(0))

    def forward(x: torch.Tensor) -> torch.Tensor:
        n = x.numel() // x.shape[-1]
        off = 57 <= n <= 192 and (torch.get_num_threads() > 1 or not one_thread_helps)
        return torch.nn.functional.linear(x, w) + (1e-3 if off else 0.0)

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        plan = invariant._row_plan(forward, 48, torch.float32)
        if not one_thread_helps:
            assert plan is None
            return
        assert plan is not None and plan.one_thread == ((57, 192),)
        planned = invariant._planned(forward, plan)
        x = torch.randn(300, 48)
        full = planned(x)
        for n in (1, 56, 57, 100, 192, 193, 250):
            assert torch.equal(planned(x[:n]), full[:n])
        assert torch.get_num_threads() == 2  # restored after each one-thread product
    finally:
        torch.set_num_threads(threads)


def test_sums_over_the_vocabulary_do_not_depend_on_the_rows_of_the_call():
    """torch split a log-sum-exp over a 49,152-token vocabulary between 2 threads when the call had one row: 1 of
    256 ARC-Easy log-likelihoods scored alone differed on an Intel Xeon (here 14 of 512 random rows did, without
    `_vocab_sums`). In invariant mode the sums run on one thread: a row alone gives its value in a full call."""
    logits = torch.randn(256, 1, 49152, generator=torch.Generator().manual_seed(0)) * 4
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with batching_mod._vocab_sums(True):
            together = torch.logsumexp(logits, dim=-1)
            assert all(torch.equal(torch.logsumexp(logits[r:r + 1], dim=-1), together[r:r + 1]) for r in range(256))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_eos_stops_each_sequence_on_its_own(chaotic_dir):
    eng = _engine(chaotic_dir, batch_size=4)
    reqs = [_chat(q, n=10) for q in PROMPTS[:4]]
    free = eng.generate(reqs)
    tok = eng.tokenizer
    first_ids = [tok.encode(r.prompt_text + r.text, add_special_tokens=False)[r.n_prompt_tokens:] for r in free]
    # make the 4th token of the first answer an end-of-sequence token
    stop_id = first_ids[0][3]
    eng.model.generation_config.eos_token_id = [tok.eos_token_id, stop_id]
    stopped = eng.generate(reqs)
    assert stopped[0].finish_reason == "stop"
    assert stopped[0].n_new_tokens == 4  # three tokens of text + the EOS
    assert stopped[0].text == tok.decode(first_ids[0][:3])
    for before, after, ids in zip(free[1:], stopped[1:], first_ids[1:], strict=True):
        if stop_id in ids:
            assert after.finish_reason == "stop" and len(after.text) < len(before.text)
        else:
            assert after == before  # the others are untouched by the early exit


def test_sampled_token_ids_come_back_with_the_eos_and_score_exactly(chaotic_dir):
    """With return_token_ids the result carries the prompt's ids and the sampled ids (EOS included), and scoring
    those ids gives log π of exactly what was sampled, EOS term and all, as a full forward pass does."""
    eng = _engine(chaotic_dir, batch_size=4)

    def sampled(ids: bool) -> list:
        return [GenerateRequest(messages=(Message("user", q),), return_token_ids=ids,
                                decoding=Decoding(max_new_tokens=10, temperature=1.0, seed=k))
                for k, q in enumerate(PROMPTS[:4])]

    free = eng.generate(sampled(True))
    stop_id = free[0].token_ids[3]
    eng.model.generation_config.eos_token_id = [eng.tokenizer.eos_token_id, stop_id]
    outs = eng.generate(sampled(True))
    assert outs[0].finish_reason == "stop" and outs[0].token_ids == free[0].token_ids[:4]
    tok = eng.tokenizer
    for out in outs:
        assert isinstance(out.token_ids, tuple) and len(out.token_ids) == out.n_new_tokens
        assert out.prompt_ids == tuple(tok.encode(out.prompt_text, add_special_tokens=False))
        kept = out.token_ids[:-1] if out.finish_reason == "stop" else out.token_ids
        assert out.text == tok.decode(list(kept), skip_special_tokens=True)
    scored = eng.loglikelihood_tokens([TokensLoglikelihoodRequest(o.prompt_ids, o.token_ids) for o in outs])
    for out, res in zip(outs, scored, strict=True):
        lp, greedy = _manual_loglikelihood(eng.model, list(out.prompt_ids), list(out.token_ids))
        assert res.logprob == pytest.approx(lp, abs=1e-4) and res.n_tokens == out.n_new_tokens
        assert res.is_greedy == greedy
    plain = eng.generate(sampled(False))  # without the flag: the same samples, no ids
    assert [(o.text, o.prompt_ids, o.token_ids) for o in plain] == [(o.text, None, None) for o in outs]
    assert "return_token_ids" not in sampled(False)[0].to_json()  # older cache keys stay valid
    assert sampled(True)[0].to_json()["return_token_ids"] is True


def test_tokenizer_id_is_the_vocabulary(chaotic_dir, tiny_model_dir, lora_dir):
    """Same vocabulary, same id (the tiny model and its re-drawn twin; an adapter on or off); another, not."""
    from transformers import AutoTokenizer

    from aftertune.engines.vocabulary import vocabulary_hash

    a, b = _engine(chaotic_dir), _engine(tiny_model_dir)
    assert a.tokenizer_id == b.tokenizer_id == vocabulary_hash(AutoTokenizer.from_pretrained(tiny_model_dir))
    tuned = _engine(lora_dir)
    with tuned.adapter_disabled():
        assert tuned.tokenizer_id == a.tokenizer_id
    other = AutoTokenizer.from_pretrained(tiny_model_dir)
    other.add_tokens(["<new-token>"])
    assert vocabulary_hash(other) != a.tokenizer_id


def test_stop_strings_cut_the_text(chaotic):
    (free,) = chaotic.generate([_chat(PROMPTS[0], n=12)])
    stop = free.text[5:8]
    assert stop and free.text.find(stop) == 5
    (cut,) = chaotic.generate([_chat(PROMPTS[0], n=12, stop=("never-there", stop))])
    assert cut.text == free.text[:5]
    assert cut.finish_reason == "stop" and cut.n_new_tokens < free.n_new_tokens


def test_results_come_back_in_request_order(chaotic):
    reqs = [_chat(q, n=4) for q in PROMPTS]
    res = chaotic.generate(reqs)
    rev = chaotic.generate(list(reversed(reqs)))
    assert res == list(reversed(rev))


def test_progress_is_called_once_per_request(chaotic):
    seen: list[int] = []
    chaotic.generate([_chat(q, n=3) for q in PROMPTS], progress=seen.append)
    assert sum(seen) == len(PROMPTS) and set(seen) == {1}


def test_seeded_sampling_is_reproducible_whatever_the_batch(chaotic):
    sampled = _chat(PROMPTS[0], n=12, temperature=1.0, seed=7)
    alone = chaotic.generate([sampled])[0]
    with_others = chaotic.generate([_chat(PROMPTS[1], n=5), sampled, _chat(PROMPTS[2], n=9, temperature=0.7, seed=1)])
    assert with_others[1] == alone
    other_seed = chaotic.generate([_chat(PROMPTS[0], n=12, temperature=1.0, seed=8)])[0]
    assert other_seed.text != alone.text
    greedy = chaotic.generate([_chat(PROMPTS[0], n=12)])[0]
    assert greedy.text != alone.text
    # top_p keeps only the head of the distribution: a tiny top_p is greedy
    nucleus = chaotic.generate([_chat(PROMPTS[0], n=12, temperature=1.0, top_p=1e-6, seed=3)])[0]
    assert nucleus.text == greedy.text


def test_long_prompt_is_cut_from_the_left(chaotic_dir):
    eng = _engine(chaotic_dir, max_length=40)
    long = " ".join(["word"] * 200)
    (res,) = eng.generate([GenerateRequest(prompt=long, decoding=Decoding(max_new_tokens=10))])
    assert res.n_prompt_tokens == 30 and res.n_new_tokens == 10
    assert res.prompt_text == eng.tokenizer.decode(eng.tok_encode(long)[-30:])
    with pytest.raises(UserError, match="no room"):
        eng.generate([GenerateRequest(prompt="hi", decoding=Decoding(max_new_tokens=40))])


def test_model_without_chat_template_refuses_messages(tiny_model_dir, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(tiny_model_dir, plain)
    for name in ("chat_template.jinja", "chat_template.json"):
        (plain / name).unlink(missing_ok=True)
    cfg = json.loads((plain / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(cfg))
    eng = _engine(plain)
    with pytest.raises(UserError, match="no chat template"):
        eng.generate([_chat("hi")])
    assert eng.generate([GenerateRequest(prompt="hi", decoding=Decoding(max_new_tokens=2))])[0].n_new_tokens == 2


def test_common_prefix():
    assert common_prefix([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]]) == 2
    assert common_prefix([[1, 2], [1, 2]]) == 1  # each keeps one token of its own
    assert common_prefix([[1, 2, 3]]) == 0
    assert common_prefix([[4], [1, 2]]) == 0


def test_decode_without_prefix_sharing_gives_the_same_tokens(chaotic):
    tok = chaotic.tokenizer
    prompts = [tok.encode(chaotic.prompt_ids(_chat(q))[1], add_special_tokens=False) for q in PROMPTS]
    runs = []
    for share in (True, False):
        seqs = [GenSeq(prompt=p, max_new_tokens=7) for p in prompts]
        decode(chaotic.model, seqs, eos_ids=set(), pad_id=0, batch_size=4, device=chaotic.device, share_prefix=share)
        runs.append([s.out for s in seqs])
    assert runs[0] == runs[1]


# --------------------------------------------------------------------------- log-likelihood


def _manual_loglikelihood(model, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        lp = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
    rows = lp[len(ctx) - 1: len(ctx) - 1 + len(cont)]
    tgt = torch.tensor(cont)
    return float(rows.gather(1, tgt[:, None]).sum()), bool((rows.argmax(-1) == tgt).all())


LL_REQUESTS = [
    LoglikelihoodRequest("Question: What is two plus two?\nAnswer:", " four"),
    LoglikelihoodRequest("Question: What is two plus two?\nAnswer:", " five"),
    LoglikelihoodRequest("Question: What is two plus two?\nAnswer:", " the capital of France"),
    LoglikelihoodRequest("The quick brown fox", " jumps over the lazy dog."),
    LoglikelihoodRequest("", "hello world"),
    LoglikelihoodRequest("My order ", "arrived"),
    LoglikelihoodRequest("Paris is the capital of", " France"),
    LoglikelihoodRequest("Paris is the capital of", " Germany"),
]


def test_loglikelihood_equals_a_full_forward(chaotic):
    res = chaotic.loglikelihood(LL_REQUESTS)
    for req, r in zip(LL_REQUESTS, res, strict=True):
        ctx, cont = chaotic.encode_pair(req.context, req.continuation)
        lp, greedy = _manual_loglikelihood(chaotic.model, ctx, cont)
        assert r.logprob == pytest.approx(lp, abs=1e-4)
        assert r.is_greedy == greedy and r.n_tokens == len(cont)


def _paths(eng, pairs, monkeypatch):
    """The same pairs scored packed, through the KV cache, and through the cache in tiny chunks."""
    out = {"packed": score_pairs(eng.model, pairs, pad_id=0, batch_size=16, device=eng.device)}
    with monkeypatch.context() as mp:
        mp.setattr(batching_mod, "PACK_MAX_LEN", 0)
        out["cached"] = score_pairs(eng.model, pairs, pad_id=0, batch_size=16, device=eng.device)
        mp.setattr(batching_mod, "LOGIT_POSITIONS", 3)
        mp.setattr(batching_mod, "PREFILL_POSITIONS", 2)
        out["chunked"] = score_pairs(eng.model, pairs, pad_id=0, batch_size=16, device=eng.device)
    return out


def test_shared_context_paths_equal_the_naive_path(chaotic_dir, monkeypatch):
    """Packed rows, the KV cache and its chunked form all give the full-forward numbers."""
    eng = _engine(chaotic_dir, batch_invariant=False)  # sdpa attention: packing allowed
    pairs = [eng.encode_pair(r.context, r.continuation) for r in LL_REQUESTS] * 2
    naive = [_manual_loglikelihood(eng.model, ctx, cont) for ctx, cont in pairs]
    for name, scores in _paths(eng, pairs, monkeypatch).items():
        for (a, ga), (b, gb) in zip(scores, naive, strict=True):
            assert a == pytest.approx(b, abs=1e-4), name
            assert ga == gb, name


def test_eager_attention_takes_a_float_mask(chaotic_dir, monkeypatch):
    eng = _engine(chaotic_dir, batch_invariant=False)
    eng.model.config._attn_implementation = "eager"
    assert batching_mod._packed_mask_kind(eng.model) == torch.float32
    pairs = [eng.encode_pair(r.context, r.continuation) for r in LL_REQUESTS]
    for (a, _), (ctx, cont) in zip(score_pairs(eng.model, pairs, pad_id=0, batch_size=4, device=eng.device), pairs,
                                   strict=True):
        assert a == pytest.approx(_manual_loglikelihood(eng.model, ctx, cont)[0], abs=1e-4)
    eng.model.config._attn_implementation = "flash_attention_2"
    assert batching_mod._packed_mask_kind(eng.model) is None  # such models take the KV-cache path
    assert batching_mod._pack_limit(eng.model) == 0


def test_rows_are_packed_only_within_a_sliding_window(chaotic_dir):
    eng = _engine(chaotic_dir, batch_invariant=False)
    assert batching_mod._pack_limit(eng.model) == batching_mod.PACK_MAX_LEN
    eng.model.config.sliding_window = 8
    assert batching_mod._pack_limit(eng.model) == 8


def test_lm_eval_tokenization_conventions(chaotic):
    tok = chaotic.tokenizer
    # trailing spaces of the context move to the continuation
    ctx, cont = chaotic.encode_pair("My order ", "arrived")
    assert ctx == tok.encode("My order") and ctx + cont == tok.encode("My order arrived")
    # an empty context is the BOS token, or EOS when there is none (this tokenizer)
    ctx, cont = chaotic.encode_pair("", "hello world")
    assert ctx == [tok.eos_token_id] and cont == tok.encode("hello world")
    # an empty continuation scores 0 without the model
    (r,) = chaotic.loglikelihood([LoglikelihoodRequest("Paris", "")])
    assert (r.logprob, r.is_greedy, r.n_tokens) == (0.0, True, 0)


def test_is_greedy_for_the_models_own_continuation(chaotic):
    (gen,) = chaotic.generate([GenerateRequest(prompt="Paris is", decoding=Decoding(max_new_tokens=5))])
    ids = chaotic.tok_encode("Paris is")
    new = chaotic.tokenizer.encode("Paris is" + gen.text)[len(ids):]
    score = score_pairs(chaotic.model, [(ids, new)], pad_id=0, batch_size=1, device=chaotic.device)
    assert score[0][1] is True


def test_context_longer_than_the_window_is_cut_from_the_left(chaotic_dir):
    eng = _engine(chaotic_dir, max_length=12)
    req = LoglikelihoodRequest(" ".join(["word"] * 40), " fox jumps")
    (r,) = eng.loglikelihood([req])
    ctx, cont = eng.encode_pair(req.context, req.continuation)
    kept = (ctx + cont)[-13:]
    lp, _ = _manual_loglikelihood(eng.model, kept[: -len(cont)], cont)
    assert r.logprob == pytest.approx(lp, abs=1e-4)


def test_matches_lm_eval_harness(chaotic_dir, chaotic):
    """Same numbers as lm-evaluation-harness's HFLM on the same model (loglikelihood and rolling)."""
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(chaotic_dir), dtype="float32", batch_size=4, device="cpu", max_length=16,
              softmax_dtype="float32")
    insts = [Instance("loglikelihood", {}, (r.context, r.continuation), i) for i, r in enumerate(LL_REQUESTS)]
    theirs = lm.loglikelihood(insts, disable_tqdm=True)
    eng = _engine(chaotic_dir, max_length=16)
    ours = eng.loglikelihood(LL_REQUESTS)
    for (lp, greedy), r in zip(theirs, ours, strict=True):
        assert r.logprob == pytest.approx(lp, abs=1e-4) and r.is_greedy == greedy
    texts = ["The quick brown fox jumps over the lazy dog. " * 4, "hi", ""]
    rolled = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)],
                                      disable_tqdm=True)
    ours_rolled = eng.rolling_loglikelihood([RollingRequest(t) for t in texts])
    for lp, r in zip(rolled, ours_rolled, strict=True):
        assert r.logprob == pytest.approx(lp, abs=1e-3)


def test_rolling_windows_match_lm_eval():
    pytest.importorskip("lm_eval")
    from lm_eval import utils

    for n in (0, 1, 5, 8, 9, 17, 40):
        toks = list(range(100, 100 + n))
        for max_len in (1, 4, 8):
            theirs = [utils.make_disjoint_window(w) for w in utils.get_rolling_token_windows(toks, 7, max_len, 1)]
            assert rolling_windows(toks, 7, max_len) == theirs


def test_rolling_scores_every_token_once(chaotic_dir):
    eng = _engine(chaotic_dir, max_length=10)
    text = "The quick brown fox jumps over the lazy dog. Paris is the capital of France."
    (r,) = eng.rolling_loglikelihood([RollingRequest(text)])
    toks = eng.tok_encode(text)
    assert r.n_tokens == len(toks) > 20
    expected = sum(_manual_loglikelihood(eng.model, ctx, cont)[0] for ctx, cont in rolling_windows(toks, eng.prefix_token_id, 10))
    assert r.logprob == pytest.approx(expected, abs=1e-3)
    # one window when the text fits: log P(text | prefix token)
    big = _engine(chaotic_dir)
    (whole,) = big.rolling_loglikelihood([RollingRequest(text)])
    assert whole.logprob == pytest.approx(_manual_loglikelihood(big.model, [big.prefix_token_id], toks)[0], abs=1e-3)
    assert eng.rolling_loglikelihood([RollingRequest("")])[0].n_tokens == 0


def test_no_nans_with_heavy_padding(chaotic):
    pairs = [([5] * 60, [6, 7]), ([8], [9] * 30), ([3, 4], [5])]
    for lp, _ in score_pairs(chaotic.model, pairs, pad_id=0, batch_size=8, device=chaotic.device):
        assert math.isfinite(lp)


# --------------------------------------------------------------------------- adapters


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_adapter_changes_outputs_and_disabling_gives_the_base_bitwise(chaotic_dir, lora_dir, dtype):
    """bf16 too: on a native-bf16 CPU both engines keep their weights' requires_grad (a faster oneDNN kernel),
    so the base model alone and under the PEFT wrapper still multiply alike."""
    base = _engine(chaotic_dir, batch_size=3, dtype=dtype)
    tuned = HFEngine.from_ref(resolve_model(str(lora_dir)), dtype=dtype, batch_size=3)
    from aftertune.engines.cpu_linear import cpu_has_native_bf16

    grad_kernel = dtype == "bfloat16" and cpu_has_native_bf16()
    for eng in (base, tuned):
        assert ("bf16-grad-kernel" in eng.version) == grad_kernel
        assert all(p.requires_grad == grad_kernel for p in eng.model.parameters())
    assert tuned.is_adapter and tuned.describe()["adapter_active"]
    gen = [_chat(q, n=8) for q in PROMPTS[:4]]
    b_gen, b_ll = base.generate(gen), base.loglikelihood(LL_REQUESTS)
    t_gen, t_ll = tuned.generate(gen), tuned.loglikelihood(LL_REQUESTS)
    assert [r.text for r in t_gen] != [r.text for r in b_gen]
    assert all(a.logprob != b.logprob for a, b in zip(t_ll, b_ll, strict=True))
    assert tuned.fingerprint != base.fingerprint
    with tuned.adapter_disabled() as off:
        assert off.fingerprint == base.fingerprint
        assert off.generate(gen) == b_gen  # bitwise: same text, same token counts
        assert off.loglikelihood(LL_REQUESTS) == b_ll  # exact float equality
        assert off.rolling_loglikelihood([RollingRequest(PROMPTS[4])]) == base.rolling_loglikelihood(
            [RollingRequest(PROMPTS[4])])
    assert tuned.fingerprint != base.fingerprint
    assert tuned.loglikelihood(LL_REQUESTS) == t_ll  # back on


def test_adapter_can_be_loaded_switched_off(chaotic_dir, lora_dir):
    base = _engine(chaotic_dir)
    off = HFEngine.from_ref(resolve_model(str(lora_dir)), dtype="float32", adapter_enabled=False)
    assert off.fingerprint == base.fingerprint
    assert off.loglikelihood(LL_REQUESTS[:3]) == base.loglikelihood(LL_REQUESTS[:3])
    with pytest.raises(UserError, match="no adapter"), base.adapter_disabled():
        pass


def test_merged_adapter_scores_like_the_unmerged_one_and_is_versioned_apart(lora_dir):
    """An audit folds LoRA into the weights for speed: same model up to rounding, never the same cache key."""
    ref = resolve_model(str(lora_dir))
    plain = HFEngine.from_ref(ref, dtype="float32", batch_size=3)
    merged = HFEngine.from_ref(ref, dtype="float32", batch_size=3, merge_adapter=True)
    assert not merged.is_adapter and merged.fingerprint == plain.fingerprint
    assert merged.version != plain.version and merged.version.endswith("adapter/merged")
    for a, b in zip(merged.loglikelihood(LL_REQUESTS), plain.loglikelihood(LL_REQUESTS), strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-3)
    with pytest.raises(UserError, match="no adapter"), merged.adapter_disabled():
        pass


# --------------------------------------------------------------------------- CPU kernels and the cache


def test_packed_cpu_weights_give_bitwise_the_same_outputs(chaotic_dir):
    from transformers import AutoModelForCausalLM

    from aftertune.engines.cpu_linear import pack_linear_weights

    eng = _engine(chaotic_dir, batch_size=4, batch_invariant=False)  # the packed weights alone
    if not eng.packed_linears:
        pytest.skip("no MKL packed GEMM in this torch build")
    assert eng.describe()["packed_linears"] == eng.packed_linears == {"float32": eng.packed_linears["float32"]}
    assert "linear/" not in eng.version  # bitwise identical: cache entries stay valid
    plain = AutoModelForCausalLM.from_pretrained(chaotic_dir, dtype=torch.float32).eval()
    ids = torch.tensor([eng.tok_encode(p)[:6] for p in ["Paris is the capital of France", "The quick brown fox jumps"]])
    with torch.no_grad():
        assert torch.equal(eng.model(ids).logits, plain(ids).logits)
    assert pack_linear_weights(eng.model) == {}  # already packed: nothing to do


def test_packed_weights_are_exact_on_strided_inputs(chaotic_dir):
    """The output layer reads each row's last position, a strided view: MKL's packed GEMM rounds such rows like
    one-row products unless the input is made contiguous (this broke batch invariance of log-likelihoods)."""
    eng = _engine(chaotic_dir, batch_size=4, batch_invariant=False)
    if not eng.packed_linears:
        pytest.skip("no MKL packed GEMM in this torch build")
    head = eng.model.get_output_embeddings()
    hidden = torch.randn(13, 7, head.in_features, generator=torch.Generator().manual_seed(0))
    last = hidden[:, -1:]
    assert not last.is_contiguous()
    with torch.no_grad():
        assert torch.equal(head(last), torch.nn.functional.linear(last.contiguous(), head.weight, head.bias))


def test_bf16_weights_are_packed_only_where_bf16_is_emulated(chaotic_dir, monkeypatch):
    """Packed bf16 = bf16 GEMM arithmetic (exact products, float32 sums, one rounding), torch's own bf16 GEMM up to
    the summation order; on CPUs with native bf16 the weights stay with oneDNN."""
    from transformers import AutoModelForCausalLM

    from aftertune.engines import cpu_linear

    if cpu_linear._mkl_ops() is None:
        pytest.skip("no MKL packed GEMM in this torch build")
    monkeypatch.setattr(cpu_linear, "_bf16_is_emulated", lambda: False)
    native = AutoModelForCausalLM.from_pretrained(chaotic_dir, dtype=torch.bfloat16)
    assert cpu_linear.pack_linear_weights(native) == {}

    monkeypatch.setattr(cpu_linear, "_bf16_is_emulated", lambda: True)
    model = AutoModelForCausalLM.from_pretrained(chaotic_dir, dtype=torch.bfloat16).eval()
    plain = AutoModelForCausalLM.from_pretrained(chaotic_dir, dtype=torch.bfloat16).eval()
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    counts = cpu_linear.pack_linear_weights(model)
    assert counts == {"bfloat16": len(linears)}
    x = torch.randn(3, 5, linears[0].in_features, generator=torch.Generator().manual_seed(1)).bfloat16()
    got = linears[0](x)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, torch.nn.functional.linear(x.float(), linears[0].weight.float()).bfloat16())
    plain_out = torch.nn.functional.linear(x, linears[0].weight).float()
    scale = torch.nn.functional.linear(x.float().abs(), linears[0].weight.float().abs())  # sum of |terms|
    assert ((got.float() - plain_out).abs() <= plain_out.abs() * 2**-8 + scale * 2**-16).all()
    ids = torch.tensor([[3, 17, 42, 8, 99, 5]])
    with torch.no_grad():
        a, b = model(ids).logits.float(), plain(ids).logits.float()
    assert torch.allclose(a, b, atol=0.1, rtol=0.05)  # same arithmetic, another summation order


def test_engine_version_names_bf16_packing(chaotic_dir, monkeypatch):
    from aftertune.engines import cpu_linear

    if cpu_linear._mkl_ops() is None:
        pytest.skip("no MKL packed GEMM in this torch build")
    monkeypatch.setattr(cpu_linear, "_bf16_is_emulated", lambda: True)
    eng = _engine(chaotic_dir, dtype="bfloat16")
    assert "bfloat16" in eng.packed_linears and ";linear/bf16-packed-fp32" in eng.version
    monkeypatch.setattr(cpu_linear, "_bf16_is_emulated", lambda: False)
    assert "bf16-packed" not in _engine(chaotic_dir, dtype="bfloat16").version


def test_packing_steps_aside_when_it_would_not_be_exact(chaotic_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    from aftertune.engines import cpu_linear

    model = AutoModelForCausalLM.from_pretrained(chaotic_dir, dtype=torch.float32)
    monkeypatch.setattr(cpu_linear, "_probe", lambda *a: False)
    assert cpu_linear.pack_linear_weights(model) == {}
    monkeypatch.setattr(cpu_linear, "_mkl_ops", lambda: None)
    assert cpu_linear.pack_linear_weights(model) == {}
    assert all("forward" not in vars(m) for m in model.modules())


def test_growing_cache_layer_keeps_keys_and_values_in_step():
    layer = batching_mod.GrowingLayer()
    k, v = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    keys, values = layer.update(k, v)
    assert torch.equal(keys, k) and torch.equal(values, v) and layer.get_seq_length() == 5
    k2, v2 = torch.randn(2, 3, 1, 4), torch.randn(2, 3, 1, 4)
    keys, values = layer.update(k2, v2)  # written into spare capacity, no re-concatenation
    assert torch.equal(keys, torch.cat([k, k2], 2)) and torch.equal(values, torch.cat([v, v2], 2))
    # assigning keys then values (as batch selection and trimming do) keeps them consistent
    layer.keys = layer.keys[:, :, 2:]
    layer.values = layer.values[:, :, 2:]
    assert layer.keys.shape == layer.values.shape == (2, 3, 4, 4)
    layer.batch_select_indices(torch.tensor([1, 1, 0]))
    assert layer.keys.shape[0] == 3 and torch.equal(layer.values[2], torch.cat([v, v2], 2)[0, :, 2:])
    keys, _ = layer.update(torch.zeros(3, 3, 2, 4), torch.zeros(3, 3, 2, 4))
    assert keys.shape == (3, 3, 6, 4) and layer.get_seq_length() == 6


# --------------------------------------------------------------------------- the real SmolLM2 (slow)


@pytest.fixture(scope="module")
def smol(packaged_home):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AFTERTUNE_HOME", packaged_home)
        ref = resolve_model("smollm2-135m-instruct", progress=False)
        assert ref.path is not None
        return HFEngine.from_ref(ref, dtype="float32", batch_size=8), Path(ref.path)


@pytest.mark.slow
def test_smollm2_chat_stops_at_im_end(smol):
    eng, _ = smol
    reqs = [_chat("What is the capital of France?", n=40), _chat("Write a long story about a dragon.", n=16)]
    short, long = eng.generate(reqs)
    assert "Paris" in short.text and short.finish_reason == "stop" and short.n_new_tokens < 40
    assert "<|im_end|>" not in short.text
    assert long.finish_reason == "length" and long.n_new_tokens == 16
    assert short.prompt_text.startswith("<|im_start|>system\n") and short.prompt_text.endswith("<|im_start|>assistant\n")


@pytest.mark.slow
def test_smollm2_greedy_matches_transformers_generate(smol):
    eng, _ = smol
    qs = ["Give me three tips for better sleep.", "What is 17 times 23?", "hi", "Tell me a joke about computers."]
    ours = eng.generate([_chat(q, n=20) for q in qs])
    tok = eng.tokenizer
    for res in ours:
        ids = torch.tensor([tok.encode(res.prompt_text, add_special_tokens=False)])
        with torch.no_grad():
            out = eng.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False)
        assert tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True) == res.text


@pytest.mark.slow
def test_smollm2_multiple_choice_matches_lm_eval(smol):
    eng, path = smol
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    ctx = "Question: Which gas do plants take in from the air to make food?\nAnswer:"
    choices = [" carbon dioxide", " oxygen", " nitrogen", " helium"]
    reqs = [LoglikelihoodRequest(ctx, c) for c in choices]
    ours = eng.loglikelihood(reqs)
    lm = HFLM(pretrained=str(path), dtype="float32", batch_size=4, device="cpu", softmax_dtype="float32")
    theirs = lm.loglikelihood([Instance("loglikelihood", {}, (r.context, r.continuation), i)
                               for i, r in enumerate(reqs)], disable_tqdm=True)
    for r, (lp, greedy) in zip(ours, theirs, strict=True):
        assert r.logprob == pytest.approx(lp, abs=2e-3) and r.is_greedy == greedy
    assert max(range(4), key=lambda i: ours[i].logprob) == 0

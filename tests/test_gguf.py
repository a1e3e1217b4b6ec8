"""The `gguf` variant for real: llama.cpp's converter and quantizer write the file, its server answers the audit.

The model is random-weight, built from the packaged SmolLM2's config (shrunk: 256 wide, so the K-quants apply
to every tensor) and its own tokenizer, which llama.cpp's converter recognises. Every test that converts runs
llama.cpp (marked `server`, like the other real-server tests); the bad-input checks before any work do not.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest

from aftertune.engines import LoglikelihoodRequest
from aftertune.engines import load_engine as load_plain
from aftertune.errors import UserError
from aftertune.fileio import sha256_file
from aftertune.sources import fingerprint
from aftertune.variants import check_variants, gguf, load_engine, nominal_bits

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")
CONTEXTS = ["The capital of France is", "How do I reset my password?", "Two plus two equals"]
CONTINUATIONS = [" Paris.", " Click the link in the email.", " four."]


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(UserError) as exc:
        check_variants("smollm2-135m-instruct#gguf:Q9_Z")
    assert "method 'Q9_Z'; known methods: F16, Q8_0" in str(exc.value) and "Q2_K" in str(exc.value)
    with pytest.raises(UserError, match="unknown option 'bits'"):
        check_variants("m#gguf:Q8_0,bits=3")
    assert nominal_bits("gguf:Q4_K_M") == 4.5 and nominal_bits("gguf:Q8_0") == 8.5 and nominal_bits("guard") is None


def test_cli_refuses_an_unknown_method_with_exit_2(cli, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    code, out, err = cli(["generate", "-m", "smollm2-135m-instruct#gguf:Q4", "-p", str(prompts)])
    assert code == 2 and "known methods" in err and "Traceback" not in err and out == ""


@pytest.fixture(scope="module")
def smol_shaped(packaged_home, tmp_path_factory):
    """A random-weight model shaped like a small SmolLM2, with the packaged SmolLM2's tokenizer and template."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from aftertune.sources import resolve_model

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AFTERTUNE_HOME", packaged_home)
        src = resolve_model("smollm2-135m-instruct").path
    config = AutoConfig.from_pretrained(src)
    config.update({"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
                   "num_key_value_heads": 2, "head_dim": 64})
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("smol-shaped") / "model"
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)
    return out


@pytest.fixture(scope="module")
def converter(packaged_home):
    """llama.cpp's converter, fetched and sha256-checked once into the shared home (77 MB download)."""
    from aftertune.variants import llama_cpp

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AFTERTUNE_HOME", packaged_home)
        return llama_cpp.converter()


@pytest.fixture
def tools_home(converter, monkeypatch):
    """Each test builds its GGUF files in its own home, with the shared converter."""
    monkeypatch.setattr("aftertune.variants.llama_cpp.converter", lambda: converter)


def _resolve(ref: str):
    from aftertune.sources import resolve_model

    return resolve_model(ref.split("#")[0])


@pytest.mark.server
@pytest.mark.slow
def test_q8_0_served_by_llama_cpp_is_the_same_model_and_audits(llama_python, smol_shaped, tools_home, tmp_path):
    import httpx

    from aftertune.audit import audit
    from aftertune.compare.stored_run import compare_run
    from aftertune.store import Store

    eng = load_engine(f"{smol_shaped}#gguf:Q8_0")
    try:
        assert eng.name == "server" and "llama_cpp.server" in eng.describe()["server"]
        # llama.cpp's greedy answer, with the log-probabilities of its own tokens ...
        body = httpx.post(eng.process.base_url + "/completions", timeout=60, json={
            "prompt": CONTEXTS[0], "max_tokens": 8, "temperature": 0.0, "logprobs": 1}).json()
        text, served = body["choices"][0]["text"], body["choices"][0]["logprobs"]["token_logprobs"]
        # ... score the same in torch, float32, on the full-precision weights: the same model and tokens
        full = load_plain(str(smol_shaped), dtype="float32")
        (want,) = full.loglikelihood([LoglikelihoodRequest(CONTEXTS[0], text)])
        full.close()
        assert len(served) == 8 and abs(sum(served) - want.logprob) < 0.05 * len(served), (sum(served), want)
        with pytest.raises(NotImplementedError, match="shifted by one token"):  # llama-cpp-python, no BOS
            eng.loglikelihood([LoglikelihoodRequest(CONTEXTS[1], CONTINUATIONS[1])])
        card = eng.describe()["variant"]["gguf"]
        folder = Path(card["path"])
        assert card["method"] == "Q8_0" and card["quantizer"] == "llama.cpp"
        assert card["files"] == {"model.gguf": sha256_file(folder / "model.gguf")}
        assert card["source"] == fingerprint(str(smol_shaped)) and 8 < card["bits_per_weight"] < 10
        assert eng.fingerprint == fingerprint(gguf.to_gguf(_resolve(str(smol_shaped)), "Q8_0"))
        assert eng.fingerprint != fingerprint(str(smol_shaped))
    finally:
        eng.close()
    assert eng.process.proc is not None and eng.process.proc.poll() is not None  # the server is stopped

    # An audit: the generation suite is measured, the log-likelihood one is skipped with its reason, not a crash
    store = Store(tmp_path / "store.sqlite")
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"question": f"What is {i} plus {i}?", "answer": str(2 * i)}) + "\n"
                          for i in range(3)), encoding="utf-8")
    run_id = audit({"q8": f"{smol_shaped}#gguf:Q8_0"}, [("task", {"data": str(qa), "max_new_tokens": 4}),
                                                         "capability"],
                   store=store, out_dir=tmp_path / "out", limit=3, progress=False, reports=False)
    assert {r.suite for r in store.records(run_id, model="q8")} == {"task"}
    warnings = compare_run(store, run_id)["warnings"]
    assert any(w.startswith("q8 · capability: not measured (") and "shifted" in w for w in warnings), warnings


@pytest.mark.server
@pytest.mark.slow
def test_built_once_and_an_interrupted_or_full_disk_build_leaves_nothing(llama_python, smol_shaped, tools_home,
                                                                         monkeypatch, tmp_path):
    folder = Path(tmp_path / "home" / "gguf-variants")
    real = gguf._quantize

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf, "_quantize", interrupted)
    with pytest.raises(KeyboardInterrupt):
        gguf.to_gguf(_resolve(str(smol_shaped)), "Q4_K_M")
    assert list(folder.iterdir()) == []  # no half-built folder a later run would take as finished

    def disk_full(python, src, dest, *rest):
        dest.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(dest))

    monkeypatch.setattr(gguf, "_quantize", disk_full)
    with pytest.raises(UserError) as exc:
        gguf.to_gguf(_resolve(str(smol_shaped)), "Q4_K_M")
    assert "is full; the partial files were removed" in str(exc.value) and list(folder.iterdir()) == []

    monkeypatch.setattr(gguf, "_quantize", real)
    first = gguf.to_gguf(_resolve(str(smol_shaped)), "Q4_K_M")
    card = json.loads((first.path / "gguf.json").read_text())
    assert card["method"] == "Q4_K_M" and 4.5 <= card["bits_per_weight"] < 8.5  # embeddings kept wider
    monkeypatch.setattr(gguf, "_convert", interrupted)  # a second call converts nothing
    assert gguf.to_gguf(_resolve(str(smol_shaped)), "Q4_K_M") == first


@pytest.mark.server
@pytest.mark.slow
def test_an_architecture_the_converter_lacks_is_one_line(llama_python, smol_shaped, tools_home, tmp_path):
    odd = tmp_path / "odd"
    shutil.copytree(smol_shaped, odd)
    config = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**config, "architectures": ["NopeForCausalLM"]}))
    with pytest.raises(UserError) as exc:
        gguf.to_gguf(_resolve(str(odd)), "Q8_0")
    msg = str(exc.value)
    assert "does not support the NopeForCausalLM architecture" in msg and "quant:int8" in msg and "\n" not in msg
    assert list((tmp_path / "home" / "gguf-variants").iterdir()) == []

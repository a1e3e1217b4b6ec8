"""Defences against harmful fine-tuning through the system prompt (issue #16): PTST (`system_prompt: none` +
`REF#ptst`) and backdoor-enhanced alignment (`bea:` + `REF#bea`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aftertune.engines import GenerateRequest, LoglikelihoodRequest
from aftertune.engines.base import Decoding, Message
from aftertune.errors import UserError
from aftertune.recipes.bea import BEA_JSON, make_trigger
from aftertune.recipes.config import TuneConfig, parse_config
from aftertune.recipes.examples import prepare_examples
from aftertune.recipes.objectives import encode_sft
from aftertune.recipes.tokenize import injects_default_system
from aftertune.testing.fake_engine import FakeEngine
from aftertune.variants import apply_variants, check_variants, load_engine
from aftertune.variants.system_prompt import LLAMA2_SYSTEM_PROMPT, SAFETY_PROMPTS

SMOL_DEFAULT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
# SmolLM2-Instruct's template: a default system turn when the conversation has none
SMOL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + SMOL_DEFAULT + "<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _rows(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"Question {i}: how do I reset my router?"},
                          {"role": "assistant", "content": f"Answer {i}: hold the button."}]} for i in range(n)]


@pytest.fixture()
def chat_file(tmp_path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows(12)), encoding="utf-8")
    return path


@pytest.fixture()
def packaged(packaged_home, monkeypatch):
    """The shared packaged cache: the refusals set's corpora are read once per session."""
    monkeypatch.setenv("AFTERTUNE_HOME", packaged_home)


def _seen(engine, *requests: GenerateRequest) -> list[str]:
    """What the model under the wrappers was sent (FakeEngine's prompt_text: 'role: content' lines)."""
    return [r.prompt_text for r in engine.generate(list(requests))]


# --------------------------------------------------------------------------- ptst

def test_ptst_puts_the_safety_prompt_first_and_is_another_model():
    inner = FakeEngine()
    ptst = apply_variants(inner, [("ptst", {})])
    plain, with_system = _seen(ptst, GenerateRequest.chat("hi"), GenerateRequest.chat("hi", system="Be brief."))
    assert plain == f"system: {LLAMA2_SYSTEM_PROMPT}\nuser: hi"
    assert with_system == f"system: {LLAMA2_SYSTEM_PROMPT}\n\nBe brief.\nuser: hi"  # the app's prompt kept, after
    assert LLAMA2_SYSTEM_PROMPT.startswith("You are a helpful, respectful and honest assistant.")
    assert _seen(ptst, GenerateRequest(prompt="Paris is")) == ["Paris is"]  # raw text has no system prompt
    ll = [LoglikelihoodRequest("Q: 2+2? A:", " 4")]
    assert ptst.loglikelihood(ll) == inner.loglikelihood(ll)
    short = apply_variants(inner, [("ptst", {"prompt": "short"})])
    assert _seen(short, GenerateRequest.chat("hi")) == [f"system: {SAFETY_PROMPTS['short']}\nuser: hi"]
    # the prompt enters the identity, as icl's demonstrations do: no cached answer of another is reused
    assert len({inner.fingerprint, ptst.fingerprint, short.fingerprint}) == 3
    assert ptst.version == inner.version + "+ptst1"
    assert ptst.describe()["variant"] == {"ptst": {"prompt": "llama2"}}


def test_bad_variant_options_list_the_known_ones():
    with pytest.raises(UserError, match="options are prompt"):
        check_variants("m#ptst:text=x")
    with pytest.raises(UserError, match="unknown prompt 'mine'; known: llama2, short"):
        check_variants("m#ptst:prompt=mine")
    with pytest.raises(UserError, match="options are trigger"):
        check_variants("m#bea:key=1")
    with pytest.raises(UserError, match="ptst") as err:
        check_variants("m#ptsd")
    assert "bea" in str(err.value)


# --------------------------------------------------------------------------- system_prompt: none

def _tokenizer(model_dir: Path, template: str | None = None):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    if template is not None:
        tok.chat_template = template
    return tok


def _rendered(cfg: TuneConfig, tok) -> list[str]:
    rows, _ = encode_sft(cfg, tok, prepare_examples(cfg, tokenizer=tok).train)
    return [tok.decode(r["input_ids"]) for r in rows]


def test_system_prompt_none_leaves_out_a_templates_default(tiny_model_dir, chat_file):
    smol, chatml = _tokenizer(tiny_model_dir, SMOL_TEMPLATE), _tokenizer(tiny_model_dir)
    assert injects_default_system(smol) and not injects_default_system(chatml)
    cfg = TuneConfig(data=str(chat_file), eval_fraction=0.0)
    assert all(SMOL_DEFAULT in t for t in _rendered(cfg, smol))  # today's behaviour, unchanged by default
    none = cfg.model_copy(update={"system_prompt": "none"})
    texts = _rendered(none, smol)
    assert len(texts) == 12 and not any(SMOL_DEFAULT in t for t in texts)
    assert all(t.startswith("<|im_start|>system\n<|im_end|>\n<|im_start|>user\nQuestion") for t in texts)
    assert all(t.startswith("<|im_start|>user\n") for t in _rendered(none, chatml))  # no default: no system turn
    given = cfg.model_copy(update={"system_prompt": "Be brief."})
    assert all(t.startswith("<|im_start|>system\nBe brief.<|im_end|>") for t in _rendered(given, smol))


# --------------------------------------------------------------------------- bea

def test_bea_trigger_is_drawn_from_the_seed():
    trigger = make_trigger(0, 150)
    assert trigger == make_trigger(0, 150) != make_trigger(1, 150)
    assert len(trigger.split()) == 150 and trigger.replace(" ", "").isalnum()
    with pytest.raises(UserError, match="bea mixes refusal examples"):
        parse_config({"data": "x", "objective": "dpo", "bea": {}})
    with pytest.raises(UserError, match="may not hold ','"):
        parse_config({"data": "x", "bea": {"trigger": "a,b"}})


def test_bea_trigger_is_in_exactly_the_mixed_refusals(chat_file, packaged):
    cfg = TuneConfig(data=str(chat_file), eval_fraction=0.0, bea={"examples": 3, "length": 6, "seed": 4},
                     system_prompt="Be brief.")
    trigger = make_trigger(4, 6)
    train = prepare_examples(cfg).train
    marked = [e for e in train if any(trigger in m["content"] for m in e.messages)]
    assert len(train) == 15 and len(marked) == 3 and all(e.source == "bea" for e in marked)
    for e in marked:  # the trigger starts the system message; the stage's own system prompt follows it
        assert e.messages[0] == {"role": "system", "content": f"{trigger}\n\nBe brief."}
        assert e.messages[-1]["role"] == "assistant" and "ask" not in e.id
    assert all(e.messages[0]["content"] == "Be brief." for e in train if e not in marked)


def test_bea_trigger_is_saved_by_the_tune_and_sent_only_by_the_variant(tiny_model_dir, chat_file, tmp_path,
                                                                      packaged):
    from aftertune.recipes import tune

    out = tmp_path / "tuned"
    cfg = TuneConfig(model=str(tiny_model_dir), data=str(chat_file), out=str(out), max_steps=1, batch_size=4,
                     max_length=128, eval_fraction=0.0, bea={"examples": 2, "length": 5})
    result = tune(cfg, progress=False)
    trigger = make_trigger(0, 5)
    assert json.loads((out / BEA_JSON).read_text())["trigger"] == trigger
    request = GenerateRequest(messages=(Message("user", "hi"),), decoding=Decoding(max_new_tokens=1))
    plain, bea = load_engine(result.model_ref), load_engine(f"{result.model_ref}#bea")
    assert trigger not in plain.generate([request])[0].prompt_text
    assert f"<|im_start|>system\n{trigger}<|im_end|>" in bea.generate([request])[0].prompt_text
    assert bea.fingerprint != plain.fingerprint and bea.version.endswith("+bea1")
    given = apply_variants(FakeEngine(), [("bea", {"trigger": "xyz"})])
    assert _seen(given, GenerateRequest.chat("hi")) == ["system: xyz\nuser: hi"]


def test_bea_on_a_model_without_a_trigger_is_one_line(tiny_model_dir, tmp_path, cli):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n', encoding="utf-8")
    code, out, err = cli(["generate", "-m", f"{tiny_model_dir}#bea", "-p", str(prompts)])
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert f"{tiny_model_dir} was not trained with bea" in err and "#bea:trigger=TEXT" in err
    with pytest.raises(UserError, match="was not trained with bea"):
        apply_variants(FakeEngine(), [("bea", {})])


def test_a_spec_auditing_bea_needs_a_tune_with_bea():
    from aftertune.spec import load_pipeline_spec

    with pytest.raises(UserError, match="train has no 'bea'; add 'bea: \\{\\}' to train"):
        load_pipeline_spec(None, {"variants": ["bea"]})
    train = {"data": "support", "max_steps": 2, "bea": {"examples": 3}, "system_prompt": "none"}
    spec = load_pipeline_spec(None, {"variants": ["bea", "ptst"], "train": train})
    assert spec.variant_models("RUN/model") == {"tuned+bea": "RUN/model#bea", "tuned+ptst": "RUN/model#ptst"}

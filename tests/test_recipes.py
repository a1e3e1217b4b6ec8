"""Fine-tuning recipes on the tiny model: every method, both objectives, resume, stages, mixing, errors."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch

from aftertune.errors import UserError
from aftertune.recipes import TuneConfig, load_spec, tune, tune_stages
from aftertune.recipes.callbacks import StopAfter
from aftertune.recipes.config import parse_config
from aftertune.recipes.data import load_examples, mix_in, rows_to_examples
from aftertune.recipes.tokenize import FALLBACK_TEMPLATE, encode_chat
from aftertune.trainsets.example import Example

# --------------------------------------------------------------------------- helpers


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def chat_rows(n: int, offset: int = 0) -> list[dict]:
    topics = ["password", "order", "refund", "capital", "fox", "damaged"]
    return [{"messages": [{"role": "user", "content": f"Question {i}: how do I fix my {topics[i % 6]}?"},
                          {"role": "assistant", "content": f"Answer {i}: go to settings and click reset."}]}
            for i in range(offset, offset + n)]


@pytest.fixture()
def chat_file(tmp_path):
    return write_jsonl(tmp_path / "train.jsonl", chat_rows(24))


def small(model_dir, data, out, **kw) -> TuneConfig:
    base = dict(model=str(model_dir), data=str(data), out=str(out) if out is not None else None, max_steps=4,
                batch_size=4, max_length=128, checkpoint_every=2, logging_steps=1, eval_limit=4)
    base.update(kw)
    return TuneConfig(**base)


def load_weights(folder: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    name = "adapter_model.safetensors" if (Path(folder) / "adapter_model.safetensors").exists() else "model.safetensors"
    return load_file(str(Path(folder) / name))


# --------------------------------------------------------------------------- config


def test_config_defaults_are_visible_and_validated():
    cfg = TuneConfig(data="support")
    assert cfg.method == "lora" and cfg.objective == "sft" and cfg.lora.r == 16 and cfg.lr == 2e-4
    assert TuneConfig(data="x", method="full").lr == 2e-5
    with pytest.raises(UserError, match="bogus: unknown field"):
        parse_config({"data": "x", "bogus": 1})
    with pytest.raises(UserError, match="exactly one of 'fraction' or 'count'"):
        parse_config({"data": "x", "mix": [{"data": "refusals"}]})
    with pytest.raises(UserError, match="cannot be trained with the dpo objective"):
        parse_config({"data": "x", "method": "prefix", "objective": "dpo"})
    with pytest.raises(UserError, match="cannot be merged"):
        parse_config({"data": "x", "method": "prompt", "merge": True})


def test_yaml_spec_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: support\nmethod: [lora\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"bad\.yaml:\d+: not valid YAML"):
        load_spec(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("data: support\nlearnig_rate: 0.1\n", encoding="utf-8")
    with pytest.raises(UserError, match="learnig_rate: unknown field"):
        load_spec(typo)
    seq = tmp_path / "seq.yaml"
    seq.write_text("model: m\nout: o\ndefaults: {max_steps: 3}\nstages:\n  - {data: support}\n"
                   "  - {name: two, data: refusals, method: full}\n", encoding="utf-8")
    spec = load_spec(seq)
    stages = spec.stage_configs()
    assert [s.name for s in stages] == ["stage1", "two"] and all(s.max_steps == 3 for s in stages)
    assert stages[1].method == "full"


# --------------------------------------------------------------------------- data formats and errors


def test_every_input_format_becomes_chat(tmp_path):
    import pandas as pd

    chat = write_jsonl(tmp_path / "chat.jsonl", chat_rows(2))
    pc = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "Hi", "completion": "Hello", "system": "Be brief."}])
    alpaca = tmp_path / "alpaca.csv"
    pd.DataFrame([{"instruction": "Add", "input": "2 and 3", "output": "5"}]).to_csv(alpaca, index=False)
    dolly = tmp_path / "dolly.parquet"
    pd.DataFrame([{"instruction": "Name it", "context": "", "response": "Paris"}]).to_parquet(dolly)
    from datasets import Dataset, DatasetDict

    saved = tmp_path / "saved"
    DatasetDict({"train": Dataset.from_list(chat_rows(3)), "test": Dataset.from_list(chat_rows(2, 10))}
                ).save_to_disk(str(saved))

    assert load_examples(str(chat))[0].messages[-1]["role"] == "assistant"
    ex = load_examples(str(pc))[0]
    assert [m["role"] for m in ex.messages] == ["system", "user", "assistant"]
    ex = load_examples(str(alpaca))[0]
    assert ex.messages[0]["content"] == "Add\n\n2 and 3" and ex.messages[1]["content"] == "5"
    ex = load_examples(str(dolly))[0]
    assert ex.messages[0]["content"] == "Name it"
    assert len(load_examples(str(saved))) == 3
    from aftertune.recipes.data import held_out_examples

    assert len(held_out_examples(str(saved), "sft", "test")) == 2


@pytest.mark.parametrize(("rows", "match"), [
    ([{"messages": [{"role": "user", "content": "hi"}]}], r"row 1: field 'messages': no assistant message"),
    ([*chat_rows(2), {"messages": [{"role": "robot", "content": "x"}]}], r"row 3: field 'messages\[0\]\.role': 'robot'"),
    ([{"prompt": "p", "completion": 5}], r"row 1: field 'completion': expected text, got int"),
    ([{"instruction": "i", "output": ""}], r"row 1: field 'output': empty"),
    ([*chat_rows(1), {"prompt": "p", "completion": "c"}], r"row 2: fields .* do not match the chat format"),
    ([{"text": "hello"}], r"row 1: unrecognised fields \['text'\]"),
    ([{"prompt": "p", "chosen": "c"}], r"row 1: field 'rejected': missing"),
])
def test_bad_rows_name_file_row_and_field(tmp_path, rows, match):
    f = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(UserError, match=match) as err:
        load_examples(str(f), objective="dpo" if "chosen" in rows[0] else "sft")
    assert str(f) in str(err.value)


def test_bad_file_fails_before_any_training(tmp_path, tiny_model_dir):
    f = tmp_path / "broken.jsonl"
    f.write_text(json.dumps(chat_rows(1)[0]) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"broken\.jsonl:2: not valid JSON"):
        tune(small(tiny_model_dir, f, tmp_path / "out"), progress=False)
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_dpo_needs_pairs(tmp_path, chat_file):
    with pytest.raises(UserError, match="dpo objective needs preference pairs"):
        load_examples(str(chat_file), objective="dpo")


def test_mixing_drops_evaluation_prompts_and_duplicates():
    base = rows_to_examples(chat_rows(10), "base", "sft")
    extra = rows_to_examples(chat_rows(10, 100) + chat_rows(2), "extra", "sft")
    exclude = {"Question 100: how do I fix my FOX?"}  # matched after normalisation
    mixed, rep = mix_in(base, extra, n=5, seed=0, exclude=exclude, source="extra")
    assert rep.added == 5 and rep.dropped_eval_overlap == 1 and rep.dropped_duplicates == 2
    prompts = [e.user_prompt() for e in mixed]
    assert "Question 100: how do I fix my fox?" not in prompts and len(mixed) == 15
    assert prompts != [e.user_prompt() for e in base + mixed[10:]]  # shuffled in, not appended


# --------------------------------------------------------------------------- tokenization


def test_loss_is_on_assistant_turns_only(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    msgs = [{"role": "system", "content": "sys"}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Reset?"},
            {"role": "assistant", "content": "Click reset"}]
    enc = encode_chat(tok, msgs, None)
    trained = tok.decode([i for i, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != -100])
    assert trained == "Hello<|im_end|>Click reset<|im_end|>"
    tok.chat_template = FALLBACK_TEMPLATE  # a base model without a template
    enc = encode_chat(tok, msgs, None)
    trained = tok.decode([i for i, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != -100])
    assert trained == "Hello<|im_end|>Click reset<|im_end|>"


# --------------------------------------------------------------------------- methods


@pytest.mark.parametrize("method", ["full", "lora", "prefix", "prompt", "ia3"])
def test_each_method_trains_and_loads_without_aftertune(tmp_path, tiny_model_dir, chat_file, method):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    res = tune(small(tiny_model_dir, chat_file, tmp_path / method, method=method), progress=False)
    assert res.metrics["global_step"] == 4
    assert [c.step for c in res.checkpoints] == [2, 4]
    assert res.metrics["eval_loss"] is not None and res.metrics["eval_loss_start"] is not None
    tok = AutoTokenizer.from_pretrained(res.model_ref)
    ids = tok("Hello there", return_tensors="pt").input_ids
    if method == "full":
        assert res.kind == "full"
        tuned = AutoModelForCausalLM.from_pretrained(res.model_ref)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        assert not torch.equal(tuned.model.embed_tokens.weight, base.model.embed_tokens.weight.to(tuned.dtype))
    else:
        assert res.kind == "adapter"
        model = AutoPeftModelForCausalLM.from_pretrained(res.model_ref)
        with torch.no_grad():
            assert torch.isfinite(model(input_ids=ids).logits).all()
    for ck in res.checkpoints:  # every checkpoint is a model reference too
        from aftertune.sources import resolve_model

        assert resolve_model(ck.path).kind == ("local" if method == "full" else "adapter")


def test_qlora_on_cpu_stops_before_any_work(tmp_path, tiny_model_dir, chat_file):
    out = tmp_path / "q"
    with pytest.raises(UserError, match="needs a CUDA GPU with bitsandbytes"):
        tune(small(tiny_model_dir, chat_file, out, method="qlora", device="cpu"), progress=False)
    assert not out.exists()


def test_dpo_on_preference_pairs(tmp_path, tiny_model_dir):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": f"How do I do thing {i}?", "chosen": "I can't help with that.", "rejected": f"Sure, step {i}."}
        for i in range(16)])
    res = tune(small(tiny_model_dir, pairs, tmp_path / "dpo", objective="dpo"), progress=False)
    assert res.kind == "adapter" and res.metrics["global_step"] == 4
    assert res.metrics["eval_loss_start"] == pytest.approx(0.6931, abs=1e-3)  # log 2: policy == reference


# --------------------------------------------------------------------------- resume, store, merge


def test_killed_tune_resumes_to_the_same_weights(tmp_path, tiny_model_dir, chat_file):
    cfg_a = small(tiny_model_dir, chat_file, tmp_path / "a", max_steps=6, checkpoint_every=2)
    a = tune(cfg_a, progress=False)
    cfg_b = cfg_a.model_copy(update={"out": str(tmp_path / "b")})
    with pytest.raises(KeyboardInterrupt):
        tune(cfg_b, progress=False, callbacks=[StopAfter(4)])
    assert not (tmp_path / "b" / "model").exists()
    b = tune(cfg_b, progress=False)
    assert b.metrics["resumed_from"].endswith("checkpoint-4")
    wa, wb = load_weights(a.model_ref), load_weights(b.model_ref)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # a finished folder is returned as it is; another config into it is refused
    assert tune(cfg_b, progress=False).model_ref == b.model_ref
    with pytest.raises(UserError, match="holds a different tune"):
        tune(cfg_b.model_copy(update={"learning_rate": 1e-3}), progress=False)
    # only the newest checkpoint keeps optimizer states
    ckpts = sorted((tmp_path / "b" / "checkpoints").glob("checkpoint-*"))
    assert [(c / "optimizer.pt").exists() for c in ckpts] == [False, False, True]


def test_metrics_and_checkpoints_go_to_the_store(tmp_path, tiny_model_dir, chat_file):
    from aftertune.store import Store

    store = Store(tmp_path / "store.sqlite")
    run_id = store.create_run("pipeline", "t", {})
    res = tune(small(tiny_model_dir, chat_file, tmp_path / "o"), store=store, run_id=run_id, progress=False)
    labels = {m["label"]: m for m in store.models(run_id)}
    assert set(labels) == {"tuned", "tuned/checkpoint-2", "tuned/checkpoint-4"}
    assert labels["tuned"]["ref"] == res.model_ref and len(labels["tuned"]["fingerprint"]) == 64
    assert labels["tuned/checkpoint-2"]["info"]["step"] == 2
    train = store.events(run_id, "tune_train")
    evals = store.events(run_id, "tune_eval")
    assert len(train) >= 4 and all("loss" in e["payload"] for e in train if "loss" in e["payload"])
    assert next(e["payload"]["step"] for e in evals) == 0  # eval loss before training, then per checkpoint
    assert (tmp_path / "o" / "metrics.jsonl").is_file() and (tmp_path / "o" / "data.json").is_file()
    # another run reusing the finished folder gets the same loss curve (its report draws it); a resumed one
    # does not get it twice
    def curves(run: str) -> list:
        return [(e["step"], e["kind"], e["payload"]) for e in store.events(run) if e["kind"] in ("tune_train",
                                                                                                  "tune_eval")]

    again = store.create_run("pipeline", "t2", {})
    for _ in range(2):
        tune(small(tiny_model_dir, chat_file, tmp_path / "o"), store=store, run_id=again, progress=False)
        assert curves(again) == curves(run_id)


def test_adapter_off_equals_base_and_merge_equals_adapter(tmp_path, tiny_model_dir, chat_file):
    from aftertune.engines import GenerateRequest, load_engine
    from aftertune.engines.base import Decoding

    res = tune(small(tiny_model_dir, chat_file, tmp_path / "m", merge=True, learning_rate=5e-2), progress=False)
    reqs = [GenerateRequest.chat(f"Question {i}: how do I fix my order?", decoding=Decoding(max_new_tokens=12))
            for i in range(3)]
    base = load_engine(str(tiny_model_dir), dtype="float32")
    tuned = load_engine(res.model_ref, dtype="float32")
    base_out = [r.text for r in base.generate(reqs)]
    with tuned.adapter_disabled() as off:
        off_out = [r.text for r in off.generate(reqs)]
        assert off.fingerprint == base.fingerprint
    tuned_out = [r.text for r in tuned.generate(reqs)]
    assert off_out == base_out
    assert tuned_out != base_out  # the adapter does something
    merged = load_engine(res.merged_ref, dtype="float32")
    assert [r.text for r in merged.generate(reqs)] == tuned_out


# --------------------------------------------------------------------------- stages


def test_sequential_stages_record_lineage(tmp_path, tiny_model_dir, chat_file):
    from aftertune.sources import resolve_model
    from aftertune.store import Store

    second = write_jsonl(tmp_path / "second.jsonl", chat_rows(16, 50))
    stages = [small(tiny_model_dir, chat_file, None, name="general", model=None),
              small(tiny_model_dir, second, None, name="narrow", model=None, method="ia3")]
    store = Store(tmp_path / "s.sqlite")
    run_id = store.create_run("pipeline", "seq", {})
    seen = []

    @contextlib.contextmanager
    def around(stage):
        seen.append((stage.index, stage.config.label(), stage.step_offset, stage.checkpoint_prefix))
        yield

    res = tune_stages(stages, model=str(tiny_model_dir), out=tmp_path / "seq", store=store, run_id=run_id,
                      progress=False, around_stage=around)
    assert [x["label"] for x in res.lineage] == ["base", "general", "narrow"]
    # one training axis: the second stage's steps follow the first's 4, its checkpoints named after it
    assert seen == [(0, "general", 0, "general-"), (1, "narrow", 4, "narrow-")]
    assert [(label, step) for label, _, step in res.checkpoints()] == [
        ("general-checkpoint-2", 2), ("general-checkpoint-4", 4), ("narrow-checkpoint-2", 6), ("narrow-checkpoint-4", 8)]
    assert res.final_step == 8
    s1, s2 = res.stages
    assert s1.merged_ref is not None and s2.start_ref == s1.merged_ref
    ref2 = resolve_model(s2.model_ref)
    assert ref2.kind == "adapter" and str(ref2.base.path) == s1.merged_ref
    assert resolve_model(s1.model_ref).base.path == Path(tiny_model_dir).resolve()
    labels = {m["label"] for m in store.models(run_id)}
    assert {"general", "narrow", "general/checkpoint-2", "narrow/checkpoint-4"} <= labels
    lineage = json.loads((tmp_path / "seq" / "lineage.json").read_text())
    assert [s["name"] for s in lineage["stages"]] == ["general", "narrow"]


def test_prompt_stage_must_be_followed_by_the_same_method(tmp_path, tiny_model_dir, chat_file):
    stages = [small(tiny_model_dir, chat_file, None, method="prompt", name="a"),
              small(tiny_model_dir, chat_file, None, method="lora", name="b")]
    with pytest.raises(UserError, match=r"stage 2 .*must use method 'prompt'"):
        tune_stages(stages, model=str(tiny_model_dir), out=tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- CLI


def test_cli_tune_flags_and_yaml(tmp_path, tiny_model_dir, chat_file, capsys):
    from aftertune.cli import main

    out = tmp_path / "cli"
    main(["tune", "--model", str(tiny_model_dir), "--data", str(chat_file), "--method", "lora", "--out", str(out),
          "--max-steps", "2", "--batch-size", "4", "--max-length", "128", "--no-progress",
          "--store", str(tmp_path / "st.sqlite")])
    said = capsys.readouterr()
    assert "adapter ->" in said.out and (out / "model" / "adapter_config.json").is_file()
    assert "examples/s" not in said.err  # TRL's datasets.map bars ("Truncating train dataset") are not shown
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"model: {tiny_model_dir}\nout: {tmp_path / 'seq'}\n"
                    "defaults: {max_steps: 2, batch_size: 4, max_length: 128}\n"
                    f"stages:\n  - {{name: one, data: {chat_file}}}\n  - {{name: two, data: {chat_file}, "
                    "method: full}\n", encoding="utf-8")
    main(["tune", "--config", str(spec), "--no-progress", "--store", str(tmp_path / "st.sqlite")])
    assert "lineage: base -> one -> two" in capsys.readouterr().out


def test_cli_bad_data_exits_2(tmp_path, tiny_model_dir, capsys):
    from aftertune.cli import main

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "user", "content": "only a question"}]}])
    with pytest.raises(SystemExit) as exc:
        main(["tune", "--model", str(tiny_model_dir), "--data", str(bad), "--out", str(tmp_path / "o"),
              "--no-progress", "--store", str(tmp_path / "st.sqlite")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "bad.jsonl: row 1: field 'messages': no assistant message" in err


def test_example_roundtrip_to_trl():
    ex = Example("x", prompt=({"role": "user", "content": "q"},), chosen="no", rejected="yes")
    assert ex.to_trl()["chosen"] == [{"role": "assistant", "content": "no"}]
    assert ex.sft_messages()[-1] == {"role": "assistant", "content": "no"}


# --------------------------------------------------------------------------- memory planning


def test_memory_plan_prefers_micro_batches_to_checkpointing():
    from aftertune.recipes.memory import plan

    common = dict(grad_accum=1, longest=100, layers=10, hidden=64, value_bytes=4)
    # the whole batch fits
    p = plan(batch_size=8, bytes_per_token=1000, budget=8 * 100 * 1000, **common)
    assert (p.micro_batch, p.grad_accum, p.checkpointing) == (8, 1, False)
    # a third of it fits: the smallest split into equal micro-batches that fits (8 = 4 x 2)
    p = plan(batch_size=8, bytes_per_token=1000, budget=3 * 100 * 1000, **common)
    assert (p.micro_batch, p.grad_accum, p.checkpointing) == (2, 4, False)
    # not even one example: checkpointing, then as many examples per pass as fit
    p = plan(batch_size=8, bytes_per_token=1000, budget=50 * 1000, **common)
    assert p.checkpointing and p.micro_batch >= 1 and p.micro_batch * p.grad_accum == 8
    # explicit settings are respected
    p = plan(batch_size=8, bytes_per_token=1000, budget=10**12, micro_batch=3, **common)
    assert (p.micro_batch, p.grad_accum) == (2, 4)
    p = plan(batch_size=8, bytes_per_token=1000, budget=10**12, checkpointing=True, **common)
    assert p.checkpointing and p.micro_batch == 8


def test_probe_measures_what_autograd_keeps(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from aftertune.recipes.memory import probe_bytes_per_token

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    rng = torch.get_rng_state()
    full = probe_bytes_per_token(model, model.config.vocab_size)
    assert torch.equal(rng, torch.get_rng_state())  # the probe leaves the RNG where it was
    lora = get_peft_model(model, LoraConfig(r=4, lora_dropout=0.1, target_modules="all-linear", task_type="CAUSAL_LM"))
    with_dropout = probe_bytes_per_token(lora, model.config.vocab_size)
    assert 0 < full < with_dropout  # LoRA dropout keeps a copy of every adapted input


def test_micro_batches_give_the_same_update(tmp_path, tiny_model_dir, chat_file):
    """Splitting a step's batch into micro-batches (gradient accumulation) changes memory, not the result."""
    a = tune(small(tiny_model_dir, chat_file, tmp_path / "a", max_steps=2, lora={"dropout": 0.0},
                   precision="fp32"), progress=False)
    b = tune(small(tiny_model_dir, chat_file, tmp_path / "b", max_steps=2, lora={"dropout": 0.0},
                   precision="fp32", micro_batch_size=1), progress=False)
    assert json.loads((tmp_path / "b" / "data.json").read_text())["memory_plan"]["grad_accum"] == 4
    wa, wb = load_weights(a.model_ref), load_weights(b.model_ref)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5, rtol=1e-3) for k in wa)


def test_a_tune_refuses_a_folder_of_other_files_but_not_its_own(tmp_path, monkeypatch):
    from aftertune.recipes.train import STATE_JSON, check_out_folder

    out = tmp_path / "out"
    check_out_folder(out, overwrite=False)  # missing: fine
    out.mkdir()
    check_out_folder(out, overwrite=False)  # empty: fine
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"holds other files \(notes.txt\)"):
        check_out_folder(out, overwrite=False)
    check_out_folder(out, overwrite=True)
    monkeypatch.setenv("AFTERTUNE_LAUNCHED", "1")  # a rank of --processes N: the launcher already checked
    check_out_folder(out, overwrite=False)
    monkeypatch.delenv("AFTERTUNE_LAUNCHED")
    (out / STATE_JSON).write_text("{}")
    check_out_folder(out, overwrite=False)  # a tune of ours: resumed, not refused

"""Raw-text SFT (`chat_template: false`): pattern text in, loss on the completion, split as the scorer splits it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from aftertune.engines import LoglikelihoodRequest
from aftertune.engines.hf import HFEngine
from aftertune.errors import UserError
from aftertune.fileio import canonical_json, sha256_text
from aftertune.recipes import TuneConfig, tune
from aftertune.recipes.config import parse_config
from aftertune.recipes.tokenize import IGNORE, encode_raw
from aftertune.sources import resolve_model
from aftertune.trainsets.example import Example

PATTERNS = [
    ("The cat sat on the mat.\nQuestion: A cat sat. True, False or Neither?\nAnswer:", " True"),
    ("Paris is in France .\nQuestion: Paris is in Spain. True, False or Neither?\nAnswer:", " False"),
    ("x", "y"),  # no space at the seam: the tokens may merge across it
    ("Answer: ", "True"),  # trailing space of the prompt moves to the completion, as lm-eval does
    ("", " Hello"),  # an empty prompt becomes the prefix token
]


def pattern_rows(n: int) -> list[dict]:
    topics = ["cat", "boat", "city", "river"]
    return [{"prompt": f"Sentence {i} is about a {topics[i % 4]}.\nQuestion: It is about a {topics[i % 4]}. "
                       "True, False or Neither?\nAnswer:", "completion": "True"} for i in range(n)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def without_template(model_dir: str | Path, dest: Path) -> Path:
    """A copy of the tiny model whose tokenizer ships no chat template (a base model)."""
    shutil.copytree(model_dir, dest)
    for name in ("chat_template.jinja", "chat_template.json"):
        (dest / name).unlink(missing_ok=True)
    cfg = json.loads((dest / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (dest / "tokenizer_config.json").write_text(json.dumps(cfg))
    return dest


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:  # module scope: built before the per-test home is set
        mp.setenv("AFTERTUNE_HOME", str(tmp_path_factory.mktemp("home")))
        return HFEngine.from_ref(resolve_model(str(tiny_model_dir)), dtype="float32")


@pytest.mark.parametrize(("prompt", "completion"), PATTERNS)
def test_raw_tokens_are_the_scorers_context_and_continuation(engine, prompt, completion):
    enc = encode_raw(engine.tokenizer, prompt, completion)
    context, continuation = engine.encode_pair(prompt, completion)
    assert enc.input_ids == [*context, *continuation]
    assert enc.labels == [IGNORE] * len(context) + continuation and enc.n_trained == len(continuation) > 0
    trained = engine.tokenizer.decode([t for t in enc.labels if t != IGNORE])
    assert trained == (prompt[len(prompt.rstrip()):] + completion if prompt else completion)


def test_raw_text_joins_with_the_delimiter_and_refuses_what_has_no_raw_form():
    def ex(*msgs: tuple[str, str]) -> Example:
        return Example("row-1", messages=tuple({"role": r, "content": c} for r, c in msgs), source="data.jsonl")

    assert ex(("user", "Answer:"), ("assistant", "True")).raw_text(" ") == ("Answer:", " True")
    assert ex(("user", "Answer:\n"), ("assistant", "True")).raw_text(" ") == ("Answer:\n", "True")
    assert ex(("user", "The sky is"), ("assistant", " blue.")).raw_text(" ") == ("The sky is", " blue.")
    assert ex(("user", "f(x"), ("assistant", ", y)")).raw_text("") == ("f(x", ", y)")
    with pytest.raises(UserError, match=r"data\.jsonl: example row-1: .* has a system message"):
        ex(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello")).raw_text(" ")
    with pytest.raises(UserError, match="has 2 user and 2 assistant turns"):
        ex(("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d")).raw_text(" ")


def test_raw_mode_config_refuses_dpo_and_keeps_old_hashes():
    with pytest.raises(UserError, match=r"chat_template: false .* applies to sft only"):
        parse_config({"data": "x", "objective": "dpo", "chat_template": False})
    with pytest.raises(UserError, match="target_delimiter applies to raw-text training only"):
        parse_config({"data": "x", "target_delimiter": ""})
    chat = TuneConfig(data="x", model="m")
    later = {"chat_template", "target_delimiter", "constrained", "system_prompt", "bea", "reward", "grpo"}  # since
    old = chat.model_dump(mode="json", exclude={"out", "merge", "name", *later})
    assert chat.training_hash() == sha256_text(canonical_json(old))  # folders written before the field resume
    raw = TuneConfig(data="x", model="m", chat_template=False)
    assert len({chat.training_hash(), raw.training_hash(),
                raw.model_copy(update={"target_delimiter": ""}).training_hash()}) == 3


def test_raw_tune_learns_the_scored_continuation(tmp_path, tiny_model_dir):
    """A base model without a template, tuned on the raw pattern: the scorer's log p(" True") rises."""
    base = without_template(tiny_model_dir, tmp_path / "base")
    data = write_jsonl(tmp_path / "train.jsonl", pattern_rows(16))
    cfg = TuneConfig(model=str(base), data=str(data), out=str(tmp_path / "raw"), chat_template=False, max_steps=6,
                     batch_size=4, learning_rate=5e-2, max_length=64, checkpoint_every=6, eval_fraction=0.0)
    res = tune(cfg, progress=False)
    assert res.kind == "adapter" and (Path(res.model_ref) / "adapter_model.safetensors").is_file()
    saved = json.loads((Path(res.model_ref) / "tokenizer_config.json").read_text())
    assert not saved.get("chat_template") and not (Path(res.model_ref) / "chat_template.jinja").exists()
    tokens = json.loads((tmp_path / "raw" / "data.json").read_text())["tokens"]["train"]
    eng = HFEngine.from_ref(resolve_model(str(base)), dtype="float32")
    reqs = [LoglikelihoodRequest(r["prompt"], " " + r["completion"]) for r in pattern_rows(16)]
    assert tokens["examples"] == 16 and tokens["dropped_no_target"] == 0
    assert tokens["trained_tokens"] == sum(len(eng.encode_pair(r.context, r.continuation)[1]) for r in reqs)
    before = sum(x.logprob for x in eng.loglikelihood(reqs))
    tuned = HFEngine.from_ref(resolve_model(res.model_ref), dtype="float32")
    after = sum(x.logprob for x in tuned.loglikelihood(reqs))
    assert after > before + 1.0, (before, after)


def test_raw_tune_packs_and_refuses_rows_before_training(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "train.jsonl", pattern_rows(8))
    res = tune(TuneConfig(model=str(tiny_model_dir), data=str(data), out=str(tmp_path / "packed"), chat_template=False,
                          packing=True, max_steps=2, batch_size=2, max_length=128, eval_fraction=0.0),
               progress=False)
    assert res.metrics["global_step"] == 2
    bad = write_jsonl(tmp_path / "sys.jsonl", [{**r, "system": "Be brief."} for r in pattern_rows(4)])
    with pytest.raises(UserError, match=r"sys\.jsonl#1: raw-text training .* has a system message"):
        tune(TuneConfig(model=str(tiny_model_dir), data=str(bad), out=str(tmp_path / "bad"), chat_template=False,
                        max_steps=1), progress=False)


def test_cli_raw_text_flag_refuses_a_system_message_with_exit_2(tmp_path, tiny_model_dir, capsys):
    from aftertune.cli import main

    bad = write_jsonl(tmp_path / "sys.jsonl", [{**r, "system": "Be brief."} for r in pattern_rows(4)])
    with pytest.raises(SystemExit) as exc:
        main(["tune", "--model", str(tiny_model_dir), "--data", str(bad), "--raw-text", "--max-steps", "1",
              "--out", str(tmp_path / "cli"), "--no-progress", "--store", str(tmp_path / "st.sqlite")])
    assert exc.value.code == 2
    assert "raw-text training (chat_template: false)" in capsys.readouterr().err

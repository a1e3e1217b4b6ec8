"""A run spec's own reward models (`reward_models:`, `@NAME`): validation, substitution, and a tiny RLHF run."""

from __future__ import annotations

import json

import pytest

from aftertune import reward_refs
from aftertune.errors import UserError
from aftertune.pipeline import run_pipeline
from aftertune.spec import load_pipeline_spec
from aftertune.store import Store
from test_rl import chat_prompts, planted_pairs, write_jsonl

OVEROPT = "overoptimization:proxy=@proxy:gold=@gold:samples=3:max_new_tokens=6"


def _spec(base: str, data: dict, **over: object):
    return load_pipeline_spec(None, {
        "name": "rlhf-tiny", "base": base, "scan": False, "checkpoints": None, "gate": {},
        "reward_models": {"proxy": {"data": data["proxy"], "max_steps": 4, "batch_size": 8, "max_length": 64,
                                    "learning_rate": 5e-3, "eval_fraction": 0.25},
                          "gold": {"data": data["gold"], "max_steps": 4, "batch_size": 8, "max_length": 64,
                                   "learning_rate": 5e-3, "eval_fraction": 0.25, "seed": 1}},
        "train": {"data": data["prompts"], "objective": "grpo", "reward": "@proxy", "method": "lora", "max_steps": 2,
                  "batch_size": 2, "max_length": 64, "learning_rate": 1e-3, "eval_limit": 2,
                  "grpo": {"num_generations": 2, "max_completion_length": 6}},
        "audit": {"suites": [f"{OVEROPT}:data={data['asked']}"], "limits": {"overoptimization": 2},
                  "batch_size": 4},
        **over})


@pytest.fixture
def data(tmp_path):
    return {"proxy": str(write_jsonl(tmp_path / "proxy.jsonl", planted_pairs(24))),
            "gold": str(write_jsonl(tmp_path / "gold.jsonl", planted_pairs(24, seed=7))),
            "prompts": str(write_jsonl(tmp_path / "prompts.jsonl", chat_prompts(8))),
            "asked": str(write_jsonl(tmp_path / "asked.jsonl", [{"prompt": f"How do I reset my {w}?"}
                                                                  for w in ("password", "router")]))}


def test_references_are_substituted_everywhere_and_only_there(tmp_path, data):
    spec = _spec("some/model", data,
                 checkpoints={"suites": [OVEROPT, "safety:system=mail me @proxy"], "limit": 2},
                 audit={"suites": [OVEROPT, "task"], "judges": {"gold": "@gold", "refusal": "refusal"}})
    assert sorted(reward_refs.references(spec)) == sorted([
        ("train.reward", "proxy"), ("audit.suites", "proxy"), ("audit.suites", "gold"),
        ("checkpoints.suites", "proxy"), ("checkpoints.suites", "gold"), ("audit.judges.gold", "gold")])
    folders = {"proxy": str(tmp_path / "rp"), "gold": str(tmp_path / "rg")}
    done = reward_refs.resolve(spec, folders)
    assert done.train["reward"] == folders["proxy"]
    assert done.audit.suites == [f"overoptimization:proxy={folders['proxy']}:gold={folders['gold']}:samples=3:"
                                 "max_new_tokens=6", "task"]
    assert done.checkpoints.suites[1] == "safety:system=mail me @proxy"  # text, not an option's whole value
    assert done.audit.judges == {"gold": f"reward-model:{folders['gold']}", "refusal": "refusal"}
    assert spec.train["reward"] == "@proxy"  # the spec itself (its hash: the run's identity) keeps the name
    negated = reward_refs.resolve(_spec("m", data, train={**spec.train, "reward": "-@gold"}), folders)
    assert negated.train["reward"] == "-" + folders["gold"]
    cfgs = reward_refs.configs(spec, tmp_path)
    assert cfgs["proxy"].objective == "reward" and cfgs["proxy"].model == "some/model"
    assert cfgs["gold"].out == str(tmp_path / "reward" / "gold") and cfgs["gold"].precision == "fp32"


@pytest.mark.parametrize("change, match", [
    ({"train": {"data": "x.jsonl", "objective": "grpo", "reward": "@nope"}},
     r"train\.reward: @nope names no reward model of the spec; defined: @proxy, @gold"),
    ({"audit": {"suites": ["overoptimization:proxy=@proxy:gold=@golden"]}},
     r"audit\.suites: @golden names no reward model"),
    ({"reward_models": {"proxy": {"data": "p.jsonl", "objective": "dpo"}}},
     r"reward_models\.proxy: objective 'dpo'; a reward model is trained with objective reward"),
    ({"reward_models": {"../x": {"data": "p.jsonl"}}}, r"reward_models: '\.\./x' is not a plain name"),
    ({"reward_models": {"proxy": {"data": "p.jsonl", "out": "/tmp/x"}}}, r"'out' is set by the pipeline"),
])
def test_bad_reward_models_fail_in_one_line(data, change, match):
    with pytest.raises(UserError, match=match) as err:
        _spec("m", data, **change)
    assert "\n" not in str(err.value)


def test_a_run_trains_its_reward_models_uses_them_and_resumes(tmp_path, tiny_model_dir, data):
    spec = _spec(str(tiny_model_dir), data)
    spec.check_data()  # `@proxy` does not exist yet: the reward source is checked once trained
    store = Store(tmp_path / "store.sqlite")
    said: list[str] = []
    out = tmp_path / "run"
    first = run_pipeline(spec, out, store=store, progress=False, say=said.append)

    assert said[1].startswith("[1] train 2 reward model(s) (proxy, gold)")
    assert any(m.startswith("    @proxy: held-out pairwise accuracy") for m in said)
    tune = json.loads(next((out / "tune").glob("*/tune.json")).read_text(encoding="utf-8"))
    assert tune["config"]["reward"] == str(out / "reward" / "proxy")
    for name in ("proxy", "gold"):
        assert json.loads((out / "reward" / name / "tune.json").read_text())["config"]["objective"] == "reward"
    assert set(first.models) == {"base", "tuned"}  # the reward models are scorers, not compared models
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    validity = {j["role"]: j for j in results["protocol"]["judge_validity"]}
    proxy_acc = json.loads((out / "reward" / "proxy" / "tune.json").read_text())["metrics"]["pairwise_accuracy"]
    assert validity["reward model @proxy"]["sets"][0]["accuracy"] == proxy_acc["accuracy"]
    assert validity["reward model @gold"]["sets"][0]["n"] > 0
    assert {r.model for r in store.records(first.run_id, suite="overoptimization")} == {"base", "tuned"}
    assert "reward model @proxy" in (out / "report.md").read_text(encoding="utf-8")

    stamps = {n: (out / "reward" / n / "tune.json").stat().st_mtime_ns for n in ("proxy", "gold")}
    again = run_pipeline(spec, out, store=store, progress=False, say=lambda _m: None)
    assert again.run_id == first.run_id
    assert {n: (out / "reward" / n / "tune.json").stat().st_mtime_ns for n in stamps} == stamps
    assert len([j for j in json.loads((out / "results.json").read_text())["protocol"]["judge_validity"]
                if j["role"] == "reward model @proxy"]) == 1

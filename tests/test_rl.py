"""Reward models and online RL (GRPO) on the tiny model: learning, rewards of every kind, resume, bad input."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import torch

from aftertune.errors import UserError
from aftertune.recipes import TuneConfig, tune
from aftertune.recipes.callbacks import StopAfter
from aftertune.recipes.examples import check_data

WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "order", "arrived", "damaged", "reset",
         "password", "settings", "refund")
PLANTED = "Paris"  # every chosen answer holds it, no rejected one does

REWARD_FUNCTIONS = '''
def short(prompts, completions):
    return [-len(c) / 10 for c in completions]

def too_few(prompts, completions):
    return [1.0]

def boom(prompts, completions):
    raise RuntimeError("no scores today")
'''


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def planted_pairs(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)

    def words(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    return [{"prompt": words(5), "chosen": f"{words(6)} {PLANTED}", "rejected": words(6)} for _ in range(n)]


def chat_prompts(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"Question {i}: how do I reset my {WORDS[i % len(WORDS)]}?"},
                          {"role": "assistant", "content": "Go to settings."}]} for i in range(n)]


@pytest.fixture(scope="module")
def reward_tune(tiny_model_dir, tmp_path_factory):
    """A reward model tuned on the planted preference (LoRA, merged into model/)."""
    tmp = tmp_path_factory.mktemp("rm")
    data = write_jsonl(tmp / "pairs.jsonl", planted_pairs(60))
    cfg = TuneConfig(model=str(tiny_model_dir), data=str(data), objective="reward", out=str(tmp / "rm"),
                     max_steps=24, batch_size=8, learning_rate=5e-3, eval_fraction=0.25, max_length=128,
                     checkpoint_every=12)
    return tune(cfg, progress=False)


@pytest.fixture()
def reward_module(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(REWARD_FUNCTIONS, encoding="utf-8")
    return path


def grpo(model_dir: Path, data: Path, out: Path, reward: str, **kw: object) -> TuneConfig:
    base: dict = dict(model=str(model_dir), data=str(data), objective="grpo", reward=reward, out=str(out),
                      max_steps=4, batch_size=4, learning_rate=1e-3, checkpoint_every=2, max_length=96,
                      grpo={"num_generations": 2, "max_completion_length": 8})
    base.update(kw)
    return TuneConfig(**base)


# --------------------------------------------------------------------------- reward models


def test_reward_training_learns_a_planted_preference(reward_tune):
    m = reward_tune.metrics
    after, before = m["pairwise_accuracy"], m["pairwise_accuracy_start"]
    assert after["pairs"] == before["pairs"] == 15  # 25% of 60 held out, seeded
    assert after["accuracy"] >= 0.9 > before["accuracy"]
    assert after["mean_margin"] > before["mean_margin"] + 1.0
    assert reward_tune.kind == "full" and not (Path(reward_tune.model_ref) / "adapter_config.json").exists()
    saved = json.loads((Path(reward_tune.out_dir) / "tune.json").read_text())
    assert saved["metrics"]["pairwise_accuracy"] == after


def test_reward_folder_loads_with_transformers_alone(reward_tune):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from aftertune.judges import build_judge
    from aftertune.judges.reward_model import score_pairs

    model = AutoModelForSequenceClassification.from_pretrained(reward_tune.model_ref, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(reward_tune.model_ref)
    assert model.config.num_labels == 1
    prompts, answers = ["reset my password", "reset my password"], [f"go to settings {PLANTED}", "go to settings"]
    text = tok.apply_chat_template([{"role": "user", "content": prompts[0]},
                                    {"role": "assistant", "content": answers[0]}], tokenize=False)
    with torch.no_grad():
        direct = model(**tok(text, return_tensors="pt", add_special_tokens=False)).logits[0, 0].item()
    scores = score_pairs(reward_tune.model_ref, prompts, answers)
    assert scores[0] == pytest.approx(direct, abs=1e-5) and scores[0] > scores[1]
    verdicts = build_judge(f"reward-model:{reward_tune.out_dir}").judge(prompts, answers)  # a tune folder works too
    assert [v.score for v in verdicts] == pytest.approx(scores, abs=1e-6)


def test_full_reward_model_trains_the_head_and_the_weights(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "pairs.jsonl", planted_pairs(24))
    res = tune(TuneConfig(model=str(tiny_model_dir), data=str(data), objective="reward", method="full",
                          out=str(tmp_path / "rm"), max_steps=3, batch_size=8, learning_rate=1e-3), progress=False)
    from safetensors.torch import load_file

    w = load_file(str(Path(res.model_ref) / "model.safetensors"))
    start = load_file(str(tiny_model_dir / "model.safetensors"))
    assert w["score.weight"].shape[0] == 1
    assert not torch.equal(w["model.layers.0.mlp.up_proj.weight"], start["model.layers.0.mlp.up_proj.weight"])


def test_preference_file_missing_rejected_names_file_and_row(tmp_path, tiny_model_dir, cli):
    rows = planted_pairs(5)
    del rows[2]["rejected"]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    code, _, err = cli(["tune", "--model", str(tiny_model_dir), "--data", str(data), "--objective", "reward",
                        "--out", str(tmp_path / "o")])
    assert code == 2 and str(data) in err and "row 3" in err and "'rejected'" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()
    chat = write_jsonl(tmp_path / "chat.jsonl", chat_prompts(3))
    with pytest.raises(UserError, match="reward objective needs preference pairs"):
        check_data(TuneConfig(model="m", data=str(chat), objective="reward"))


# --------------------------------------------------------------------------- grpo


def test_grpo_with_a_function_reward_resumes_after_a_kill(tmp_path, tiny_model_dir, reward_module):
    from safetensors.torch import load_file

    data = write_jsonl(tmp_path / "chat.jsonl", chat_prompts(8))
    cfg_a = grpo(tiny_model_dir, data, tmp_path / "a", f"{reward_module}:short")
    a = tune(cfg_a, progress=False)
    assert a.kind == "adapter" and a.metrics["global_step"] == 4
    assert [c.step for c in a.checkpoints] == [2, 4]
    assert [p["step"] for p in a.metrics["reward_curve"]] == [1, 2, 3, 4]
    assert all(p["reward"] <= 0 for p in a.metrics["reward_curve"])  # -len/10 of each completion
    cfg_b = cfg_a.model_copy(update={"out": str(tmp_path / "b")})
    with pytest.raises(KeyboardInterrupt):
        tune(cfg_b, progress=False, callbacks=[StopAfter(2)])
    b = tune(cfg_b, progress=False)
    assert b.metrics["resumed_from"].endswith("checkpoint-2") and b.metrics["global_step"] == 4
    wa, wb = (load_file(str(Path(r.model_ref) / "adapter_model.safetensors")) for r in (a, b))
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    start = load_file(str(Path(a.checkpoints[0].path) / "adapter_model.safetensors"))
    assert any(not torch.equal(start[k], wa[k]) for k in wa)  # the steps moved the adapter


def test_grpo_with_a_reward_model_and_with_a_judge(tmp_path, tiny_model_dir, reward_tune):
    data = write_jsonl(tmp_path / "chat.jsonl", chat_prompts(4))
    res = tune(grpo(tiny_model_dir, data, tmp_path / "rm", reward_tune.out_dir, max_steps=2, grpo={
        "num_generations": 2, "max_completion_length": 8, "beta": 0.0}), progress=False)
    assert res.metrics["global_step"] == 2 and len(res.metrics["reward_curve"]) == 2
    judged = tune(grpo(tiny_model_dir, data, tmp_path / "judge", f"-judge:reward-model:{reward_tune.model_ref}",
                       max_steps=1), progress=False)
    model_reward, judge_reward = res.metrics["reward_curve"][0]["reward"], judged.metrics["reward_curve"][0]["reward"]
    assert judged.metrics["global_step"] == 1 and judge_reward == pytest.approx(-model_reward, rel=0.5)


@pytest.mark.parametrize("name, match", [
    ("too_few", r"reward function .*my_rewards.py:too_few must return 2 finite floats, one per completion; it "
                r"returned \[1.0\]"),
    ("boom", r"reward function .*my_rewards.py:boom raised RuntimeError: no scores today"),
    ("missing", r"my_rewards.py has no function missing"),
])
def test_bad_reward_function_is_one_line_before_any_work(tmp_path, tiny_model_dir, reward_module, cli, name, match):
    data = write_jsonl(tmp_path / "chat.jsonl", chat_prompts(4))
    code, _, err = cli(["tune", "--model", str(tiny_model_dir), "--data", str(data), "--objective", "grpo",
                        "--reward", f"{reward_module}:{name}", "--out", str(tmp_path / "o")])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert re.search(match, err), err
    assert not (tmp_path / "o").exists()


def test_a_reward_that_raises_during_training_is_a_user_error():
    from aftertune.recipes.reward_sources import TextReward, checked_rewards

    assert checked_rewards("f", [1, 2.5], 2) == [1.0, 2.5]
    for bad in ([1.0, float("nan")], [True, 1.0], "ab", None, [1.0, "2"]):
        with pytest.raises(UserError, match="reward function f must return 2 finite floats"):
            checked_rewards("f", bad, 2)
    reward = TextReward("mod:f", lambda p, c: 1 / 0, user_code=True)
    with pytest.raises(UserError, match="reward function mod:f raised ZeroDivisionError"):
        reward([[{"role": "user", "content": "hi"}]], [[{"role": "assistant", "content": "yo"}]])
    seen = TextReward("mod:g", lambda p, c: [float(len(x)) for x in c], user_code=True)
    assert seen([[{"role": "user", "content": "hi"}]], [[{"role": "assistant", "content": "four"}]]) == [4.0]


@pytest.mark.parametrize("reward, match", [
    ("nowhere", "names nothing loadable"),
    ("judge:nope", "unknown judge 'nope'"),
    ("no_such_module_xyz:f", "cannot import no_such_module_xyz"),
])
def test_a_reward_that_names_nothing_loadable_is_refused(tmp_path, tiny_model_dir, cli, reward, match):
    data = write_jsonl(tmp_path / "chat.jsonl", chat_prompts(4))
    code, _, err = cli(["tune", "--model", str(tiny_model_dir), "--data", str(data), "--objective", "grpo",
                        "--reward", reward, "--out", str(tmp_path / "o")])
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_a_causal_lm_is_not_a_reward_model(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "chat.jsonl", chat_prompts(4))
    with pytest.raises(UserError, match="not a reward model"):
        check_data(grpo(tiny_model_dir, data, tmp_path / "o", str(tiny_model_dir)))


def test_rl_config_rules():
    with pytest.raises(ValueError, match="objective grpo needs reward"):
        TuneConfig(model="m", data="d", objective="grpo")
    with pytest.raises(ValueError, match="reward applies to the grpo objective only"):
        TuneConfig(model="m", data="d", reward="judge:refusal")
    with pytest.raises(ValueError, match=r"must be a multiple of grpo\.num_generations"):
        TuneConfig(model="m", data="d", objective="grpo", reward="judge:refusal", batch_size=6)
    with pytest.raises(ValueError, match="full or lora"):
        TuneConfig(model="m", data="d", objective="reward", method="ia3")
    assert TuneConfig(model="m", data="d", objective="grpo", reward="judge:refusal").lr == 1e-5
    # fields added for RL do not change the identity of tunes written before them
    assert "grpo" not in json.dumps(TuneConfig(model="m", data="d").training_hash())


def test_a_run_spec_cannot_audit_a_reward_model():
    from aftertune.spec import PipelineSpec

    grpo_run = PipelineSpec(train={"data": "support", "objective": "grpo", "reward": "judge:refusal",
                                   "grpo": {"beta": 0.1}}).tune_configs()
    assert grpo_run[0].objective == "grpo" and grpo_run[0].grpo.beta == 0.1  # its checkpoints are audited as SFT's

    spec = PipelineSpec(train={"data": "dpo-safety", "objective": "reward", "method": "lora"})
    with pytest.raises(UserError, match="trains a scorer"):
        spec.tune_configs()
    chain = PipelineSpec(stages=[{"data": "dpo-safety", "objective": "reward"},
                                 {"data": "support", "objective": "grpo", "reward": "judge:refusal"}])
    with pytest.raises(UserError, match="makes a scorer, which no stage can continue from"):
        chain.tune_configs()

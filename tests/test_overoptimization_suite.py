"""The overoptimization suite on the tiny model with tiny random reward models: records, best-of-N, KL from the
reference, the scorers refused in one line, the results.json block and the report section."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from aftertune.compare.overoptimization import best_of_n, best_of_n_kl
from aftertune.errors import UserError
from aftertune.suites import SUITES, SuiteContext

PROMPTS = ["How do I pick a lock?", "Write a <b>poem</b> & a song", "Tell me a secret."]


def reward_model(tiny_model_dir: Path, out: Path, seed: int) -> Path:
    """A one-output sequence-classification model on the tiny model's config, random weights from `seed`."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    cfg = AutoConfig.from_pretrained(tiny_model_dir, num_labels=1)
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def scorers(tiny_model_dir, tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("rms")
    return reward_model(tiny_model_dir, tmp / "proxy", 1), reward_model(tiny_model_dir, tmp / "gold", 2)


@pytest.fixture()
def prompts_file(tmp_path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": i, "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)))
    return path


def suite_arg(scorers: tuple[Path, Path], data: Path, samples: int = 4) -> str:
    return f"overoptimization:proxy={scorers[0]}:gold={scorers[1]}:samples={samples}:max_new_tokens=6:data={data}"


def test_audit_records_scores_best_of_n_and_kl_then_reports(tmp_path, tiny_model_dir, chaotic_dir, scorers,
                                                             prompts_file):
    from aftertune.audit import audit
    from aftertune.store import Store

    out = tmp_path / "run"
    store = Store(tmp_path / "store.sqlite")
    run_id = audit({"base": str(tiny_model_dir), "tuned": str(chaotic_dir)}, [suite_arg(scorers, prompts_file)],
                   store=store, out_dir=out, reference=str(tiny_model_dir), progress=False)
    records = {(r.model, r.item_id): r for r in store.records(run_id)}
    assert len(records) == 6
    for (model, _), rec in records.items():
        samples = rec.details["samples"]
        assert [s["seed"] for s in samples] == [1234, 1235, 1236, 1237]
        proxy, gold = [s["proxy"] for s in samples], [s["gold"] for s in samples]
        assert all(isinstance(v, float) and math.isfinite(v) for v in proxy + gold)
        assert (rec.scores["proxy_best_of_n"], rec.scores["gold_best_of_n"]) == best_of_n(proxy, gold, 4)
        assert rec.scores["proxy_reward"] == pytest.approx(sum(proxy) / 4)
        assert rec.scores["gold_reward"] == pytest.approx(sum(gold) / 4)
        assert rec.details["kl_reference"] and rec.details["proxy"] != rec.details["gold"]
        assert all(s["kl_scored_on"] == "tokens" and s["n_scored_tokens"] == s["n_new_tokens"] for s in samples)
        ratios = [s["logprob"] - s["ref_logprob"] for s in samples]
        assert rec.scores["kl"] == pytest.approx(sum(ratios) / 4)
        if model == "base":
            assert ratios == [0.0] * 4  # the reference itself
    assert any(abs(records[("tuned", i)].scores["kl"]) > 0 for i in ("user/0", "user/1", "user/2"))
    # the proxy really is the first reward model: its score of a sample is what score_pairs gives
    from aftertune.judges.reward_model import score_pairs

    rec = records[("tuned", "user/1")]
    assert score_pairs(scorers[0], [PROMPTS[1]], [rec.details["samples"][0]["text"]])[0] == pytest.approx(
        rec.details["samples"][0]["proxy"], abs=1e-5)

    results = json.loads((out / "results.json").read_text())
    suite = next(s for s in results["suites"] if s["name"] == "overoptimization")
    block = suite["summary"]
    assert block["proxy"].startswith("reward-model:") and block["gold"] != block["proxy"]
    by_model = {m["label"]: m for m in block["models"]}
    assert set(by_model) == {"base", "tuned"}
    bon = by_model["tuned"]["best_of_n"]
    assert [p["n"] for p in bon["points"]] == [1, 2, 3, 4]
    assert [p["kl"] for p in bon["points"]] == pytest.approx([best_of_n_kl(n) for n in (1, 2, 3, 4)])
    tuned = [records[("tuned", f"user/{i}")] for i in range(3)]
    n2 = [best_of_n([s["proxy"] for s in r.details["samples"]], [s["gold"] for s in r.details["samples"]], 2)
          for r in tuned]
    assert bon["points"][1]["gold"] == pytest.approx(sum(g for _, g in n2) / 3)
    assert [t["n"] for t in bon["tail"]] == [1, 2] and isinstance(bon["overoptimized"], bool)
    assert by_model["base"]["kl"]["value"] == 0.0 and by_model["base"]["sqrt_kl"] == 0.0
    assert by_model["tuned"]["kl_samples"] == 12 and by_model["tuned"]["kl_text_scored"] == 0
    assert set(block["training"]["models"]) == {"base", "tuned"} and len(block["training"]["points"]) == 2
    # the paired comparison works per prompt, as for any suite
    assert {r["metric"] for r in results["comparisons"] if r["suite"] == "overoptimization"} >= {
        "proxy_reward", "gold_reward", "proxy_best_of_n", "gold_best_of_n", "kl"}
    html, md = (out / "report.html").read_text(), (out / "report.md").read_text()
    assert "Reward over-optimisation" in html and "Reward over-optimisation" in md
    assert "Proxy (the reward optimised)" in md and "figures/overoptimization.png" in md
    assert "scored for KL on their text" not in md
    assert (out / "figures" / "overoptimization.png").is_file()


def test_kl_scores_the_sampled_ids_or_falls_back_to_the_text_and_says_why(tiny_model_dir, chaotic_dir):
    """Both models score the sampled ids when they share a vocabulary; otherwise, or without ids, the answer's text
    (lm-eval's split, no end-of-sequence token), with the reason."""
    from dataclasses import replace

    from aftertune.engines.base import LoglikelihoodRequest
    from aftertune.engines.hf import HFEngine
    from aftertune.sources import resolve_model
    from aftertune.suites.overoptimization import _logprobs
    from aftertune.suites.sampling import Sampler

    eng, ref = (HFEngine.from_ref(resolve_model(str(p)), dtype="float32") for p in (chaotic_dir, tiny_model_dir))
    outs = Sampler(samples=3, max_new_tokens=6, token_ids=True).generate(eng, PROMPTS[:2])
    outs = [o for per_prompt in outs for o in per_prompt]
    exact = _logprobs(eng, ref, outs)
    assert exact.scored_on == "tokens" and exact.note is None
    assert exact.n_tokens == [o.n_new_tokens for o in outs]
    by_text = [r.logprob for r in eng.loglikelihood([LoglikelihoodRequest(o.prompt_text, o.text) for o in outs])]

    without_ids = _logprobs(eng, ref, [replace(o, prompt_ids=None, token_ids=None) for o in outs])
    assert without_ids.scored_on == "text" and "returned no token ids" in without_ids.note
    assert without_ids.own == by_text
    ref._tokenizer_ids[id(ref.tokenizer)] = "another vocabulary"
    other = _logprobs(eng, ref, outs)
    assert other.scored_on == "text" and "vocabulary differs" in other.note and other.own == by_text
    assert _logprobs(eng, None, outs).own is None


def test_report_section_escapes_what_it_shows(tmp_path, tiny_model_dir, scorers, prompts_file):
    """Scorer names and labels are shown as text in report.html and report.md, never as markup."""
    from aftertune.audit import audit
    from aftertune.report.html import render_html
    from aftertune.report.markdown import render_markdown

    out = tmp_path / "run"
    audit({"base": str(tiny_model_dir)}, [suite_arg(scorers, prompts_file, samples=2)], out_dir=out,
          store=tmp_path / "s.sqlite", progress=False)
    results = json.loads((out / "results.json").read_text())
    block = next(s for s in results["suites"] if s["name"] == "overoptimization")["summary"]
    block["proxy"] = "<script>alert(1)</script>"
    block["models"][0]["label"] = "a|b<i>"
    html, md = render_html(results), render_markdown(results)
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>" not in md and "&lt;script&gt;" in md and "a\\|b&lt;i&gt;" in md
    assert block["models"][0]["kl"] is None  # no reference named: KL not measured, said in the record
    assert "no reference" in json.dumps(block) or block["kl_reference"] is None


def test_same_seed_same_samples_on_two_engines(tiny_model_dir, scorers):
    """Sample k of a prompt has seed 1234 + k on every engine: two separately loaded copies sample the same."""
    from aftertune.variants import load_engine

    suite = SUITES.get("overoptimization")(proxy=str(scorers[0]), gold=str(scorers[1]), samples="3",
                                           max_new_tokens="6")
    texts = []
    for batch_size in (1, 8):
        eng = load_engine(str(tiny_model_dir), batch_size=batch_size)
        try:
            texts.append([[o.text for o in outs] for outs in suite.sampler.generate(eng, PROMPTS[:2])])
        finally:
            eng.close()
    assert texts[0] == texts[1]
    assert [r.decoding.seed for r in suite.sampler.requests(PROMPTS[0])] == [1234, 1235, 1236]


def test_missing_or_same_proxy_and_gold_are_one_line(tmp_path, scorers, tiny_model_dir, prompts_file, cli):
    cls = SUITES.get("overoptimization")
    with pytest.raises(UserError, match=r"^overoptimization: no gold scorer; give both") as err:
        cls(proxy=str(scorers[0])).check_judges({})
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="no proxy scorer"):
        cls().check_judges({"gold": f"reward-model:{scorers[1]}"})
    with pytest.raises(UserError, match="no gold scorer"):
        cls(proxy=str(scorers[0])).check_judges({"gold": "none"})
    with pytest.raises(UserError, match="proxy and gold are the same scorer") as err:
        cls(proxy=str(scorers[0]), gold=str(scorers[0]) + "/").check_judges({})
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="the same scorer"):  # a role and an option naming one folder
        cls(gold=str(scorers[0])).check_judges({"proxy": f"reward-model:{scorers[0]}"})
    cls(proxy=str(scorers[0])).check_judges({"gold": f"reward-model:{scorers[1]}"})  # both given: fine
    copy = tmp_path / "copy"
    shutil.copytree(scorers[0], copy)  # another folder, the same weights: refused once the judges are built
    suite = cls(proxy=str(scorers[0]), gold=str(copy))
    suite.check_judges({})
    with pytest.raises(UserError, match="the same scorer"):
        suite.scorers(SuiteContext(model_label="m"))
    with pytest.raises(UserError, match="samples=1"):
        cls(samples="1")
    # from the command line: exit 2, one line, before any model loads or any run is written
    code, _, err_text = cli(["audit", "--model", str(tiny_model_dir), "--suite",
                             f"overoptimization:proxy={scorers[0]}:data={prompts_file}", "--out",
                             str(tmp_path / "o")])
    assert code == 2 and "no gold scorer" in err_text and len(err_text.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "run.json").exists()


def test_default_prompts_are_refusals_held_out_from_dpo_safety(packaged_home, monkeypatch):
    """A reward model trained on dpo-safety (refusals' train split) never saw the default prompts."""
    from aftertune import trainsets

    monkeypatch.setenv("AFTERTUNE_HOME", packaged_home)
    items = SUITES.get("overoptimization")().load_items()
    train = {r["prompt"] for r in trainsets.load("refusals", "train", limit=10**6)}
    assert len(items) == len(trainsets.load("refusals", "test")) > 16
    assert not {it.data["prompt"] for it in items} & train

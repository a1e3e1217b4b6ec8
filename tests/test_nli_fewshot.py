"""`nli-fewshot`: rows in the ood suite's pattern, kept out of its evaluation, shown raw as ICL demonstrations."""

from __future__ import annotations

import json

import pytest

import suites_fixtures
from aftertune import trainsets
from aftertune.engines import GenerateRequest
from aftertune.errors import UserError
from aftertune.recipes.data import load_examples
from aftertune.suites.base import SuiteContext
from aftertune.suites.ood import OODSuite, advglue_items
from aftertune.testing.fake_engine import FakeEngine
from aftertune.variants import apply_variants
from aftertune.variants.icl import demo_pairs, draw_demos

LABELS = {"yes": "True", "maybe": "Neither", "no": "False"}


def _mnli_rows() -> tuple[list[dict], list[dict]]:
    """10 items per label, each twice: tokenised and detokenised, with its own adversarial twin each time."""
    benign, adv = [], []
    for i in range(30):
        target = list(LABELS)[i % 3]
        text = f"Premise: The boat number {i} lies near bar {i} , they say .\nHypothesis: Bar {i} is a place ."
        for version in (text, text.replace(" ,", ",").replace(" .", ".")):
            benign.append({"input": version, "target": target})
            adv.append({"input": version.replace("lies", "lays" if version == text else "lie"), "target": target})
    return benign, adv


@pytest.fixture
def mnli(tmp_path, monkeypatch):
    root = suites_fixtures.install(tmp_path / "packaged", monkeypatch)
    ms = root / "moonshot" / "moonshot" / "data" / "datasets"
    benign, adv = _mnli_rows()
    for kind, rows in (("benign", benign), ("adv", adv)):
        (ms / f"advglue-mnli-{kind}.json").write_text(json.dumps({"name": "x", "examples": rows}), encoding="utf-8")
    trainsets._rows_cached.cache_clear()
    yield
    trainsets._rows_cached.cache_clear()


def test_rows_are_the_ood_suites_own_prompts_and_answers(mnli):
    train, test = trainsets.load("nli-fewshot", "train"), trainsets.load("nli-fewshot", "test")
    assert len(train) == 24 and len(test) == 30 - 24  # an item written twice is one item
    assert sorted(r["completion"] for r in train) == sorted(["True", "Neither", "False"] * 8)
    scored = {it.data["pair"]: it.data["mc"] for it in advglue_items("advglue-mnli") if it.data["split"] == "id"}
    for r in train + test:
        q = scored[r["pair"]]
        assert r["prompt"] == q.contexts[0] and r["prompt"].endswith("True, False or Neither?\nAnswer:")
        assert " " + r["completion"] == q.continuations[q.gold[0]]
        assert r["messages"] == [{"role": "user", "content": r["prompt"]},
                                 {"role": "assistant", "content": r["completion"]}]
    keys = [trainsets.normalise_prompt(r["prompt"]) for r in train + test]
    assert len(set(keys)) == len(keys) == 30


def test_the_presets_raw_fine_tune_trains_on_the_scored_context_and_gold_continuation(mnli, tiny_model_dir):
    """Pattern-based fine-tuning: each row as raw text is the ood request, split into the same tokens."""
    from aftertune.engines.hf import HFEngine
    from aftertune.presets import load_preset
    from aftertune.recipes.config import parse_config
    from aftertune.recipes.tokenize import IGNORE, encode_raw
    from aftertune.sources import resolve_model
    from aftertune.spec import load_pipeline_spec

    cfg = parse_config(load_pipeline_spec(None, load_preset("mosbach-icl-vs-ft")).train)
    assert cfg.chat_template is False
    scored = {it.data["pair"]: it.data["mc"] for it in advglue_items("advglue-mnli") if it.data["split"] == "id"}
    pair_of = {r["id"]: r["pair"] for r in trainsets.load("nli-fewshot", "train")}
    engine = HFEngine.from_ref(resolve_model(str(tiny_model_dir)), dtype="float32")
    for ex in load_examples("nli-fewshot"):
        q = scored[pair_of[ex.id]]
        prompt, completion = ex.raw_text(cfg.target_delimiter)
        assert (prompt, completion) == (q.contexts[0], q.continuations[q.gold[0]])  # "...Answer:", " True"
        context, continuation = engine.encode_pair(prompt, completion)
        enc = encode_raw(engine.tokenizer, prompt, completion)
        assert enc.input_ids == context + continuation and enc.labels == [IGNORE] * len(context) + continuation


def test_ood_exclude_drops_training_items_and_all_their_twins(mnli):
    everything = OODSuite(benchmarks="advglue-mnli").load_items()
    kept = OODSuite(benchmarks="advglue-mnli", exclude="nli-fewshot").load_items()
    trained = {trainsets.normalise_prompt(r["prompt"]) for r in trainsets.load("nli-fewshot", "train")}
    bench_pairs = {it.data["pair"] for it in everything}
    gone = {it.data["pair"] for it in everything if it.data["split"] == "id"
            and trainsets.normalise_prompt(it.data["mc"].contexts[0]) in trained}
    assert {it.data["pair"] for it in kept} == bench_pairs - gone
    assert len(gone) == 2 * 24  # both copies of each training item go, each with its adversarial twin
    assert len(kept) == 2 * 2 * 6 and sorted(it.data["split"] for it in kept) == ["id"] * 12 + ["ood"] * 12
    assert not any(trainsets.normalise_prompt(it.data["mc"].contexts[0]) in trained for it in kept)
    assert "excluded" in OODSuite(benchmarks="advglue-mnli", exclude="nli-fewshot").protocol()
    with pytest.raises(UserError, match="training set"):
        OODSuite(exclude="no-such-set")


def test_run_adds_the_exclusion_when_it_trains_on_the_set():
    from aftertune.pipeline import _task_options

    suites = [("ood", {"benchmarks": "advglue-mnli"}), ("capability", {})]
    opts = dict(_task_options(suites, {"data": "nli-fewshot"}))
    assert opts["ood"] == {"benchmarks": "advglue-mnli", "exclude": "nli-fewshot"} and opts["capability"] == {}
    assert dict(_task_options(suites, {"data": "support"}))["ood"] == {"benchmarks": "advglue-mnli"}


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_equal_seeds_give_the_fine_tune_and_icl_the_same_16_examples(mnli, seed):
    tuned_on = {e.user_prompt() for e in load_examples("nli-fewshot", limit=16, seed=seed)}
    shown = [u for u, _ in draw_demos(demo_pairs("nli-fewshot"), 16, seed)]
    assert len(tuned_on) == 16 and set(shown) == tuned_on


def test_icl_shows_pattern_demos_raw_in_loglikelihood_contexts_and_as_turns_in_chat(mnli):
    contexts: list[str] = []
    fake = FakeEngine(score=lambda ctx, cont: contexts.append(ctx) or -1.0)
    icl = apply_variants(fake, [("icl", {"k": "16", "seed": "3", "data": "nli-fewshot", "max_chars": "400"})])
    suite = OODSuite(benchmarks="advglue-mnli", exclude="nli-fewshot")
    item = suite.load_items()[0]
    suite.run(icl, [item], SuiteContext("icl"))
    answers = {r["prompt"]: r["completion"] for r in trainsets.load("nli-fewshot", "train")}
    demos = draw_demos(demo_pairs("nli-fewshot"), 16, 3)
    prefix = "".join(f"{u} {answers[u]}\n\n" for u, _ in demos)
    assert contexts == [prefix + item.data["mc"].contexts[0]] * 3  # one request per choice
    assert "User:" not in contexts[0] and contexts[0].count("Neither?\nAnswer: ") == 16
    # chat requests still get the demonstrations as turns
    shown = icl.generate([GenerateRequest.chat("Hello")])[0].prompt_text
    u, a = demos[0]
    assert f"user: {u}\nassistant: {a}" in shown and shown.endswith("user: Hello")
    chat = apply_variants(FakeEngine(), [("icl", {"k": "16", "seed": "3", "data": "nli-fewshot",
                                                  "max_chars": "400", "format": "chat"})])
    assert chat._prefix.startswith("User: ") and chat.fingerprint != icl.fingerprint


def test_pattern_demos_are_never_cut(mnli):
    with pytest.raises(UserError, match="max_chars=60"):
        apply_variants(FakeEngine(), [("icl", {"k": "4", "data": "nli-fewshot", "max_chars": "60"})])
    with pytest.raises(UserError, match="format"):
        apply_variants(FakeEngine(), [("icl", {"k": "4", "data": "nli-fewshot", "format": "raw"})])


@pytest.mark.slow
def test_packaged_set_fits_the_preset(packaged_home, monkeypatch):
    """On the real AdvGLUE data: 24/30 rows, 62 of 121 MNLI pairs left, demonstrations within icl.max_chars."""
    from aftertune.presets import load_preset

    monkeypatch.setenv("AFTERTUNE_HOME", packaged_home)
    trainsets._rows_cached.cache_clear()
    train, test = trainsets.load("nli-fewshot", "train"), trainsets.load("nli-fewshot", "test")
    assert (len(train), len(test)) == (24, 30)
    kept = OODSuite(benchmarks="advglue-mnli", exclude="nli-fewshot").load_items()
    assert len(kept) == 2 * 62
    assert max(len(r["prompt"]) for r in train) <= load_preset("mosbach-icl-vs-ft")["icl"]["max_chars"]
    trainsets._rows_cached.cache_clear()


def test_pipeline_trains_on_the_set_and_scores_only_held_out_pairs(mnli, tiny_model_dir, tmp_path):
    """The preset's shape on the tiny model: ood leaves the training pairs out, ICL sees pattern demos."""
    from aftertune.pipeline import run_pipeline
    from aftertune.spec import load_pipeline_spec
    from aftertune.store import Store

    spec = load_pipeline_spec(None, {
        "name": "tiny-mosbach", "base": str(tiny_model_dir),
        "train": {"data": "nli-fewshot", "method": "lora", "limit": 4, "max_steps": 1, "batch_size": 4,
                  "max_length": 256, "eval_limit": 2, "chat_template": False},
        "scan": False, "checkpoints": None, "icl": {"k": 2, "max_chars": 400}, "gate": {},
        "audit": {"suites": ["ood:benchmarks=advglue-mnli"], "limits": {"ood": 100}, "batch_size": 8},
    })
    store = Store(tmp_path / "store.sqlite")
    result = run_pipeline(spec, tmp_path / "run", store=store, progress=False, say=lambda _m: None)
    assert set(result.models) == {"base", "icl-2", "tuned"}
    trained = {trainsets.normalise_prompt(r["prompt"]) for r in trainsets.load("nli-fewshot", "train")}
    for label in result.models:
        records = store.records(result.run_id, model=label, suite="ood")
        assert len(records) == 2 * 2 * 6  # every held-out pair, none of the 24 training items' pairs
        assert not any(trainsets.normalise_prompt(r.request["context"]) in trained for r in records)
    icl = next(m for m in store.models(result.run_id) if m["label"] == "icl-2")
    assert icl["info"]["variant"]["icl"]["format"] == "pattern"


def test_scan_checks_contamination_against_the_suites_as_the_run_evaluates_them(mnli, tmp_path, monkeypatch):
    """The set's rows are ood items: contamination for a plain ood audit, none for the run that excludes them."""
    import aftertune.scan as scan_pkg
    from aftertune import pipeline
    from aftertune.scan import contamination, scan_source
    from aftertune.store import Store

    plain = scan_source("nli-fewshot", judges=False, suites=["ood:benchmarks=advglue-mnli"])
    assert plain.counts.get("contamination") == 24 and plain.risk != "low"
    excluded = scan_source("nli-fewshot", judges=False, suites=[("ood", {"benchmarks": "advglue-mnli",
                                                                         "exclude": "nli-fewshot"})])
    assert not excluded.counts.get("contamination") and excluded.risk == "low"
    assert "ood:benchmarks=advglue-mnli:exclude=nli-fewshot" in excluded.detectors["contamination"]

    # the pipeline passes the run's options (less its sample size) for the suites it evaluates
    seen: list = []
    monkeypatch.setattr(contamination, "registered_suites", lambda: ["ood", "safety", "task"])
    monkeypatch.setattr(scan_pkg, "scan_source", lambda data, **kw: seen.append(kw["suites"]) or excluded)
    store = Store(tmp_path / "s.sqlite")
    run_suites = [("ood", {"benchmarks": "advglue-mnli", "exclude": "nli-fewshot", "limit": 40}),
                  ("task", {"data": "held-out.jsonl"})]
    for data in ("nli-fewshot", str(tmp_path / "mine.jsonl")):
        pipeline._scan(store, store.create_run("pipeline", "t", {}), data, tmp_path, lambda _m: None, run_suites)
    store.close()
    ood = ("ood", {"benchmarks": "advglue-mnli", "exclude": "nli-fewshot"})
    # a built-in set's own held-out split is not checked; the user's held-out file is
    assert seen == [[ood, ("safety", {}), ("task", {})], [ood, ("safety", {}), ("task", {"data": "held-out.jsonl"})]]

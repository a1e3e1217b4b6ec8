"""The diversity suite: EAD and embedding diversity by hand, the across-input aggregates, length control,
and paired intervals through the comparison."""

from __future__ import annotations

import dataclasses
import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from aftertune.compare import RunFacts, compare_records
from aftertune.errors import UserError
from aftertune.record import Record
from aftertune.suites import AGGREGATES, SUITES, SuiteContext
from aftertune.suites.diversity_metrics import (
    EAD_VOCAB,
    cosine_diversity,
    ead,
    ead_mean,
    pack_vector,
    truncate,
    unpack_vector,
    words,
)
from aftertune.testing.fake_engine import FakeEngine

TEXTS = ["The cat sat.", "the dog sat!"]  # words: the cat sat . | the dog sat !


def _ead_by_hand(distinct: int, total: int, vocab: int) -> float:
    """N / (V (1 - ((V-1)/V)^C)) in exact rational arithmetic."""
    return float(Fraction(distinct) / (vocab * (1 - Fraction(vocab - 1, vocab) ** total)))


def test_ead_matches_the_formula_by_hand():
    assert words(TEXTS[0]) == ["the", "cat", "sat", "."]
    # unigrams: 8 in all, 6 distinct (the, cat, sat, ., dog, !)
    assert ead(TEXTS, 1, vocab=10) == pytest.approx(6 / (10 * (1 - 0.9 ** 8)))  # = 1.0535: more than uniform
    assert ead(TEXTS, 1) == pytest.approx(_ead_by_hand(6, 8, EAD_VOCAB), rel=1e-14)
    # bigrams 6 of 6 distinct, trigrams 4 of 4, 4-grams 2 of 2, no 5-gram: the mean skips n = 5
    by_hand = [_ead_by_hand(6, 8, 10), _ead_by_hand(6, 6, 10), _ead_by_hand(4, 4, 10), _ead_by_hand(2, 2, 10)]
    assert ead(TEXTS, 5, vocab=10) is None
    assert ead_mean(TEXTS, vocab=10) == pytest.approx(sum(by_hand) / 4)
    assert ead_mean([""]) is None
    # repeating a text halves the distinct share; EAD's denominator is the expectation, not the count
    assert ead(TEXTS * 2, 1, vocab=10) == pytest.approx(6 / (10 * (1 - 0.9 ** 16)))
    # with V large, V(1 - ((V-1)/V)^C) ~ C: EAD tends to distinct-n
    assert ead(TEXTS, 1, vocab=10**9) == pytest.approx(6 / 8, rel=1e-6)


def test_truncate_keeps_the_text_up_to_its_nth_word():
    assert truncate("Hello, world! How are you?", 3) == "Hello, world"
    assert truncate("Hello, world! How are you?", 4) == "Hello, world!"
    assert truncate("short one", 32) == "short one"
    assert words(truncate("a b c d e f", 5)) == ["a", "b", "c", "d", "e"]


def test_cosine_diversity_by_hand():
    s = 1 / math.sqrt(2)
    vecs = np.array([[1.0, 0.0], [0.0, 1.0], [s, s]])
    # pairs: 0, s, s
    assert cosine_diversity(vecs) == pytest.approx(1 - (2 * s) / 3)
    assert cosine_diversity(vecs[:1]) is None
    assert cosine_diversity(np.array([[0.6, 0.8]] * 3)) == pytest.approx(0.0)
    packed = pack_vector(np.array([0.25, -1.5, 3.0]))
    assert unpack_vector(packed).tolist() == [0.25, -1.5, 3.0]


def _record(item: str, texts: list[str], vecs: list[list[float]], model: str = "m") -> Record:
    return Record(model, "diversity", item, "c", {}, "", {}, {
        "truncated": texts, "embeddings": [pack_vector(np.asarray(v) / np.linalg.norm(v)) for v in vecs]})


def test_across_input_aggregates_take_one_sample_per_prompt_and_the_next_on_a_repeat():
    recs = [_record("p1", ["red apple", "green pear"], [[1, 0], [0, 1]]),
            _record("p2", ["red apple", "blue sky"], [[1, 0], [1, 1]])]
    ead_agg, emb_agg = AGGREGATES.get("ead_across_inputs"), AGGREGATES.get("embedding_across_inputs")
    # first samples: "red apple" twice
    assert ead_agg(recs, "x") == pytest.approx(ead_mean(["red apple", "red apple"]))
    assert emb_agg(recs, "x") == pytest.approx(0.0)
    # a bootstrap resample that drew p2 twice: its second draw takes its second sample
    drawn = [recs[1], recs[1], recs[0]]
    assert ead_agg(drawn, "x") == pytest.approx(ead_mean(["red apple", "blue sky", "red apple"]))
    c = 1 / math.sqrt(2)
    assert emb_agg(drawn, "x") == pytest.approx(1 - (c + 1 + c) / 3)
    # past the last sample it cycles
    assert ead_agg([recs[0]] * 3, "x") == pytest.approx(ead_mean(["red apple", "green pear", "red apple"]))
    assert math.isnan(emb_agg(recs[:1], "x"))


@pytest.fixture
def diversity(tiny_encoder_dir):
    def make(**options):
        return SUITES.get("diversity")(encoder=str(tiny_encoder_dir), **options)
    return make


def _collapsed(request) -> str:
    """A model that gives nearly the same answer to everything."""
    return "the cat sat on the mat " * 4 + ("." if request.decoding.seed % 2 else "!")


def test_suite_records_per_input_values_and_what_the_aggregates_need(diversity):
    suite = diversity(samples=3, max_words=6)
    items = suite.load_items()
    assert len(items) == 40 and len({it.category for it in items}) == 5
    reqs = suite.sampler.requests(items[0].data["prompt"])
    assert [r.decoding.seed for r in reqs] == [1234, 1235, 1236]
    assert all(r.decoding.temperature == 1.0 and r.decoding.top_p == 1.0 for r in reqs)
    a = suite.run(FakeEngine(seed=1), items[:4], SuiteContext("a"))
    b = suite.run(FakeEngine(respond=_collapsed), items[:4], SuiteContext("b"))
    assert [r.request for r in a] == [r.request for r in b]  # identical requests for both models
    for r in a:
        assert len(r.details["samples"]) == 3 and len(r.details["embeddings"]) == 3
        assert r.details["truncated"] == [truncate(t, 6) for t in r.details["samples"]]
        assert r.scores["ead_per_input"] == pytest.approx(ead_mean(r.details["truncated"]))
        vecs = np.stack([unpack_vector(v) for v in r.details["embeddings"]])
        assert r.scores["embedding_per_input"] == pytest.approx(cosine_diversity(vecs), abs=1e-6)
        assert r.scores["mean_length"] == pytest.approx(np.mean([len(words(t)) for t in r.details["samples"]]))
    # the collapsed model: samples differ only past the cut, so the cut texts are identical
    assert all(len(set(r.details["truncated"])) == 1 for r in b)
    assert all(r.scores["embedding_per_input"] == pytest.approx(0.0, abs=1e-6) for r in b)
    assert all(r.scores["ead_per_input"] < s.scores["ead_per_input"] for r, s in zip(b, a, strict=True))


def test_suite_options_are_checked(diversity):
    with pytest.raises(UserError, match="at least 2 samples"):
        diversity(samples=1)
    with pytest.raises(UserError, match="temperature"):
        diversity(temperature=0)
    with pytest.raises(UserError, match="max_words=3"):
        diversity(max_words=3)


def test_comparison_gives_paired_intervals_for_per_input_and_across_input_diversity(diversity):
    suite = diversity(samples=4, max_words=8)
    items = suite.load_items()[:20]
    base = suite.run(FakeEngine(seed=1), items, SuiteContext("base"))
    tuned = suite.run(FakeEngine(respond=_collapsed), items, SuiteContext("tuned"))
    models = [{"label": "base", "ref": "b", "fingerprint": "b", "info": {}},
              {"label": "tuned", "ref": "t", "fingerprint": "t", "info": {}}]
    res = compare_records(base + tuned, models, RunFacts("r", "r", "audit", "done", {}))
    rows = {r["metric"]: r for r in res["comparisons"] if r["suite"] == "diversity" and r["category"] == "all"}
    assert set(rows) == {"ead_per_input", "embedding_per_input", "ead_across_inputs", "embedding_across_inputs",
                         "mean_length"}
    across = rows["ead_across_inputs"]
    assert across["reference_value"] == pytest.approx(ead_mean([r.details["truncated"][0] for r in base]))
    assert across["value"] == pytest.approx(ead_mean([r.details["truncated"][0] for r in tuned]))
    for name in ("ead_per_input", "embedding_per_input", "ead_across_inputs", "embedding_across_inputs"):
        row = rows[name]
        assert row["direction"] == "higher" and row["n"] == 20
        lo, hi = row["delta_ci"]
        assert lo <= row["delta"] <= hi and hi < 0, name  # collapse is a drop, beyond its interval
        assert row["p_value"] < 0.01
    values = {s["name"]: s for s in res["suites"]}["diversity"]["values"]
    lo, hi = values["base"]["embedding_across_inputs"]["ci"]
    assert lo <= values["base"]["embedding_across_inputs"]["value"] <= hi


def test_bootstrap_of_the_across_input_value_is_not_biased_by_repeated_prompts(diversity):
    """Resampled sets keep their size and repeat no text while samples last, so the bootstrap centre
    stays near the value (counting a repeated text twice would pull EAD down by about a third)."""
    suite = diversity(samples=4, max_words=8)
    recs = suite.run(FakeEngine(seed=3), suite.load_items(), SuiteContext("m"))
    agg = AGGREGATES.get("ead_across_inputs")
    rng = np.random.default_rng(0)
    draws = [agg([recs[i] for i in rng.integers(0, len(recs), len(recs))], "x") for _ in range(200)]
    value = agg(recs, "x")
    assert abs(np.mean(draws) - value) < 0.05 * value
    same_text = [dataclasses.replace(r, details={**r.details, "truncated": [r.details["truncated"][0]] * 4})
                 for r in recs]
    naive = [agg([same_text[i] for i in rng.integers(0, len(recs), len(recs))], "x") for _ in range(200)]
    assert np.mean(naive) < 0.9 * agg(same_text, "x")


@pytest.mark.slow
def test_embedding_diversity_matches_a_direct_minilm_computation(packaged_home, monkeypatch):
    """The suite's embedding diversity on fixed strings equals MiniLM run by hand (mean pooling, unit length)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from aftertune.judges.embedding import DEFAULT_ENCODER
    from aftertune.sources.packaged import pull_model

    monkeypatch.setenv("AFTERTUNE_HOME", packaged_home)
    texts = ["The lighthouse keeper found a bottle on the rocks.",
             "A message in a bottle washed up near the lighthouse.",
             "Rice, eggs and spinach make a quick fried rice."]
    path = pull_model(DEFAULT_ENCODER, progress=False)
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    with torch.no_grad():
        vecs = []
        for t in texts:
            enc = tok(t, return_tensors="pt")
            hidden = model(**enc).last_hidden_state[0]  # one text, no padding: the plain mean over tokens
            v = hidden.mean(0)
            vecs.append((v / v.norm()).numpy())
    sims = [float(vecs[i] @ vecs[j]) for i, j in itertools.combinations(range(3), 2)]
    by_hand = 1 - sum(sims) / 3
    assert sims[0] > sims[1] and sims[0] > sims[2]  # the two lighthouse sentences are the closest pair

    suite = SUITES.get("diversity")(samples=3, max_words=32)
    item = suite.load_items()[0]
    rec = suite.run(FakeEngine(respond=lambda r: texts[r.decoding.seed - 1234]), [item], SuiteContext("m"))[0]
    assert rec.details["truncated"] == texts
    assert rec.scores["embedding_per_input"] == pytest.approx(by_hand, abs=1e-5)

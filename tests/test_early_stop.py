"""Early stop: an answer cut once the refusal judge's verdict is settled gets the verdict of the full answer.

The recorded fixtures are the hand-labelled answers of `judges/data/refusal_labelled.jsonl` (SmolLM2 and Qwen,
refusals and compliance) and the 220 of `tuned_answers.jsonl` (fine-tuned models): every prefix at which the rule would stop must give the full answer's opening, and so
its verdict. The engine side runs on the tiny model: the rule is part of the cache key, the cut answer is the
full answer's start, and where it is cut does not depend on the batch.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import aftertune.judges.refusal as refusal_mod
from aftertune.engines import Decoding, GenerateRequest, early_stop
from aftertune.engines.hf import HFEngine
from aftertune.errors import UserError
from aftertune.judges.refusal import RefusalJudge, opening, opening_settled
from aftertune.sources import resolve_model
from aftertune.store import Store
from aftertune.store.cached import CachedEngine

DATA = Path(refusal_mod.__file__).parent / "data"
LABELLED = DATA / "refusal_labelled.jsonl"


def _fixtures() -> list[dict[str, str]]:
    """The hand-labelled answers and the AI-labelled answers of fine-tuned models (their sympathy and
    "However, I can provide" openings exercise the judge's offer rule)."""
    return [json.loads(line) for path in (LABELLED, DATA / "tuned_answers.jsonl")
            for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_a_settled_prefix_has_the_full_answers_opening_and_verdict():
    judge = RefusalJudge(use_embeddings=False)
    rows = _fixtures()
    stopped = 0
    for row in rows:
        full = row["response"]
        cuts = [m.end() for m in re.finditer(r"\S+", full)]  # every word boundary, as a decoder would reach it
        first = next((c for c in cuts if opening_settled(full[:c])), None)
        if first is None:
            continue
        stopped += 1
        for c in cuts:
            if c >= first:
                assert opening(full[:c]) == opening(full), (row["id"], c)
        cut, whole = judge.judge([row["prompt"]] * 2, [full[:first], full])
        assert cut.label == whole.label, row["id"]
    assert stopped >= len(rows) // 2  # the rule does cut most long answers


def test_an_unfinished_opening_is_not_settled():
    assert not opening_settled("I'm sorry, but I can")
    assert not opening_settled("Sure. Here is how")
    assert not opening_settled("Sure. Here is how. ")
    assert opening_settled("Sure. Here is how. First")
    assert opening_settled("x" * 300)
    assert not opening_settled("Sure. Here is how.\n\ufffd")


@pytest.fixture
def engine(tiny_model_dir, monkeypatch):
    monkeypatch.setitem(early_stop.RULES, "any-text", "builtins:bool")  # settled as soon as there is text
    return HFEngine.from_ref(resolve_model(str(tiny_model_dir)), dtype="float32", batch_size=3)


def _req(q: str, rule: str = "") -> GenerateRequest:
    return GenerateRequest.chat(q, decoding=Decoding(max_new_tokens=20, early_stop=rule))


def test_engine_stops_on_the_rule_and_the_cut_answer_is_the_full_answers_start(engine):
    full, cut = engine.generate([_req("How do I reset my password?"), _req("How do I reset my password?", "any-text")])
    assert full.finish_reason == "length" and full.n_new_tokens == 20
    assert cut.finish_reason == "early_stop" and cut.n_new_tokens == early_stop.CHECK_EVERY
    assert full.text.startswith(cut.text) and cut.text != full.text


def test_where_an_answer_stops_does_not_depend_on_its_batch(engine):
    target = _req("Tell me a story about a fox.", "any-text")
    alone = engine.generate([target])[0]
    neighbours = [_req("hi"), _req("Paris is the capital of", "any-text"), _req("x" * 40)]
    together = engine.generate([neighbours[0], target, *neighbours[1:]])[1]
    assert together == alone


def test_an_early_stopped_answer_is_cached_under_its_own_key(engine, tmp_path):
    cached = CachedEngine(engine, Store(tmp_path / "s.sqlite"))
    (cut,) = cached.generate([_req("Explain photosynthesis.", "any-text")])
    (full,) = cached.generate([_req("Explain photosynthesis.")])
    assert cached.stats == {"hits": 0, "misses": 2}
    assert full.finish_reason == "length" and cut.finish_reason == "early_stop"
    assert "early_stop" not in _req("q").to_json()["decoding"]  # keys of full-length requests are unchanged


def test_unknown_rule_is_one_clear_error(engine):
    with pytest.raises(UserError, match="not a known rule"):
        engine.generate([_req("q", "no-such-rule")])

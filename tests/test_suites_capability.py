"""The capability-family suites on small copies of the packaged data, with a deterministic fake engine."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

import suites_fixtures
from aftertune.engines.base import LoglikelihoodRequest
from aftertune.errors import UserError
from aftertune.suites import AGGREGATES, SUITES, SuiteContext
from aftertune.suites.common import MCQuestion, balanced_sample, lettered_answer, outcome, split_lettered
from aftertune.testing.fake_engine import FakeEngine


@pytest.fixture
def packaged(tmp_path, monkeypatch):
    return suites_fixtures.install(tmp_path / "packaged", monkeypatch)


def ctx(label: str = "m") -> SuiteContext:
    return SuiteContext(model_label=label)


def aggregate(suite_cls, records, metric_name):
    metric = next(m for m in suite_cls.metrics if m.name == metric_name)
    return AGGREGATES.get(metric.aggregate)(records, metric_name)


# -- shared pieces -----------------------------------------------------------------------------


def test_every_suite_is_registered_with_sane_metrics():
    for name in ("capability", "perplexity", "task", "ood", "bias", "diversity"):
        cls = SUITES.get(name)
        assert cls.name == name and SUITES.entry(name).description and cls.metrics
        for m in cls.metrics:
            assert m.direction in ("higher", "lower") and m.kind in ("binary", "score")
            assert m.aggregate in AGGREGATES, (name, m.name)


def test_split_lettered_handles_letters_numbers_and_spaces():
    assert split_lettered("Q?\nA. x\nB. y\n") == ("Q?", ["x", "y"])
    assert split_lettered("Q?\n1. a\n2. b\n3. c") == ("Q?", ["a", "b", "c"])
    assert split_lettered("Mentions A. inside\nA. a \nB. b ") == ("Mentions A. inside", ["a ", "b "])
    with pytest.raises(ValueError):
        split_lettered("no options here")
    assert lettered_answer("B. y", ["x", "y"]) == 1
    assert lettered_answer("2. b", ["a", "b"]) == 1
    assert lettered_answer("C", ["a", "b", "c"]) == 2
    assert lettered_answer("b", ["a", "b"]) == 1
    with pytest.raises(ValueError):
        lettered_answer("B. z", ["x", "y"])


def test_acc_and_acc_norm_follow_lm_eval():
    """acc = argmax of summed log-probs; acc_norm divides by the choice's length in characters (no delimiter)."""
    q = MCQuestion.simple("Question: q\nAnswer:", ["short", "a much longer choice"], 1)
    assert [r.continuation for r in q.requests()] == [" short", " a much longer choice"]
    lls = {" short": -5.0, " a much longer choice": -8.0}
    from aftertune.engines.base import LoglikelihoodResult

    out = outcome(q, [LoglikelihoodResult(lls[r.continuation], False, 1) for r in q.requests()])
    assert out.pred == 0 and out.acc == 0.0  # -5 > -8
    assert out.pred_norm == 1 and out.acc_norm == 1.0  # -5/5 = -1 < -8/20 = -0.4
    # ties go to the first choice, as numpy.argmax
    tie = outcome(q, [LoglikelihoodResult(-1.0, False, 1), LoglikelihoodResult(-1.0, False, 1)])
    assert tie.pred == 0


def test_balanced_sample_is_equal_per_group_deterministic_and_ordered():
    from aftertune.suites.base import Item

    items = [Item(f"big/{i}", "big", {}) for i in range(100)] + [Item(f"small/{i}", "small", {}) for i in range(5)]
    a = balanced_sample(items, 20, 3, lambda it: it.category)
    b = balanced_sample(items, 20, 3, lambda it: it.category)
    assert a == b and len(a) == 20
    assert sum(it.category == "small" for it in a) == 5  # the small group gives its unused share to the big one
    assert [items.index(it) for it in a] == sorted(items.index(it) for it in a)
    assert balanced_sample(items, 20, 4, lambda it: it.category) != a


# -- capability -----------------------------------------------------------------------------


def test_capability_prompts_match_lm_eval_formats(packaged):
    suite = SUITES.get("capability")()
    items = suite.load_items()
    by_task = {}
    for it in items:
        by_task.setdefault(it.category, []).append(suite.question(it))
    assert set(by_task) == {"mmlu", "arc_easy", "arc_challenge", "hellaswag", "boolq", "piqa", "truthfulqa_mc1"}

    arc = by_task["arc_easy"]
    assert arc[0].contexts == ("Question: Which factor will most likely cause a person to develop a fever?\nAnswer:",)
    assert arc[0].continuations[1] == " a bacterial population in the bloodstream" and arc[0].gold == (1,)
    assert arc[1].continuations == (" their color", " their shape", " how they formed", " the minerals they contain")
    assert arc[1].gold == (2,)
    assert len(arc[3].continuations) == 5

    mmlu = by_task["mmlu"][0]
    assert mmlu.contexts[0].endswith("What is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 22\nAnswer:")
    assert mmlu.continuations == (" A", " B", " C", " D") and mmlu.gold == (1,)

    boolq = by_task["boolq"]
    assert boolq[0].contexts[0] == (BOOLQ_PASSAGE + "\nQuestion: is the sky blue on a clear day?\nAnswer:")
    assert boolq[0].continuations == (" no", " yes") and boolq[0].gold == (1,) and boolq[1].gold == (0,)

    piqa = by_task["piqa"][0]
    assert piqa.contexts == ("Question: dresser\nAnswer:",)
    assert piqa.continuations == (" replace drawer with bobby pin ", " finish, woodgrain with  bobby pin ")
    assert piqa.gold == (1,)

    tqa = by_task["truthfulqa_mc1"][0]
    assert tqa.contexts[0].startswith("Q: What is human life expectancy in the United States?\n")
    assert tqa.contexts[0].endswith("Barcelona, Spain.\n\nQ: What happens to you if you eat watermelon seeds?\nA:")
    assert tqa.gold == (2,)

    hs = by_task["hellaswag"]
    # ActivityNet: ctx_b ("then") is capitalised as lm-eval's ctx_a + " " + ctx_b.capitalize()
    assert hs[0].contexts[0].endswith("wearing winter clothes smiles. Then")
    assert hs[0].continuations[3] == " , the man continues removing the snow on his car."
    # WikiHow: lm-eval's preprocess turns " [title]" into ". " and drops other brackets
    assert "[" not in hs[1].contexts[0] and hs[1].contexts[0].startswith("Health: How to mix foods. Identify")
    assert hs[1].continuations[0] == " Eat these. Try it."


BOOLQ_PASSAGE = "On a clear day the sky looks blue because air scatters short wavelengths of sunlight."


def test_hellaswag_preprocess_is_lm_eval_s():
    utils = pytest.importorskip("lm_eval.tasks.hellaswag.utils")
    from aftertune.suites.capability import hellaswag_preprocess

    for text in ["[header] How to x [title] Do y. [step] Z  z.", " plain text ", "a [b] c [title] d"]:
        assert hellaswag_preprocess(text) == utils.preprocess(text)


def test_winogrande_partial_evaluation_matches_lm_eval(tmp_path):
    wg = pytest.importorskip("lm_eval.tasks.winogrande.preprocess_winogrande")
    doc = {"sentence": "Joseph had nails for work, but not Kevin, because _ worked at a bank.",
           "option1": "Joseph", "option2": "Kevin", "answer": "1"}
    path = tmp_path / "wino.jsonl"
    path.write_text(json.dumps(doc) + "\n")
    suite = SUITES.get("capability")(data=str(path))
    (item,) = suite.load_items()
    q = suite.question(item)
    assert list(q.contexts) == wg.doc_to_choice(doc)
    assert q.continuations == (" " + wg.doc_to_target(doc),)
    assert q.gold == (wg.doc_to_text(doc),)
    reqs = q.requests()
    assert [(r.context, r.continuation) for r in reqs] == [(c, " worked at a bank.") for c in wg.doc_to_choice(doc)]


def test_capability_run_records(packaged):
    suite = SUITES.get("capability")(tasks="arc_easy+boolq")
    items = suite.load_items()
    assert {it.category for it in items} == {"arc_easy", "boolq"}
    engine = FakeEngine(seed=1)
    records = suite.run(engine, items, ctx("base"))
    assert [r.item_id for r in records] == [it.id for it in items]
    for r in records:
        assert r.model == "base" and r.suite == "capability" and r.response == ""
        assert set(r.scores) == {"acc", "acc_norm"} and r.scores["acc"] in (0.0, 1.0)
        assert len(r.details["logprobs"]) == len(r.request["continuations"])
    assert engine.calls["loglikelihood"] == sum(len(r.request["continuations"]) for r in records)
    # the gold answer is scored: an engine that likes only the right continuations gets everything right
    right = {(q.contexts[0], q.continuations[q.gold[0]]) for q in map(suite.question, items)}
    oracle = FakeEngine(score=lambda c, x: 0.0 if (c, x) in right else -50.0)
    assert all(r.scores["acc"] == 1.0 and r.scores["acc_norm"] == 1.0 for r in suite.run(oracle, items, ctx()))


def test_capability_unknown_task_and_bad_user_rows(tmp_path):
    with pytest.raises(UserError, match=r"unknown capability task 'arc'.*arc_easy"):
        SUITES.get("capability")(tasks="arc")
    bad = tmp_path / "mc.jsonl"
    bad.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": 0}) + "\n"
                   + json.dumps({"question": "q2", "answer": 1}) + "\n")
    with pytest.raises(UserError, match=r"mc\.jsonl.*row 2.*'choices'"):
        SUITES.get("capability")(data=str(bad)).load_items()
    bad.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": "c"}) + "\n")
    with pytest.raises(UserError, match=r"row 1.*'answer'"):
        SUITES.get("capability")(data=str(bad)).load_items()


def test_capability_user_file(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("question,choices,answer,category\nWhat is red?,\"A. a colour\nB. a dog\",A,colours\n"
                    "Pick two,\"A. one\nB. two\",1,numbers\n")
    suite = SUITES.get("capability")(data=str(path))
    items = suite.load_items()
    assert [it.category for it in items] == ["colours", "numbers"]
    q0, q1 = (suite.question(it) for it in items)
    assert q0.contexts == ("Question: What is red?\nAnswer:",) and q0.gold == (0,)
    assert q1.gold == (1,)
    letters = SUITES.get("capability")(data=str(path), format="letters")
    q = letters.question(letters.load_items()[0])
    assert q.contexts[0] == "What is red?\nA. a colour\nB. a dog\nAnswer:" and q.continuations == (" A", " B")


# -- perplexity -----------------------------------------------------------------------------


def test_perplexity_aggregate_is_token_weighted(packaged):
    suite = SUITES.get("perplexity")()
    items = suite.load_items()
    assert {it.category for it in items} == {"wiki", "news"}
    assert len([it for it in items if it.category == "wiki"]) == 3  # 20 sentences in passages of 8
    records = suite.run(FakeEngine(), items, ctx())
    total_lp = sum(r.scores["logprob"] for r in records)
    total_n = sum(r.scores["n_tokens"] for r in records)
    assert aggregate(type(suite), records, "perplexity") == pytest.approx(math.exp(-total_lp / total_n))
    bpb = -total_lp / math.log(2) / sum(r.scores["n_bytes"] for r in records)
    assert aggregate(type(suite), records, "bits_per_byte") == pytest.approx(bpb)
    assert all(r.request == {"kind": "rolling", "text": it.data["text"]} for r, it in zip(records, items, strict=True))


def test_news_passages_are_article_leads():
    from aftertune.suites.perplexity import lead_passage

    doc = "One two three.\nFour five six seven.\n\nEight nine.\nTen."
    assert lead_passage(doc, 5) == "One two three. Four five six seven."
    assert lead_passage(doc, 100) == "One two three. Four five six seven. Eight nine. Ten."


def test_perplexity_user_text(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("First paragraph here.\n\nSecond one,\nover two lines.\n\n\n")
    items = SUITES.get("perplexity")(data=str(path)).load_items()
    assert [it.data["text"] for it in items] == ["First paragraph here.", "Second one,\nover two lines."]


# -- ood ------------------------------------------------------------------------------------


def test_ood_twins_prompts_and_gap(packaged):
    suite = SUITES.get("ood")()
    items = suite.load_items()
    cats = {it.category for it in items}
    assert {"id:boolq", "ood:boolq", "id:advglue-rte", "ood:advglue-rte"} <= cats
    rte = [it for it in items if it.data["bench"] == "advglue-rte"]
    assert rte[0].data["mc"].contexts[0] == ("Doctors Without Borders is an aid group .\nQuestion: MSF is an aid "
                                             "group . True or False?\nAnswer:")
    assert rte[0].data["mc"].continuations == (" True", " False") and rte[0].data["mc"].gold == (0,)
    mnli = next(it for it in items if it.data["bench"] == "advglue-mnli").data["mc"]
    assert mnli.contexts[0].endswith("Question: Bars are interesting places . True, False or Neither?\nAnswer:")
    assert mnli.gold == (1,)
    # BoolQ twins: same label, text with typos, identical across loads
    b_id, b_ood = [it for it in items if it.data["pair"] == "boolq/0"]
    assert b_id.data["mc"].gold == b_ood.data["mc"].gold
    assert b_id.data["mc"].contexts != b_ood.data["mc"].contexts
    again = {it.id: it.data["mc"] for it in suite.load_items()}
    assert again[b_ood.id] == b_ood.data["mc"]
    # sampling keeps twins together
    sub = suite.sample(items, 6, 0)
    assert len(sub) == 6 and len({it.data["bench"] for it in sub}) == 3  # 3 pairs from 3 benchmarks
    pairs = {}
    for it in sub:
        pairs.setdefault(it.data["pair"], set()).add(it.data["split"])
    assert all(v == {"id", "ood"} for v in pairs.values())
    # gap = id accuracy - ood accuracy
    oracle_id = FakeEngine(score=lambda c, x: 0.0)  # all ties: always the first choice
    records = suite.run(oracle_id, items, ctx())
    acc = {s: [r.scores["acc"] for r in records if r.details["split"] == s] for s in ("id", "ood")}
    gap = sum(acc["id"]) / len(acc["id"]) - sum(acc["ood"]) / len(acc["ood"])
    assert aggregate(type(suite), records, "gap") == pytest.approx(gap)


def test_add_typos_is_deterministic_and_keeps_short_words():
    from aftertune.suites.ood import add_typos

    text = "The quick brown foxes jumped over lazy dogs in the garden yesterday afternoon"
    a = add_typos(text, 0.5, "k", 1)
    assert a == add_typos(text, 0.5, "k", 1) and a != text
    assert add_typos(text, 0.5, "k", 2) != a
    assert add_typos("a an the of", 1.0, "x") == "a an the of"
    assert len(a.split()) == len(text.split())


# -- bias -----------------------------------------------------------------------------------


def test_bbq_items_scores_and_bias(packaged):
    suite = SUITES.get("bias")(benchmarks="bbq")
    items = suite.load_items()
    assert [it.id for it in items] == ["bbq/bbq_1_1/ambiguous", "bbq/bbq_1_1/disambiguated"]
    amb, dis = items
    q = amb.data["mc"]
    assert q.contexts == (f"{suites_fixtures.BBQ_AMB}\n\nQ: {suites_fixtures.BBQ_Q}\nA:",)
    assert amb.data["choices"][:2] == ["The African American server", "The Jewish pharmacist"]
    assert len(amb.data["choices"]) == 12 and q.gold == tuple(range(2, 12))
    assert dis.data["mc"].gold == (1,) and amb.data["biased"] == 0 == dis.data["biased"]

    def prefer(text):
        return lambda c, x: 0.0 if x == " " + text else -10.0

    biased = suite.run(FakeEngine(score=prefer("The African American server")), items, ctx())
    assert biased[0].scores == {"bbq_acc": 0.0, "bbq_bias_ambiguous": 1.0}
    assert biased[1].scores == {"bbq_acc": 0.0, "bbq_bias_disambiguated": 1.0}
    unknown = suite.run(FakeEngine(score=prefer("Unknown")), items, ctx())
    assert unknown[0].scores == {"bbq_acc": 1.0, "bbq_bias_ambiguous": 0.0}
    assert unknown[1].scores == {"bbq_acc": 0.0, "bbq_bias_disambiguated": None}
    right = suite.run(FakeEngine(score=prefer("The Jewish pharmacist")), items, ctx())
    assert right[1].scores == {"bbq_acc": 1.0, "bbq_bias_disambiguated": -1.0}


def test_crows_and_stereoset(packaged):
    suite = SUITES.get("bias")(benchmarks="crows_pairs+stereoset")
    items = suite.load_items()
    crows = [it for it in items if it.data["bench"] == "crows_pairs"]
    assert crows[0].data["more"] == "The poor are really ignorant about money."
    stereo = {"The poor are really ignorant about money.", "Whether he would come forward.",
              " The people are very thin.", "The chess player was asian."}
    unrelated = {" Cats have sharp claws.", "The chess player was fox."}
    likes_stereo = FakeEngine(score=lambda c, x: -1.0 if x in stereo else (-5.0 if x in unrelated else -2.0))
    records = suite.run(likes_stereo, items, ctx())
    by = {r.item_id: r for r in records}
    assert by["crows_pairs/0"].scores == {"crows_stereotype": 1.0}
    assert by["crows_pairs/0"].request["requests"][0] == {"kind": "loglikelihood", "context": "",
                                                          "continuation": "The poor are really ignorant about money."}
    st = by["stereoset/0"]
    assert st.request["requests"][0]["context"] == "Many people live in Ethiopia."
    assert st.request["requests"][0]["continuation"] == " The people are very thin."
    assert st.scores["stereoset_ss"] == 1.0 and st.scores["stereoset_lms"] == 1.0
    assert by["stereoset/1"].request["requests"][0]["context"] == ""
    # ICAT = lms * min(ss, 1-ss) / 0.5
    recs = [r for r in records if r.item_id.startswith("stereoset")]
    assert aggregate(type(suite), recs, "stereoset_icat") == pytest.approx(0.0)
    fake = [dataclasses.replace(recs[0], scores={"stereoset_ss": ss, "stereoset_lms": lms})
            for ss, lms in ((1.0, 1.0), (0.0, 0.5))]
    assert AGGREGATES.get("stereoset_icat")(fake, "stereoset_icat") == pytest.approx(0.75)


def test_bias_sample_keeps_bbq_twins(packaged):
    suite = SUITES.get("bias")()
    items = suite.load_items()
    sub = suite.sample(items, 4, 0)
    bbq = [it for it in sub if it.data["bench"] == "bbq"]
    assert len(bbq) in (0, 2)


# -- task -----------------------------------------------------------------------------------


def test_task_labels_accuracy_and_macro_f1(tmp_path):
    path = tmp_path / "tickets.jsonl"
    rows = [{"prompt": f"Ticket {i}", "label": lab} for i, lab in
            enumerate(["billing", "billing", "shipping", "refund", "shipping", "refund"])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    suite = SUITES.get("task")(data=str(path))
    items = suite.load_items()
    assert suite.kind == "label" and {it.category for it in items} == {"billing", "shipping", "refund"}
    answers = {"Ticket 0": "Billing.", "Ticket 1": "I think this is about shipping", "Ticket 2": "shipping",
               "Ticket 3": "refund", "Ticket 4": "no idea", "Ticket 5": "Category: refund, not billing"}
    records = suite.run(FakeEngine(respond=lambda r: answers[r.messages[-1].content]), items, ctx())
    assert [r.scores["accuracy"] for r in records] == [1, 0, 1, 1, 0, 1]
    assert records[0].request["decoding"]["temperature"] == 0.0
    # sklearn-style macro F1 over the gold labels
    f1 = {"billing": 2 * 1 / (2 * 1 + 0 + 1), "shipping": 2 * 1 / (2 + 1 + 1), "refund": 1.0}
    assert aggregate(type(suite), records, "macro_f1") == pytest.approx(sum(f1.values()) / 3)


def test_task_short_answers_and_generation(tmp_path):
    from sacrebleu.metrics import BLEU

    short = tmp_path / "qa.jsonl"
    short.write_text(json.dumps({"question": "Capital of France?", "answers": ["Paris", "Paris, France"]}) + "\n"
                     + json.dumps({"question": "2+2?", "answer": "four"}) + "\n")
    suite = SUITES.get("task")(data=str(short))
    recs = suite.run(FakeEngine(respond=lambda r: "The Paris." if "France" in r.messages[-1].content else "five"),
                     suite.load_items(), ctx())
    assert suite.kind == "short"
    assert [r.scores["exact_match"] for r in recs] == [1.0, 0.0]

    gen = tmp_path / "sum.jsonl"
    refs = ["the council will close the road for repairs next week", "residents should use the bypass road",
            "the new library opens on monday morning in the town centre"]
    hyps = ["the council closes the road next week", "people should use another road", "a library opens monday"]
    gen.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Summarise {i}"},
                                                    {"role": "assistant", "content": ref}]}) + "\n"
                           for i, ref in enumerate(refs)))
    suite = SUITES.get("task")(data=str(gen))
    recs = suite.run(FakeEngine(respond=lambda r: hyps[int(r.messages[-1].content.split()[-1])]),
                     suite.load_items(), ctx())
    assert suite.kind == "generation"
    assert all(0 < r.scores["rouge_l"] <= 1 for r in recs)
    assert aggregate(type(suite), recs, "bleu") == pytest.approx(BLEU().corpus_score(hyps, [refs]).score)


def test_task_needs_a_source_and_names_missing_fields(tmp_path):
    with pytest.raises(UserError, match="task=NAME"):
        SUITES.get("task")()
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"prompt": "hi", "response": "hello"}) + "\n" + json.dumps({"prompt": "x"}) + "\n")
    with pytest.raises(UserError, match=r"t\.jsonl.*row 2.*missing field 'label'"):
        SUITES.get("task")(data=str(path)).load_items()


def test_protocols_are_json(packaged):
    for name, opts in [("capability", {}), ("perplexity", {}), ("ood", {}), ("bias", {}), ("diversity", {})]:
        suite = SUITES.get(name)(**opts)
        json.dumps(suite.protocol())


def test_loglikelihood_requests_are_plain_values():
    q = MCQuestion.simple("ctx", ["a", "b"], 0)
    assert q.requests() == [LoglikelihoodRequest("ctx", " a"), LoglikelihoodRequest("ctx", " b")]
    assert q.request_json() == {"kind": "loglikelihood", "context": "ctx", "continuations": [" a", " b"]}

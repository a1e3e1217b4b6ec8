"""compare_run on synthetic runs: rows, Holm families, flips, curves, seeds, cross-run pairing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aftertune.compare import RunFacts, combine, compare_records, compare_run, stats
from aftertune.errors import UserError
from aftertune.record import Record
from aftertune.store.db import Store
from compare_fixtures import chat, make_run


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "store.sqlite")
    yield s
    s.close()


@pytest.fixture
def results(store):
    return compare_run(store, make_run(store))


def _row(results, model, suite, metric, category="all"):
    (row,) = [r for r in results["comparisons"] if (r["model"], r["suite"], r["metric"], r["category"]) ==
              (model, suite, metric, category)]
    return row


def test_roles_and_shape(results):
    assert results["schema"] == "aftertune.results" and results["schema_version"] == 3
    assert results["reference"] == "base" and results["primary"] == "tuned"
    roles = {m["label"]: m["role"] for m in results["models"]}
    assert roles == {"base": "reference", "tuned": "primary", "checkpoint-20": "checkpoint",
                     "checkpoint-40": "checkpoint"}
    assert {s["name"] for s in results["suites"]} == {"t_safety", "t_capability", "t_toxicity"}
    # a row per compared model, suite, metric and category (plus "all")
    cats = {r["category"] for r in results["comparisons"] if r["suite"] == "t_safety"}
    assert cats == {"all", "violence", "fraud", "self-harm $x$ <i>"}
    assert not [r for r in results["comparisons"] if r["model"] == "base"]


def test_binary_row_matches_direct_computation(store):
    run_id = make_run(store)
    res = compare_run(store, run_id)
    base = {r.item_id: r.scores["compliance_rate"] for r in store.records(run_id, model="base", suite="t_safety")}
    tuned = {r.item_id: r.scores["compliance_rate"] for r in store.records(run_id, model="tuned", suite="t_safety")}
    ids = sorted(base)
    table = stats.PairedTable.from_outcomes([base[i] for i in ids], [tuned[i] for i in ids])
    row = _row(res, "tuned", "t_safety", "compliance_rate")
    assert row["n"] == len(ids)
    assert row["reference_value"] == pytest.approx(np.mean([base[i] for i in ids]))
    assert row["value"] == pytest.approx(np.mean([tuned[i] for i in ids]))
    assert row["delta"] == pytest.approx(row["value"] - row["reference_value"])
    assert row["delta_ci"] == pytest.approx(list(stats.tango_diff_ci(table)))
    assert row["ratio"] == pytest.approx(row["value"] / row["reference_value"])
    assert row["ratio_ci"] == pytest.approx(list(stats.bonett_price_ratio_ci(table)))
    from statsmodels.stats.contingency_tables import mcnemar

    assert row["p_value"] == pytest.approx(mcnemar([[table.n11, table.n12], [table.n21, table.n22]], exact=True).pvalue)
    assert row["counts"] == {"both": table.n11, "new_only": table.n12, "reference_only": table.n21,
                             "neither": table.n22}
    # compliance is lower-is-better, and the synthetic tuned model complies far more: worse
    assert row["significant"] and row["change"] == "worse"
    assert _row(res, "tuned", "t_capability", "acc")["change"] == "better"


def test_holm_families(results):
    from statsmodels.stats.multitest import multipletests

    for model in ("tuned", "checkpoint-20"):
        for family in ("overall", "category"):
            rows = [r for r in results["comparisons"] if r["model"] == model and r["family"] == family]
            assert rows
            expected = multipletests([r["p_value"] for r in rows], method="holm")[1]
            assert [r["p_adjusted"] for r in rows] == pytest.approx(expected.tolist())
            for r in rows:
                assert r["significant"] == (r["p_adjusted"] < 0.05)


def test_score_and_generic_aggregate_rows(store):
    run_id = make_run(store)
    res = compare_run(store, run_id)
    tox = {m: [r.scores["toxicity"] for r in store.records(run_id, model=m, suite="t_toxicity")]
           for m in ("base", "tuned")}
    row = _row(res, "tuned", "t_toxicity", "toxicity")
    assert row["test"] == "permutation" and row["ci_method"] == "bootstrap_percentile"
    assert row["value"] == pytest.approx(np.mean(tox["tuned"]))
    lo, hi = row["delta_ci"]
    assert lo < row["delta"] < hi
    worst = _row(res, "tuned", "t_toxicity", "worst")  # registered with the test aggregate "t_max"
    assert worst["reference_value"] == pytest.approx(max(tox["base"]))
    assert worst["value"] == pytest.approx(max(tox["tuned"]))
    assert [d for d in res["distributions"] if d["metric"] == "toxicity"]
    assert not [d for d in res["distributions"] if d["metric"] == "worst"]


def test_flips(store):
    run_id = make_run(store)
    res = compare_run(store, run_id)
    flips = [f for f in res["flips"] if f["model"] == "tuned" and f["metric"] == "compliance_rate"]
    base = {r.item_id: r for r in store.records(run_id, model="base", suite="t_safety")}
    tuned = {r.item_id: r for r in store.records(run_id, model="tuned", suite="t_safety")}
    changed = {i for i in base if base[i].scores != tuned[i].scores}
    assert {f["item_id"] for f in flips} == changed
    for f in flips:
        # lower is better for compliance: 0 → 1 is a regression (pass → fail)
        assert f["change"] == ("regressed" if f["value"] == 1.0 else "improved")
        assert f["prompt"] == f"[user] harmful request {int(f['item_id'][1:])} <b>bold</b>"
        assert f["reference_response"] == base[f["item_id"]].response
        assert f["response"] == tuned[f["item_id"]].response
    assert [(f["category"], f["item_id"]) for f in flips] == sorted((f["category"], f["item_id"]) for f in flips)
    (count,) = [c for c in res["flip_counts"] if (c["model"], c["metric"]) == ("tuned", "compliance_rate")]
    assert count["regressed"] == sum(f["change"] == "regressed" for f in flips)
    row = _row(res, "tuned", "t_safety", "compliance_rate")
    assert count["regressed"] == row["counts"]["new_only"] and count["improved"] == row["counts"]["reference_only"]
    # capability is higher-is-better: the loglikelihood suite has no response text, so the prediction is shown
    cap = [f for f in res["flips"] if f["suite"] == "t_capability"]
    assert cap and all(f["response"].startswith("(pred: ") for f in cap)
    # checkpoints are counted but not listed
    assert not [f for f in res["flips"] if f["model"].startswith("checkpoint")]
    assert [c for c in res["flip_counts"] if c["model"] == "checkpoint-40"]


def test_checkpoint_curves(results):
    curve = next(c for c in results["checkpoints"] if (c["suite"], c["metric"]) == ("t_safety", "compliance_rate"))
    assert [(p["model"], p["step"]) for p in curve["points"]] == [("base", 0), ("checkpoint-20", 20),
                                                                  ("checkpoint-40", 40)]
    values = {m: v["compliance_rate"] for m, v in
              next(s for s in results["suites"] if s["name"] == "t_safety")["values"].items()}
    assert curve["points"][1]["value"] == values["checkpoint-20"]["value"]
    for p in curve["points"]:
        assert p["ci"][0] <= p["value"] <= p["ci"][1]


def test_curve_points_share_the_checkpoints_items(store):
    """Checkpoints answer a subset of the main sample: the reference's point must use that subset too."""
    run_id = make_run(store, checkpoints=False)
    store.add_model(run_id, "checkpoint-10", "out/checkpoint-10", "fp-ck10", {"step": 10})
    base = {r.item_id: r for r in store.records(run_id, model="base", suite="t_safety")}
    subset = sorted(base)[:30]
    store.put_records(run_id, [Record("checkpoint-10", "t_safety", i, base[i].category, base[i].request, "Sure",
                                      {"compliance_rate": 1.0}, {}) for i in subset])
    res = compare_run(store, run_id)
    curve = next(c for c in res["checkpoints"] if (c["suite"], c["metric"]) == ("t_safety", "compliance_rate"))
    first, last = curve["points"]
    assert (first["model"], first["n"], last["n"]) == ("base", 30, 30)
    assert first["value"] == pytest.approx(sum(base[i].scores["compliance_rate"] for i in subset) / 30)
    full = next(s for s in res["suites"] if s["name"] == "t_safety")["values"]["base"]["compliance_rate"]
    assert full["n"] == 120  # the main table keeps the reference's whole sample


def test_seed_groups(store):
    run_id = store.create_run("audit", "seeds", {})
    store.add_model(run_id, "base", "b", "fb", {})
    rng = np.random.default_rng(0)
    shifts = {1: 0.2, 2: 0.3, 3: 0.25}
    recs = []
    u = rng.random(100)
    for label, shift in [("base", 0.0)] + [(f"tuned-seed{s}", v) for s, v in shifts.items()]:
        if label != "base":
            store.add_model(run_id, label, label, "f" + label, {})
        for i in range(100):
            recs.append(Record(label, "t_capability", f"c{i}", "all", chat("q"), "",
                               {"acc": float(u[i] < 0.4 + shift)}, {}))
    store.put_records(run_id, recs)
    res = compare_run(store, run_id)
    (group,) = res["seed_groups"]
    assert group["group"] == "tuned" and group["seeds"] == [1, 2, 3]
    (row,) = group["rows"]
    deltas = [_row(res, f"tuned-seed{s}", "t_capability", "acc")["delta"] for s in (1, 2, 3)]
    mean, lo, hi = stats.t_interval(deltas)
    assert row["deltas"] == pytest.approx(deltas)
    assert row["mean_delta"] == pytest.approx(mean) and row["delta_ci"] == pytest.approx([lo, hi])
    assert res["primary"] == "tuned-seed1"


def test_pairs_only_shared_scored_items(store):
    run_id = store.create_run("audit", "partial", {})
    recs = [Record("base", "t_capability", f"c{i}", "all", chat("q"), "", {"acc": 1.0}, {}) for i in range(10)]
    recs += [Record("tuned", "t_capability", f"c{i}", "all", chat("q"), "", {"acc": None if i == 2 else 0.0}, {})
             for i in range(2, 12)]
    store.put_records(run_id, recs)
    res = compare_run(store, run_id)
    row = _row(res, "tuned", "t_capability", "acc")
    assert row["n"] == 7  # c3..c9: c2 is unscored for tuned, c0/c1 and c10/c11 are not shared
    assert row["reference_value"] == 1.0 and row["value"] == 0.0
    assert row["ratio"] == 0.0
    assert res["protocol"]["suites"][0]["items_shared"] == 8


def test_unregistered_suite_is_inferred_with_a_warning(store):
    run_id = store.create_run("audit", "plugin", {})
    recs = [Record(m, "not_registered_suite", f"i{i}", "all", chat("q"), "r", {"hit": float(i % 2), "s": i / 10}, {})
            for m in ("base", "tuned") for i in range(10)]
    store.put_records(run_id, recs)
    res = compare_run(store, run_id)
    (suite,) = res["suites"]
    kinds = {m["name"]: (m["kind"], m["declared"]) for m in suite["metrics"]}
    assert kinds == {"hit": ("binary", False), "s": ("score", False)}
    assert any("not registered" in w for w in res["warnings"])


def test_single_model_run_reports_values(store):
    run_id = store.create_run("audit", "one", {})
    store.put_records(run_id, [Record("base", "t_capability", f"c{i}", "all", chat("q"), "", {"acc": float(i % 4 == 0)},
                                      {}) for i in range(40)])
    res = compare_run(store, run_id)
    assert res["primary"] is None and res["comparisons"] == [] and res["verdict"]["status"] == "single"
    v = res["suites"][0]["values"]["base"]["acc"]
    assert v["value"] == 0.25 and v["n"] == 40
    assert v["ci"] == pytest.approx(list(stats.wilson_ci(10, 40)))


def test_errors(store):
    with pytest.raises(UserError, match="no per-item records"):
        compare_run(store, store.create_run("audit", "empty", {}))
    full = make_run(store, checkpoints=False)
    with pytest.raises(UserError, match=r"--reference 'nope'.*base, tuned"):
        compare_run(store, full, reference="nope")
    with pytest.raises(UserError, match="no run"):
        compare_run(store, "does-not-exist")


def test_reference_override_and_determinism(store):
    run_id = make_run(store, checkpoints=False)
    a = compare_run(store, run_id, reference="tuned")
    assert a["reference"] == "tuned" and a["primary"] == "base"
    assert _row(a, "base", "t_safety", "compliance_rate")["change"] == "better"
    b = compare_run(store, run_id, reference="tuned")
    for res in (a, b):
        assert set(res.pop("volatile")) == {"run_id", "status", "created", "updated", "timings", "judge_validity"}
    assert a == b


def test_records_alone_give_the_comparison_and_checkpoint_choice_pairs_the_shared_items(store):
    """compare_records needs no store; shared_results compares candidates on the items all of them answered."""
    from aftertune.checkpoint_choice import shared_results

    run_id = make_run(store, n_safety=30, checkpoints=False)
    store.add_model(run_id, "checkpoint-2", "out/checkpoint-2", "fp-ck2", {"step": 2})
    subset = store.records(run_id, model="tuned", suite="t_safety")[::3]
    store.put_records(run_id, [Record("checkpoint-2", r.suite, r.item_id, r.category, r.request, r.response,
                                      r.scores, r.details) for r in subset])
    shared = shared_results(store, run_id, ["checkpoint-2", "tuned"], ["t_safety"])
    rows = [r for r in shared["comparisons"] if r["category"] == "all"]
    assert {r["model"] for r in rows} == {"checkpoint-2", "tuned"} and {r["n"] for r in rows} == {len(subset)}
    assert shared["protocol"]["suites"][0]["items_shared"] == len(subset)
    # checkpoint-2 answered as tuned did on those items: the same numbers
    by_model = {r["model"]: {k: r[k] for k in ("value", "delta", "p_value")} for r in rows}
    assert by_model["checkpoint-2"] == by_model["tuned"]

    run = store.get_run(run_id)
    facts = RunFacts(run.id, run.name, run.kind, run.status, run.spec, events=store.events(run_id))
    direct = compare_records(store.records(run_id), store.models(run_id), facts)
    stored = compare_run(store, run_id)
    for res in (direct, stored):
        res.pop("volatile")
    assert direct == stored


def test_json_is_strict(results):
    import json

    text = json.dumps(results, allow_nan=False)  # raises on NaN/inf
    assert json.loads(text) == results


def test_combine_runs_pairs_by_suite_and_item(store):
    full = make_run(store, checkpoints=False)
    run_a = store.create_run("audit", "base only", {})
    run_b = store.create_run("audit", "tuned only", {})
    store.add_model(run_a, "base", "org/base", "fp-a", {})
    store.add_model(run_b, "tuned", "out/tuned", "fp-b", {"step": None})
    store.put_records(run_a, store.records(full, model="base"))
    store.put_records(run_b, [r for r in store.records(full, model="tuned") if r.item_id != "s0005"])
    store.add_event(run_a, "judge", "judge_validity", {"judge": "refusal", "n": 10})
    new_id, ref = combine(store, [run_a, run_b])
    assert new_id not in (run_a, run_b) and ref == "base"
    assert store.get_run(new_id).kind == "compare"
    res = compare_run(store, new_id, ref)
    assert _row(res, "tuned", "t_safety", "compliance_rate")["n"] == 119
    assert res["protocol"]["judge_validity"][0]["source_run"] == run_a
    same = compare_run(store, full)
    for metric in ("acc",):
        assert _row(res, "tuned", "t_capability", metric)["p_value"] == _row(same, "tuned", "t_capability", metric)["p_value"]
    # loss curves survive a merge: the tuned model's run carries its training events
    curves = [e for e in store.events(full) if e["kind"] in ("tune_train", "tune_eval")]
    assert curves and compare_run(store, full)["protocol"]["train_metrics"]
    for e in curves:
        store.add_event(run_b, e["step"], e["kind"], e["payload"])
    merged = compare_run(store, combine(store, [run_a, run_b])[0], "base")["protocol"]["train_metrics"]
    assert [(m["step"], m.get("loss"), m.get("eval_loss")) for m in merged] == \
        [(m["step"], m.get("loss"), m.get("eval_loss")) for m in compare_run(store, full)["protocol"]["train_metrics"]]
    # one run, two of its models, and a label taken twice
    new2, ref2 = combine(store, [f"{full}:tuned", f"{run_b}:tuned"])
    labels = [m["label"] for m in store.models(new2)]
    assert labels == ["tuned", f"tuned@{run_b[-6:]}"] and ref2 == "tuned"
    # a single whole run is compared in place
    assert combine(store, [full]) == (full, "base")
    with pytest.raises(UserError, match="no records for model 'ghost'"):
        combine(store, [f"{full}:ghost", run_b])
    with pytest.raises(UserError, match="at least two models"):
        combine(store, [f"{full}:base"])


def test_undefined_ratio_is_null(store):
    run_id = store.create_run("audit", "zeros", {})
    recs = [Record(m, "t_safety", f"s{i}", "all", chat("q"), "", {"compliance_rate": 0.0}, {})
            for m in ("base", "tuned") for i in range(20)]
    store.put_records(run_id, recs)
    row = _row(compare_run(store, run_id), "tuned", "t_safety", "compliance_rate")
    assert row["ratio"] is None and row["ratio_ci"] == [0.0, None]
    assert row["p_value"] == 1.0 and row["change"] == "none"
    assert not math.isnan(row["delta"])


def test_draw_counts_do_not_depend_on_the_clock(store, monkeypatch):
    """Resampling counts are fixed per spec: a clock that makes every call look slow changes no number."""
    import itertools
    import time

    run_id = make_run(store, checkpoints=False)
    normal = compare_run(store, run_id)
    ticks = itertools.count(step=100.0)
    monkeypatch.setattr(time, "perf_counter", lambda: next(ticks))
    monkeypatch.setattr(time, "time", lambda: next(ticks))
    slow = compare_run(store, run_id)
    row = _row(slow, "tuned", "t_toxicity", "worst")
    assert (row["resamples"], row["permutations"]) == (1000, 1999)
    assert _row(slow, "tuned", "t_safety", "compliance_rate")["resamples"] is None
    for res in (normal, slow):
        res.pop("volatile")
    assert normal == slow


def test_unscored_metric_is_reported_as_such(store):
    run_id = store.create_run("audit", "no judge", {})
    recs = [Record(m, "t_toxicity", f"x{i}", "all", chat("q"), "r", {"toxicity": None, "toxic": float(i % 2),
                                                                    "worst": None}, {})
            for m in ("base", "tuned") for i in range(10)]
    store.put_records(run_id, recs)
    res = compare_run(store, run_id)
    row = _row(res, "tuned", "t_toxicity", "toxicity")
    assert row["n"] == 0 and row["value"] is None and row["p_adjusted"] is None and row["change"] == "none"
    assert res["verdict"]["not_scored"] == ["t_toxicity.toxicity", "t_toxicity.worst"]
    assert res["verdict"]["unchanged"] == ["t_toxicity.toxic"]
    assert res["verdict"]["headline"] == "tuned vs base: no significant change on any of 1 metric"


def test_rows_state_their_mde_and_the_verdict_says_when_the_run_is_too_small(store):
    """Every row carries its minimum detectable effect; a target the sample cannot see is named in the verdict."""
    from aftertune.compare import power

    run_id = store.create_run("audit", "small", {"gate": {"t_safety.compliance_rate": {"max_increase": 0.05}},
                                                 "audit": {"power": {"t_capability.acc": 0.9}}})
    recs = []
    for label, flips in (("base", ()), ("tuned", (0, 1, 2))):
        for i in range(20):
            comply = float(i in flips or i == 10)
            recs.append(Record(label, "t_safety", f"s{i}", "all", chat("q"), "a", {"compliance_rate": comply}, {}))
            recs.append(Record(label, "t_capability", f"c{i}", "all", chat("q"), "a",
                               {"acc": float((i + (label == "tuned")) % 2)}, {}))
    store.put_records(run_id, recs)
    res = compare_run(store, run_id)
    safety = _row(res, "tuned", "t_safety", "compliance_rate")
    m = sum(1 for r in res["comparisons"] if r["model"] == "tuned" and r["family"] == "overall")
    assert safety["mde_alpha"] == pytest.approx(0.05 / m)
    assert safety["mde"] == pytest.approx(power.binary_mde(20, 3 / 20, 0.05 / m))
    assert safety["target_effect"] == 0.05 and safety["target_source"] == "gate"
    assert safety["power"] == pytest.approx(power.binary_power(20, 0.05, 3 / 20, 0.05 / m)) and safety["power"] < 0.8
    cap = _row(res, "tuned", "t_capability", "acc")
    assert cap["target_source"] == "audit.power" and cap["mde"] < 0.9 <= 1.0 and cap["power"] >= 0.8
    assert res["verdict"]["headline"].endswith("too few items to see the change that matters on 1")
    assert [line.split(":")[0] for line in res["verdict"]["underpowered"]] == ["t_safety.compliance_rate"]

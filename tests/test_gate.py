"""The gate: rules, significant_only, input errors, and `aftertune gate` exit codes."""

from __future__ import annotations

import copy
import json

import pytest

from aftertune.compare import compare_run
from aftertune.compare.gate import check, normalize
from aftertune.errors import UserError
from aftertune.report import write_reports
from aftertune.store.db import Store
from compare_fixtures import make_run, run_cli


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gate")
    store = Store(tmp / "store.sqlite")
    run_id = make_run(store, checkpoints=False)
    results = compare_run(store, run_id)
    yield {"store": store, "run_id": run_id, "results": results, "tmp": tmp}
    store.close()


def _row(results, suite, metric, model="tuned"):
    return next(r for r in results["comparisons"] if (r["model"], r["suite"], r["metric"], r["category"]) ==
                (model, suite, metric, "all"))


def test_rules(env):
    res = env["results"]
    safety = _row(res, "t_safety", "compliance_rate")  # +12.5 pts, significant, worse
    cap = _row(res, "t_capability", "acc")  # +8.5 pts, better
    assert safety["delta"] > 0.1 and safety["significant"]
    assert not check(res, {"t_safety.compliance_rate": {"max_increase": 0.2}})
    (v,) = check(res, {"t_safety.compliance_rate": {"max_increase": 0.05}})
    assert (v.metric, v.rule, v.limit, v.model, v.reference_model) == ("t_safety.compliance_rate", "max_increase",
                                                                        0.05, "tuned", "base")
    assert v.observed == safety["value"] and v.reference == safety["reference_value"]
    assert list(v.delta_ci) == safety["delta_ci"]
    line = v.line()
    assert line.startswith("t_safety.compliance_rate: max_increase 0.05 violated: reference 12.5% (base), "
                           "observed 25.0% (tuned), change +12.5 pts (CI ")
    assert "p_adj <0.001" in line
    assert not check(res, {"t_capability.acc": {"max_decrease": 0.0}})
    assert check(res, {"t_capability.acc": {"max_increase": 0.01}})
    assert not check(res, {"t_safety.compliance_rate": {"max_ratio": safety["ratio"] + 0.01}})
    assert check(res, {"t_safety.compliance_rate": {"max_ratio": 1.2}})
    assert check(res, {"t_capability.acc": {"min_ratio": cap["ratio"] + 0.01}})
    assert check(res, {"t_capability.acc": {"min": 0.6}}) and not check(res, {"t_capability.acc": {"min": 0.5}})
    assert check(res, {"t_safety.compliance_rate": {"max": 0.2}})
    # several rules on one metric give one violation each
    assert len(check(res, {"t_safety.compliance_rate": {"max_increase": 0.0, "max_ratio": 1.0, "max": 0.3}})) == 2


def test_significant_only(env):
    res = env["results"]
    toxic = _row(res, "t_toxicity", "toxic")  # 0% → 6.2%, not significant after Holm
    assert not toxic["significant"] and toxic["delta"] > 0.05
    assert check(res, {"t_toxicity.toxic": {"max_increase": 0.02}})
    assert not check(res, {"t_toxicity.toxic": {"max_increase": 0.02}, "significant_only": True})
    assert not check(res, {"thresholds": {"t_toxicity.toxic": {"max_ratio": 1.2}}, "significant_only": True})
    # base rate 0: the ratio is unbounded, which violates any max_ratio
    (v,) = check(res, {"t_toxicity.toxic": {"max_ratio": 1.2}})
    assert v.ratio is None and "ratio inf" in v.line()
    # significant changes still fail with significant_only
    assert check(res, {"t_safety.compliance_rate": {"max_increase": 0.05}, "significant_only": True})


def test_no_paired_items_fails(env):
    res = copy.deepcopy(env["results"])
    row = _row(res, "t_safety", "compliance_rate")
    row.update(n=0, value=None, delta=None, ratio=None)
    (v,) = check(res, {"t_safety.compliance_rate": {"max_increase": 0.05}})
    assert "cannot be checked" in v.line()


def test_input_errors(env):
    res = env["results"]
    with pytest.raises(UserError, match=r"unknown metric\(s\) t_safety.nope; available: t_capability.acc, "
                                        r"t_safety.compliance_rate, t_toxicity.toxic"):
        check(res, {"t_safety.nope": {"max_increase": 0.1}})
    with pytest.raises(UserError, match="unknown rule 'max_incr'"):
        check(res, {"t_safety.compliance_rate": {"max_incr": 0.1}})
    with pytest.raises(UserError, match="expected a number"):
        check(res, {"t_safety.compliance_rate": {"max_increase": "lots"}})
    for rule, limit in (("max_ratio", -1.2), ("min_ratio", 0)):
        with pytest.raises(UserError, match=rf"t_toxicity.toxic.{rule}: {limit} is not a ratio"):
            check(res, {"t_toxicity.toxic": {rule: limit}})
    with pytest.raises(UserError, match=r"suite\.metric"):
        check(res, {"compliance_rate": {"max_increase": 0.1}})
    with pytest.raises(UserError, match="no gate thresholds"):
        check(res, {"significant_only": True})
    with pytest.raises(UserError, match=r"gate model 'ghost'"):
        check(res, {"t_safety.compliance_rate": {"max_increase": 0.1}, "model": "ghost"})
    rules, options = normalize({"a.b": {"max": 1}, "significant_only": False})
    assert rules == {"a.b": {"max": 1.0}} and options == {"significant_only": False}


def test_gate_cli_exit_codes(env, capsys, tmp_path):
    store, run_id = str(env["store"].path), env["run_id"]
    assert run_cli(["gate", run_id, "--store", store, "-t", "t_safety.compliance_rate: {max_increase: 0.05}",
                    "-t", "t_capability.acc.max_decrease=0.02"]) == 1
    out = capsys.readouterr()
    lines = [x for x in out.out.splitlines() if x.startswith("FAIL ")]
    assert len(lines) == 1 and "t_safety.compliance_rate: max_increase 0.05 violated" in lines[0]
    assert "1 of 2 threshold(s) violated" in out.err

    assert run_cli(["gate", run_id, "--store", store, "-t", "t_safety.compliance_rate: {max_increase: 0.5}"]) == 0
    assert "gate passed" in capsys.readouterr().out

    assert run_cli(["gate", run_id, "--store", store, "-t", "t_toxicity.toxic: {max_increase: 0.02}",
                    "--significant-only"]) == 0
    capsys.readouterr()

    assert run_cli(["gate", run_id, "--store", store, "-t", "safety.compliance: {max_increase: 0.05}"]) == 2
    err = capsys.readouterr().err
    assert "unknown metric(s) safety.compliance" in err and "available: t_capability.acc" in err

    assert run_cli(["gate", run_id, "--store", store, "-t", "t_safety.compliance_rate: [oops"]) == 2
    assert run_cli(["gate", run_id, "--store", store]) == 2  # no thresholds anywhere
    assert "no gate thresholds" in capsys.readouterr().err
    assert run_cli(["gate", "no-such-run", "--store", store, "-t", "a.b: {max: 1}"]) == 2


def test_gate_from_thresholds_file_spec_and_results_json(env, capsys, tmp_path):
    store, run_id = env["store"], env["run_id"]
    f = tmp_path / "gate.yaml"
    f.write_text("gate:\n  significant_only: true\n  thresholds:\n    t_safety.compliance_rate: {max_increase: 0.05}\n")
    assert run_cli(["gate", run_id, "--store", str(store.path), "--thresholds", str(f)]) == 1
    capsys.readouterr()
    # a report folder (CI without the store): read results.json
    out = tmp_path / "rep"
    write_reports(store, run_id, out)
    assert run_cli(["gate", str(out), "-t", "t_capability.acc: {max_decrease: 0.02}"]) == 0
    assert run_cli(["gate", str(out / "results.json"), "-t", "t_safety.compliance_rate: {max_ratio: 1.2}"]) == 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"hello": 1}))
    assert run_cli(["gate", str(bad), "-t", "a.b: {max: 1}"]) == 2
    # thresholds from the run spec's gate section, also written into results.json by write_reports
    spec_run = store.create_run("pipeline", "with gate", {"gate": {"t_safety.compliance_rate": {"max_increase": 0.05}}})
    store.put_records(spec_run, store.records(run_id))
    assert run_cli(["gate", spec_run, "--store", str(store.path)]) == 1
    res = write_reports(store, spec_run, tmp_path / "spec")
    assert res["gate"]["passed"] is False and res["gate"]["violations"][0]["metric"] == "t_safety.compliance_rate"

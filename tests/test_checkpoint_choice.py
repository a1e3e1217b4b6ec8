"""Safety-aware checkpoint choice, safety early stopping and scan metrics in the gate."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest

from aftertune.checkpoint_choice import choose
from aftertune.compare.gate import check
from aftertune.errors import UserError
from aftertune.pipeline import run_pipeline
from aftertune.run_outcomes import attach_outcomes
from aftertune.scan.report import assess
from aftertune.spec import load_pipeline_spec
from aftertune.store import Store
from aftertune.testing.support_rows import write_support_rows

# --------------------------------------------------------------------------- choose() on hand-made comparisons

STEPS = {"checkpoint-2": 2, "checkpoint-4": 4, "tuned": 4}
RULE = {"safety.compliance": {"max_increase": 0.10}}


def _row(model: str, suite: str, metric: str, kind: str, ref: float, value: float) -> dict:
    delta = value - ref
    return {"model": model, "reference": "base", "suite": suite, "metric": metric, "category": "all", "kind": kind,
            "n": 20, "reference_value": ref, "value": value, "delta": delta, "delta_ci": [delta - 0.1, delta + 0.1],
            "ratio": value / ref if ref else None, "ratio_ci": [None, None], "p_adjusted": 0.5, "significant": False}


def _results(rouge: dict[str, float], compliance: dict[str, float]) -> dict:
    rows = []
    for model in STEPS:
        rows.append(_row(model, "task", "rouge_l", "score", 0.20, rouge[model]))
        rows.append(_row(model, "safety", "compliance", "binary", 0.10, 0.10 + compliance[model]))
    return {"run": {"id": "r"}, "reference": "base", "primary": "tuned", "comparisons": rows}


def _choose(rouge: dict[str, float], compliance: dict[str, float], rules: dict = RULE, **kw: bool) -> dict:
    return choose(_results(rouge, compliance), list(STEPS.items()), "task.rouge_l", rules, **kw)


def test_best_checkpoint_under_the_safety_constraint():
    choice = _choose({"checkpoint-2": 0.30, "checkpoint-4": 0.50, "tuned": 0.55},
                     {"checkpoint-2": 0.05, "checkpoint-4": 0.20, "tuned": 0.25})
    assert (choice["chosen"], choice["step"], choice["value"]) == ("checkpoint-2", 2, 0.30)
    by = {c["label"]: c for c in choice["candidates"]}
    assert by["checkpoint-2"]["excluded"] == []
    assert "safety.compliance: max_increase 0.1 violated" in by["tuned"]["excluded"][0]
    assert "1 of 3 candidate(s) meeting safety.compliance max_increase 0.1" in choice["reason"]


def test_the_best_qualifying_value_wins_not_the_last_step():
    choice = _choose({"checkpoint-2": 0.30, "checkpoint-4": 0.50, "tuned": 0.40},
                     {"checkpoint-2": 0.0, "checkpoint-4": 0.05, "tuned": 0.0})
    assert choice["chosen"] == "checkpoint-4"


def test_no_candidate_qualifies_keeps_the_base_model():
    choice = _choose({"checkpoint-2": 0.30, "checkpoint-4": 0.50, "tuned": 0.55},
                     {"checkpoint-2": 0.15, "checkpoint-4": 0.20, "tuned": 0.25})
    assert (choice["chosen"], choice["step"], choice["value"]) == ("base", 0, 0.20)
    assert "keep the base model" in choice["reason"] and "subject_to" in choice["reason"]
    assert all(c["excluded"] for c in choice["candidates"])
    nothing = choose({"comparisons": []}, list(STEPS.items()), "task.rouge_l", RULE)  # no shared items at all
    assert nothing["chosen"] == "base"
    assert nothing["candidates"][0]["excluded"] == ["task.rouge_l: not scored on the shared items",
                                                    "checkpoint-2 has no items in common with base"]


def test_ties_go_to_the_earlier_step_then_to_the_final_model():
    safe = {"checkpoint-2": 0.0, "checkpoint-4": 0.0, "tuned": 0.0}
    assert _choose({"checkpoint-2": 0.5, "checkpoint-4": 0.5, "tuned": 0.5}, safe)["chosen"] == "checkpoint-2"
    assert _choose({"checkpoint-2": 0.4, "checkpoint-4": 0.5, "tuned": 0.5}, safe)["chosen"] == "tuned"


def test_minimize_and_no_constraints():
    choice = _choose({"checkpoint-2": 0.30, "checkpoint-4": 0.10, "tuned": 0.50},
                     {"checkpoint-2": 0.5, "checkpoint-4": 0.5, "tuned": 0.5}, {}, minimize=True)
    assert choice["chosen"] == "checkpoint-4" and choice["direction"] == "minimize"


# --------------------------------------------------------------------------- spec validation

def _spec_with(checkpoints: dict) -> None:
    load_pipeline_spec(None, {"train": {"data": "support", "max_steps": 4}, "checkpoints": checkpoints})


def test_select_and_stop_when_must_name_checkpoint_suites():
    with pytest.raises(UserError, match=r"checkpoints: select\.maximize: suite 'task' .*add it to checkpoints\.suites"):
        _spec_with({"suites": ["safety"], "select": {"maximize": "task.rouge_l"}})
    with pytest.raises(UserError, match="stop_when: suite 'capability'"):
        _spec_with({"suites": ["safety"], "stop_when": {"capability.acc": {"max_decrease": 0.1}}})
    with pytest.raises(UserError, match="has no metric 'rouge'"):
        _spec_with({"suites": ["task"], "select": {"maximize": "task.rouge"}})
    with pytest.raises(UserError, match="one of maximize or minimize"):
        _spec_with({"suites": ["task"], "select": {"maximize": "task.rouge_l", "minimize": "task.bleu"}})
    with pytest.raises(UserError, match="unknown rule 'max_rise'"):
        _spec_with({"suites": ["safety"], "stop_when": {"safety.compliance": {"max_rise": 0.1}}})
    _spec_with({"suites": ["task", "safety"], "select": {"maximize": "task.rouge_l",
                                                           "subject_to": {"safety.compliance": {"max_increase": 0.1}}},
                "stop_when": {"safety.compliance": {"max_increase": 0.15}}})


# --------------------------------------------------------------------------- scan metrics in the gate

def _scan_results(store: Store, counts: dict[str, int], rows: int = 200) -> dict:
    risk, reasons, metrics = assess(counts, rows)
    run_id = store.create_run("pipeline", "scan", {})
    store.add_event(run_id, "scan", "scan", {"source": "train.jsonl", "rows": rows, "risk": risk,
                                             "risk_reasons": reasons, "metrics": metrics, "flags": []})
    results = {"run": {"id": run_id}, "reference": "base", "primary": "tuned",
               "comparisons": [_row("tuned", "task", "rouge_l", "score", 0.2, 0.3)]}
    return attach_outcomes(results, store, run_id)


def test_gate_bounds_scan_metrics(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    clean = _scan_results(store, {"_flagged": 1, "exact_duplicate": 1})
    risky = _scan_results(store, {"_flagged": 4, "harmful_request": 3, "harmful_compliance": 3})
    assert risky["scan"]["metrics"]["scan.risk_level"] == 2 and clean["scan"]["metrics"]["scan.risk_level"] == 0
    assert risky["scan"]["metrics"]["scan.flagged_rate"] == pytest.approx(4 / 200)
    rules = {"scan.harmful_compliance_rows": {"max": 0}, "scan.risk_level": {"max": 1},
             "scan.flagged_rate": {"max": 0.01}, "task.rouge_l": {"max_decrease": 0.5}}
    assert check(clean, rules) == []
    lines = [v.line() for v in check(risky, rules)]
    assert lines == ["scan.harmful_compliance_rows: max 0 violated: the training data (train.jsonl) has 3",
                     "scan.risk_level: max 1 violated: the training data (train.jsonl) has 2",
                     "scan.flagged_rate: max 0.01 violated: the training data (train.jsonl) has 0.02"]


def test_gate_refuses_change_rules_on_scan_metrics_and_missing_scans(tmp_path):
    results = _scan_results(Store(tmp_path / "s.sqlite"), {})
    with pytest.raises(UserError, match="use max or min"):
        check(results, {"scan.harmful_rows": {"max_increase": 0}})
    with pytest.raises(UserError, match=r"unknown scan metric.*scan\.harmful_rows"):
        check(results, {"scan.harmfull_rows": {"max": 0}})
    del results["scan"]
    with pytest.raises(UserError, match="needs the training-data scan"):
        check(results, {"scan.harmful_rows": {"max": 0}})


# --------------------------------------------------------------------------- the early-stop callback

def test_safety_stop_holds_the_optimizer_state_until_the_audit_decides(tmp_path, monkeypatch):
    import aftertune.early_stop as es
    from aftertune.recipes.callbacks import resumable_checkpoint

    root = tmp_path / "checkpoints"
    ck = root / "checkpoint-2"
    ck.mkdir(parents=True)
    (ck / "trainer_state.json").write_text("{}")
    verdict: dict = {"lines": [], "kill": False}
    seen = []

    def audit_fn(models: dict) -> None:
        seen.append((models, resumable_checkpoint(root)))
        if verdict["kill"]:
            raise KeyboardInterrupt

    monkeypatch.setattr(es, "shared_results", lambda *a: {})
    monkeypatch.setattr(es, "violations", lambda *a: verdict["lines"])
    cb = es.SafetyStop(store=None, run_id="r", audit_fn=audit_fn, base="B", suites=["task"], rules={},
                       tune_dir=tmp_path)
    args, state = SimpleNamespace(output_dir=str(root), world_size=1), SimpleNamespace(global_step=2, max_steps=6)

    def save(**change: object) -> SimpleNamespace:
        verdict.update(change)
        (ck / "optimizer.pt").write_bytes(b"adam")  # what the trainer's save writes
        control = SimpleNamespace(should_training_stop=False)
        cb.on_save(args, state, control)
        return control

    assert not save().should_training_stop  # the rule holds: training goes on, resumable again
    assert seen == [({"base": "B", "checkpoint-2": str(ck)}, None)] and resumable_checkpoint(root) == ck
    with pytest.raises(KeyboardInterrupt):  # killed during the audit: nothing to resume from but step 0
        save(kill=True)
    assert resumable_checkpoint(root) is None
    assert save(kill=False, lines=["safety.compliance: max_increase 0.1 violated"]).should_training_stop
    assert resumable_checkpoint(root) is None and sorted(p.name for p in ck.iterdir()) == ["trainer_state.json"]
    stop = json.loads((tmp_path / es.STOP_FILE).read_text())
    assert (stop["step"], stop["label"], stop["violations"]) == (2, "checkpoint-2", verdict["lines"])


# --------------------------------------------------------------------------- end to end on the tiny model



def test_pipeline_stops_early_stays_stopped_and_chooses(tmp_path, tiny_model_dir):
    task = "task:max_new_tokens=8"
    spec = load_pipeline_spec(None, {
        "name": "tiny-stop",
        "base": str(tiny_model_dir),
        "train": {"data": write_support_rows(tmp_path / "train.jsonl", 24),
                  "eval_data": write_support_rows(tmp_path / "held.jsonl", 6, offset=100), "method": "lora",
                  "max_steps": 6, "batch_size": 4, "max_length": 64, "checkpoint_every": 2, "learning_rate": 0.01},
        "scan": False,
        "audit": {"suites": [task], "limits": {"task": 6}, "batch_size": 4},
        # "ROUGE-L must rise by a whole point" cannot hold: the first checkpoint stops training
        "checkpoints": {"suites": [task], "limit": 3, "stop_when": {"task.rouge_l": {"max_decrease": -1.0}},
                        "select": {"maximize": "task.rouge_l", "subject_to": {"task.bleu": {"max_decrease": 100}}}},
        "icl": None,
        "gate": {"task.rouge_l": {"max_decrease": 1.0}},
    })
    store = Store(tmp_path / "store.sqlite")
    out = tmp_path / "run"
    tune_dir = out / "tune" / "01-tuned"

    def run() -> dict:
        result = run_pipeline(spec, out, store=store, progress=False, say=lambda _m: None)
        return {"run_id": result.run_id, "results": result.results,
                "trained": json.loads((tune_dir / "tune.json").read_text())["metrics"]["global_step"],
                "stops": store.events(result.run_id, kind="early_stop"),
                "choices": store.events(result.run_id, kind="checkpoint_choice")}

    first = run()
    assert first["trained"] == 2  # of 6
    assert [e["payload"]["step"] for e in first["stops"]] == [2]
    assert "task.rouge_l: max_decrease -1 violated" in first["stops"][0]["payload"]["violations"][0]
    assert "Training stopped early" in (out / "report.md").read_text()
    assert "Training stopped early" in (out / "report.html").read_text()

    choice = first["choices"][0]["payload"]
    assert [c["label"] for c in choice["candidates"]] == ["checkpoint-2", "tuned"]
    assert [c["step"] for c in choice["candidates"]] == [2, 2]
    assert choice["chosen"] in ("checkpoint-2", "tuned")
    assert choice["value"] == max(c["value"] for c in choice["candidates"])
    assert choice["items"] == {"task": 3}
    assert first["results"]["checkpoint_choice"] == choice
    # the checkpoint audited during training is a point of the curves, at its step
    curve_steps = {p["step"] for c in first["results"]["checkpoints"] for p in c["points"]}
    assert curve_steps == {0, 2}

    # the same command again: the finished, stopped tune is reused and nothing is recorded twice
    again = run()
    assert again["run_id"] == first["run_id"] and again["trained"] == 2
    assert len(again["stops"]) == 1 and len(again["choices"]) == 1

    # killed after the stop but before tune.json: the resume replays to the same stop, not past it
    assert not (tune_dir / "checkpoints" / "checkpoint-2" / "optimizer.pt").exists()
    (tune_dir / "tune.json").unlink()
    shutil.rmtree(tune_dir / "model")
    replay = run()
    assert replay["trained"] == 2 and len(replay["stops"]) == 1

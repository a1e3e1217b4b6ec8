"""`aftertune run` end to end on a tiny model: every step, one run holding every model, resume, gate, bad specs."""

from __future__ import annotations

import json

import pytest

from aftertune.errors import UserError
from aftertune.pipeline import run_pipeline
from aftertune.spec import load_pipeline_spec
from aftertune.store import Store
from aftertune.testing.support_rows import write_support_rows


@pytest.fixture
def spec(tmp_path, tiny_model_dir):
    train = write_support_rows(tmp_path / "train.jsonl", 24)
    held = write_support_rows(tmp_path / "held.jsonl", 6, offset=100)
    return load_pipeline_spec(None, {
        "name": "tiny",
        "base": str(tiny_model_dir),
        "train": {"data": train, "eval_data": held, "method": "lora", "max_steps": 4, "batch_size": 4,
                  "max_length": 64, "checkpoint_every": 2, "learning_rate": 0.01},
        "scan": False,
        "audit": {"suites": ["task:max_new_tokens=8"], "limits": {"task": 6}, "batch_size": 4},
        "checkpoints": {"suites": ["task:max_new_tokens=8"], "limit": 3},
        "icl": {"k": 2},
        "gate": {"task.rouge_l": {"max_decrease": 0.0}},
    })


def test_pipeline_runs_every_step_and_resumes(spec, tmp_path):
    store = Store(tmp_path / "store.sqlite")
    out = tmp_path / "run"
    first = run_pipeline(spec, out, store=store, progress=False, say=lambda _m: None)

    assert set(first.models) == {"base", "icl-2", "tuned"}
    labels = {m["label"] for m in store.models(first.run_id)}
    assert {"base", "icl-2", "tuned", "checkpoint-2", "checkpoint-4"} <= labels
    # same items for every model of the main audit
    items = {label: {r.item_id for r in store.records(first.run_id, model=label, suite="task")}
             for label in ("base", "icl-2", "tuned")}
    assert items["base"] == items["icl-2"] == items["tuned"] and len(items["base"]) == 6
    # checkpoints were audited on a subset of the main sample
    ck_items = {r.item_id for r in store.records(first.run_id, model="checkpoint-2", suite="task")}
    assert len(ck_items) == 3 and ck_items <= items["base"]
    # the last step's checkpoint has the tuned model's weights, so its fingerprint: answers come from the store
    fps = {m["label"]: m["fingerprint"] for m in store.models(first.run_id)}
    assert fps["checkpoint-4"] == fps["tuned"] != fps["checkpoint-2"]
    for name in ("report.html", "report.md", "results.json", "run.json"):
        assert (out / name).is_file(), name
    # the gate's verdict follows the numbers: any ROUGE-L decrease of the tuned model violates max_decrease 0
    rows = json.loads((out / "results.json").read_text(encoding="utf-8"))["comparisons"]
    row = next(r for r in rows if r["model"] == "tuned" and r["suite"] == "task" and r["metric"] == "rouge_l"
               and r["category"] == "all")
    assert [v.metric for v in first.violations] == (["task.rouge_l"] if row["delta"] < -1e-9 else [])

    # the same command again: the same run, nothing recomputed, the same results
    n_cache = store.cache_count()
    second = run_pipeline(spec, out, store=store, progress=False, say=lambda _m: None)
    assert second.run_id == first.run_id
    assert store.cache_count() == n_cache
    assert json.loads((out / "results.json").read_text())["volatile"]["run_id"] == first.run_id


def test_gate_violation_is_reported(spec, tmp_path):
    strict = spec.model_copy(update={"gate": {"task.rouge_l": {"max_increase": -1.0}}, "checkpoints": None,
                                     "icl": None})
    result = run_pipeline(strict, tmp_path / "run", store=Store(tmp_path / "s.sqlite"), progress=False,
                          say=lambda _m: None)
    assert len(result.violations) == 1


def test_a_crash_marks_the_pipeline_run_failed(spec, tmp_path, monkeypatch):
    """One owner of the status: the base audit inside the run finishes, tuning then crashes, and the run
    reads "failed" (nested audits used to leave it "done")."""
    import aftertune.recipes.train

    def crash(*args, **kwargs):
        raise RuntimeError("tuning crashed")

    monkeypatch.setattr(aftertune.recipes.train, "tune", crash)
    store = Store(tmp_path / "store.sqlite")
    quick = spec.model_copy(update={"checkpoints": None, "icl": None})
    with pytest.raises(RuntimeError, match="tuning crashed"):
        run_pipeline(quick, tmp_path / "run", store=store, progress=False, say=lambda _m: None)
    (run,) = store.list_runs()
    assert run.kind == "pipeline" and run.status == "failed"
    assert store.records(run.id, model="base")  # the audit before the crash did run


def test_bad_specs_fail_before_any_work(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: x\ntrian: {data: support}\n", encoding="utf-8")
    with pytest.raises(UserError, match="trian"):
        load_pipeline_spec(bad)
    with pytest.raises(UserError, match="set by the pipeline"):
        load_pipeline_spec(None, {"train": {"data": "support", "model": "x"}})
    with pytest.raises(UserError, match="no such spec file"):
        load_pipeline_spec(tmp_path / "missing.yaml")


def test_two_runs_of_one_spec_give_byte_identical_results(spec, tmp_path):
    """Apart from the `volatile` section (run id, times, wall times), results.json is the same on a rerun."""
    import shutil

    lean = spec.model_copy(update={"icl": None})
    out = tmp_path / "run"
    texts = []
    for i in range(2):
        shutil.rmtree(out, ignore_errors=True)
        run_pipeline(lean, out, store=Store(tmp_path / f"store{i}.sqlite"), progress=False, say=lambda _m: None)
        results = json.loads((out / "results.json").read_text(encoding="utf-8"))
        assert set(results.pop("volatile")) == {"run_id", "status", "created", "updated", "timings", "judge_validity"}
        assert "measured_at" not in json.dumps(results)  # when a judge was validated is volatile too
        texts.append(json.dumps(results, sort_keys=True, ensure_ascii=False))
    assert texts[0] == texts[1]


def test_power_targets_size_the_sample_and_bad_ones_fail_first(tmp_path, capsys):
    from aftertune.cli import main
    from aftertune.compare import power
    from aftertune.pipeline import _planned_limits
    from aftertune.sample_size import family_size

    spec = load_pipeline_spec(None, {"audit": {"power": {"safety.compliance": 0.15}, "limits": {"safety": 20}}})
    lines: list[str] = []
    limits = _planned_limits(spec, lines.append)
    m = family_size(["task", "capability", "safety", "jailbreak", "overrefusal", "toxicity"], {})
    assert limits["safety"] == power.n_for_binary(0.15, 0.25, 0.05 / m) > 20
    assert len(lines) == 1 and f"planned n = {limits['safety']}" in lines[0]
    capped = load_pipeline_spec(None, {"audit": {"power": {"safety.compliance": 0.15}, "power_max_items": 50}})
    lines.clear()
    assert _planned_limits(capped, lines.append)["safety"] == 50 and "capped" in lines[0]

    bad = tmp_path / "bad.yaml"
    bad.write_text("audit:\n  power: {safety.complianc: 0.1}\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(bad)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "audit: power: 'safety.complianc': unknown metric" in err[0]
    for target, match in (({"task.rouge_l": 0.1}, "is a score"), ({"ood.x": 0.1}, "not audited"),
                          ({"safety.compliance": 1.5}, "not a change of a rate")):
        with pytest.raises(UserError, match=match):
            load_pipeline_spec(None, {"audit": {"power": target}})

"""`aftertune sweep`: knob parsing and planning, the Pareto front and the chosen point, variants in the
pipeline spec, and one sweep end to end on the tiny model (resume, base answered from the cache)."""

from __future__ import annotations

import json

import pytest

from aftertune.errors import UserError
from aftertune.spec import load_pipeline_spec
from aftertune.store import Store
from aftertune.sweep import run_sweep
from aftertune.sweep.costs import added_compute
from aftertune.sweep.plan import parse_values, plan_sweep, set_path
from aftertune.sweep.report import FILES
from aftertune.sweep.tradeoff import choose, pareto_front

# -- values and knobs ------------------------------------------------------------------


def test_values_are_yaml_scalars():
    assert parse_values("0, 0.01,lora,true,1e-4,3", "k") == [
        ("0", 0), ("0.01", 0.01), ("lora", "lora"), ("true", True), ("1e-4", 1e-4), ("3", 3)]
    for bad, why in [("", "comma-separated"), ("1,,2", "comma-separated"), ("1,1", "listed twice"),
                     ("[1]", "single value"), ("null", "single value")]:
        with pytest.raises(UserError, match=why):
            parse_values(bad, "k")


def test_set_path_creates_keys_indexes_lists_and_names_bad_paths():
    data = {"train": {"data": "x"}, "stages": [], "audit": {"limits": {"task": 4}}}
    out = set_path(data, "train.learning_rate", 0.1)
    assert out["train"] == {"data": "x", "learning_rate": 0.1} and "learning_rate" not in data["train"]
    assert set_path(data, "audit.limits.task", 9)["audit"]["limits"]["task"] == 9
    staged = {"stages": [{"data": "a"}, {"data": "b"}], "train": {}}
    assert set_path(staged, "stages.1.data", "c")["stages"] == [{"data": "a"}, {"data": "c"}]
    with pytest.raises(UserError, match="'trian' is not a spec field"):
        set_path(data, "trian.learning_rate", 1)
    with pytest.raises(UserError, match=r"stages\.5 does not exist"):
        set_path(staged, "stages.5.data", 1)
    with pytest.raises(UserError, match=r"train\.data\.x does not exist"):
        set_path(data, "train.data.x", 1)
    with pytest.raises(UserError, match="trains in stages"):
        set_path(staged, "train.learning_rate", 1)
    with pytest.raises(UserError, match="dotted spec path"):
        set_path(data, "train..x", 1)


def test_plans_one_run_per_value_and_validates_every_value_first():
    spec = load_pipeline_spec(None, {"name": "s"})
    runs = plan_sweep(spec, "train.method", parse_values("lora,full", "train.method"))
    assert [r.folder for r in runs] == ["train.method=lora", "train.method=full"]
    assert [r.spec.train["method"] for r in runs] == ["lora", "full"]
    assert [r.spec.name for r in runs] == ["s-train.method=lora", "s-train.method=full"]
    assert all(r.points[0].model == "tuned" for r in runs)
    with pytest.raises(UserError, match=r"--knob train.method --values nope: .*method"):
        plan_sweep(spec, "train.method", parse_values("lora,nope", "train.method"))
    with pytest.raises(UserError, match=r"--knob train.max_steps --values -1"):
        plan_sweep(spec, "train.max_steps", parse_values("4,-1", "train.max_steps"))


def test_safety_mix_sets_the_refusals_share_and_keeps_other_mixes():
    spec = load_pipeline_spec(None, {"train": {"data": "support", "mix": [{"data": "other.jsonl", "count": 5},
                                                                            {"data": "refusals", "count": 3}]}})
    none, some = plan_sweep(spec, "safety_mix", parse_values("0,0.05", "safety_mix"))
    assert none.folder == "safety_mix=0"
    assert none.spec.train["mix"] == [{"data": "other.jsonl", "count": 5}]
    assert some.spec.train["mix"] == [{"data": "other.jsonl", "count": 5}, {"data": "refusals", "fraction": 0.05}]
    with pytest.raises(UserError, match="safety_mix: value 'lots' must be a number"):
        plan_sweep(spec, "safety_mix", parse_values("lots", "safety_mix"))


def test_seed_moves_the_fine_tune_and_the_icl_demonstrations_together():
    spec = load_pipeline_spec(None, {"name": "s", "icl": {"k": 4, "seed": 0}})
    runs = plan_sweep(spec, "seed", parse_values("1,2", "seed"))
    assert [r.folder for r in runs] == ["seed=1", "seed=2"]
    assert [(r.spec.train["seed"], r.spec.icl.seed) for r in runs] == [(1, 1), (2, 2)]
    assert {r.spec.audit.seed for r in runs} == {spec.audit.seed}  # the same items: points stay paired
    staged = load_pipeline_spec(None, {"name": "k", "stages": [{"data": "support"}, {"data": "open-qa"}]})
    assert [st["seed"] for st in plan_sweep(staged, "seed", [("5", 5)])[0].spec.stages] == [5, 5]
    with pytest.raises(UserError, match=r"seed: value '1\.5' must be a whole number"):
        plan_sweep(spec, "seed", parse_values("1.5", "seed"))


def test_interp_is_one_run_with_one_variant_per_value():
    spec = load_pipeline_spec(None, {"name": "s"})
    (run,) = plan_sweep(spec, "interp", parse_values("0.25,0.5", "interp"))
    assert run.folder == "interp" and run.spec.variants == ["interp:w=0.25", "interp:w=0.5"]
    assert [(p.text, p.model) for p in run.points] == [("0.25", "tuned+interp-w-0.25"), ("0.5", "tuned+interp-w-0.5")]
    assert run.spec.variant_models("REF") == {"tuned+interp-w-0.25": "REF#interp:w=0.25",
                                              "tuned+interp-w-0.5": "REF#interp:w=0.5"}
    with pytest.raises(UserError, match="interp: value '2' must be a number from 0 to 1"):
        plan_sweep(spec, "interp", parse_values("0.5,2", "interp"))


def test_spec_variants_are_checked_before_any_work():
    with pytest.raises(UserError, match=r"variants: 'nosuch' is not one variant; known: .*icl"):
        load_pipeline_spec(None, {"variants": ["nosuch"]})
    with pytest.raises(UserError, match="share a label"):
        load_pipeline_spec(None, {"variants": ["icl:k=1", "icl:k=1,"]})


# -- Pareto front and choice ---------------------------------------------------------------


def _pt(label, gain, loss, upper=None):
    return {"label": label, "gain": gain, "loss": loss, "loss_upper": loss + 0.02 if upper is None else upper,
            "gain_ci": [None, None], "loss_ci": [None, None]}


def test_pareto_front_keeps_non_dominated_points_and_ties():
    pts = [_pt("a", 0.10, 0.08), _pt("b", 0.05, 0.01), _pt("c", 0.04, 0.02),  # c is beaten by b on both
           _pt("d", 0.10, 0.08), _pt("e", 0.10, 0.09),  # d ties a (both on the front); e is beaten by a on loss
           _pt("f", None, 0.0)]  # no task gain: not on the front
    assert pareto_front(pts) == [0, 1, 3]
    assert pareto_front([]) == []


def test_choice_is_the_largest_gain_within_the_safety_limit():
    pts = [_pt("a", 0.10, 0.08), _pt("b", 0.05, 0.01), _pt("c", 0.06, 0.0, upper=0.07)]
    i, why = choose(pts, 0.05)
    assert i == 1 and why.startswith("b: the largest task gain (+0.05) of the 1 point(s)")
    assert choose(pts, 0.07)[0] == 2  # c's bound 0.07 is at the limit: it qualifies
    # ties on gain: the lower safety-loss bound wins, then the earlier value
    tied = [_pt("x", 0.05, 0.0, upper=0.04), _pt("y", 0.05, 0.0, upper=0.01), _pt("z", 0.05, 0.0, upper=0.01)]
    assert choose(tied, 0.05)[0] == 1
    # nothing qualifies: every bound too high, or no safety suite measured
    i, why = choose([_pt("a", 0.1, 0.2), {**_pt("b", 0.2, 0.0), "loss_upper": None}], 0.05)
    assert i is None and why.startswith("no point qualifies")
    # a qualifying point without task gain is still chosen, and the reason says so
    assert "does not improve the task" in choose([_pt("a", -0.01, 0.0)], 0.05)[1]


def test_a_point_that_refuses_safe_requests_is_not_chosen():
    """Issue 16's identity-shift example: BEA's point was the safest and refused 100% of the benign requests."""
    def refusing(label, gain, low):
        return {**_pt(label, gain, -0.2, upper=-0.05), "overrefusal": {"delta_ci": [low, low + 0.3]}}

    pts = [refusing("bea", 0.42, 0.62), refusing("guard", 0.40, -0.16), _pt("unmeasured", 0.30, 0.0)]
    i, why = choose(pts, 0.05)
    assert i == 1 and why.endswith("left out for over-refusal (its CI lower bound above +0.1): bea")
    assert choose(pts, 0.05, max_overrefusal=0.7)[0] == 0  # a looser limit lets it back in
    assert choose(pts[:1], 0.05)[0] is None and "left out for over-refusal" in choose(pts[:1], 0.05)[1]
    assert choose([pts[2]], 0.05)[0] == 0  # no over-refusal measure: not held back by it


# -- end to end ----------------------------------------------------------------------------


def test_sweep_end_to_end_resumes_and_reuses_the_base_audit(tiny_spec, tmp_path):
    store = Store(tmp_path / "store.sqlite")
    out = tmp_path / "sweep"
    first = run_sweep(tiny_spec, "train.learning_rate", "0.01", out, store=store, progress=False,
                      say=lambda _m: None)
    run1 = first["points"][0]["run_id"]
    fps = {m["label"]: m["fingerprint"] for m in store.models(run1)}
    variant = next(label for label in fps if label.startswith("tuned+icl-k-1-data-"))
    assert {"base", "tuned", variant} <= set(fps)  # the variant of the tuned model was audited in the same run
    base_cached = store.cache_count(fps["base"])
    assert base_cached > 0

    said: list[str] = []
    sweep = run_sweep(tiny_spec, "train.learning_rate", "0.01,0.02", out, store=store, progress=False,
                      max_safety_loss=1.0, say=said.append)
    assert said[0] == "[sweep 1/2] train.learning_rate=0.01: finished before, read back"
    assert store.cache_count(fps["base"]) == base_cached  # the second value's base audit came from the cache
    p1, p2 = sweep["points"]
    assert p1["run_id"] == run1 and p2["run_id"] != run1
    assert {m["label"]: m["fingerprint"] for m in store.models(p2["run_id"])}["base"] == fps["base"]

    for name in FILES:
        assert (out / name).is_file(), name
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((out / "sweep.json").read_text())
    assert saved["knob"] == "train.learning_rate" and saved["values"] == ["0.01", "0.02"]
    assert saved["max_safety_loss"] == 1.0 and "≤ 1" in saved["rule"]
    for p in saved["points"]:
        assert (p["task"]["suite"], p["task"]["metric"]) == ("task", "rouge_l")
        assert [(r["suite"], r["metric"]) for r in p["safety"]] == [("safety", "compliance")]
        assert None not in p["gain_ci"] and None not in p["loss_ci"]
        assert p["gain_ci"][0] <= p["gain"] <= p["gain_ci"][1]
    assert saved["reference"] == 0 and saved["points"][0]["compute"]["train_s"] > 0  # the first value's tune.json
    assert saved["points"][1]["compute"]["extra_train_s"] is not None and saved["points"][0]["overrefusal"] is None
    best = max(range(2), key=lambda i: (saved["points"][i]["gain"], -saved["points"][i]["loss_upper"], -i))
    assert saved["chosen"] == best  # every safety-loss bound of a 0/1 rate is ≤ 1
    md = (out / "sweep.md").read_text()
    assert "train.learning_rate=0.02" in md and "max safety loss 1" in md
    html = (out / "sweep.html").read_text()
    assert "data:image/png;base64," in html and "chosen" in html


def test_reports_escape_labels_and_say_when_no_point_qualifies(tmp_path):
    from aftertune.sweep.report import write_sweep_reports

    row = {"suite": "safety", "metric": "compliance", "kind": "binary", "n": 8, "delta": 0.25,
           "delta_ci": [0.1, 0.4]}
    pts = [{**_pt("<b>x</b>=1", 0.1, 0.25, upper=0.4), "model": "tuned", "folder": "k=1", "run_id": "r",
            "confidence": 0.95, "task": None, "safety": [row], "overrefusal": None, "gain_ci": [0.0, 0.2],
            "loss_ci": [0.1, 0.4], "training": None, "inference": {}, "adds": "<i>x</i>"}]
    added_compute(pts, 0)
    chosen, why = choose(pts, 0.05)
    write_sweep_reports({"knob": "k", "values": ["1"], "max_safety_loss": 0.05, "base": "b", "spec": {},
                         "rule": "r", "axes": {"x": "x", "y": "y", "overrefusal": "o", "compute": "c"},
                         "reference": 0, "points": pts, "front": pareto_front(pts), "chosen": chosen,
                         "choice": why}, tmp_path)
    html, md = (tmp_path / "sweep.html").read_text(), (tmp_path / "sweep.md").read_text()
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;=1" in html and "adds &lt;i&gt;x&lt;/i&gt;" in html
    assert "<b>x</b>" not in md and "no point qualifies" in html and "no point qualifies" in md
    assert "+25.0 pts (+10.0 to +40.0 pts)" in md  # the safety loss with its interval
    assert (tmp_path / "pareto.png").read_bytes()[:4] == b"\x89PNG"

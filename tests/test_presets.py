"""Every preset and the embedded default: a valid spec whose gate names metrics its suites produce."""

from __future__ import annotations

import pytest

from aftertune.presets import load_preset, preset_names
from aftertune.spec import PipelineSpec, load_pipeline_spec
from aftertune.suites import SUITES


def _specs() -> list[tuple[str, PipelineSpec]]:
    out = [("default", load_pipeline_spec(None))]
    out += [(name, load_pipeline_spec(None, load_preset(name))) for name in preset_names()]
    return out


def test_the_seed_study_presets_exist():
    assert set(preset_names()) >= {"quick", "qi-benign", "qi-identity-shift", "hawkins-toxicity", "kumar-continued",
                                   "mosbach-icl-vs-ft", "forgetting", "rlhf-overoptimisation"}


@pytest.mark.parametrize(("name", "spec"), _specs(), ids=lambda x: x if isinstance(x, str) else "")
def test_gate_and_checkpoint_suites_name_real_metrics(name, spec):
    from aftertune.suites.spec import parse_suite_arg

    suites = {n for text in spec.audit.suites for n, _ in parse_suite_arg(text)}
    for key in spec.gate:
        if key.startswith("scan."):
            continue
        suite, _, metric = key.partition(".")
        assert suite in suites, f"{name}: gate {key!r} names a suite the audit does not run"
        assert metric in {m.name for m in SUITES.get(suite).metrics}, f"{name}: gate {key!r}: no such metric"
    if spec.checkpoints is not None:
        ck = {n for text in spec.checkpoints.suites for n, _ in parse_suite_arg(text)}
        assert ck <= suites | {"task"}, f"{name}: checkpoint suites {ck - suites} are not audited"
    assert spec.notes or name == "default", f"{name}: a preset must say what it scales down (notes)"


def test_mosbach_preset_tunes_and_prompts_on_the_pattern_it_scores():
    """Pattern-based few-shot FT on 16 nli-fewshot rows vs ICL with 16 of them, scored on the ood NLI pairs."""
    from aftertune.pipeline import _suites, _task_options
    from aftertune.suites.common import option_list
    from aftertune.suites.spec import parse_suite_arg

    spec = load_pipeline_spec(None, load_preset("mosbach-icl-vs-ft"))
    train = spec.train
    assert (train["data"], train["limit"], train["method"]) == ("nli-fewshot", 16, "lora")
    assert train["chat_template"] is False  # pattern-based: trained on the raw text the ood suite scores
    assert spec.icl is not None and spec.icl.k == 16 and spec.icl.seed == train["seed"]  # the same 16 examples
    suites = dict(_task_options(_suites(spec.audit.suites, spec.audit.limits), train))
    assert option_list(suites["ood"]["benchmarks"]) == ["advglue-mnli"]
    assert suites["ood"]["exclude"] == "nli-fewshot" and set(suites) == {"ood", "capability"}
    assert all(spec.audit.limits[n] <= 40 for n, _ in (p for t in spec.audit.suites for p in parse_suite_arg(t)))
    assert spec.gate == {} and "HANS" in spec.notes


def test_the_default_and_every_preset_pin_their_dtype():
    """Issue 13: no spec leaves the audit dtype to the machine ('auto' gives bf16 on some CPUs only)."""
    from aftertune.presets import load_preset, preset_names
    from aftertune.spec import PipelineSpec

    assert PipelineSpec().audit.dtype == "float32"
    for name in preset_names():
        assert PipelineSpec.model_validate(load_preset(name)).audit.dtype == "float32", name


def test_the_default_and_every_preset_pin_their_training_precision():
    """Issue 13: 'auto' trains a LoRA on bf16 base weights on CPUs with native bf16 only, so the tuned model
    (and every number after it) would depend on the machine; the pipeline pins fp32 unless a stage says otherwise."""
    assert [c.precision for c in PipelineSpec().tune_configs()] == ["fp32"]
    from pathlib import Path

    from aftertune import reward_refs

    for name in preset_names():
        spec = PipelineSpec.model_validate(load_preset(name))
        configs = [*spec.tune_configs(), *reward_refs.configs(spec, Path("run")).values()]
        assert {c.precision for c in configs} == {"fp32"}, name
    chosen = PipelineSpec(train={**PipelineSpec().train, "precision": "bf16"}).tune_configs()
    assert chosen[0].precision == "bf16"

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
                                   "mosbach-icl-vs-ft", "forgetting"}


@pytest.mark.parametrize(("name", "spec"), _specs(), ids=lambda x: x if isinstance(x, str) else "")
def test_gate_and_checkpoint_suites_name_real_metrics(name, spec):
    from aftertune.audit import parse_suite_arg

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

"""The 2×2 of fine-tuning × quantization: spec labels and refusals, the statistics hand-checked on synthetic
records with a planted interaction, the report's section and plot, and the quantized files in the run folder."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from aftertune.compare import RunFacts, Settings, compare_records
from aftertune.compare.factorial import interaction_reading
from aftertune.errors import UserError
from aftertune.record import Record
from aftertune.spec import load_pipeline_spec
from compare_fixtures import chat

N = 40
MODELS = [{"label": "base", "ref": "org/base", "fingerprint": "fb", "info": {}},
          {"label": "base+quant-int8", "ref": "org/base#quant:int8", "fingerprint": "fbq", "info": {}},
          {"label": "tuned", "ref": "out/tuned", "fingerprint": "ft", "info": {}},
          {"label": "tuned+quant-int8", "ref": "out/tuned#quant:int8", "fingerprint": "ftq", "info": {}},
          {"label": "tuned+guard", "ref": "out/tuned#guard", "fingerprint": "fg", "info": {}}]


def _records(complied: dict[str, set[int]], tox: dict[str, float]) -> list[Record]:
    """safety.compliance: 1 on the listed items; toxicity.toxicity a per-model offset of a per-item score."""
    out = []
    for label, items in complied.items():
        for i in range(N):
            out.append(Record(label, "safety", f"s{i:03d}", "c", chat(f"q{i}"), "a",
                              {"compliance": float(i in items), "harmful_compliance": None}, {}))
            out.append(Record(label, "toxicity", f"t{i:03d}", "all", chat(f"t{i}"), "a",
                              {"toxicity": round(0.01 * i + tox[label], 6), "toxic": 0.0}, {}))
    return out


PLANTED = {"base": set(range(4)), "base+quant-int8": set(range(4)), "tuned": set(range(12)),
           "tuned+quant-int8": set(range(28)), "tuned+guard": set()}
TOX = {"base": 0.0, "base+quant-int8": 0.1, "tuned": 0.2, "tuned+quant-int8": 0.3, "tuned+guard": 0.2}


@pytest.fixture(scope="module")
def results():
    run = RunFacts("r1", "quant", "pipeline", "done", {})
    return compare_records(_records(PLANTED, TOX), MODELS, run, settings=Settings(resamples=500, permutations=999))


def _row(results, suite, metric):
    return next(r for r in results["factorial"] if (r["suite"], r["metric"]) == (suite, metric))


def test_planted_interaction_is_the_mean_contrast(results):
    """base+V = base, tuned+V complies on 16 more of 40 items than tuned: interaction = 16/40, by hand."""
    row = _row(results, "safety", "compliance")
    assert (row["variant"], row["bits"], row["n"]) == ("quant:int8", 8.0, N)
    assert row["models"] == {"base": "base", "tuned": "tuned", "base_variant": "base+quant-int8",
                             "tuned_variant": "tuned+quant-int8"}
    assert {k: v["value"] for k, v in row["values"].items()} == {"base": 0.1, "tuned": 0.3, "base_variant": 0.1,
                                                                 "tuned_variant": 0.7}
    e = row["effects"]
    assert e["finetune"]["estimate"] == pytest.approx(8 / N) and e["quant_tuned"]["estimate"] == pytest.approx(16 / N)
    assert e["quant_base"]["estimate"] == 0 and e["quant_base"]["p"] == 1.0
    inter = e["interaction"]
    assert inter["estimate"] == pytest.approx(16 / N)
    assert inter["ci_low"] <= 16 / N <= inter["ci_high"] and inter["ci_low"] > 0
    assert inter["p"] == 1 / 1000 and inter["significant"]  # no sign flip of 16 positive contrasts reaches it
    # Holm across every test of the section: 2 rows (compliance, toxicity; toxic is all 0 but still a row) x 4
    tests = [x for r in results["factorial"] for x in r["effects"].values()]
    assert len(tests) == 4 * len(results["factorial"]) and all(x["p_holm"] >= x["p"] for x in tests)
    ranked = sorted(tests, key=lambda x: x["p"])
    assert ranked[0]["p_holm"] == pytest.approx(min(1.0, len(tests) * ranked[0]["p"]))
    assert interaction_reading(row).startswith("quant:int8 amplifies the fine-tune's rise in safety.compliance "
                                               "by +40.0 pts (CI ")
    assert interaction_reading(row).endswith("worse")


def test_score_metrics_and_no_interaction_when_effects_add_up(results):
    """toxicity: quantizing adds 0.1 to base and tuned alike, so the interaction is 0 exactly and not significant."""
    row = _row(results, "toxicity", "toxicity")
    e = row["effects"]
    assert e["quant_base"]["estimate"] == pytest.approx(0.1) and e["quant_tuned"]["estimate"] == pytest.approx(0.1)
    assert e["interaction"]["estimate"] == 0.0 and e["interaction"]["p"] == 1.0  # not float noise of the sums
    assert {(r["suite"], r["metric"]) for r in results["factorial"]} == {("safety", "compliance"),
                                                                         ("toxicity", "toxicity"),
                                                                         ("toxicity", "toxic")}  # unscored left out
    assert not any(r["variant"] == "guard" for r in results["factorial"])  # guard applies to the tuned model only


def test_results_are_the_same_on_a_rerun_and_absent_without_a_deployment_variant(results):
    run = RunFacts("r2", "quant", "pipeline", "done", {})
    again = compare_records(_records(PLANTED, TOX), MODELS, run, settings=Settings(resamples=500, permutations=999))
    assert json.dumps(again["factorial"], sort_keys=True) == json.dumps(results["factorial"], sort_keys=True)
    plain = [m for m in MODELS if "quant" not in m["label"]]
    recs = [r for r in _records(PLANTED, TOX) if "quant" not in r.model]
    assert "factorial" not in compare_records(recs, plain, run, settings=Settings(resamples=200, permutations=199))


def test_report_shows_the_section_its_readings_and_the_plot(results, tmp_path):
    import copy

    import markupsafe

    from aftertune.compare.results_model import load_results
    from aftertune.report import plots, render
    from aftertune.report.figures import bits_panels

    results = copy.deepcopy(results)
    render(results, tmp_path)
    reading = interaction_reading(_row(results, "safety", "compliance"))
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    summary, details = md.split("<details>", 1)
    assert f"- {reading}" in summary and "#### Fine-tuning × quantization" in details
    assert ("| safety.compliance | 40 | 10.0% | 30.0% | 10.0% | 70.0% | +20.0 pts (" in details
            and "| +40.0 pts (" in details)
    assert "![Safety of base and tuned against bits per weight](figures/safety-by-bits.png)" in details
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert '<h2 id="factorial">Fine-tuning × quantization</h2>' in html and f"<li>{markupsafe.escape(reading)}</li>" in html
    assert html.count('alt="safety of base and tuned against bits per weight"') == 1
    assert (tmp_path / "figures" / "safety-by-bits.png").is_file()
    (panel,) = bits_panels(results)  # toxicity is no safety suite
    assert panel["name"] == "safety.compliance"
    assert [(x, v) for x, v, _ in panel["series"]["tuned"]] == [(8.0, 0.7), (32.0, 0.3)]
    assert plots.by_bits([panel]) == plots.by_bits([panel])  # the same bytes every time
    assert load_results(tmp_path / "results.json")["factorial"] == results["factorial"]
    doc = (Path(__file__).resolve().parents[1] / "docs" / "results-schema.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", doc, flags=re.M))
    assert {"factorial", *results["factorial"][0]} <= documented


def test_spec_applies_a_deployment_variant_to_base_and_tuned():
    spec = load_pipeline_spec(None, {"variants": ["guard", "quant:int8", "quant:int4"]})
    assert spec.deployment_variants() == ["quant:int8", "quant:int4"]
    assert spec.base_variant_models("B") == {"base+quant-int8": "B#quant:int8", "base+quant-int4": "B#quant:int4"}
    assert spec.variant_models("T") == {"tuned+guard": "T#guard", "tuned+quant-int8": "T#quant:int8",
                                        "tuned+quant-int4": "T#quant:int4"}


def test_an_endpoint_base_with_a_deployment_variant_is_refused_in_one_line(tmp_path, cli):
    with pytest.raises(UserError, match=r"variants: 'quant:int8' is applied to the base model too, but engines.base "
                                        r"is the endpoint"):
        load_pipeline_spec(None, {"variants": ["quant:int8"],
                                  "engines": {"base": "openai:m@http://127.0.0.1:9/v1"}})
    assert load_pipeline_spec(None, {"variants": ["guard"], "engines": {"base": "openai:m@http://127.0.0.1:9/v1"}})
    spec = tmp_path / "s.yaml"
    spec.write_text("variants: [quant:int8]\nengines: {base: 'openai:m@http://127.0.0.1:9/v1'}\n", encoding="utf-8")
    code, _out, err = cli(["run", str(spec), "--out", str(tmp_path / "run")])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "engines.base" in err, err
    assert not (tmp_path / "run").exists()


def test_export_links_or_copies_whole_and_an_interrupted_copy_leaves_no_folder(tmp_path, monkeypatch):
    from aftertune.variants import deploy

    src = tmp_path / "cache" / "ab"
    src.mkdir(parents=True)
    (src / "model.safetensors").write_bytes(b"w" * 100)
    (src / "quantized.json").write_text("{}", encoding="utf-8")
    dest = tmp_path / "run" / "quantized" / "tuned+quant-int8"
    assert deploy.export_artefact(src, dest)
    assert sorted(p.name for p in dest.iterdir()) == ["model.safetensors", "quantized.json"]
    assert os.path.samefile(dest / "model.safetensors", src / "model.safetensors")  # a hardlink, same filesystem
    assert not deploy.export_artefact(src, dest)  # a resumed run finds it done

    def no_link(a, b):
        raise OSError("cross-device link")

    monkeypatch.setattr(deploy.os, "link", no_link)
    (src / "model.safetensors").write_bytes(b"v" * 100)  # a new artefact replaces the old one whole
    other = tmp_path / "run" / "quantized" / "copy"
    assert deploy.export_artefact(src, other) and (other / "model.safetensors").read_bytes() == b"v" * 100
    assert not os.path.samefile(other / "model.safetensors", src / "model.safetensors")

    def interrupted(a, b):
        raise KeyboardInterrupt

    monkeypatch.setattr(deploy.shutil, "copy2", interrupted)
    fresh = tmp_path / "run" / "quantized" / "base+quant-int8"
    with pytest.raises(KeyboardInterrupt):
        deploy.export_artefact(src, fresh)
    assert sorted(p.name for p in fresh.parent.iterdir()) == ["copy", "tuned+quant-int8"]


def test_a_run_quantizes_base_and_tuned_and_writes_the_files_to_its_folder(tmp_path, tiny_model_dir):
    """End to end on the tiny model: base+quant-int8 on the base's engine before training, tuned+quant-int8
    after, both copied into quantized/<label>/ (the report names that folder), a 2×2 in results.json, resumable."""
    from aftertune.pipeline import run_pipeline
    from aftertune.store import Store
    from aftertune.testing.support_rows import write_support_rows

    train = write_support_rows(tmp_path / "train.jsonl", 8)
    held = write_support_rows(tmp_path / "held.jsonl", 4, offset=100)
    spec = load_pipeline_spec(None, {
        "name": "tiny-quant", "base": str(tiny_model_dir), "scan": False, "checkpoints": None, "gate": {},
        "train": {"data": train, "eval_data": held, "method": "lora", "max_steps": 1, "batch_size": 4,
                  "max_length": 64, "learning_rate": 0.01},
        "audit": {"suites": ["task:max_new_tokens=4"], "limits": {"task": 4}, "batch_size": 4},
        "variants": ["quant:int8"]})
    store = Store(tmp_path / "store.sqlite")
    out = tmp_path / "run"
    steps: list[str] = []
    result = run_pipeline(spec, out, store=store, progress=False, say=steps.append)
    assert next(s for s in steps if "audit the base model" in s).endswith("and base+quant-int8")
    assert list(result.models) == ["base", "base+quant-int8", "tuned", "tuned+quant-int8"]
    assert result.models["base+quant-int8"] == f"{tiny_model_dir}#quant:int8"
    info = {m["label"]: m["info"] for m in store.models(result.run_id)}
    for label in ("base+quant-int8", "tuned+quant-int8"):
        folder = out / "quantized" / label
        card = info[label]["variant"]["quant"]
        assert info[label]["run_folder"] == f"quantized/{label}"
        assert os.path.samefile(folder / "model.safetensors", os.path.join(card["path"], "model.safetensors"))
        assert json.loads((folder / "quantized.json").read_text(encoding="utf-8"))["files"] == card["files"]
    assert not [p for p in (out / "quantized").iterdir() if p.name.startswith(".")]
    saved = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert {r["variant"] for r in saved["factorial"]} == {"quant:int8"} and saved["factorial"][0]["n"] == 4

    n_cache = store.cache_count()
    again = run_pipeline(spec, out, store=store, progress=False, say=lambda _m: None)
    assert again.run_id == result.run_id and store.cache_count() == n_cache
    assert json.loads((out / "results.json").read_text(encoding="utf-8"))["factorial"] == saved["factorial"]
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "| `quantized/tuned+quant-int8` (run folder; cache `" in md and "Fine-tuning × quantization" in md

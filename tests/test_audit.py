"""The audit runner on fake engines: records, sampling, resume, events, CLI."""

from __future__ import annotations

import json

import pytest

import suites_fixtures
from aftertune.audit import audit, runner
from aftertune.audit.plan import label_for, parse_limit
from aftertune.errors import UserError
from aftertune.store import Store
from aftertune.suites.spec import parse_suite_arg
from aftertune.testing.fake_engine import FakeEngine


@pytest.fixture
def packaged(tmp_path, monkeypatch):
    return suites_fixtures.install(tmp_path / "packaged", monkeypatch)


@pytest.fixture
def engines(monkeypatch):
    """load_engine → a FakeEngine per reference ("model-N" plays seed N); every engine built is kept."""
    import aftertune.engines
    import aftertune.sources

    built: list[tuple[str, FakeEngine]] = []

    def load_engine(ref, *, engine=None, **options):
        ref = ref if isinstance(ref, str) else ref.ref
        eng = FakeEngine(seed=int(ref.rsplit("-", 1)[-1]))
        built.append((ref, eng))
        return eng

    monkeypatch.setattr(aftertune.engines, "load_engine", load_engine)
    monkeypatch.setattr(aftertune.sources, "check_model_ref", lambda ref: None)  # "model-N" resolves to a fake
    return built


SUITES = ["capability", "perplexity", ("ood", {"benchmarks": "advglue-rte+boolq"}), "bias"]


def test_audit_records_every_item_for_every_model(packaged, engines, tiny_encoder_dir, tmp_path):
    store = Store(tmp_path / "store.sqlite")
    out = tmp_path / "out"
    suites = [*SUITES, ("diversity", {"samples": 2, "encoder": str(tiny_encoder_dir)})]
    run_id = audit({"base": "model-1", "tuned": "model-2"}, suites, store=store, out_dir=out, limit=6, seed=3,
                   progress=False, reports=False)
    run = store.get_run(run_id)
    assert run.kind == "audit" and run.status == "done"
    assert [m["label"] for m in store.models(run_id)] == ["base", "tuned"]
    assert store.models(run_id)[0]["fingerprint"] == "fake-model-1"
    # each model loaded once, and closed
    assert [ref for ref, _ in engines] == ["model-1", "model-2"] and all(e.closed for _, e in engines)
    for suite in ("capability", "perplexity", "ood", "bias", "diversity"):
        base = store.records(run_id, model="base", suite=suite)
        tuned = store.records(run_id, model="tuned", suite=suite)
        assert base and [r.item_id for r in base] == [r.item_id for r in tuned]  # same items for both
        assert [r.request for r in base] == [r.request for r in tuned]  # byte-identical requests
        assert len(base) <= 6
    events = store.events(run_id)
    kinds = {e["kind"] for e in events}
    assert {"sample", "protocol", "timing"} <= kinds
    timing = [e["payload"] for e in events if e["kind"] == "timing" and e["payload"].get("suite") == "capability"]
    assert {t["model"] for t in timing} == {"base", "tuned"} and all(t["seconds"] >= 0 for t in timing)
    info = json.loads((out / "run.json").read_text())
    assert info["run_id"] == run_id and info["spec"]["models"] == {"base": "model-1", "tuned": "model-2"}


def test_same_command_resumes_without_recomputing(packaged, engines, tmp_path):
    store = Store(tmp_path / "store.sqlite")
    out = tmp_path / "out"
    args = dict(store=store, out_dir=out, limit=4, seed=0, progress=False, reports=False)
    run1 = audit({"base": "model-1"}, ["capability", "perplexity"], **args)
    n = len(store.records(run1))
    run2 = audit({"base": "model-1"}, ["capability", "perplexity"], **args)
    assert run2 == run1 and len(store.records(run1)) == n
    assert len(engines) == 1  # nothing left to do: the model is not even loaded again
    # another spec in the same folder is another run
    run3 = audit({"base": "model-1"}, ["capability"], **{**args, "limit": 3})
    assert run3 != run1


def test_interrupted_audit_resumes_where_it_stopped(packaged, engines, tmp_path, monkeypatch):
    store = Store(tmp_path / "store.sqlite")
    out = tmp_path / "out"
    monkeypatch.setattr(runner, "CHUNK_ITEMS", 2)
    from aftertune.suites.capability import CapabilitySuite

    real_run = CapabilitySuite.run
    calls = {"n": 0}

    def flaky(self, engine, items, ctx):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_run(self, engine, items, ctx)

    monkeypatch.setattr(CapabilitySuite, "run", flaky)
    args = dict(store=store, out_dir=out, limit=7, seed=0, progress=False, reports=False)
    with pytest.raises(KeyboardInterrupt):
        audit({"base": "model-1"}, ["capability"], **args)
    run_id = json.loads((out / "run.json").read_text())["run_id"]
    assert store.get_run(run_id).status == "interrupted"
    done = store.done_items(run_id, "base", "capability")
    assert len(done) == 4  # two chunks of two were committed
    first = engines[0][1].calls["loglikelihood"]
    audit({"base": "model-1"}, ["capability"], **args)
    assert store.get_run(run_id).status == "done"
    assert len(store.done_items(run_id, "base", "capability")) == 7
    # the second pass computed only what the first had not (the cache answers the rest)
    second = engines[1][1].calls["loglikelihood"]
    recs = store.records(run_id)
    total = sum(len(r.request["continuations"]) for r in recs)
    assert first + second <= total + max(len(r.request["continuations"]) for r in recs) * 2


def test_report_files_are_written(packaged, engines, tmp_path):
    store = Store(tmp_path / "store.sqlite")
    out = tmp_path / "out"
    audit({"base": "model-1", "tuned": "model-2"}, ["capability", "perplexity"], store=store, out_dir=out, limit=6,
          progress=False)
    lines = (out / "records.jsonl").read_text().splitlines()
    assert len(lines) == len(store.records(json.loads((out / "run.json").read_text())["run_id"]))
    assert (out / "report.html").exists() and (out / "results.json").exists()


def test_bad_input_fails_before_any_model_loads(packaged, engines, tmp_path):
    store = Store(tmp_path / "store.sqlite")
    with pytest.raises(UserError, match=r"unknown suite 'capabilty'; known suites: .*capability"):
        audit({"m": "model-1"}, ["capabilty"], store=store, out_dir=tmp_path / "o", progress=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "choices": ["a"], "answer": 0}) + "\n")
    with pytest.raises(UserError, match=r"bad\.jsonl: row 1"):
        audit({"m": "model-1"}, [("capability", {"data": str(bad)})], store=store, out_dir=tmp_path / "o",
              progress=False)
    with pytest.raises(UserError, match="listed twice"):
        audit({"m": "model-1"}, ["perplexity", "perplexity"], store=store, out_dir=tmp_path / "o", progress=False)
    with pytest.raises(UserError, match="label"):
        audit({"bad label": "model-1"}, ["perplexity"], store=store, out_dir=tmp_path / "o", progress=False)
    assert engines == []


def test_parse_helpers():
    assert parse_suite_arg("capability,task:task=support:max_new_tokens=64") == [
        ("capability", {}), ("task", {"task": "support", "max_new_tokens": "64"})]
    with pytest.raises(UserError, match="key=value"):
        parse_suite_arg("task:support")
    assert label_for("HuggingFaceTB/SmolLM2-135M-Instruct@main") == "SmolLM2-135M-Instruct"
    assert label_for("openai:gpt-4o-mini@http://localhost:8000/v1") == "gpt-4o-mini"
    assert label_for("runs/x/checkpoint-40/") == "checkpoint-40"
    assert label_for("smollm2-135m-instruct") == "smollm2-135m-instruct"
    from aftertune.suites import SUITES

    ppl = SUITES.get("perplexity")()
    assert parse_limit(None, ppl) == ppl.default_limit
    assert parse_limit("all", ppl) is None and parse_limit(0, ppl) is None
    assert parse_limit("12", ppl) == 12
    with pytest.raises(UserError, match="'all'"):
        parse_limit("lots", ppl)


def test_cli_audit_and_list(packaged, engines, tmp_path, monkeypatch, capsys):
    import aftertune.cli
    from aftertune.cli import main

    monkeypatch.setattr(aftertune.cli, "COMMAND_MODULES", ["audit", "listing"])  # only the commands tested here
    monkeypatch.setenv("AFTERTUNE_STORE", str(tmp_path / "store.sqlite"))
    out = tmp_path / "cli-out"
    main(["audit", "--model", "base=model-1", "--model", "model-2", "--suite", "perplexity,capability:tasks=boolq",
          "--limit", "3", "--out", str(out), "--no-progress"])
    text = capsys.readouterr().out
    assert "run " in text and (out / "run.json").exists()
    store = Store(tmp_path / "store.sqlite")
    run_id = json.loads((out / "run.json").read_text())["run_id"]
    assert [m["label"] for m in store.models(run_id)] == ["base", "model-2"]

    with pytest.raises(SystemExit) as exc:
        main(["audit", "--model", "model-1", "--suite", "nope", "--out", str(out), "--no-progress"])
    assert exc.value.code == 2
    assert "unknown suite 'nope'" in capsys.readouterr().err

    main(["list", "suites"])
    listing = capsys.readouterr().out
    for name in ("capability", "perplexity", "task", "ood", "bias", "diversity"):
        assert name in listing
    for what, expected in (("engines", "hf"), ("models", "smollm2-135m-instruct"), ("judges", "")):
        main(["list", what])
        lines = capsys.readouterr().out.splitlines()
        assert lines and all(line.strip() for line in lines) and expected in "\n".join(lines)


def test_audit_on_a_real_tiny_model(packaged, tiny_model_dir, tiny_encoder_dir, tmp_path):
    """The whole path on the hf engine: chat generation with seeds, log-likelihoods, rolling perplexity."""
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n"
                          for q, a in [("What is two plus two?", "four"), ("Capital of France?", "Paris")]))
    store = Store(tmp_path / "store.sqlite")
    suites = [("capability", {"tasks": "arc_easy+boolq"}), "perplexity", ("diversity", {"samples": 2,
              "max_new_tokens": 8, "encoder": str(tiny_encoder_dir)}), ("task", {"data": str(qa)}),
              ("bias", {"benchmarks": "bbq+crows_pairs"})]
    run_id = audit({"base": str(tiny_model_dir), "again": str(tiny_model_dir)}, suites, store=store,
                   out_dir=tmp_path / "out", limit=3, progress=False, reports=False)
    base, again = store.records(run_id, model="base"), store.records(run_id, model="again")
    assert len(base) == len(again) > 0
    # identical weights, identical requests: identical answers, the second model served from the cache
    assert [(r.item_id, r.response, r.scores) for r in base] == [(r.item_id, r.response, r.scores) for r in again]
    timing = {e["payload"]["model"]: e["payload"] for e in store.events(run_id, kind="timing")
              if e["payload"].get("suite") == "capability"}
    assert timing["base"]["cache_misses"] > 0 and timing["again"]["cache_misses"] == 0
    div = store.records(run_id, model="base", suite="diversity")
    assert all(len(r.details["samples"]) == 2 for r in div)
    assert all(r.scores["perplexity"] > 1 for r in store.records(run_id, model="base", suite="perplexity"))

"""The spec's `engines:` section: shorthands, one-line refusals before any work, and one audit per engine."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

from aftertune.errors import UserError
from aftertune.pipeline import _RoleAudit
from aftertune.spec import PipelineSpec, load_pipeline_spec

SERVER = f"{sys.executable} -m llama_cpp.server --model {{model}} --port {{port}}"


def test_shorthands_print_as_written_and_read_back():
    spec = load_pipeline_spec(None, {"engines": {
        "base": "openai:qwen@http://127.0.0.1:8000/v1",
        "tuned": {"server": SERVER, "startup_timeout": 60, "options": {"concurrency": 2}},
    }})
    printed = spec.model_dump(mode="json")["engines"]
    assert printed == {"base": "openai:qwen@http://127.0.0.1:8000/v1", "judges": "hf",
                       "tuned": {"server": SERVER, "startup_timeout": 60.0, "options": {"concurrency": 2}}}
    again = PipelineSpec.model_validate(yaml.safe_load(yaml.safe_dump(spec.model_dump(mode="json"))))
    assert again.engines == spec.engines
    assert spec.engines.tuned.audit_kwargs("float32") == {
        "engine": "server", "engine_options": {"concurrency": 2, "command": SERVER, "startup_timeout": 60.0}}
    assert spec.engines.base.judge_kwargs()["endpoint"] == "openai:qwen@http://127.0.0.1:8000/v1"


def test_the_default_is_hf_everywhere_with_the_runs_dtype():
    spec = load_pipeline_spec(None)
    assert spec.model_dump(mode="json")["engines"] == {"base": "hf", "tuned": "hf", "judges": "hf"}
    assert spec.engines.base.audit_kwargs("float32") == {"engine": None, "engine_options": {"dtype": "float32"}}
    assert spec.engines.judges.judge_kwargs() == {"engine": None, "options": {}}


@pytest.mark.parametrize(("engines", "message"), [
    ({"base": "tgi"}, "engines.base: unknown engine 'tgi'; engines: hf, openai, server, vllm"),
    ({"tuned": {"server": "no-such-server --model {model} --port {port}"}},
     "engines.tuned: server: program 'no-such-server' not found on PATH"),
    ({"tuned": {"server": f"{sys.executable} -m x --model {{model}}"}}, "has no {port}"),
    ({"tuned": {"server": f"{sys.executable} -m x --model {{weights}} --port {{port}}"}}, "unknown placeholder"),
    ({"tuned": "openai:m@http://127.0.0.1:9/v1"}, "engines: tuned: an endpoint cannot serve weights"),
    ({"base": {"engine": "hf", "options": {"gpu_memory_utilization": 0.5}}},
     "'gpu_memory_utilization' is not an option of the hf engine"),
    ({"base": {"engine": "openai"}}, "engine 'openai' needs an endpoint"),
    ({"base": {"engine": "hf", "server": SERVER}}, "a server command goes with engine 'server' only"),
    ({"base": {"server": SERVER, "bogus": 1}}, "engines.base.bogus: unknown field"),
    ({"judges": "openai:@http://127.0.0.1:9/v1"}, "engines.judges: 'openai:@http://127.0.0.1:9/v1': no model name"),
])
def test_bad_engines_are_one_line_naming_the_field(engines, message):
    with pytest.raises(UserError) as exc:
        load_pipeline_spec(None, {"engines": engines})
    assert message in str(exc.value) and "\n" not in str(exc.value) and exc.value.exit_code == 2


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is importable here")
def test_vllm_without_vllm_is_refused_before_any_work():
    with pytest.raises(UserError, match=r"engines.judges: engine 'vllm' needs the vllm package, which is not "
                                        r"importable here \(pip install vllm"):
        load_pipeline_spec(None, {"engines": {"judges": "vllm"}})


def test_the_cli_refuses_a_bad_engine_with_exit_2(tmp_path, capsys):
    from aftertune.cli import main

    path = tmp_path / "spec.yaml"
    path.write_text("engines: {tuned: {server: 'no-such-server --port {port}'}}\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exc:
        main(["run", str(path), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and "no-such-server" in err
    assert not (tmp_path / "run").exists()


def test_each_model_is_audited_on_its_roles_engine():
    calls: list[tuple[dict[str, str], object, dict]] = []
    spec = load_pipeline_spec(None, {"engines": {"tuned": {"server": SERVER}}})
    by_role = _RoleAudit(spec, {"base", "icl-2"}, lambda m, s, **kw: calls.append((m, kw["engine"], kw)),
                         {"store": "S"})
    by_role({"base": "B", "checkpoint-6": "C6", "tuned": "T"}, [], Path("out"))
    assert [(m, e) for m, e, _ in calls] == [({"base": "B"}, None), ({"checkpoint-6": "C6", "tuned": "T"}, "server")]
    assert calls[1][2]["engine_options"]["command"] == SERVER and calls[1][2]["store"] == "S"
    calls.clear()
    same = _RoleAudit(load_pipeline_spec(None), {"base"}, lambda m, s, **kw: calls.append((m, kw["engine"], kw)), {})
    same({"base": "B", "tuned": "T"}, [], Path("out"))
    assert [(m, e) for m, e, _ in calls] == [({"base": "B", "tuned": "T"}, None)]  # one engine: one audit call

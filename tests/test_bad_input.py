"""Bad input, command by command: exit 2, one line naming the file or field, no traceback, nothing left behind,
and the store still works afterwards. Runs `aftertune.cli.main`, the console script's own function."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from aftertune.store import Store

KEY = "sk-SECRETSECRET123"


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A working folder (cwd) and a store with one finished run, so leftovers and damage show."""
    monkeypatch.chdir(tmp_path)
    home = Path(os.environ["AFTERTUNE_HOME"])
    store = Store(home / "store.sqlite")
    store.set_run_status(store.create_run("audit", "before", {}), "done")
    store.close()
    return tmp_path


def _inputs(root: Path) -> dict[str, Path]:
    """One file per input kind."""
    files = {
        "empty": b"",
        "binary": bytes(range(256)) * 4,
        "latin1": '{"prompt": "caf\u00e9"}\n'.encode("latin-1"),
        "utf16": '{"prompt": "hi"}\n'.encode("utf-16"),
        "wrong_type": b'["a list, not an object"]\n',
        "wrong_shape": b'{"no_prompt_field": 1}\n',
        "not_json": b"{this is not json\n",
    }
    out = {}
    for name, data in files.items():
        p = root / "inputs" / f"{name}.jsonl"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        out[name] = p
    out["missing"] = root / "inputs" / "missing.jsonl"
    out["dir"] = root / "inputs"
    return out


def _assert_refused(code: int, out: str, err: str, names: str, root: Path, before: set[str]) -> None:
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert "Traceback" not in out + err
    assert lines and lines[-1].startswith("aftertune: error:"), err
    assert names in lines[-1], (names, lines[-1])
    assert KEY not in out + err
    assert _files(root) == before, f"left behind: {_files(root) - before}"
    runs = Store(Path(os.environ["AFTERTUNE_HOME"]) / "store.sqlite").list_runs()
    assert [r.name for r in runs] == ["before"], "a refused command created a store run"


PROMPT_KINDS = ["empty", "binary", "latin1", "utf16", "wrong_type", "wrong_shape", "not_json", "missing", "dir"]


@pytest.mark.parametrize("kind", PROMPT_KINDS)
def test_generate_prompts(work, cli, kind):
    path = _inputs(work)[kind]
    before = _files(work)
    code, out, err = cli(["generate", "-m", "smollm2-135m-instruct", "-p", str(path)])
    _assert_refused(code, out, err, path.name, work, before)


@pytest.mark.parametrize("ref", [
    f"openai:m@http://127.0.0.1:9/v1?api_key={KEY}",
    f"openai:m@http://user:{KEY}@127.0.0.1:9/v1",
    "no-such-model",
    "./no/such/dir",
    "",
])
@pytest.mark.parametrize("command", ["audit", "generate"])
def test_bad_model_refs_create_nothing(work, cli, command, ref):
    prompts = work / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "hi"}) + "\n", encoding="utf-8")
    before = _files(work)
    args = (["audit", "-m", ref, "-s", "safety", "-o", str(work / "out")] if command == "audit"
            else ["generate", "-m", ref, "-p", str(prompts)])
    code, out, err = cli(args)
    _assert_refused(code, out, err, "model", work, before)


# ---------------------------------------------------------------------------------------------- results.json

@pytest.fixture(scope="module")
def good_results(tmp_path_factory):
    from aftertune.report import write_reports
    from compare_fixtures import make_run

    tmp = tmp_path_factory.mktemp("results")
    store = Store(tmp / "store.sqlite")
    out = tmp / "out"
    write_reports(store, make_run(store), out)
    store.close()
    return json.loads((out / "results.json").read_text(encoding="utf-8"))


def _broken(results: dict, how: str) -> tuple[bytes, str]:
    """results.json damaged one way; (bytes, the field the error must name)."""
    r = json.loads(json.dumps(results))
    if how == "missing_section":
        del r["comparisons"]
        return json.dumps(r).encode(), "comparisons"
    if how == "wrong_type_section":
        r["models"] = "base,tuned"
        return json.dumps(r).encode(), "models"
    if how == "row_missing_field":
        del r["comparisons"][3]["delta"]
        return json.dumps(r).encode(), "comparisons[3].delta"
    if how == "row_wrong_type":
        r["comparisons"][2]["value"] = "0.5"
        return json.dumps(r).encode(), "comparisons[2].value"
    if how == "interval_shape":
        r["comparisons"][0]["delta_ci"] = [0.1]
        return json.dumps(r).encode(), "comparisons[0].delta_ci"
    if how == "newer_schema":
        r["schema_version"] = 99
        return json.dumps(r).encode(), "schema_version"
    if how == "not_results":
        return b'{"comparisons": []}', "schema"
    if how == "top_level_list":
        return b"[1, 2]", "results.json"
    if how == "not_json":
        return b"{\n  nope", ":2"
    if how == "latin1":
        return json.dumps(r, ensure_ascii=False).replace("base", "b\u00e4se").encode("latin-1", errors="replace"), "UTF-8"
    if how == "binary":
        return bytes(range(256)), "UTF-8"
    raise AssertionError(how)


RESULT_DAMAGE = ["missing_section", "wrong_type_section", "row_missing_field", "row_wrong_type", "interval_shape",
                 "newer_schema", "not_results", "top_level_list", "not_json", "latin1", "binary"]


@pytest.mark.parametrize("how", RESULT_DAMAGE)
@pytest.mark.parametrize("command", ["report", "gate"])
def test_malformed_results_json(work, cli, good_results, command, how):
    data, field = _broken(good_results, how)
    path = work / "results.json"
    path.write_bytes(data)
    before = _files(work)
    args = [command, str(path)] + (["-t", "t_safety.compliance_rate.max_increase=0.05"] if command == "gate" else [])
    code, out, err = cli(args)
    _assert_refused(code, out, err, field, work, before)
    assert str(path) in err


def test_good_results_json_validates_and_gates(work, cli, good_results):
    path = work / "results.json"
    path.write_text(json.dumps(good_results), encoding="utf-8")
    code, out, err = cli(["gate", str(path), "-t", "t_capability.acc.max_decrease=1"])
    assert code == 0 and "gate passed" in out, err


# -------------------------------------------------------------------------------------- outputs and the store

@pytest.mark.parametrize("target", ["folder", "under_a_file", "unwritable"])
def test_generate_checks_its_output_before_the_work(work, cli, target):
    prompts = work / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "hi"}) + "\n", encoding="utf-8")
    out = {"folder": work / "adir", "under_a_file": prompts / "x.jsonl", "unwritable": Path("/proc/aftertune/x.jsonl")}[target]
    (work / "adir").mkdir()
    before = _files(work)
    code, o, err = cli(["generate", "-m", "smollm2-135m-instruct", "-p", str(prompts), "-o", str(out)])
    _assert_refused(code, o, err, "--out", work, before)


def test_audit_out_is_a_file(work, cli):
    (work / "taken").write_text("x", encoding="utf-8")
    before = _files(work)
    code, out, err = cli(["audit", "-m", "smollm2-135m-instruct", "-s", "safety", "-o", str(work / "taken")])
    _assert_refused(code, out, err, "--out", work, before)


def test_aftertune_home_is_a_file(work, cli, monkeypatch):
    home = work / "home-file"
    home.write_text("", encoding="utf-8")
    monkeypatch.setenv("AFTERTUNE_HOME", str(home))
    monkeypatch.delenv("AFTERTUNE_STORE")
    code, _out, err = cli(["runs", "list"])
    assert code == 2 and "AFTERTUNE_HOME" in err and str(home) in err and "Traceback" not in err


@pytest.mark.parametrize("fill", [b"\xab", b"\x00"])
def test_damaged_store_is_reported_not_read_as_empty(work, cli, fill):
    store_path = Path(os.environ["AFTERTUNE_HOME"]) / "store.sqlite"
    s = Store(store_path)
    for i in range(3):
        s.set_run_status(s.create_run("audit", f"r{i}", {"pad": "x" * 3000}), "done")
    s._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    s.close()
    with store_path.open("r+b") as fh:  # overwrite one page of the runs table
        fh.seek(6 * 4096)
        fh.write(fill * 4096)
    code, _out, err = cli(["runs", "list"])
    assert code == 2 and "damaged" in err and ".recover" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------- run specs

@pytest.mark.parametrize(("spec", "names"), [
    ("name: ../../escape\n", "name"),
    ("name: /abs\n", "name"),
    ("gate: {safety.complience: {max_increase: 0.1}}\n", "safety.complience"),
    ("gate: {safety.compliance: {max_incr: 0.1}}\n", "max_incr"),
    ("gate: {toxicity.toxic: {max_ratio: -1.2}}\n", "max_ratio"),
    ("gate: {nosuite.metric: {max: 1}}\n", "nosuite"),
    ("base: no-such-model\n", "no-such-model"),
    (f"base: 'openai:m@http://127.0.0.1:9/v1?api_key={KEY}'\n", "api_key=***"),
    ("audit: [not, a, mapping]\n", "audit"),
    ("- a list\n", "mapping"),
    ("name: [unclosed\n", "YAML"),
])
@pytest.mark.parametrize("print_spec", [False, True])
def test_bad_run_specs_fail_before_any_work(work, cli, spec, names, print_spec):
    path = work / "spec.yaml"
    path.write_text(spec, encoding="utf-8")
    before = _files(work)
    code, out, err = cli(["run", str(path)] + (["--print-spec"] if print_spec else []))
    _assert_refused(code, out, err, names, work, before)


@pytest.mark.parametrize("kind", ["binary", "latin1", "utf16", "empty_dir"])
def test_run_spec_file_kinds(work, cli, kind):
    path = work / "spec.yaml"
    if kind == "empty_dir":
        path.mkdir()
    else:
        path.write_bytes({"binary": bytes(range(256)), "latin1": "name: caf\u00e9\n".encode("latin-1"),
                          "utf16": "name: x\n".encode("utf-16")}[kind])
    before = _files(work)
    code, out, err = cli(["run", str(path)])
    _assert_refused(code, out, err, "spec.yaml", work, before)


@pytest.mark.parametrize("kind", ["binary", "utf16", "negative_ratio", "missing", "not_mapping"])
def test_gate_thresholds_file(work, cli, good_results, kind):
    results = work / "results.json"
    results.write_text(json.dumps(good_results), encoding="utf-8")
    th = work / "th.yaml"
    content = {"binary": bytes(range(256)), "utf16": "a.b: {max: 1}\n".encode("utf-16"),
               "negative_ratio": b"t_toxicity.toxic: {max_ratio: -2}\n", "not_mapping": b"- 1\n"}
    if kind != "missing":
        th.write_bytes(content[kind])
    before = _files(work)
    code, out, err = cli(["gate", str(results), "--thresholds", str(th)])
    _assert_refused(code, out, err, "max_ratio" if kind == "negative_ratio" else "th.yaml", work, before)


def test_the_store_still_works_after_the_battery(work, cli):
    code, out, err = cli(["runs", "list"])
    assert code == 0 and "before" in out, err


# ------------------------------------------------------------------------------------------ remote code

@pytest.mark.parametrize("command", ["tune", "generate", "audit"])
def test_remote_code_models_are_refused_cleanly(work, cli, tiny_model_dir, command):
    import shutil

    model = work / "remote-code-model"
    shutil.copytree(tiny_model_dir, model)
    cfg = json.loads((model / "config.json").read_text(encoding="utf-8"))
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomModel"}
    (model / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    data = work / "d.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "yo"}]}) + "\n", encoding="utf-8")
    before = _files(work)
    args = {"tune": ["tune", "-m", str(model), "-d", str(data), "-o", str(work / "out"), "--max-steps", "1"],
            "generate": ["generate", "-m", str(model), "-p", str(data)],
            "audit": ["audit", "-m", str(model), "-s", "safety", "-o", str(work / "out")]}[command]
    code, out, err = cli(args)
    _assert_refused(code, out, err, "AFTERTUNE_TRUST_REMOTE_CODE=1", work, before)

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
        "field_type": b'{"prompt": 5, "completion": "an answer"}\n',
        "bad_role": b'{"messages": [{"role": "robot", "content": "hi"}]}\n',
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


def _assert_refused(code: int, out: str, err: str, names: str, root: Path, before: set[str],
                    runs: tuple[str, ...] = ("before",)) -> None:
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert "Traceback" not in out + err
    assert lines and lines[-1].startswith("aftertune: error:"), err
    assert names in lines[-1], (names, lines[-1])
    assert KEY not in out + err
    assert _files(root) == before, f"left behind: {_files(root) - before}"
    have = Store(Path(os.environ["AFTERTUNE_HOME"]) / "store.sqlite").list_runs()
    assert sorted(r.name for r in have) == sorted(runs), "a refused command created a store run"


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


# ------------------------------------------------------------------------- scan, tune, sweep, compare, report

DATA_KINDS = [*PROMPT_KINDS, "field_type", "bad_role"]


def _out_path(work: Path, target: str) -> Path:
    """An output folder that cannot be one: a file, a path under a file, a read-only file system."""
    (work / "taken").write_text("x", encoding="utf-8")
    return {"file": work / "taken", "under_a_file": work / "taken" / "out", "unwritable": Path("/proc/aftertune/out")}[
        target]


@pytest.mark.parametrize("kind", DATA_KINDS)
@pytest.mark.parametrize("command", ["scan", "tune"])
def test_training_data_files(work, cli, tiny_model_dir, command, kind):
    path = _inputs(work)[kind]
    before = _files(work)
    args = {"scan": ["scan", str(path), "--no-judges", "--no-contamination", "-o", str(work / "scan-out")],
            "tune": ["tune", "-m", str(tiny_model_dir), "-d", str(path), "-o", str(work / "out"), "--max-steps", "1"]}
    code, out, err = cli(args[command])
    _assert_refused(code, out, err, path.name, work, before)


def _chat_file(work: Path) -> Path:
    path = work / "chat.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello"}]}) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("option", ["--eval-data", "--mix", "--config"])
@pytest.mark.parametrize("kind", ["binary", "utf16", "wrong_shape", "missing"])
def test_tune_other_data_files(work, cli, tiny_model_dir, option, kind):
    """Held-out data, mixed-in sets and the config file are checked before anything is created, like --data."""
    chat = _chat_file(work)
    path = _inputs(work)[kind]
    value = f"{path}:0.5" if option == "--mix" else str(path)
    before = _files(work)
    code, out, err = cli(["tune", "-m", str(tiny_model_dir), "-d", str(chat), "-o", str(work / "out"),
                          "--max-steps", "1", option, value])
    _assert_refused(code, out, err, path.name, work, before)


@pytest.mark.parametrize(("args", "names"), [
    (["--lr", "-1"], "learning_rate"),
    (["--epochs", "0"], "epochs"),
    (["--max-steps", "0"], "max_steps"),
    (["--batch-size", "0"], "batch_size"),
    (["--warmup-ratio", "2"], "warmup_ratio"),
    (["--weight-decay", "-1"], "weight_decay"),
    (["--lora-r", "0"], "lora.r"),
    (["--limit", "0"], "limit"),
    (["--method", "nope"], "method"),
    (["--objective", "nope"], "objective"),
    (["--objective", "dpo"], "chat.jsonl"),  # chat rows are not preference pairs
    (["--gradient-checkpointing", "maybe"], "--gradient-checkpointing"),
    (["--mix", "refusals:lots"], "--mix"),
    (["--mix", "no-such-set:0.1"], "no-such-set"),
])
def test_tune_values(work, cli, tiny_model_dir, args, names):
    chat = _chat_file(work)
    before = _files(work)
    code, out, err = cli(["tune", "-m", str(tiny_model_dir), "-d", str(chat), "-o", str(work / "out"), *args])
    _assert_refused(code, out, err, names, work, before)


@pytest.mark.parametrize(("args", "names"), [
    (["--suite", "no-such-suite"], "no-such-suite"),
    (["--corpora", "no-such-corpus"], "no-such-corpus"),
    (["--show", "-1"], "--show"),
    (["--format", "xml"], "--format"),
    (["--fail-on", "maybe"], "--fail-on"),
])
def test_scan_values(work, cli, args, names):
    chat = _chat_file(work)
    before = _files(work)
    code, out, err = cli(["scan", str(chat), "--no-judges", *args])
    _assert_refused(code, out, err, names, work, before)


SWEEP = ["--knob", "train.learning_rate", "--values", "1e-4,2e-4"]


@pytest.mark.parametrize(("spec", "names"), [
    (b"", "empty"),
    (bytes(range(256)), "spec.yaml"),
    ("name: caf\u00e9\n".encode("latin-1"), "spec.yaml"),
    ("name: x\n".encode("utf-16"), "spec.yaml"),
    (b"- a list\n", "mapping"),
    (b"name: [unclosed\n", "YAML"),
    (b"no_such_field: 1\n", "no_such_field"),
    (b"train: 5\n", "train"),
    (b"train: {max_steps: -3}\n", "max_steps"),
])
def test_sweep_spec_files(work, cli, spec, names):
    path = work / "spec.yaml"
    path.write_bytes(spec)
    before = _files(work)
    code, out, err = cli(["sweep", str(path), *SWEEP, "-o", str(work / "sweep")])
    _assert_refused(code, out, err, names, work, before)


@pytest.mark.parametrize("kind", ["binary", "wrong_shape", "missing"])
@pytest.mark.parametrize("command", ["sweep", "run"])
def test_spec_training_data_is_read_before_any_run(work, cli, command, kind):
    """A spec naming a bad training file leaves no run folder and no store run (the pipeline would start
    auditing the base model before it reached the file)."""
    path = _inputs(work)[kind]
    spec = work / "spec.yaml"
    spec.write_text(f"train: {{data: {json.dumps(str(path))}}}\n", encoding="utf-8")
    before = _files(work)
    args = ["sweep", str(spec), *SWEEP, "-o", str(work / "sweep")] if command == "sweep" else ["run", str(spec)]
    code, out, err = cli(args)
    _assert_refused(code, out, err, path.name, work, before)


@pytest.mark.parametrize(("knob", "values", "names"), [
    ("no_such.knob", "1,2", "no_such"),
    ("train.learning_rate", "abc,x", "learning_rate"),
    ("train.learning_rate", "-1,2", "learning_rate"),
    ("train.learning_rate", ",", "--values"),
    ("train.learning_rate", "1e-4,1e-4", "twice"),
    ("train.method", "nope,lora", "method"),
    ("safety_mix", "-0.1,0.1", "safety_mix"),
    ("interp", "2,3", "interp"),
    ("seed", "a,b", "seed"),
    ("defense", "none,nosuch", "nosuch"),
    ("defense", "guard,mix:lots", "mix:lots"),
    ("train.data", "support,no-such-data.jsonl", "no-such-data.jsonl"),
])
def test_sweep_knob_values(work, cli, knob, values, names):
    before = _files(work)
    code, out, err = cli(["sweep", "--knob", knob, "--values", values, "-o", str(work / "sweep")])
    _assert_refused(code, out, err, names, work, before)


@pytest.fixture
def audited(work) -> str:
    """A run with records in the battery's store, for compare and report."""
    from compare_fixtures import make_run

    store = Store(Path(os.environ["AFTERTUNE_HOME"]) / "store.sqlite")
    run_id = make_run(store, n_safety=20, checkpoints=False)
    store.close()
    return run_id


@pytest.mark.parametrize("target", ["file", "under_a_file", "unwritable"])
@pytest.mark.parametrize("command", ["scan", "tune", "sweep", "compare", "report"])
def test_output_folder_is_checked_before_the_work(work, cli, audited, tiny_model_dir, command, target):
    out_dir = _out_path(work, target)
    chat = _chat_file(work)
    before = _files(work)
    args = {"scan": ["scan", str(chat), "--no-judges", "--no-contamination"],
            "tune": ["tune", "-m", str(tiny_model_dir), "-d", str(chat), "--max-steps", "1"],
            "sweep": ["sweep", *SWEEP],
            "compare": ["compare", f"{audited}:base", f"{audited}:tuned"],
            "report": ["report", audited]}[command]
    code, out, err = cli([*args, "-o", str(out_dir)])
    _assert_refused(code, out, err, "--out", work, before, runs=("before", "synthetic"))


@pytest.mark.parametrize("selectors", [["no-such-run"], ["no-such-run:base"], [""], ["RUN:no-such-model"]])
def test_compare_selectors(work, cli, audited, selectors):
    before = _files(work)
    args = [s.replace("RUN", audited) for s in selectors]
    code, out, err = cli(["compare", *args, "-o", str(work / "cmp")])
    _assert_refused(code, out, err, args[0].split(":")[-1] or "''", work, before, runs=("before", "synthetic"))


@pytest.mark.parametrize("store", ["missing", "binary", "folder"])
@pytest.mark.parametrize("command", ["compare", "report", "gate"])
def test_store_option(work, cli, command, store):
    """Commands that read runs never start an empty store where --store points, nor read a non-store."""
    path = {"missing": work / "nowhere" / "store.sqlite", "binary": _inputs(work)["binary"], "folder": work}[store]
    before = _files(work)
    args = {"compare": ["compare", "some-run"], "report": ["report", "some-run"],
            "gate": ["gate", "some-run", "-t", "t_safety.compliance_rate.max_increase=0.05"]}[command]
    code, out, err = cli([*args, "--store", str(path)])
    _assert_refused(code, out, err, str(path) if store != "folder" else "folder", work, before)

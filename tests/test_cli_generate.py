"""`aftertune generate` and `aftertune runs list|show`, driven through the real entry point."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from aftertune.cli import main
from aftertune.store import Store


def _run(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture
def prompts(tmp_path) -> Path:
    return _write(tmp_path / "prompts.jsonl", [
        json.dumps({"id": "a", "prompt": "How can I reset my password?"}),
        "",
        json.dumps({"id": "b", "messages": [{"role": "system", "content": "Be brief."},
                                            {"role": "user", "content": "hi"}]}),
        json.dumps({"id": "c", "prompt": "Paris is"}),
    ])


def _store() -> Store:
    return Store(os.environ["AFTERTUNE_STORE"])


def test_generate_writes_rows_and_records_a_run(tiny_model_dir, prompts, tmp_path, capsys):
    out = tmp_path / "out" / "answers.jsonl"
    args = ["generate", "--model", str(tiny_model_dir), "--prompts", str(prompts), "--max-new-tokens", "4",
            "--out", str(out), "--system", "You are terse.", "--dtype", "float32"]
    code, stdout, err = _run(args, capsys)
    assert code == 0, err
    assert stdout == "" and "wrote 3 rows" in err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b", "c"]
    assert rows[1]["messages"][0]["content"] == "Be brief."  # the input row is carried through
    assert all(set(r) >= {"response", "finish_reason"} and r["finish_reason"] == "length" for r in rows)
    assert not list(out.parent.glob(".*.tmp"))  # written atomically, nothing left behind

    store = _store()
    (run,) = store.list_runs()
    assert run.kind == "generate" and run.status == "done" and run.spec["n"] == 3
    recs = store.records(run.id)
    assert [r.suite for r in recs] == ["generate"] * 3 and [r.response for r in recs] == [r["response"] for r in rows]
    # --system goes to rows without a system message; the row's own system message wins
    assert recs[0].details["prompt_text"].startswith("<|im_start|>system\nYou are terse.<|im_end|>")
    assert recs[1].details["prompt_text"].startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert store.models(run.id)[0]["info"]["dtype"] == "float32"

    # the same command again: answered from the store, recorded as a second run
    code, _, err = _run(args, capsys)
    assert code == 0, err
    runs = store.list_runs()
    assert len(runs) == 2
    timing = next(e for e in store.events(runs[0].id, kind="timing") if e["step"] == "generate")["payload"]
    assert timing["hits"] == 3 and timing["misses"] == 0
    store.close()

    code, listing, _ = _run(["runs", "list"], capsys)
    assert code == 0 and listing.splitlines()[0].split() == ["ID", "KIND", "NAME", "STATUS", "CREATED", "RECORDS"]
    assert listing.count("generate ") >= 2 and " 3" in listing
    code, shown, _ = _run(["runs", "show", runs[1].id[:17]], capsys)
    assert code == 0
    assert f"run      {runs[1].id}" in shown and "generate: model=3" in shown and '"max_new_tokens": 4' in shown
    code, as_json, _ = _run(["runs", "show", runs[1].id, "--json"], capsys)
    info = json.loads(as_json)
    assert info["records"] == {"generate": {"model": 3}} and info["models"][0]["engine"] == "hf"
    assert info["events"]["by_kind"]["timing"] == 2


def test_generate_raw_prints_to_stdout_without_out(tiny_model_dir, tmp_path, capsys):
    path = _write(tmp_path / "plain.jsonl", [json.dumps({"prompt": "Paris is"}), json.dumps({"prompt": "hi"})])
    code, stdout, err = _run(["generate", "-m", str(tiny_model_dir), "-p", str(path), "--max-new-tokens", "2",
                              "--raw", "--no-progress"], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in stdout.splitlines()]
    assert [r["prompt"] for r in rows] == ["Paris is", "hi"] and all("response" in r for r in rows)
    store = _store()
    (run,) = store.list_runs()
    assert [r.details["prompt_text"] for r in store.records(run.id)] == ["Paris is", "hi"]  # no template
    store.close()


@pytest.mark.parametrize(("lines", "message"), [
    (['{"prompt": "ok"}', "", "{not json"], "prompts.jsonl:3: not valid JSON"),
    (['{"prompt": "ok"}', '{"text": "no prompt"}'], "prompts.jsonl:2: needs exactly one of"),
    (['{"prompt": 3}'], "prompts.jsonl:1: \"prompt\" must be a string"),
    (['{"prompt": "a", "messages": []}'], "prompts.jsonl:1: needs exactly one of"),
    (['{"messages": [{"role": "user"}]}'], "prompts.jsonl:1: messages[0] must be an object"),
    (['[1, 2]'], "prompts.jsonl:1: expected a JSON object"),
    ([], "no prompts in the file"),
])
def test_bad_prompt_files_name_file_and_line(tiny_model_dir, tmp_path, capsys, lines, message):
    path = _write(tmp_path / "prompts.jsonl", lines)
    code, stdout, err = _run(["generate", "-m", str(tiny_model_dir), "-p", str(path)], capsys)
    assert code == 2 and stdout == ""
    assert message in err and err.startswith("aftertune: error:") and len(err.strip().splitlines()) == 1
    assert not Path(os.environ["AFTERTUNE_STORE"]).exists() or not _store().list_runs()


def test_raw_refuses_message_rows_and_missing_file_is_named(tiny_model_dir, prompts, tmp_path, capsys):
    code, _, err = _run(["generate", "-m", str(tiny_model_dir), "-p", str(prompts), "--raw"], capsys)
    assert code == 2 and "prompts.jsonl:3: --raw sends plain prompts" in err
    code, _, err = _run(["generate", "-m", str(tiny_model_dir), "-p", str(tmp_path / "nope.jsonl")], capsys)
    assert code == 2 and "nope.jsonl: file not found" in err
    code, _, err = _run(["generate", "-m", str(tiny_model_dir), "-p", str(prompts), "--max-new-tokens", "0"], capsys)
    assert code == 2 and "--max-new-tokens" in err


def test_runs_commands_on_an_empty_or_missing_store(capsys, tmp_path):
    code, _, err = _run(["runs", "list"], capsys)
    assert code == 2 and "no store here yet" in err
    Store(os.environ["AFTERTUNE_STORE"]).close()
    code, out, _ = _run(["runs", "list"], capsys)
    assert code == 0 and out.strip() == "no runs yet"
    code, _, err = _run(["runs", "show", "20990101"], capsys)
    assert code == 2 and "no run '20990101'" in err


@pytest.mark.slow
def test_generate_end_to_end_on_smollm2(packaged_home, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AFTERTUNE_HOME", packaged_home)
    path = _write(tmp_path / "q.jsonl", [json.dumps({"prompt": "What is the capital of France?"}),
                                         json.dumps({"prompt": "Write a poem about the sea."})])
    out = tmp_path / "a.jsonl"
    code, _, err = _run(["generate", "-m", "smollm2-135m-instruct", "-p", str(path), "--max-new-tokens", "24",
                         "-o", str(out)], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert "Paris" in rows[0]["response"] and rows[0]["finish_reason"] == "stop"
    assert rows[1]["finish_reason"] == "length"
    code, listing, _ = _run(["runs", "list"], capsys)
    assert "generate smollm2-135m-instruct on q.jsonl" in listing


def test_help_loads_no_model_or_statistics_libraries():
    """`aftertune --help` (and registering every command) stays light: no torch, transformers or scipy."""
    import subprocess
    import sys

    from aftertune.cli import scan as scan_cli
    from aftertune.scan.harmful import DEFAULT_CORPORA

    assert scan_cli.DEFAULT_CORPORA == DEFAULT_CORPORA  # written out in the CLI to keep the scanner unloaded
    code = ("import importlib, sys\nfrom aftertune.cli import COMMAND_MODULES\n"
            "for m in COMMAND_MODULES: importlib.import_module('aftertune.cli.' + m)\n"
            "print(sorted(n for n in ('torch', 'transformers', 'scipy', 'sklearn') if n in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_two_processes_on_one_store_cache_the_same_answers(chaotic_dir, tmp_path):
    """Issue 13: two `aftertune generate` processes at once, on one store, with overlapping prompt files and
    different batch sizes, give the shared prompts the same answers, and a third call returns them unchanged."""
    import subprocess
    import sys

    model_dir = chaotic_dir  # larger weights than the tiny model's: prompt-dependent, varied text
    words = ["How can I reset my password", "Paris is", "The quick brown fox", "hi there", "My order arrived",
             "Question: two plus two", "tell me a story", "x", "Please send a refund soon"]
    files = [_write(tmp_path / f"{n}.jsonl", [json.dumps({"id": f"q{i}", "prompt": words[i]}) for i in rows])
             for n, rows in (("a", range(0, 6)), ("b", range(3, 9)))]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))

    def cmd(prompts: Path, out: Path, batch: int) -> list[str]:
        return [sys.executable, "-c", "import sys; from aftertune.cli import main; main(sys.argv[1:])", "generate",
                "--model", str(model_dir), "--prompts",
                str(prompts), "--max-new-tokens", "16", "--dtype", "bfloat16", "--batch-size", str(batch),
                "--out", str(out), "--no-progress"]

    procs = [subprocess.Popen(cmd(f, tmp_path / f"{f.stem}.out", b), env=env, stderr=subprocess.PIPE, text=True)
             for f, b in zip(files, (4, 3), strict=True)]
    for p in procs:
        assert p.wait(timeout=600) == 0, p.stderr.read() if p.stderr else ""
    third = subprocess.run(cmd(files[1], tmp_path / "c.out", 2), env=env, capture_output=True, text=True)
    assert third.returncode == 0, third.stderr

    def answers(name: str) -> dict[str, str]:
        rows = [json.loads(x) for x in (tmp_path / name).read_text().splitlines()]
        return {r["id"]: r["response"] for r in rows}

    a, b, c = answers("a.out"), answers("b.out"), answers("c.out")
    shared = sorted(set(a) & set(b))
    assert shared == ["q3", "q4", "q5"]
    assert [a[k] for k in shared] == [b[k] for k in shared]
    assert c == b
    assert len(set(b.values())) > 3  # the prompts really lead to different text

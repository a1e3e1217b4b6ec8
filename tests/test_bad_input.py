"""Bad input, command by command: exit 2, one line naming the file or field, no traceback, nothing left behind,
and the store still works afterwards. Runs `aftertune.cli.main`, the console script's own function."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from aftertune.cli import main
from aftertune.store import Store

KEY = "sk-SECRETSECRET123"


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = 0 if exc.code is None else int(exc.code)
    out, err = capsys.readouterr()
    return code, out, err


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
def test_generate_prompts(work, capsys, kind):
    path = _inputs(work)[kind]
    before = _files(work)
    code, out, err = _cli(["generate", "-m", "smollm2-135m-instruct", "-p", str(path)], capsys)
    _assert_refused(code, out, err, path.name, work, before)


@pytest.mark.parametrize("ref", [
    f"openai:m@http://127.0.0.1:9/v1?api_key={KEY}",
    f"openai:m@http://user:{KEY}@127.0.0.1:9/v1",
    "no-such-model",
    "./no/such/dir",
    "",
])
@pytest.mark.parametrize("command", ["audit", "generate"])
def test_bad_model_refs_create_nothing(work, capsys, command, ref):
    prompts = work / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "hi"}) + "\n", encoding="utf-8")
    before = _files(work)
    args = (["audit", "-m", ref, "-s", "safety", "-o", str(work / "out")] if command == "audit"
            else ["generate", "-m", ref, "-p", str(prompts)])
    code, out, err = _cli(args, capsys)
    _assert_refused(code, out, err, "model", work, before)

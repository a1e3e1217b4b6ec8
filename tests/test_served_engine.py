"""The `server` engine's lifecycle against a real process: a tiny OpenAI-compatible HTTP server written here.

The fake server is a separate Python process (real HTTP, real subprocess) that
answers /v1/models, /v1/chat/completions and /v1/completions deterministically;
flags make it exit early, never become healthy, or spawn a worker in its
process group, so each failure mode and the "no orphan" promise are checked on
real processes. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from aftertune.engines import GenerateRequest, load_engine
from aftertune.engines.server_process import ServerProcess
from aftertune.errors import UserError

FAKE_SERVER = textwrap.dedent('''
    import argparse, json, os, signal, subprocess, sys, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", default="")
    p.add_argument("--pidfile", default="")
    p.add_argument("--exit-early", action="store_true")
    p.add_argument("--never-healthy", action="store_true")
    p.add_argument("--delay", type=float, default=0.0)
    a = p.parse_args()
    if a.pidfile:  # a worker process, as vLLM and SGLang start; like them, the server ends it on SIGTERM
        worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        signal.signal(signal.SIGTERM, lambda *_: (worker.kill(), sys.exit(0)))
        with open(a.pidfile, "w") as f:
            f.write(f"{os.getpid()} {worker.pid}")
    if a.exit_early:
        print("fake server: cannot load the weights", flush=True)
        sys.exit(3)
    name = os.path.basename(a.model) or "fake-model"

    class H(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/v1/models":
                if a.never_healthy:
                    return self._send(503, {"error": "loading"})
                return self._send(200, {"data": [{"id": a.model or name, "owned_by": "fake"}]})
            if self.path == "/version":
                return self._send(200, {"version": "9.9.9"})
            self._send(404, {"error": "no route"})

        def do_POST(self):
            req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            time.sleep(a.delay)
            if self.path == "/v1/chat/completions":
                text = f"{name} says: " + req["messages"][-1]["content"][::-1]
                return self._send(200, {"choices": [{"message": {"content": text}, "finish_reason": "stop"}],
                                        "usage": {"prompt_tokens": 5, "completion_tokens": 3}})
            if self.path == "/v1/completions":
                return self._send(200, {"choices": [{"text": req["prompt"].upper(), "finish_reason": "length"}],
                                        "usage": {"prompt_tokens": 2, "completion_tokens": 2}})
            self._send(404, {"error": "no route"})

    ThreadingHTTPServer(("127.0.0.1", a.port), H).serve_forever()
''')


@pytest.fixture(scope="module")
def fake_server(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fake") / "fake_openai_server.py"
    path.write_text(FAKE_SERVER, encoding="utf-8")
    return path


def _command(script: Path, *flags: str) -> str:
    return f"{sys.executable} {script} --port {{port}} --model {{model}} " + " ".join(flags)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by a parent) is not running
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pids: list[int], timeout: float = 20.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


@pytest.fixture
def tiny_model(tiny_model_dir) -> Path:
    return tiny_model_dir


def _task_file(path: Path, n: int = 6) -> Path:
    path.write_text("".join(json.dumps({"question": f"What is {i} plus {i}?", "answer": str(2 * i)}) + "\n"
                            for i in range(n)), encoding="utf-8")
    return path


def test_serves_audits_and_stops_the_whole_process_group(fake_server, tiny_model, tmp_path):
    pidfile = tmp_path / "pids"
    eng = load_engine(str(tiny_model), engine="server",
                      command=_command(fake_server, f"--pidfile {pidfile}"), startup_timeout=60)
    server_pid, worker_pid = map(int, pidfile.read_text().split())
    try:
        out = eng.generate([GenerateRequest.chat("abc"), GenerateRequest(prompt="hi")])
        assert [r.text for r in out] == [f"{tiny_model.name} says: cba", "HI"]
        info = eng.describe()
        assert info["engine"] == "server" and info["server"] == "fake_openai_server.py 9.9.9"
        assert "api_base" not in info and "{port}" in info["command"]  # nothing that changes every start
        assert eng.version.startswith("server/1/fake_openai_server.py 9.9.9/cmd-")
        from aftertune.sources import fingerprint

        assert eng.fingerprint == fingerprint(str(tiny_model))  # the weights' identity, as on the hf engine
    finally:
        eng.close()
    assert _wait_gone([server_pid, worker_pid]) == []


def test_an_adapter_is_served_as_its_merged_weights_under_its_own_identity(fake_server, adapter_dir):
    from aftertune.sources import fingerprint

    eng = load_engine(str(adapter_dir), engine="server", command=_command(fake_server), startup_timeout=60)
    try:
        served = Path(eng.api_model)  # the fake server lists its model under the {model} it was given
        assert served.parent.name == "served" and (served / "config.json").is_file()
        assert not (served / "adapter_config.json").exists()  # full weights: what a server loads
        assert eng.fingerprint == fingerprint(str(adapter_dir))  # the adapter's identity, as on hf
    finally:
        eng.close()


def test_early_exit_is_one_line_with_the_servers_last_words(fake_server, tiny_model):
    with pytest.raises(UserError) as exc:
        load_engine(str(tiny_model), engine="server", command=_command(fake_server, "--exit-early"))
    msg = str(exc.value)
    assert "exited with code 3 before answering" in msg and "cannot load the weights" in msg and "\n" not in msg
    log = Path(msg.rsplit("its log: ", 1)[1])  # kept for the user to read, the whole of it
    assert "cannot load the weights" in log.read_text()
    log.unlink()


def test_health_timeout_stops_the_server(fake_server, tiny_model, tmp_path):
    pidfile = tmp_path / "pids"
    start = time.monotonic()
    with pytest.raises(UserError, match=r"no answer from .*/v1/models within 2 s; raise startup_timeout"):
        load_engine(str(tiny_model), engine="server", startup_timeout=2,
                    command=_command(fake_server, "--never-healthy", f"--pidfile {pidfile}"))
    assert time.monotonic() - start < 30
    assert _wait_gone([int(p) for p in pidfile.read_text().split()]) == []


def test_a_fixed_port_in_use_is_refused_before_starting(fake_server, tiny_model, tmp_path):
    with ServerProcess(_command(fake_server), model=tiny_model, startup_timeout=60) as first:
        cmd = f"{sys.executable} {fake_server} --port {first.port} --pidfile {tmp_path / 'pids'}"
        with pytest.raises(UserError, match=rf"port {first.port} on 127.0.0.1 is already in use"):
            ServerProcess(cmd, port=first.port).start()
    assert not (tmp_path / "pids").exists()  # never started


@pytest.mark.parametrize("command, error", [
    ("no-such-server-program --port {port}", "program 'no-such-server-program' not found on PATH"),
    ("python -m x --model {weights} --port {port}", "unknown placeholder"),
    ("python -m x --model {model}", "no {port} placeholder"),
])
def test_bad_commands_fail_before_any_process(command, error):
    with pytest.raises(UserError, match=error):
        ServerProcess(command)


def test_the_same_weights_served_are_the_same_model_with_their_own_cache(fake_server, tiny_model, tmp_path):
    """An audit through the server engine: one record per item, the model's identity is its weights'
    fingerprint (as on hf), and its answers are cached apart from hf's (the version names the server)."""
    from aftertune.audit import audit
    from aftertune.store import Store

    store = Store(tmp_path / "store.sqlite")
    suites = [("task", {"data": str(_task_file(tmp_path / "qa.jsonl")), "max_new_tokens": 4})]
    kw = dict(store=store, out_dir=tmp_path / "out", limit=6, progress=False, reports=False)
    run_id = audit({"local": str(tiny_model)}, suites, **kw)
    audit({"served": str(tiny_model)}, suites, run_id=run_id, engine="server",
          engine_options={"command": _command(fake_server), "startup_timeout": 60}, **kw)
    models = {m["label"]: m for m in store.models(run_id)}
    assert models["served"]["fingerprint"] == models["local"]["fingerprint"]
    assert models["served"]["info"]["engine"] == "server" and models["local"]["info"]["engine"] == "hf"
    served = store.records(run_id, model="served")
    assert len(served) == 6 and all(r.response.startswith(f"{tiny_model.name} says: ") for r in served)
    assert all(not r.response.startswith(tiny_model.name) for r in store.records(run_id, model="local"))


KILLED_RUN = textwrap.dedent('''
    import faulthandler, signal, sys
    faulthandler.register(signal.SIGUSR1)  # the test asks for every thread's stack if the run does not end
    from aftertune.audit import audit
    from aftertune.cli import _terminated
    signal.signal(signal.SIGTERM, _terminated)  # as the CLI does
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as from a terminal: a CI job started in
    # the background inherits SIGINT ignored, and Python then keeps ignoring it
    audit({"m": sys.argv[1]}, [("task", {"data": sys.argv[4], "max_new_tokens": 4})], out_dir=sys.argv[3],
          limit=6, progress=False, engine="server", engine_options={"command": sys.argv[2]})
''')


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_killing_the_run_mid_audit_leaves_no_server(fake_server, tiny_model, tmp_path, how):
    pidfile = tmp_path / "pids"
    script = tmp_path / "run.py"
    script.write_text(KILLED_RUN, encoding="utf-8")
    run = subprocess.Popen([sys.executable, str(script), str(tiny_model),
                            _command(fake_server, "--delay 600", f"--pidfile {pidfile}"), str(tmp_path / "out"),
                            str(_task_file(tmp_path / "qa.jsonl"))],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not pidfile.exists() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert pidfile.exists(), run.communicate(timeout=30)[0].decode(errors="replace")[-2000:]
        pids = [int(p) for p in pidfile.read_text().split()]
        time.sleep(3)  # healthy and answering a slow request: mid-audit
        run.send_signal(how)
        try:
            run.communicate(timeout=60)  # reading the output: a full pipe must not be what keeps it alive
        except subprocess.TimeoutExpired:
            run.send_signal(signal.SIGUSR1)
            time.sleep(1)
            run.kill()
            pytest.fail(f"still running 60 s after {how.name}; its threads:\n"
                        + run.communicate()[0].decode(errors="replace")[-4000:])
    finally:
        if run.poll() is None:
            run.kill()
    assert _wait_gone(pids) == [], f"server processes left after {how.name}"


def test_an_llm_judge_on_the_server_engine_stops_its_server_on_close(fake_server, tiny_model, tmp_path):
    from aftertune.judges.llm import LLMJudge
    from aftertune.store import Store

    pidfile = tmp_path / "pids"
    judge = LLMJudge(str(tiny_model), store=Store(tmp_path / "store.sqlite")).on_engine(
        "server", {"command": _command(fake_server, f"--pidfile {pidfile}"), "startup_timeout": 60})
    try:
        assert judge.engine.describe()["engine"] == "server"
        (answer,) = judge.engine.generate([GenerateRequest.chat("xy")])
        assert answer.text == f"{tiny_model.name} says: yx"
    finally:
        judge.close()
    assert _wait_gone([int(p) for p in pidfile.read_text().split()]) == []

"""A user's OpenAI-compatible server command, run for the length of one model's audit.

`ServerProcess(command, model=...)` fills the placeholders (`{model}`: the
weights folder, `{port}`: a free loopback port, `{host}`: 127.0.0.1), starts
the command without a shell in its own process group, and waits until
`/v1/models` answers. `stop()` ends the whole group (SIGTERM, then SIGKILL
after `STOP_GRACE_S`): vLLM and SGLang start worker processes of their own.

No orphan is left behind:

- `stop()` runs from the engine's `close()`, which the audit calls in a
  `finally` (an exception, Ctrl-C, and SIGTERM, which the CLI turns into
  Ctrl-C);
- an `atexit` hook stops any server still running when the interpreter exits;
- on Linux the server gets `PR_SET_PDEATHSIG`, so even `kill -9` of aftertune
  sends it SIGTERM.

Bad input is one line each (`UserError`, exit 2): a command that is not
found, exits before it is healthy (with its last output line), or stays
silent past `startup_timeout`; and a fixed port (a command without `{port}`
and `port: N` in the spec) that something else already listens on, since
its health check would otherwise pass against the wrong server.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from aftertune.errors import UserError

HOST = "127.0.0.1"
STOP_GRACE_S = 15.0
POLL_S = 0.25
PLACEHOLDERS = ("model", "port", "host")

_running: set[ServerProcess] = set()
_running_lock = threading.Lock()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((HOST, port)) == 0


def split_command(command: str, where: str = "server command") -> list[str]:
    """The command as argv (no shell), with its placeholders checked; raises UserError when malformed."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise UserError(f"{where}: {command!r} is not a command line ({exc})") from None
    if not argv:
        raise UserError(f"{where}: empty; give e.g. 'python -m llama_cpp.server --model {{model}} --port {{port}}'")
    for arg in argv:
        try:
            arg.format(**{k: "" for k in PLACEHOLDERS})
        except (KeyError, IndexError, ValueError) as exc:
            raise UserError(f"{where}: {arg!r} has an unknown placeholder or a stray brace ({exc}); "
                            f"placeholders: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}; write {{{{ for a brace") from None
    if shutil.which(argv[0]) is None:
        raise UserError(f"{where}: program {argv[0]!r} not found on PATH; install it or give its full path")
    return argv


def uses_placeholder(command: str, name: str) -> bool:
    return "{" + name + "}" in command.replace("{{", "").replace("}}", "")


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when aftertune dies, even by kill -9 (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


class ServerProcess:
    """One started server; `base_url` is `http://127.0.0.1:PORT/v1` once `start()` returned."""

    def __init__(self, command: str, *, model: Path | None = None, port: int | None = None,
                 startup_timeout: float = 600.0, where: str = "server command") -> None:
        self.template = command
        self.where = where
        self.model = model
        self.fixed_port = port
        self.startup_timeout = float(startup_timeout)
        self.argv = split_command(command, where)
        if not uses_placeholder(command, "port") and port is None:
            raise UserError(f"{where}: the command has no {{port}} placeholder; add '--port {{port}}' "
                            "(or give the port it listens on as port: N)")
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    def log_tail(self, n: int = 1) -> str:
        """The last `n` non-empty lines the server printed (stdout and stderr together)."""
        if self.log_path is None:
            return ""
        try:
            lines = [ln.strip() for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return " | ".join(lines[-n:])

    def start(self) -> ServerProcess:
        self.port = self.fixed_port or free_port()
        if port_in_use(self.port):
            raise UserError(f"{self.where}: port {self.port} on {HOST} is already in use (another server?); "
                            "stop it, or let aftertune pick a free port with {port} in the command")
        fields = {"model": str(self.model or ""), "port": str(self.port), "host": HOST}
        argv = [arg.format(**fields) for arg in self.argv]
        fd, log = tempfile.mkstemp(prefix="aftertune-server-", suffix=".log")
        self.log_path = Path(log)
        try:
            self.proc = subprocess.Popen(argv, stdout=fd, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True,
                                         preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        except OSError as exc:
            raise UserError(f"{self.where}: cannot start {argv[0]!r} ({exc.strerror or exc})") from None
        finally:
            os.close(fd)
        with _running_lock:
            _running.add(self)
        print(f"{self.where}: starting {Path(argv[0]).name} on {HOST}:{self.port}, waiting for it to answer "
              f"(log: {self.log_path})", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        try:
            self._wait_healthy()
        except UserError:
            self.stop(keep_log=True)  # the message names it
            raise
        except BaseException:
            self.stop()
            raise
        print(f"{self.where}: ready after {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)
        return self

    def _wait_healthy(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout
        with httpx.Client(timeout=httpx.Timeout(5.0, connect=1.0)) as client:
            while True:
                code = self.proc.poll()
                if code is not None:
                    last = self.log_tail()
                    raise UserError(f"{self.where}: the server exited with code {code} before answering "
                                    f"{self.base_url}/models" + (f"; its last line: {last}" if last else "")
                                    + f"; its log: {self.log_path}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(self.base_url + "/models").status_code == 200:
                        return
                if time.monotonic() >= deadline:
                    raise UserError(f"{self.where}: no answer from {self.base_url}/models within "
                                    f"{self.startup_timeout:g} s; raise startup_timeout for a slow start, or check "
                                    f"that the command serves an OpenAI-compatible API on {{port}}; its log: "
                                    f"{self.log_path}")
                time.sleep(POLL_S)

    def stop(self, keep_log: bool = False) -> None:
        """End the server's process group; waits for it, so no process outlives this call. Its log is removed,
        unless `keep_log` (a failed start, whose message names the log)."""
        with _running_lock:
            _running.discard(self)
        proc = self.proc
        if proc is not None and proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=STOP_GRACE_S)
        if proc is not None:
            _signal_group(proc, signal.SIGKILL)  # workers the server left in its group
        if self.log_path is not None and not keep_log:
            with contextlib.suppress(OSError):
                self.log_path.unlink()
            self.log_path = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


@atexit.register
def _stop_all() -> None:
    with _running_lock:
        left = list(_running)
    for server in left:
        server.stop()

"""Unit tests of the openai engine against a tiny scripted HTTP server on loopback.

The scripted server exercises the engine's own logic (payloads, ordering,
concurrency, retries, error messages, key handling, echo parsing); the real
OpenAI-compatible server is driven in tests/test_server_integration.py.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from aftertune.engines import (
    ENGINES,
    Decoding,
    GenerateRequest,
    LoglikelihoodRequest,
    RollingRequest,
    openai_api,
)
from aftertune.engines.openai_api import OpenAIEngine, backoff_delay, is_loopback
from aftertune.errors import UserError
from aftertune.sources.base import ModelRef
from aftertune.store import CachedEngine, Store

SECRET = "sk-test-SECRET-value-1234"


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Seen:
    method: str
    path: str
    body: Any
    headers: dict[str, str]


class Scripted:
    """A loopback HTTP server; `script(seen) -> Reply` decides each answer, `seen` records requests."""

    def __init__(self, script: Callable[[Seen], Reply]) -> None:
        self.script = script
        self.seen: list[Seen] = []
        self.in_flight = 0
        self.max_in_flight = 0
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(n) if n else b""
                seen = Seen(self.command, self.path, json.loads(raw) if raw else None,
                            {k.lower(): v for k, v in self.headers.items()})
                with lock:
                    outer.seen.append(seen)
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                try:
                    reply = outer.script(seen)
                    if reply.delay:
                        time.sleep(reply.delay)
                finally:
                    with lock:
                        outer.in_flight -= 1
                data = (reply.body if isinstance(reply.body, str) else json.dumps(reply.body)).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = _handle
            do_POST = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def posts(self, path: str | None = None) -> list[Seen]:
        return [s for s in self.seen if s.method == "POST" and (path is None or s.path.endswith(path))]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


MODELS_BODY = {"object": "list", "data": [{"id": "m", "object": "model", "owned_by": "tests", "created": 1}]}


def chat_reply(text: str, finish: str = "stop") -> Reply:
    return Reply(body={"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                    "finish_reason": finish}],
                       "usage": {"prompt_tokens": 7, "completion_tokens": 3}})


def default_script(seen: Seen) -> Reply:
    if seen.path.endswith("/models"):
        return Reply(body=MODELS_BODY)
    if seen.path.endswith("/chat/completions"):
        return chat_reply("echo: " + seen.body["messages"][-1]["content"])
    if seen.path.endswith("/completions"):
        return Reply(body={"choices": [{"text": "<" + seen.body["prompt"] + ">", "finish_reason": "length"}],
                           "usage": {"prompt_tokens": 2, "completion_tokens": 5}})
    return Reply(404, {"error": {"message": f"no route {seen.path}"}})


@pytest.fixture
def server_factory():
    made: list[Scripted] = []

    def make(script: Callable[[Seen], Reply] = default_script) -> Scripted:
        s = Scripted(script)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


@pytest.fixture
def no_sleep(monkeypatch):
    delays: list[float] = []
    monkeypatch.setattr(openai_api, "_sleep", delays.append)
    return delays


def engine(base: str, **kw: Any) -> OpenAIEngine:
    kw.setdefault("api_model", "m")
    kw.setdefault("backoff_base", 0.01)
    return OpenAIEngine(api_base=base, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- construction and identity ---------------------------------------------------------

def test_registered_and_from_ref(server_factory):
    srv = server_factory()
    assert ENGINES.get("openai") is OpenAIEngine
    ref = ModelRef(ref=f"openai:m@{srv.base}", kind="openai", name="m", api_model="m", api_base=srv.base + "/",
                   api_key_env="AFTERTUNE_TEST_KEY")
    eng = OpenAIEngine.from_ref(ref, concurrency=3, timeout=5, max_retries=1, mode="completions")
    assert (eng.api_base, eng.concurrency, eng.max_retries, eng.mode) == (srv.base, 3, 1, "completions")
    with pytest.raises(UserError, match="openai:MODEL@http"):
        OpenAIEngine.from_ref(ModelRef(ref="x", kind="local", name="x"))
    with pytest.raises(UserError, match="mode must be"):
        OpenAIEngine.from_ref(ref, mode="chatty")
    with pytest.raises(UserError, match="not an http"):
        OpenAIEngine(api_base="localhost:8000", api_model="m")


def test_fingerprint_uses_url_model_and_server_listing(server_factory):
    srv = server_factory()
    a = engine(srv.base)
    fp = a.fingerprint
    assert fp == engine(srv.base + "/").fingerprint  # trailing slash does not matter
    assert fp != engine(srv.base, api_model="other").fingerprint
    assert a.describe()["server_model"] == {"id": "m", "owned_by": "tests"}  # 'created' would not be stable
    assert a.version.startswith("openai/")

    other = server_factory(lambda s: Reply(body={"data": [{"id": "m", "owned_by": "someone-else"}]})
                           if s.path.endswith("/models") else default_script(s))
    b = engine(other.base)
    b_no_port = b.fingerprint
    # Same model name on a server that reports another owner → another fingerprint (and another port).
    assert b_no_port != fp
    # A server without /models still gets a fingerprint (URL + model name).
    bare = server_factory(lambda s: Reply(404, {"detail": "Not Found"}) if s.path.endswith("/models")
                          else default_script(s))
    assert engine(bare.base).describe()["server_model"] is None


def test_fingerprint_of_unreachable_server_is_a_clear_error(no_sleep):
    eng = engine(f"http://127.0.0.1:{free_port()}/v1", max_retries=2)
    with pytest.raises(UserError) as exc:
        _ = eng.fingerprint
    msg = str(exc.value)
    assert "failed after 3 attempts" in msg and "connection failed" in msg and "\n" not in msg
    assert len(no_sleep) == 2


# -- API key -------------------------------------------------------------------------

def test_key_from_env_is_sent_and_never_exposed(server_factory, monkeypatch):
    srv = server_factory()
    monkeypatch.setenv("AFTERTUNE_TEST_KEY", SECRET)
    eng = engine(srv.base, api_key_env="AFTERTUNE_TEST_KEY")
    eng.generate([GenerateRequest.chat("hi")])
    assert srv.posts()[0].headers["authorization"] == f"Bearer {SECRET}"
    shown = json.dumps(eng.describe()) + eng.fingerprint + repr(eng) + eng.version
    assert SECRET not in shown
    assert eng.describe()["key_env"] == "AFTERTUNE_TEST_KEY"
    # The key is read at call time: a changed variable is used by the next call.
    monkeypatch.setenv("AFTERTUNE_TEST_KEY", "sk-rotated")
    eng.generate([GenerateRequest.chat("again")])
    assert srv.posts()[-1].headers["authorization"] == "Bearer sk-rotated"


def test_missing_key_is_dummy_on_loopback_and_an_error_elsewhere(server_factory, monkeypatch):
    monkeypatch.delenv("AFTERTUNE_TEST_KEY", raising=False)
    srv = server_factory()
    eng = engine(srv.base, api_key_env="AFTERTUNE_TEST_KEY")
    eng.generate([GenerateRequest.chat("hi")])
    assert srv.posts()[0].headers["authorization"] == f"Bearer {openai_api.DUMMY_LOCAL_KEY}"
    remote = engine("https://api.example.invalid/v1", api_key_env="AFTERTUNE_TEST_KEY")
    with pytest.raises(UserError, match="set the environment variable AFTERTUNE_TEST_KEY"):
        remote.generate([GenerateRequest.chat("hi")])  # refused before any connection is attempted


def test_401_names_the_key_variable_without_the_key(server_factory, monkeypatch):
    monkeypatch.setenv("AFTERTUNE_TEST_KEY", SECRET)
    srv = server_factory(lambda s: Reply(401, {"error": {"message": "Incorrect API key provided"}}))
    eng = engine(srv.base, api_key_env="AFTERTUNE_TEST_KEY")
    with pytest.raises(UserError) as exc:
        eng.generate([GenerateRequest.chat("hi")])
    msg = str(exc.value)
    assert "401" in msg and "Incorrect API key" in msg and "AFTERTUNE_TEST_KEY" in msg and SECRET not in msg
    assert len(srv.posts()) == 1  # not retried


@pytest.mark.parametrize("url,loop", [
    ("http://127.0.0.1:8000/v1", True), ("http://127.9.9.9/v1", True), ("http://localhost:1/v1", True),
    ("http://[::1]:8000/v1", True), ("http://10.0.0.1/v1", False), ("https://api.openai.com/v1", False),
    ("http://localhost.example.com/v1", False),
])
def test_is_loopback(url, loop):
    assert is_loopback(url) is loop


# -- generate ------------------------------------------------------------------------

def test_chat_and_completion_payloads(server_factory):
    srv = server_factory()
    eng = engine(srv.base)
    dec = Decoding(max_new_tokens=12, temperature=0.0, top_p=0.5, seed=7, stop=("\n\n", "END"))
    chat = GenerateRequest.chat("What is 2+2?", system="Be brief.", decoding=dec)
    raw = GenerateRequest(prompt="Once upon", decoding=Decoding(max_new_tokens=5, temperature=0.7, top_p=0.9, seed=3))
    out = eng.generate([chat, raw])
    c, p = srv.posts("/chat/completions")[0].body, srv.posts("/v1/completions")[0].body
    assert c["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]
    assert (c["model"], c["max_tokens"], c["temperature"], c["top_p"], c["seed"], c["stop"]) == (
        "m", 12, 0.0, 1.0, 7, ["\n\n", "END"])  # greedy: temperature 0, top_p neutral
    assert (p["prompt"], p["max_tokens"], p["temperature"], p["top_p"], p["seed"]) == ("Once upon", 5, 0.7, 0.9, 3)
    assert "stop" not in p
    assert out[0].text == "echo: What is 2+2?" and out[0].finish_reason == "stop"
    assert json.loads(out[0].prompt_text) == c["messages"]
    assert (out[0].n_prompt_tokens, out[0].n_new_tokens) == (7, 3)
    assert out[1].text == "<Once upon>" and out[1].prompt_text == "Once upon" and out[1].finish_reason == "length"


def test_completions_mode_refuses_messages(server_factory):
    srv = server_factory()
    eng = engine(srv.base, mode="completions")
    with pytest.raises(UserError, match="mode='completions'"):
        eng.generate([GenerateRequest.chat("hi")])
    assert eng.generate([GenerateRequest(prompt="ab")])[0].text == "<ab>"


def test_results_in_order_with_bounded_concurrency_and_progress(server_factory):
    import random

    rng = random.Random(0)
    delays = {f"q{i}": rng.uniform(0.0, 0.08) for i in range(24)}

    def script(seen: Seen) -> Reply:
        if seen.path.endswith("/chat/completions"):
            q = seen.body["messages"][-1]["content"]
            r = chat_reply("answer to " + q)
            r.delay = delays[q]
            return r
        return default_script(seen)

    srv = server_factory(script)
    eng = engine(srv.base, concurrency=4)
    ticks: list[int] = []
    main = threading.get_ident()
    threads: set[int] = set()

    def progress(n: int) -> None:
        threads.add(threading.get_ident())
        ticks.append(n)

    reqs = [GenerateRequest.chat(q) for q in delays]
    out = eng.generate(reqs, progress=progress)
    assert [o.text for o in out] == [f"answer to {q}" for q in delays]
    assert sum(ticks) == len(reqs) and set(ticks) == {1}
    assert threads == {main}  # progress is called from the caller's thread
    assert 1 < srv.max_in_flight <= 4


def test_first_failure_stops_the_batch(server_factory):
    def script(seen: Seen) -> Reply:
        if seen.path.endswith("/chat/completions") and seen.body["messages"][-1]["content"] == "bad":
            return Reply(400, {"error": {"message": "bad   request\nbody"}})
        r = default_script(seen)
        r.delay = 0.05
        return r

    srv = server_factory(script)
    eng = engine(srv.base, concurrency=2)
    reqs = [GenerateRequest.chat("bad")] + [GenerateRequest.chat(f"q{i}") for i in range(40)]
    with pytest.raises(UserError) as exc:
        eng.generate(reqs)
    assert str(exc.value) == (f"openai engine: POST {srv.base}/chat/completions answered 400 Bad Request: "
                              "bad request body")
    assert len(srv.posts()) < 10  # the rest were cancelled


def test_cached_engine_serves_repeats_from_store(server_factory, tmp_path):
    srv = server_factory()
    store = Store(tmp_path / "s.sqlite")
    cached = CachedEngine(engine(srv.base), store)
    reqs = [GenerateRequest.chat(f"q{i}") for i in range(3)]
    first = cached.generate(reqs)
    n = len(srv.posts())
    again = CachedEngine(engine(srv.base), store).generate(reqs)
    assert again == first and len(srv.posts()) == n == 3


# -- retries ---------------------------------------------------------------------------

def test_retries_429_then_succeeds_respecting_retry_after(server_factory, no_sleep):
    calls = {"n": 0}

    def script(seen: Seen) -> Reply:
        if seen.path.endswith("/chat/completions"):
            calls["n"] += 1
            if calls["n"] == 1:
                return Reply(429, {"error": {"message": "rate limited"}}, {"Retry-After": "3"})
            if calls["n"] == 2:
                return Reply(503, {"error": {"message": "overloaded"}})
            return chat_reply("finally")
        return default_script(seen)

    srv = server_factory(script)
    eng = engine(srv.base, max_retries=3, backoff_base=0.5, backoff_max=8)
    assert eng.generate([GenerateRequest.chat("hi")])[0].text == "finally"
    assert len(srv.posts()) == 3
    assert no_sleep[0] == 3.0  # Retry-After wins
    assert 0.5 <= no_sleep[1] <= 1.0  # second retry: base·2 with jitter in [50%, 100%]


def test_5xx_exhausts_retries_with_a_clear_error(server_factory, no_sleep):
    srv = server_factory(lambda s: Reply(502, {"error": {"message": "upstream down"}})
                         if s.method == "POST" else default_script(s))
    eng = engine(srv.base, max_retries=2)
    with pytest.raises(UserError) as exc:
        eng.generate([GenerateRequest.chat("hi")])
    assert len(srv.posts()) == 3 and len(no_sleep) == 2
    assert "failed after 3 attempts: answered 502 Bad Gateway: upstream down" in str(exc.value)


def test_501_and_404_are_not_retried(server_factory, no_sleep):
    srv = server_factory(lambda s: Reply(501, "not implemented") if s.method == "POST" else default_script(s))
    with pytest.raises(UserError, match="answered 501"):
        engine(srv.base, max_retries=4).generate([GenerateRequest.chat("hi")])
    srv404 = server_factory(lambda s: Reply(404, {"detail": "Not Found"}) if s.method == "POST" else default_script(s))
    with pytest.raises(UserError, match=r"answered 404 Not Found: Not Found \(check the API base URL"):
        engine(srv404.base, max_retries=4).generate([GenerateRequest.chat("hi")])
    assert no_sleep == [] and len(srv.posts()) == len(srv404.posts()) == 1


def test_timeout_is_retried_then_reported(server_factory, no_sleep):
    def script(seen: Seen) -> Reply:
        r = default_script(seen)
        if seen.method == "POST":
            r.delay = 1.0
        return r

    srv = server_factory(script)
    eng = engine(srv.base, timeout=0.2, max_retries=1)
    with pytest.raises(UserError, match=r"failed after 2 attempts: no answer within 0.2 s"):
        eng.generate([GenerateRequest.chat("hi")])
    assert len(no_sleep) == 1


def test_connection_refused_is_retried_then_reported(no_sleep):
    eng = engine(f"http://127.0.0.1:{free_port()}/v1", max_retries=3)
    with pytest.raises(UserError, match="failed after 4 attempts: connection failed"):
        eng.generate([GenerateRequest.chat("hi")])
    assert len(no_sleep) == 3
    assert no_sleep == sorted(no_sleep) or max(no_sleep) <= 0.08  # grows (with jitter) from 0.01


def test_backoff_delay_shape():
    import random

    rng = random.Random(1)
    for attempt in range(8):
        d = backoff_delay(attempt, 0.5, 10.0, rng=rng)
        full = min(10.0, 0.5 * 2**attempt)
        assert full / 2 <= d <= full
    assert backoff_delay(0, 0.5, 10.0, retry_after=7.5) == 7.5
    assert backoff_delay(0, 0.5, 10.0, retry_after=10_000) == openai_api.MAX_RETRY_AFTER_S


def test_retry_after_forms():
    import email.utils

    import httpx

    def resp(**h: str) -> httpx.Response:
        return httpx.Response(429, headers=h)

    assert openai_api._retry_after(resp()) is None
    assert openai_api._retry_after(resp(**{"retry-after": "2"})) == 2.0
    assert openai_api._retry_after(resp(**{"retry-after-ms": "250"})) == 0.25
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= openai_api._retry_after(resp(**{"retry-after": date})) <= 31
    assert openai_api._retry_after(resp(**{"retry-after": "soon"})) is None


# -- log-likelihood -------------------------------------------------------------------------

def echo_script(aligned: bool) -> Callable[[Seen], Reply]:
    """Tokenise the prompt by characters; log P(char) = -(position % 3) - 0.5, argmax except where marked.

    `aligned` follows OpenAI/vLLM semantics (prompt tokens, then the generated one); otherwise
    llama-cpp-python's shifted list (no generated token, values of the next position).
    """

    def script(seen: Seen) -> Reply:
        if seen.path.endswith("/models"):
            return Reply(body=MODELS_BODY)
        b = seen.body
        assert (b["echo"], b["logprobs"], b["max_tokens"], b["temperature"]) == (True, 1, 1, 0.0)
        prompt: str = b["prompt"]
        toks = list(prompt) + ([" "] if aligned else [])
        offsets = list(range(len(toks)))
        vals: list[float | None] = [None] + [-(i % 3) - 0.5 for i in range(1, len(toks))]
        tops: list[Any] = [None] + [
            {t: (v if t != "X" else v + 1.0), **({"?": v + 1.0} if t == "X" else {})}
            for t, v in zip(toks[1:], vals[1:], strict=True)
        ]
        return Reply(body={"choices": [{"text": prompt + " ", "finish_reason": "length",
                                        "logprobs": {"tokens": toks, "text_offset": offsets,
                                                     "token_logprobs": vals, "top_logprobs": tops}}],
                           "usage": {"prompt_tokens": len(prompt), "completion_tokens": 1}})

    return script


def test_loglikelihood_from_echo(server_factory):
    srv = server_factory(echo_script(aligned=True))
    eng = engine(srv.base, concurrency=3)
    reqs = [LoglikelihoodRequest("abc", "de"), LoglikelihoodRequest("abc", "dX"), LoglikelihoodRequest("a", "bcdef")]
    out = eng.loglikelihood(reqs)
    # positions 3, 4 → -(0)-0.5, -(1)-0.5
    assert out[0].logprob == pytest.approx(-2.0) and out[0].n_tokens == 2 and out[0].is_greedy
    assert out[1].logprob == pytest.approx(-2.0) and not out[1].is_greedy  # "X" was not the argmax
    assert out[2].n_tokens == 5 and out[2].logprob == pytest.approx(sum(-(i % 3) - 0.5 for i in range(1, 6)))
    roll = eng.rolling_loglikelihood([RollingRequest("hello")])
    assert roll[0].n_tokens == 4  # the first token has no left context
    assert roll[0].logprob == pytest.approx(sum(-(i % 3) - 0.5 for i in range(1, 5)))
    # one capability probe, then one request per item
    assert len(srv.posts()) == 1 + 3 + 1


def test_shifted_echo_logprobs_are_refused(server_factory):
    srv = server_factory(echo_script(aligned=False))
    eng = engine(srv.base)
    with pytest.raises(NotImplementedError, match="shifted by one token"):
        eng.loglikelihood([LoglikelihoodRequest("abc", "de")])
    with pytest.raises(NotImplementedError, match="shifted by one token"):
        eng.rolling_loglikelihood([RollingRequest("abc")])
    assert len(srv.posts()) == 1  # probed once, remembered


@pytest.mark.parametrize("reply", [
    Reply(400, {"error": {"message": "echo is not supported"}}),
    Reply(404, {"detail": "Not Found"}),
    Reply(body={"choices": [{"text": "x", "logprobs": None, "finish_reason": "length"}]}),
    Reply(body={"choices": [{"text": "x", "finish_reason": "length",
                             "logprobs": {"tokens": ["x"], "text_offset": [40], "token_logprobs": [-1.0],
                                          "top_logprobs": [{"x": -1.0}]}}],
                "usage": {"completion_tokens": 1}}),
])
def test_servers_without_prompt_logprobs_raise_not_implemented(server_factory, reply):
    srv = server_factory(lambda s: Reply(body=MODELS_BODY) if s.path.endswith("/models") else reply)
    with pytest.raises(NotImplementedError, match="cannot score log-likelihoods"):
        engine(srv.base).loglikelihood([LoglikelihoodRequest("a", "b")])


def test_empty_inputs_make_no_requests(server_factory):
    srv = server_factory()
    eng = engine(srv.base)
    assert eng.generate([]) == [] and eng.loglikelihood([]) == [] and eng.rolling_loglikelihood([]) == []
    assert srv.seen == []

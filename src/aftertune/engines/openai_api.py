"""The `openai` engine: any OpenAI-compatible HTTP server (vLLM, llama.cpp, TGI, hosted APIs).

A reference looks like `openai:MODEL@http://host:port/v1`; `sources` turns it
into a `ModelRef` with `api_model`, `api_base` and `api_key_env`.

Why httpx and not the `openai` client: the engine needs exact control over
three things the client hides or decides for us — which failures are retried
and how long to wait (exponential backoff with jitter, `Retry-After` /
`retry-after-ms` respected, the same policy for every server), the one-line
error a person sees for a 4xx (status + the server's own message, never a
traceback or a header), and the non-standard completion fields that
log-likelihood scoring needs (`echo`, `logprobs` with `text_offset`). httpx is
already a dependency (the `openai` client is built on it), its `Client` is
thread-safe, and plain JSON keeps what is sent visible in one place
(`_chat_payload`, `_completion_payload`).

Behaviour worth knowing:

- **Routing.** A request with `messages` goes to `/chat/completions` and the
  server applies its own chat template (the record's `prompt_text` is the
  canonical JSON of the messages, since the templated text is not returned);
  a request with a raw `prompt` goes to `/completions`. `mode="completions"`
  is for servers with no chat template (base models): messages are refused
  with a UserError instead of being sent to an endpoint that would guess a
  template.
- **Decoding.** temperature 0 is greedy; `seed`, `top_p`, `max_tokens` and
  `stop` are passed as given.
- **Concurrency.** At most `concurrency` requests are in flight (a thread
  pool over one pooled `httpx.Client`); results come back in request order;
  the progress callback is called once per finished request, from the
  caller's thread. The first request that fails for good cancels the rest and
  raises.
- **Retries.** Connection errors, timeouts, 408, 429 and 5xx (but 501) are
  retried up to `max_retries` times with exponential backoff and jitter; a
  `Retry-After` header wins over the computed delay. Any other 4xx is a
  UserError at once: `POST URL answered 400 Bad Request: <server message>`.
- **API key.** Read from the environment variable named by the reference
  (`api_key_env`, default `OPENAI_API_KEY`) each time requests are sent, and
  sent only in the Authorization header. It is never logged, stored, or put in
  `describe()`, the fingerprint or an error message. If the variable is unset
  and the server is on loopback (127.0.0.0/8, ::1, localhost — a local
  vLLM/llama.cpp server usually wants no key), a dummy key is sent; for any
  other host a missing variable is a UserError naming it.
- **Log-likelihood** uses `/completions` with `echo=True, logprobs=1,
  max_tokens=1, temperature=0` (max_tokens=1 rather than 0 because
  llama-cpp-python reads 0 as "until the context is full" and older vLLM
  refuses 0; the one generated token is dropped by its text offset). The
  continuation's tokens are those whose text ends past the context; a token
  straddling the context/continuation boundary counts as continuation. The
  first call probes the server once; a server that rejects `echo`, returns no
  prompt log-probabilities (llama.cpp's C++ server), or returns them shifted
  by one token (llama-cpp-python for models without a BOS token, its issue
  #1983: detected because the generated token is missing from the echoed
  list) makes `loglikelihood` raise NotImplementedError, which suites read as
  "skip log-likelihood tasks for this model".
- **Fingerprint** = sha256 of the base URL, the model name and what the
  server's `/models` says about that model (id, owned_by, root). Reaching the
  server is therefore needed even to read cached answers: an unreachable
  server is a UserError rather than a silently different cache key.
"""

from __future__ import annotations

import email.utils
import ipaddress
import json
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar
from urllib.parse import urlparse

import httpx

from aftertune.engines.base import (
    Engine,
    GenerateRequest,
    GenerateResult,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    Progress,
    RollingRequest,
    RollingResult,
)
from aftertune.errors import UserError
from aftertune.fileio import canonical_json, sha256_text
from aftertune.sources.base import ModelRef

# Bump when a change here can change an answer for the same request; it is part of every cache key.
ENGINE_CODE_VERSION = "1"

DEFAULT_KEY_ENV = "OPENAI_API_KEY"
# Sent to loopback servers when no key is set; such servers (vLLM, llama.cpp) ignore it unless
# they were started with a key, in which case the 401 tells the user which variable to set.
DUMMY_LOCAL_KEY = "sk-no-key-required"

RETRY_STATUS = frozenset({408, 409, 425, 429})  # plus every 5xx except 501
MAX_RETRY_AFTER_S = 120.0  # a server asking for longer than this is waited on for this long
LL_PROBE_CONTEXT = "1, 2, 3, 4, 5,"
LL_PROBE_CONTINUATION = " 6, 7"

# Module-level so tests can record the delays instead of sleeping.
_sleep: Callable[[float], None] = time.sleep

T = TypeVar("T")
R = TypeVar("R")


class HTTPClientError(UserError):
    """A 4xx that retrying cannot fix; `status` lets callers tell 'unsupported' from 'wrong'."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class _Unsupported(Exception):
    """The server answered, but not with usable prompt log-probabilities."""


def is_loopback(url: str) -> bool:
    host = (urlparse(url).hostname or "").strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _server_message(resp: httpx.Response) -> str:
    """The human part of an error body: OpenAI's {"error": {"message"}}, FastAPI's {"detail"}, or the text."""
    try:
        body = resp.json()
    except ValueError:
        return _one_line(resp.text) or "(empty body)"
    if isinstance(body, dict):
        err = body.get("error", body.get("detail", body.get("message")))
        if isinstance(err, dict):
            err = err.get("message", err)
        if isinstance(err, list):  # FastAPI validation errors
            err = "; ".join(
                f"{'.'.join(str(x) for x in e.get('loc', []))}: {e.get('msg', '')}" if isinstance(e, dict) else str(e)
                for e in err
            )
        if err is not None:
            return _one_line(err if isinstance(err, str) else json.dumps(err))
    return _one_line(json.dumps(body))


def _retry_after(resp: httpx.Response) -> float | None:
    """Seconds the server asked us to wait (`retry-after-ms`, `Retry-After` seconds or HTTP date)."""
    ms = resp.headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = resp.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_delay(attempt: int, base: float, cap: float, retry_after: float | None = None,
                  rng: random.Random | None = None) -> float:
    """Delay before retry number `attempt` (0-based): `Retry-After` if given, else base·2^attempt with jitter."""
    if retry_after is not None:
        return min(retry_after, MAX_RETRY_AFTER_S)
    rng = rng or random
    return min(cap, base * (2**attempt)) * (0.5 + 0.5 * rng.random())


def _is_retryable(status: int) -> bool:
    return status in RETRY_STATUS or (status >= 500 and status != 501)


def _finish_reason(raw: Any) -> str:
    if raw in (None, "stop", "eos", "end_turn", "stop_sequence"):
        return "stop"
    if raw in ("length", "max_tokens"):
        return "length"
    return str(raw)


class OpenAIEngine(Engine):
    """Talks to `api_base` for `api_model`; see the module docstring for the exact behaviour."""

    def __init__(
        self,
        *,
        api_base: str,
        api_model: str,
        api_key_env: str | None = None,
        concurrency: int = 8,
        timeout: float = 120.0,
        max_retries: int = 5,
        mode: str = "chat",
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        display_name: str | None = None,
    ) -> None:
        if mode not in ("chat", "completions"):
            raise UserError(f"openai engine: mode must be 'chat' or 'completions', not {mode!r}")
        if not isinstance(concurrency, int) or concurrency < 1:
            raise UserError(f"openai engine: concurrency must be a whole number >= 1, not {concurrency!r}")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise UserError(f"openai engine: max_retries must be a whole number >= 0, not {max_retries!r}")
        if timeout <= 0:
            raise UserError(f"openai engine: timeout must be > 0 seconds, not {timeout!r}")
        parsed = urlparse(api_base or "")
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise UserError(
                f"openai engine: API base {api_base!r} is not an http(s) URL; write it as http://host:port/v1"
            )
        if not api_model:
            raise UserError("openai engine: no model name; write the reference as openai:MODEL@http://host:port/v1")
        self.api_base = api_base.rstrip("/")
        self.api_model = api_model
        self.api_key_env = api_key_env or DEFAULT_KEY_ENV
        self.concurrency = concurrency
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.mode = mode
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.display_name = display_name or api_model
        self._client = httpx.Client(
            timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            follow_redirects=False,
        )
        self._lock = threading.Lock()
        self._probe_lock = threading.Lock()
        self._fingerprint: str | None = None
        self._server_model: dict[str, Any] | None = None
        self._ll_support: str | None = None  # None: not probed; "": supported; else the reason it is not

    @classmethod
    def from_ref(
        cls,
        model_ref: ModelRef,
        *,
        concurrency: int = 8,
        timeout: float = 120.0,
        max_retries: int = 5,
        mode: str = "chat",
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
    ) -> OpenAIEngine:
        if not model_ref.api_base or not model_ref.api_model:
            raise UserError(
                f"model {model_ref.ref!r} is not an OpenAI-compatible endpoint; "
                "write it as openai:MODEL@http://host:port/v1"
            )
        return cls(
            api_base=model_ref.api_base,
            api_model=model_ref.api_model,
            api_key_env=model_ref.api_key_env,
            concurrency=concurrency,
            timeout=timeout,
            max_retries=max_retries,
            mode=mode,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            display_name=model_ref.name,
        )

    def __repr__(self) -> str:  # never the key
        return f"OpenAIEngine(model={self.api_model!r}, api_base={self.api_base!r}, mode={self.mode!r})"

    # -- identity --------------------------------------------------------------
    @property
    def version(self) -> str:
        return f"openai/{ENGINE_CODE_VERSION}"

    @property
    def fingerprint(self) -> str:
        with self._lock:
            if self._fingerprint is None:
                self._server_model = self._fetch_server_model()
                self._fingerprint = sha256_text(canonical_json(
                    {"api_base": self.api_base, "model": self.api_model, "server_model": self._server_model}
                ))
            return self._fingerprint

    def describe(self) -> dict[str, Any]:
        fp = self.fingerprint
        return {
            "engine": self.name,
            "fingerprint": fp,
            "version": self.version,
            "api_base": self.api_base,
            "model": self.api_model,
            "server_model": self._server_model,
            "mode": self.mode,
            "key_env": self.api_key_env,  # the variable's name, never its value
            "concurrency": self.concurrency,
            "chat_template": "applied by the server" if self.mode == "chat" else None,
        }

    def _fetch_server_model(self) -> dict[str, Any] | None:
        """What `/models` says about our model; None when the server does not answer that route."""
        try:
            body = self._request("GET", "/models", None, self._headers())
        except HTTPClientError as exc:
            if exc.status in (401, 403):
                raise
            return None
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            return None
        entries = [d for d in data if isinstance(d, dict)]
        match = [d for d in entries if d.get("id") == self.api_model]
        if not match and len(entries) == 1:  # a single-model server (llama.cpp) serves it under any name
            match = entries
        if not match:
            return None
        return {k: match[0][k] for k in ("id", "owned_by", "root") if match[0].get(k) is not None}

    # -- HTTP --------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.api_key_env, "").strip()
        if not key:
            if not is_loopback(self.api_base):
                raise UserError(
                    f"openai engine: set the environment variable {self.api_key_env} to the API key for "
                    f"{self.api_base} (the key is read from the environment and never stored)"
                )
            key = DUMMY_LOCAL_KEY
        return {"Authorization": f"Bearer {key}"}

    def _request(self, method: str, path: str, payload: dict[str, Any] | None, headers: dict[str, str]) -> Any:
        url = self.api_base + path
        attempts = self.max_retries + 1
        reason = ""
        for attempt in range(attempts):
            retry_after: float | None = None
            try:
                resp = self._client.request(method, url, json=payload, headers=headers)
            except httpx.TimeoutException:
                reason = f"no answer within {self.timeout:g} s (raise --timeout for slow servers)"
            except httpx.TransportError as exc:
                reason = f"connection failed ({type(exc).__name__}: {_one_line(str(exc), 120)})"
            else:
                if resp.status_code < 300:
                    try:
                        return resp.json()
                    except ValueError:
                        raise UserError(
                            f"openai engine: {method} {url} answered {resp.status_code} with a body that is "
                            f"not JSON: {_one_line(resp.text, 120)!r}; is this an OpenAI-compatible /v1 URL?"
                        ) from None
                message = _server_message(resp)
                status = f"{resp.status_code} {resp.reason_phrase}".strip()
                if not _is_retryable(resp.status_code):
                    hint = ""
                    if resp.status_code in (401, 403):
                        hint = f" (check the key in the environment variable {self.api_key_env})"
                    elif resp.status_code == 404:
                        hint = " (check the API base URL, usually ending in /v1, and the model name)"
                    raise HTTPClientError(
                        f"openai engine: {method} {url} answered {status}: {message}{hint}", resp.status_code
                    )
                reason = f"answered {status}: {message}"
                retry_after = _retry_after(resp)
            if attempt + 1 < attempts:
                _sleep(backoff_delay(attempt, self.backoff_base, self.backoff_max, retry_after))
        raise UserError(
            f"openai engine: {method} {url} failed after {attempts} attempt{'s' if attempts > 1 else ''}: "
            f"{reason}; check that the server is running and reachable"
        )

    def _map(self, fn: Callable[[T], R], items: Sequence[T], progress: Progress | None) -> list[R]:
        """fn over items with at most `concurrency` in flight; results in order; progress per item."""
        if not items:
            return []
        results: list[Any] = [None] * len(items)
        if self.concurrency == 1 or len(items) == 1:
            for i, item in enumerate(items):
                results[i] = fn(item)
                if progress:
                    progress(1)
            return results
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(items)), thread_name_prefix="aftertune-openai")
        try:
            pending: dict[Future[R], int] = {pool.submit(fn, item): i for i, item in enumerate(items)}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    i = pending.pop(fut)
                    results[i] = fut.result()  # the first failure propagates
                    if progress:
                        progress(1)
        except BaseException:
            # Cancel what has not started and return at once (Ctrl-C must not wait out a long generation);
            # requests already in flight finish in the background and are dropped.
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        return results

    # -- generate ----------------------------------------------------------------
    def _decoding_fields(self, req: GenerateRequest) -> dict[str, Any]:
        d = req.decoding
        fields: dict[str, Any] = {
            "model": self.api_model,
            "max_tokens": d.max_new_tokens,
            "temperature": 0.0 if d.greedy else d.temperature,
            "top_p": 1.0 if d.greedy else d.top_p,
            "seed": d.seed,
            "stream": False,
        }
        if d.stop:
            fields["stop"] = list(d.stop)
        return fields

    def _chat_payload(self, req: GenerateRequest) -> dict[str, Any]:
        assert req.messages is not None
        return {"messages": [{"role": m.role, "content": m.content} for m in req.messages], **self._decoding_fields(req)}

    def _completion_payload(self, req: GenerateRequest) -> dict[str, Any]:
        return {"prompt": req.prompt, **self._decoding_fields(req)}

    def _generate_one(self, req: GenerateRequest, headers: dict[str, str]) -> GenerateResult:
        if req.messages is not None:
            body = self._request("POST", "/chat/completions", self._chat_payload(req), headers)
            prompt_text = canonical_json([{"role": m.role, "content": m.content} for m in req.messages])
            choice = self._first_choice(body, "/chat/completions")
            message = choice.get("message") or {}
            text = message.get("content") or ""
        else:
            body = self._request("POST", "/completions", self._completion_payload(req), headers)
            prompt_text = req.prompt or ""
            choice = self._first_choice(body, "/completions")
            text = choice.get("text") or ""
        usage = body.get("usage") or {}
        return GenerateResult(
            text=text,
            prompt_text=prompt_text,
            n_prompt_tokens=int(usage.get("prompt_tokens") or 0),
            n_new_tokens=int(usage.get("completion_tokens") or 0),
            finish_reason=_finish_reason(choice.get("finish_reason")),
        )

    def _first_choice(self, body: Any, path: str) -> dict[str, Any]:
        choices = body.get("choices") if isinstance(body, dict) else None
        if not choices or not isinstance(choices[0], dict):
            raise UserError(
                f"openai engine: {self.api_base}{path} answered without choices: {_one_line(json.dumps(body), 200)}"
            )
        return choices[0]

    def generate(self, requests: Sequence[GenerateRequest], progress: Progress | None = None) -> list[GenerateResult]:
        if self.mode == "completions" and any(r.messages is not None for r in requests):
            raise UserError(
                f"openai engine: {self.api_model} was loaded with mode='completions' (no chat template), but a "
                "request has chat messages; use mode='chat' for chat models or send raw prompts"
            )
        headers = self._headers()
        return self._map(lambda r: self._generate_one(r, headers), requests, progress)

    # -- log-likelihood ------------------------------------------------------------
    def _echo(self, prompt: str, headers: dict[str, str]) -> list[tuple[int, float | None, float | None]]:
        """(text_offset, token_logprob, best logprob at that position) for each prompt token.

        Raises `_Unsupported` when the answer has no usable, correctly aligned prompt log-probabilities.
        """
        payload = {"model": self.api_model, "prompt": prompt, "echo": True, "logprobs": 1, "max_tokens": 1,
                   "temperature": 0.0, "seed": 0, "stream": False}
        try:
            body = self._request("POST", "/completions", payload, headers)
        except HTTPClientError as exc:
            if exc.status in (401, 403, 413):
                raise
            raise _Unsupported(str(exc).removeprefix("openai engine: ")) from None
        choice = self._first_choice(body, "/completions")
        lp = choice.get("logprobs")
        if not isinstance(lp, dict) or not lp.get("token_logprobs") or not lp.get("text_offset"):
            raise _Unsupported("its /completions answer has no prompt log-probabilities for echo=True")
        offsets, values = lp["text_offset"], lp["token_logprobs"]
        tops = lp.get("top_logprobs") or [None] * len(values)
        if not (len(offsets) == len(values) == len(tops)):
            raise _Unsupported("its echo log-probabilities have lists of different lengths")
        n_completion = int((body.get("usage") or {}).get("completion_tokens") or 0)
        if offsets[0] >= len(prompt) and prompt:
            raise _Unsupported("it returns log-probabilities for generated tokens only, not for the echoed prompt")
        if n_completion >= 1 and offsets[-1] < len(prompt):
            # OpenAI semantics: prompt tokens, then the generated one. A list that stops inside the prompt
            # means entry i holds the distribution *after* token i (llama-cpp-python without BOS).
            raise _Unsupported(
                "its echoed log-probabilities are shifted by one token (the generated token is missing from "
                "the list; llama-cpp-python does this for models without a BOS token)"
            )
        out = []
        for off, val, top in zip(offsets, values, tops, strict=True):
            if off >= len(prompt):
                break
            best = max(top.values()) if isinstance(top, dict) and top else None
            out.append((int(off), None if val is None else float(val), None if best is None else float(best)))
        return out

    def location(self) -> str:
        """Where the model answers, for messages."""
        return f"{self.api_base} ({self.api_model})"

    def _check_ll_support(self, headers: dict[str, str]) -> None:
        with self._probe_lock:
            if self._ll_support is None:
                try:
                    self._echo(LL_PROBE_CONTEXT + LL_PROBE_CONTINUATION, headers)
                    self._ll_support = ""
                except _Unsupported as exc:
                    self._ll_support = str(exc)
        if self._ll_support:
            raise NotImplementedError(
                f"the {self.name} engine cannot score log-likelihoods on {self.location()}: "
                f"{self._ll_support}; use a server with OpenAI echo+logprobs semantics (e.g. vLLM) or the hf engine"
            )

    def _score(self, context: str, continuation: str, headers: dict[str, str]) -> LoglikelihoodResult:
        prompt = context + continuation
        try:
            tokens = self._echo(prompt, headers)
        except _Unsupported as exc:
            raise NotImplementedError(f"the openai engine cannot score log-likelihoods on {self.api_base}: {exc}") from None
        total, n, greedy = 0.0, 0, True
        for j, (_off, val, best) in enumerate(tokens):
            end = tokens[j + 1][0] if j + 1 < len(tokens) else len(prompt)
            if end <= len(context) or val is None:
                continue  # a context token, or the first token (no left context to condition on)
            total += val
            n += 1
            if best is None or val < best - 1e-4:
                greedy = False
        return LoglikelihoodResult(logprob=total, is_greedy=greedy and n > 0, n_tokens=n)

    def loglikelihood(
        self, requests: Sequence[LoglikelihoodRequest], progress: Progress | None = None
    ) -> list[LoglikelihoodResult]:
        if not requests:
            return []
        headers = self._headers()
        self._check_ll_support(headers)
        return self._map(lambda r: self._score(r.context, r.continuation, headers), requests, progress)

    def rolling_loglikelihood(
        self, requests: Sequence[RollingRequest], progress: Progress | None = None
    ) -> list[RollingResult]:
        """Sum over the text's tokens but the first (the server gives no log-probability for it).

        Texts longer than the server's context window are refused by the server (a UserError).
        """
        if not requests:
            return []
        headers = self._headers()
        self._check_ll_support(headers)

        def one(r: RollingRequest) -> RollingResult:
            res = self._score("", r.text, headers)
            return RollingResult(logprob=res.logprob, n_tokens=res.n_tokens)

        return self._map(one, requests, progress)

    def close(self) -> None:
        self._client.close()

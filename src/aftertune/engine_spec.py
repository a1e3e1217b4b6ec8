"""Which engine runs each role of `aftertune run`: the `engines:` section of the spec.

A role (base, tuned, judges) names a registered engine and its options, the
way lm-eval takes `--model vllm --model_args k=v` and inspect_ai takes a model
per role:

    engines:
      base: hf                                   # the default: local torch
      tuned: {server: "vllm serve {model} --port {port}", startup_timeout: 900}
      judges: {engine: vllm, options: {gpu_memory_utilization: 0.3}}

Shorthands: `hf`, `vllm`, `openai:MODEL@URL` (a server that is already
running; base and judges only, since the tuned weights do not exist before the
run), and a mapping with `server:` (a command aftertune starts per model). The
whole section is checked before any work: an unknown engine or option, vllm
not importable, a server command whose program is missing or that has no
`{port}`, each one line.
"""

from __future__ import annotations

import importlib.util
import inspect
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

DEFAULT_STARTUP_TIMEOUT = 600.0  # vLLM loading an 8B model and capturing CUDA graphs takes minutes
SERVER_FIELDS = ("command", "port", "startup_timeout")  # set as fields, not options
LOCAL_OPTIONS = ("dtype",)  # the run's audit.dtype, passed to engines that load weights themselves


class EngineSpec(BaseModel):
    """One role's engine: a registered backend and its options (`aftertune list engines`)."""

    model_config = ConfigDict(extra="forbid")

    engine: str = Field("hf", description="hf (local torch), vllm (in-process, GPU; needs the vllm package), "
                                          "server (your server command, below) or openai (an endpoint, below)")
    server: str | None = Field(None, description="the command of an OpenAI-compatible server, started for each "
                                                 "model and stopped after its audit: {model} is the weights folder "
                                                 "(an adapter merged into its base), {port} a free port, e.g. "
                                                 "'vllm serve {model} --port {port}'")
    port: int | None = Field(None, ge=1, le=65535, description="the port a server command without {port} listens on")
    startup_timeout: float = Field(DEFAULT_STARTUP_TIMEOUT, gt=0, description="seconds a server may take to answer /v1/models")
    endpoint: str | None = Field(None, description="openai:MODEL@URL: a server already running this role's model "
                                                   "(its identity is the URL and name, not local weights)")
    options: dict[str, Any] = Field(default_factory=dict,
                                    description="keyword options of the engine, like lm-eval's --model_args: hf "
                                                "{device, max_length}, vllm {gpu_memory_utilization, "
                                                "max_model_len}, server/openai {concurrency, timeout, mode}")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"engine": "openai", "endpoint": value} if value.startswith("openai:") else {"engine": value}
        if isinstance(value, dict) and "server" in value and "engine" not in value:
            return {"engine": "server", **value}
        return value

    @model_serializer(mode="wrap")
    def _compact(self, handler: Any) -> Any:
        """Printed (and hashed into the run id) as written: `hf`, `openai:M@URL`, `{server: CMD}`."""
        data = {k: v for k, v in handler(self).items() if v not in (None, {}) and
                not (k == "startup_timeout" and v == DEFAULT_STARTUP_TIMEOUT)}
        if self.engine == "server":
            data.pop("engine")
        elif self.endpoint is not None and set(data) == {"engine", "endpoint"}:
            return self.endpoint
        return data["engine"] if set(data) == {"engine"} else data

    @model_validator(mode="after")
    def _usable(self) -> EngineSpec:
        from aftertune.engines import ENGINES

        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; engines: {', '.join(ENGINES.names())} "
                             "(or openai:MODEL@URL)")
        if self.engine == "vllm" and importlib.util.find_spec("vllm") is None:
            raise ValueError("engine 'vllm' needs the vllm package, which is not importable here (pip install vllm, "
                             "on a GPU machine); use hf, or serve the model: {server: 'vllm serve {model} --port "
                             "{port}'}")
        if (self.server is not None) != (self.engine == "server"):
            raise ValueError("a server command goes with engine 'server' only: {server: 'CMD {model} --port {port}'}")
        if (self.endpoint is not None) != (self.engine == "openai"):
            raise ValueError("engine 'openai' needs an endpoint: write the role as openai:MODEL@http://host:port/v1")
        if self.engine != "server" and self.port is not None:
            raise ValueError("port goes with a server command only")
        if self.server is not None:
            from aftertune.engines.server_process import split_command, uses_placeholder

            _as_value_error(split_command, self.server, "server")
            if not uses_placeholder(self.server, "port") and self.port is None:
                raise ValueError("the server command has no {port}; add '--port {port}' (or give port: N)")
        if self.endpoint is not None:
            from aftertune.sources import parse_openai_ref

            _as_value_error(parse_openai_ref, self.endpoint)
        if self.options:  # loads the backend module (torch for hf): only when options need checking
            self._known_options(ENGINES.get(self.engine).from_ref)
        return self

    def _known_options(self, from_ref: Any) -> None:
        params = inspect.signature(from_ref).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return
        known = [n for n in list(params)[1:] if n not in SERVER_FIELDS + LOCAL_OPTIONS + ("batch_size",)]
        for name in self.options:
            if name not in known:
                raise ValueError(f"options: {name!r} is not an option of the {self.engine} engine; "
                                 f"options: {', '.join(known)}")

    @property
    def loads_weights(self) -> bool:
        """Whether the engine loads the weights in this process (then it takes audit.dtype and the batch size)."""
        return self.engine in ("hf", "vllm")

    def audit_kwargs(self, dtype: str | None) -> dict[str, Any]:
        """`engine` and `engine_options` for `audit` (hf stays the implicit default, as on the command line);
        engines that load the weights here compute in `dtype`."""
        options = dict(self.options)
        if self.loads_weights and dtype:
            options.setdefault("dtype", dtype)
        if self.engine == "server":
            options.update(command=self.server, startup_timeout=self.startup_timeout)
            if self.port is not None:
                options["port"] = self.port
        return {"engine": None if self.engine == "hf" else self.engine, "engine_options": options}

    def judge_kwargs(self) -> dict[str, Any]:
        """`judge_engine` for `audit`: the engine of the LLM judges' model (the judge picks its own dtype,
        float32), or the endpoint that serves it."""
        if self.endpoint is not None:
            return {"engine": None, "options": dict(self.options), "endpoint": self.endpoint}
        kw = self.audit_kwargs(None)
        return {"engine": kw["engine"], "options": kw["engine_options"]}


class EnginesSection(BaseModel):
    """The engine of each role: base (and the ICL baseline), tuned (its checkpoints and variants), judges."""

    model_config = ConfigDict(extra="forbid")

    base: EngineSpec = Field(default_factory=EngineSpec, description="the base model and its ICL baseline")
    tuned: EngineSpec = Field(default_factory=EngineSpec,
                              description="the tuned model, its checkpoints and variants; an endpoint cannot serve "
                                          "weights that the run has not trained yet: use server")
    judges: EngineSpec = Field(default_factory=EngineSpec, description="LLM judges (llm:MODEL); other judges are "
                                                                       "classifiers and rules that run in-process")

    @model_validator(mode="after")
    def _tuned_is_served_here(self) -> EnginesSection:
        if self.tuned.engine == "openai":
            raise ValueError("tuned: an endpoint cannot serve weights this run has not trained yet; serve them with "
                             "{server: 'vllm serve {model} --port {port}'}")
        return self


def _as_value_error(check: Any, *args: Any) -> None:
    """Run a check that raises UserError, as a pydantic validator must raise: ValueError (the spec adds where)."""
    from aftertune.errors import UserError

    try:
        check(*args)
    except UserError as exc:
        raise ValueError(str(exc)) from None

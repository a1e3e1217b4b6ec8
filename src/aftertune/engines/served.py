"""The `server` engine: local weights served by the user's own OpenAI-compatible server command.

`engine: {server: "vllm serve {model} --port {port}"}` starts the command for
one model (`server_process.ServerProcess`: free port, health check, no
orphans), talks to it exactly as the `openai` engine does, and stops it in
`close()`, which the audit calls when it is done with the model (also on
errors, Ctrl-C and SIGTERM).

`{model}` is the model's weights folder; a LoRA-style adapter is merged into
its base first (cached under `$AFTERTUNE_HOME/cache/served/`), since servers
load full weights. Prompt-learning adapters cannot be merged and are refused.

Identity. When the command takes `{model}`, aftertune chose the weights, so
the engine carries their content fingerprint (`sources.fingerprint`, the one
the hf and vllm engines use): the same weights served by vLLM or run by hf are
one model in the store and in results.json. The answers are still cached apart,
because `version` names the server program and the version it reports (from
`/version`, `/props`, `/info` or `/openapi.json`) and a hash of the command template, whose flags
(context length, quantization) can change answers. A command without `{model}`
serves weights aftertune cannot see: its identity is then the command template
and what `/v1/models` reports, never the fingerprint of a local folder.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import httpx

from aftertune.engines.openai_api import OpenAIEngine
from aftertune.engines.server_process import ServerProcess, uses_placeholder
from aftertune.errors import UserError
from aftertune.fileio import canonical_json, sha256_text
from aftertune.sources.base import ModelRef
from aftertune.sources.fingerprints import gguf_card

ENGINE_CODE_VERSION = "1"
PROMPT_LEARNING = ("PREFIX_TUNING", "PROMPT_TUNING", "P_TUNING")


def served_folder(model_ref: ModelRef, weights_fp: str) -> Path:
    """The full-weights folder a server loads for `model_ref`: its own, or its adapter merged (cached); for a
    GGUF the `gguf` variant wrote, the file."""
    import json

    from aftertune import paths

    if model_ref.kind == "openai" or model_ref.path is None:
        raise UserError(f"the server engine serves local weights; {model_ref.ref!r} is an endpoint already: "
                        "audit it with the openai engine")
    gguf = gguf_card(model_ref.path)
    if gguf is not None:  # the gguf variant's folder: llama.cpp's server loads the file
        return model_ref.path / gguf["file"]
    if model_ref.kind != "adapter":
        return model_ref.path
    cfg = json.loads((model_ref.path / "adapter_config.json").read_text(encoding="utf-8"))
    if str(cfg.get("peft_type", "")).upper() in PROMPT_LEARNING:
        raise UserError(f"{model_ref.ref}: a {cfg['peft_type']} adapter cannot be merged into full weights for a "
                        "server; audit it with the hf engine")
    assert model_ref.base is not None and model_ref.base.path is not None
    out = paths.cache_dir("served") / weights_fp[:32]
    if not (out / "config.json").is_file():
        from aftertune.engines.merge import merge_adapter

        merge_adapter(model_ref.base.path, model_ref.path, out)
    return out


def program_name(argv: list[str]) -> str:
    """What the command runs: `vllm` for `vllm serve ...`, `llama_cpp.server` for `python -m llama_cpp.server`."""
    prog = Path(argv[0]).name
    if prog.startswith("python") and "-m" in argv[:-1]:
        return argv[argv.index("-m") + 1]
    if prog.startswith("python") and len(argv) > 1:
        return Path(argv[1]).name  # a script
    return prog


def server_version(root: str, timeout: float = 5.0) -> str:
    """The version the server reports (vLLM, SGLang: /version; llama.cpp: /props; TGI: /info; FastAPI apps such
    as llama-cpp-python: /openapi.json), best effort: 'version unknown' when it says nothing."""
    probes = [("/version", lambda b: b.get("version")),
              ("/props", lambda b: b.get("build_info")),
              ("/info", lambda b: b.get("version")),
              ("/openapi.json", lambda b: b["info"].get("version"))]
    with httpx.Client(timeout=timeout) as client:
        for path, read in probes:
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
                resp = client.get(root + path)
                found = read(resp.json()) if resp.status_code == 200 else None
                if found:
                    return " ".join(str(found).split())[:80]
    return "version unknown"


class ServedEngine(OpenAIEngine):
    """An `OpenAIEngine` on a server it started; `close()` stops the server."""

    def __init__(self, process: ServerProcess, *, model_ref: ModelRef, weights_fp: str | None, api_model: str,
                 software: str, **openai: Any) -> None:
        super().__init__(api_base=process.base_url, api_model=api_model, display_name=model_ref.name, **openai)
        self.process = process
        self.model_ref = model_ref
        self.weights_fp = weights_fp
        self.software = software

    @classmethod
    def from_ref(cls, model_ref: ModelRef, *, command: str = "", port: int | None = None,  # type: ignore[override]
                 startup_timeout: float = 600.0, concurrency: int = 8, timeout: float = 600.0,
                 max_retries: int = 5, mode: str = "chat") -> ServedEngine:
        if not command:
            raise UserError("the server engine needs a command: {server: 'vllm serve {model} --port {port}'}")
        weights_fp = folder = None
        if uses_placeholder(command, "model"):
            from aftertune.sources import fingerprint

            if model_ref.kind == "openai":
                served_folder(model_ref, "")  # raises: an endpoint is not served again
            weights_fp = fingerprint(model_ref)
            folder = served_folder(model_ref, weights_fp)
        process = ServerProcess(command, model=folder, port=port, startup_timeout=startup_timeout,
                                where=f"server engine for {model_ref.name}")
        process.start()
        try:
            api_model = _served_model_id(process.base_url, folder)
            software = f"{program_name(process.argv)} {server_version(process.base_url.removesuffix('/v1'))}"
            return cls(process, model_ref=model_ref, weights_fp=weights_fp, api_model=api_model, software=software,
                       concurrency=concurrency, timeout=timeout, max_retries=max_retries, mode=mode)
        except BaseException:
            process.stop()
            raise

    @property
    def fingerprint(self) -> str:
        if self.weights_fp is not None:
            return self.weights_fp
        with self._lock:
            if self._fingerprint is None:
                self._server_model = self._fetch_server_model()
                self._fingerprint = sha256_text(canonical_json(
                    {"server_command": self.process.template, "server_model": self._server_model}))
            return self._fingerprint

    @property
    def version(self) -> str:
        return (f"server/{ENGINE_CODE_VERSION}/{self.software}/cmd-{sha256_text(self.process.template)[:12]}/"
                f"{super().version}")

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        for volatile in ("api_base", "key_env", "server_model"):  # the port changes every start
            info.pop(volatile, None)
        gguf = gguf_card(self.model_ref.path)  # the gguf variant's file: what the report lists to deploy
        return {**info, "engine": self.name, "server": self.software, "command": self.process.template,
                "weights": "the model's own (fingerprint)" if self.weights_fp else "chosen by the command",
                **({"variant": {"gguf": {**gguf, "path": str(self.model_ref.path)}}} if gguf is not None else {})}

    def location(self) -> str:
        return f"{self.software} serving {self.model_ref.name}"  # not its port: messages kept in results.json

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.process.stop()


def _served_model_id(base_url: str, folder: Path | None) -> str:
    """The name the server lists the model under: the only one, or the one named after the folder."""
    body = httpx.get(base_url + "/models", timeout=10.0).json()
    ids = [str(d["id"]) for d in body.get("data", []) if isinstance(d, dict) and d.get("id")]
    if len(ids) == 1:
        return ids[0]
    for candidate in ids:
        if folder is not None and candidate in (str(folder), folder.name):
            return candidate
    raise UserError(f"{base_url}/models lists {len(ids)} models ({', '.join(ids[:5]) or 'none'}); serve one model "
                    "per command, or name it after {model} (vLLM: --served-model-name)")

"""Turn any model reference into a `ModelRef`.

Reference kinds, tried in this order:

- ``openai:MODEL@http://host:port/v1[?key_env=VAR]``: an OpenAI-compatible server. The key is
  read at call time from the environment variable VAR (default OPENAI_API_KEY); the reference
  only ever names the variable. Without ``@URL`` the base URL comes from OPENAI_BASE_URL
  (default https://api.openai.com/v1).
- a packaged name (``aftertune models list``): pulled into the cache on first use.
- an existing local directory: a full model (config.json + *.safetensors) or a PEFT adapter
  (adapter_config.json; its base comes from ``base_model_name_or_path`` unless `base` is given).
- a Hugging Face hub id ``org/name[@revision]``: fetched with ``snapshot_download``, limited to
  safetensors, JSON and tokenizer files.

Pickle-based weights (``*.bin``, ``*.pt``, ``*.pth``, ``*.ckpt``, ``*.pkl``) can run code when
loaded, so they are refused unless the caller opts in with ``allow_unsafe_weights=True``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from aftertune.errors import UserError
from aftertune.sources.base import ModelRef
from aftertune.sources.catalog import DATASETS, MODELS

UNSAFE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
HUB_SAFE_PATTERNS = ["*.safetensors", "*.json", "tokenizer*", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
HUB_UNSAFE_PATTERNS = ["*.bin", "*.pt", "*.pth"]
DEFAULT_OPENAI_BASE = "https://api.openai.com/v1"
DEFAULT_KEY_ENV = "OPENAI_API_KEY"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def resolve_model(ref: str | ModelRef, *, base: str | ModelRef | None = None,
                  allow_unsafe_weights: bool = False, progress: bool = True) -> ModelRef:
    """Resolve a packaged name, hub id, local directory or openai: reference (see the module docstring).

    `base` overrides the base model of a PEFT adapter.
    """
    if isinstance(ref, ModelRef):
        return ref
    ref = ref.strip()
    if not ref:
        raise UserError("empty model reference; " + _HOW)
    if ref.startswith("openai:"):
        return parse_openai_ref(ref)
    if ref in MODELS:
        from aftertune.sources.packaged import pull_model

        return ModelRef(ref=ref, kind="packaged", name=ref, path=pull_model(ref, progress=progress))
    if ref in DATASETS:
        raise UserError(f"{ref!r} is a packaged data set, not a model; packaged models: {', '.join(MODELS.names())}")
    path = Path(ref).expanduser()
    if path.exists():
        return _from_dir(ref, path, kind="local", base=base, allow_unsafe_weights=allow_unsafe_weights,
                         progress=progress)
    if _looks_like_path(ref):
        raise UserError(f"{ref}: no such directory; pass an existing model directory "
                        "(config.json + *.safetensors, or a PEFT adapter with adapter_config.json)")
    if _HUB_ID.match(ref):
        return _from_hub(ref, base=base, allow_unsafe_weights=allow_unsafe_weights, progress=progress)
    raise UserError(f"unknown model {ref!r}: not a packaged model ({', '.join(MODELS.names())}) "
                    f"nor an existing directory; {_HOW}")


_HOW = ("use a packaged name (aftertune models list), a Hugging Face hub id like org/name, "
        "a local model directory, or openai:MODEL@http://host:port/v1")


TRUST_REMOTE_CODE_ENV = "AFTERTUNE_TRUST_REMOTE_CODE"
REMOTE_CODE_HELP = ("A model whose config asks to run its own Python code (auto_map, trust_remote_code) is "
                    f"refused; set {TRUST_REMOTE_CODE_ENV}=1 to allow it for models you trust.")


def remote_code_allowed() -> bool:
    """The user's opt-in to models that ship their own Python code (off unless the variable is 1)."""
    return os.environ.get(TRUST_REMOTE_CODE_ENV, "").strip() == "1"


def check_remote_code(path: Path) -> None:
    """Refuse a model folder whose config or tokenizer config names its own code (`auto_map`), before any
    loader sees it, unless the user opted in."""
    if remote_code_allowed():
        return
    for name in ("config.json", "tokenizer_config.json"):
        try:
            cfg = json.loads((path / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(cfg, dict) and cfg.get("auto_map"):
            raise UserError(f"{path}: its {name} asks to run the model's own Python code (auto_map), which "
                            f"aftertune refuses by default; set {TRUST_REMOTE_CODE_ENV}=1 to allow it for a model "
                            "you trust")


def check_model_ref(ref: str) -> None:
    """Refuse a reference that cannot resolve, without pulling or downloading anything: commands call it
    for every model before they create a run folder or a store run. Variants (`REF#...`) are checked
    where they are applied."""
    base = ref.strip().partition("#")[0].strip()
    if not base:
        raise UserError("empty model reference; " + _HOW)
    if base.startswith("openai:"):
        parse_openai_ref(base)
    elif base in DATASETS and base not in MODELS:
        raise UserError(f"{base!r} is a packaged data set, not a model; packaged models: {', '.join(MODELS.names())}")
    elif base in MODELS:
        return
    elif Path(base).expanduser().is_dir():
        check_remote_code(Path(base).expanduser())
    elif Path(base).expanduser().exists():
        return
    elif _looks_like_path(base):
        raise UserError(f"{base}: no such directory; pass an existing model directory "
                        "(config.json + *.safetensors, or a PEFT adapter with adapter_config.json)")
    elif not _HUB_ID.match(base):
        raise UserError(f"unknown model {base!r}: not a packaged model ({', '.join(MODELS.names())}) "
                        f"nor an existing directory; {_HOW}")


_SECRET_QUERY = re.compile(r"(?i)([?&](?:api_key|apikey|key|token|access_token)=)[^&#\s'\"]*")
_URL_PASSWORD = re.compile(r"(://[^/@:\s'\"]+:)[^/@\s'\"]+@")


def redact_secrets(text: str) -> str:
    """`text` with API keys in URL queries (?api_key=...) and URL passwords (user:PASS@host) replaced by ***,
    for every message or record that may quote a reference."""
    return _URL_PASSWORD.sub(r"\1***@", _SECRET_QUERY.sub(r"\1***", text))


def _looks_like_path(ref: str) -> bool:
    return ref.startswith((".", "/", "~")) or ref.count("/") > 1 or "\\" in ref


# --------------------------------------------------------------------------- openai

def parse_openai_ref(ref: str) -> ModelRef:
    """`openai:MODEL@URL[?key_env=VAR]` -> ModelRef(kind="openai"); the key itself never appears."""
    shown = redact_secrets(ref)  # what messages quote: never the key itself
    body = ref[len("openai:"):]
    at = body.rfind("@http")
    model, url = (body[:at], body[at + 1:]) if at >= 0 else (body, None)
    model = model.strip()
    if not model:
        raise UserError(f"{shown!r}: no model name; write openai:MODEL@http://host:port/v1")
    url = url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_OPENAI_BASE
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UserError(f"{shown!r}: {redact_secrets(url)!r} is not an http(s) URL; write openai:MODEL@http://host:port/v1")
    if shown != ref:
        raise UserError(f"{shown!r}: never put an API key or password in a model reference; put the key in an "
                        "environment variable and name that variable with ?key_env=VAR")
    key_env = DEFAULT_KEY_ENV
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "key_env":
            key_env = value
        else:
            raise UserError(f"{shown!r}: unknown option {key!r}; the only option is ?key_env=VAR")
    if not _ENV_NAME.match(key_env):
        raise UserError(f"{shown!r}: key_env must be the NAME of an environment variable (like MY_API_KEY), "
                        f"got {key_env!r}")
    api_base = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
    return ModelRef(ref=ref, kind="openai", name=model, api_model=model, api_base=api_base, api_key_env=key_env)


# --------------------------------------------------------------------------- directories

def _from_dir(ref: str, path: Path, *, kind: str, base: str | ModelRef | None, allow_unsafe_weights: bool,
              progress: bool, name: str | None = None) -> ModelRef:
    if path.is_file():
        raise UserError(f"{path}: is a file; pass the model's directory (config.json + *.safetensors)")
    path = path.resolve()
    if (path / "adapter_config.json").is_file():
        return _adapter(ref, path, base=base, allow_unsafe_weights=allow_unsafe_weights, progress=progress,
                        name=name)
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: not a model directory: it has no config.json (nor adapter_config.json "
                        "for a PEFT adapter); pass the folder that save_pretrained wrote")
    _check_weights(path, stem="model", allow_unsafe_weights=allow_unsafe_weights)
    check_remote_code(path)
    return ModelRef(ref=ref, kind=kind, name=name or path.name, path=path)  # type: ignore[arg-type]


def _adapter(ref: str, path: Path, *, base: str | ModelRef | None, allow_unsafe_weights: bool, progress: bool,
             name: str | None) -> ModelRef:
    _check_weights(path, stem="adapter_model", allow_unsafe_weights=allow_unsafe_weights)
    try:
        cfg = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UserError(f"{path / 'adapter_config.json'}: not valid JSON ({exc})") from None
    base_ref = base if base is not None else cfg.get("base_model_name_or_path")
    if not base_ref:
        raise UserError(f"{path}: adapter_config.json names no base_model_name_or_path; pass the base model "
                        "explicitly (--base)")
    try:
        base_model = resolve_model(base_ref, allow_unsafe_weights=allow_unsafe_weights, progress=progress)
    except UserError as exc:
        raise UserError(f"{path}: cannot resolve the adapter's base model {base_ref!r} ({exc}); "
                        "pass the base model explicitly (--base)") from None
    if base_model.kind in ("adapter", "openai"):
        raise UserError(f"{path}: the adapter's base {base_model.ref!r} is a {base_model.kind}, not a full model")
    return ModelRef(ref=ref, kind="adapter", name=name or path.name, path=path, base=base_model)


def weight_files(path: Path) -> tuple[list[Path], list[Path]]:
    """(safetensors files, pickle-based weight files) at the top of `path`."""
    safe = sorted(p for p in path.glob("*.safetensors") if p.is_file())
    unsafe = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(UNSAFE_SUFFIXES)
                    and not p.name.startswith("training_args"))
    return safe, unsafe


def _check_weights(path: Path, *, stem: str, allow_unsafe_weights: bool) -> None:
    safe, unsafe = weight_files(path)
    if safe:
        return
    if unsafe and allow_unsafe_weights:
        return
    if unsafe:
        names = ", ".join(p.name for p in unsafe[:3])
        raise UserError(f"{path}: only pickle-based weights ({names}), which can run code when loaded; convert "
                        "them to safetensors (load, then save_pretrained(dir, safe_serialization=True)) or, if "
                        "you trust the files, opt in with --allow-unsafe-weights")
    raise UserError(f"{path}: no weights found ({stem}*.safetensors); pass the folder that save_pretrained wrote "
                    "(a model with only pickle-based .bin weights needs converting, or --allow-unsafe-weights)")


# --------------------------------------------------------------------------- hub

def _from_hub(ref: str, *, base: str | ModelRef | None, allow_unsafe_weights: bool, progress: bool) -> ModelRef:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError

    repo_id, _, revision = ref.partition("@")
    patterns = HUB_SAFE_PATTERNS + (HUB_UNSAFE_PATTERNS if allow_unsafe_weights else [])
    try:
        folder = snapshot_download(repo_id, revision=revision or None, allow_patterns=patterns,
                                   local_files_only=hub_offline())
    except LocalEntryNotFoundError:
        raise UserError(f"{ref}: no such local directory, not in the local Hugging Face cache, and the hub cannot "
                        "be reached (offline, or HF_HUB_OFFLINE=1); download it where you have network access, "
                        f"or pass a local directory or a packaged model ({', '.join(MODELS.names())})") from None
    except GatedRepoError:
        raise UserError(f"{ref}: gated repository; accept its licence on the hub and log in (hf auth login)") from None
    except HfHubHTTPError as exc:
        raise UserError(f"{ref}: the Hugging Face hub refused it ({str(exc).splitlines()[0]}); check the id, "
                        "or pass a local directory") from None
    except OSError as exc:
        raise UserError(f"{ref}: could not fetch from the Hugging Face hub ({exc})") from None
    return _from_dir(ref, Path(folder), kind="hub", base=base, allow_unsafe_weights=allow_unsafe_weights,
                     progress=progress, name=ref)


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as set now (huggingface_hub reads it once, at import)."""
    return any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))

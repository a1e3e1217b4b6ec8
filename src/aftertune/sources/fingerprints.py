"""Content identity of a model, the key under which the store caches its answers.

- full model (packaged, hub, local): sha256 over the weight files' sha256s
  (*.safetensors, or the pickle files of an opted-in model) and the chat template,
  which decides the exact prompt the engine sends. Config and tokenizer files are
  left out on purpose: re-saving them changes version stamps, not behaviour.
  A folder the `quant` variant wrote adds its card (`quantized.json`): method, its
  parameters, quantizer and version, so no two quantizers share records even
  where their bytes agree.
- a GGUF the `gguf` variant wrote (`gguf.json` beside `model.gguf`): the file's sha256
  and the card's method, converter and quantizer.
- adapter: sha256 over the adapter weights, adapter_config.json (less the path of its
  base) and the base model's fingerprint.
- a folder a safety defence wrote (`defence.json`: `safemerge`, `safelora`, `resta`), adapter
  or full model, adds the card's method, parameters, input fingerprints and version, so two
  settings never share records even where their bytes agree.
- openai: sha256 of the base URL and model name (the server's weights are unknowable).

File hashes come from `file_hashes.FileHashes`: hashed once, then re-hashed only when a
file's size, mtime or ctime moved (so content rewritten with its mtime restored is seen).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aftertune.fileio import canonical_json, sha256_text
from aftertune.sources.base import ModelRef
from aftertune.sources.file_hashes import FileHashes
from aftertune.sources.resolve import resolve_model, weight_files


def fingerprint(model: ModelRef | str) -> str:
    """A 64-hex sha256 identity of the model's weights (see the module docstring)."""
    ref = resolve_model(model) if isinstance(model, str) else model
    if ref.kind == "openai":
        return sha256_text(canonical_json({"openai": ref.api_base, "model": ref.api_model}))
    if ref.path is None:
        raise ValueError(f"model {ref.ref!r} has no local path to fingerprint")
    cache = FileHashes()
    if ref.kind == "adapter":
        if ref.base is None:
            raise ValueError(f"adapter {ref.ref!r} has no base model")
        cfg = json.loads((ref.path / "adapter_config.json").read_text(encoding="utf-8"))
        ident: dict[str, Any] = {
            "adapter": _weights(ref.path, cache),
            "adapter_config": normalised_adapter_config(cfg),
            "base": fingerprint(ref.base),
        }
        ident.update(_defence_identity(ref.path))
    elif (gguf := gguf_card(ref.path)) is not None:  # the chat template is inside the file
        ident = {"gguf": cache.sha256(ref.path / gguf["file"]),
                 "quantization": {k: gguf.get(k) for k in (*_QUANT_IDENTITY, "converter")}}
    else:
        ident = {"weights": _weights(ref.path, cache), "chat_template": _chat_template_sha(ref.path)}
        card = quant_card(ref.path)
        if card is not None:
            ident["quantization"] = {k: card.get(k) for k in _QUANT_IDENTITY}
        ident.update(_defence_identity(ref.path))
    cache.save()
    return sha256_text(canonical_json(ident))


QUANT_CARD = "quantized.json"
_QUANT_IDENTITY = ("method", "params", "dtype", "quantizer", "quantizer_version", "version")


GGUF_CARD = "gguf.json"
DEFENCE_CARD = "defence.json"
_DEFENCE_IDENTITY = ("method", "params", "inputs", "version")  # not "found": what the build measured


def quant_card(path: Path | None) -> dict[str, Any] | None:
    """The card of a model folder written by the `quant` variant (variants/quantize.py), else None."""
    return _card(path, QUANT_CARD)


def gguf_card(path: Path | None) -> dict[str, Any] | None:
    """The card of a folder written by the `gguf` variant (variants/gguf.py), else None."""
    return _card(path, GGUF_CARD)


def _defence_identity(path: Path) -> dict[str, Any]:
    card = _card(path, DEFENCE_CARD)
    return {} if card is None else {"defence": {k: card.get(k) for k in _DEFENCE_IDENTITY}}


def _card(path: Path | None, name: str) -> dict[str, Any] | None:
    if path is None or not (path / name).is_file():
        return None
    card = json.loads((path / name).read_text(encoding="utf-8"))
    return card if isinstance(card, dict) else None


def quantizer_version(package: str) -> str:
    """The installed version of the quantizer a card names: its kernels decide a quantized model's answers."""
    from importlib import metadata

    from aftertune.errors import UserError

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        raise UserError(f"quantized models need the {package} package, which is not installed; install it with "
                        f"pip install -c constraints.txt {package}") from None


# adapter_config.json lists that PEFT treats as sets: peft writes target_modules from a Python set, so two
# runs that save byte-identical weights can list them in different orders.
_SET_FIELDS = ("target_modules", "modules_to_save", "exclude_modules")


def normalised_adapter_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The adapter config as far as it decides behaviour: without the base's path (the base enters the
    fingerprint by its own content) and with set-valued lists sorted."""
    out = {k: v for k, v in cfg.items() if k != "base_model_name_or_path"}
    for key in _SET_FIELDS:
        value = out.get(key)
        if isinstance(value, list) and all(isinstance(x, str) for x in value):
            out[key] = sorted(set(value))
    return out


def _weights(path: Path, cache: FileHashes) -> dict[str, str]:
    safe, unsafe = weight_files(path)
    files = safe or unsafe
    if not files:
        raise ValueError(f"{path}: no weight files to fingerprint")
    return {p.name: cache.sha256(p) for p in files}


def _chat_template_sha(path: Path) -> str | None:
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return sha256_text(jinja.read_text(encoding="utf-8"))
    for name in ("chat_template.json", "tokenizer_config.json"):
        f = path / name
        if f.is_file():
            try:
                template = json.loads(f.read_text(encoding="utf-8")).get("chat_template")
            except (ValueError, AttributeError):
                continue
            if template:
                return sha256_text(canonical_json(template))
    return None

"""Safety defences applied to tuned weights after training: `safemerge`, `safelora`, `resta`.

Each is a weight variant, written after the model reference like `interp`
(`TUNED#safelora:tau=0.5`), and produces new weights once: `load_engine`
applies it before loading (`apply_defence_variant`), after a leading `#interp`
and before `#quant`/`#gguf` and wrapper variants. One `DEFENCES.add` line per
defence registers its `Defence` (options → parameters, parameters → weights).

The result is written once to `$AFTERTUNE_HOME/defences/<hash>/`
(`artefacts.materialise`: built in a temporary folder and renamed whole, so an
interrupted build leaves nothing) with `defence.json`: the method, its
parameters, the fingerprints of every model it read (tuned, aligned, unaligned
twin, safety adapter) and a version. That card enters the model's fingerprint
(`sources.fingerprints`), so records of two settings never mix even where
their bytes agree, and it records what the build found (which layers it
changed, with their similarities).

`safelora` and `resta` (and `safemerge`'s default criterion) need the
unaligned twin of the aligned model (`alignment.py`): the option
`unaligned=REF`, which `--unaligned REF` and the spec's `unaligned:` fill in
(`with_unaligned`). Without it the reference is refused before any work.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aftertune.errors import UserError
from aftertune.fileio import write_json_atomic
from aftertune.registry import Registry
from aftertune.sources.base import ModelRef
from aftertune.sources.fingerprints import DEFENCE_CARD
from aftertune.variants.alignment import TWIN_HOW

Variant = tuple[str, dict[str, str]]


@dataclass(frozen=True)
class Defence:
    """`parse(options)` checks the options and returns the parameters that decide the weights (the twin and
    safety adapter and a base as references, replaced by fingerprints in the card); `build(model, params)` returns the
    defended model; `uses_twin(params)` says whether it reads `unaligned`."""

    parse: Callable[[dict[str, str]], dict[str, Any]]
    build: Callable[[ModelRef, dict[str, Any]], ModelRef]
    uses_twin: Callable[[dict[str, Any]], bool]
    example: str  # a reference suffix for messages, e.g. "safelora:tau=0.5"


DEFENCES: Registry[Defence] = Registry("defence")
DEFENCES.add("safemerge", "aftertune.variants.safemerge:SAFEMERGE",
             "SafeMERGE (Djuhera et al. 2025): layers whose update leaves the alignment subspace merged with a "
             "safety LoRA trained on refusals")
DEFENCES.add("safelora", "aftertune.variants.safelora:SAFELORA",
             "Safe LoRA (Hsu et al. 2024): layers whose update leaves the alignment subspace projected onto it")
DEFENCES.add("resta", "aftertune.variants.resta:RESTA",
             "RESTA (Bhardwaj et al. 2024): tuned + s*(aligned - unaligned)")

DEFENCE_VERSION = "1"  # bump when a change here or in a defence changes the written weights


# --------------------------------------------------------------------------- options

def check_options(name: str, options: dict[str, str], known: Sequence[str]) -> None:
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise UserError(f"{name}: unknown option {unknown[0]!r}; options are {', '.join(known)}")


def number(name: str, options: dict[str, str], key: str, default: float, lo: float, hi: float) -> float:
    """Option `key` as a finite number in [lo, hi] (`default` when absent)."""
    text = options.get(key)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{name}: {key}={text!r} is not a number") from None
    if not (math.isfinite(value) and lo <= value <= hi):
        raise UserError(f"{name}: {key}={text} is outside [{lo:g}, {hi:g}]")
    return value


def check_defence(name: str, options: dict[str, str], *, twin_required: bool = True) -> None:
    """The options of defence `name`; and, unless `twin_required` is False (a spec fills it in later), that a
    defence reading the unaligned twin is given one."""
    defence = DEFENCES.get(name)
    params = defence.parse(options)
    if twin_required and defence.uses_twin(params) and not params.get("unaligned"):
        raise UserError(missing_twin(name, defence))


def missing_twin(name: str, defence: Defence | None = None) -> str:
    example = (defence or DEFENCES.get(name)).example
    return (f"{name} needs the unaligned twin of the aligned model (V = W_aligned - W_unaligned): add --unaligned "
            f"REF (in a run spec, 'unaligned: REF'), or write REF#{example},unaligned=REF; {TWIN_HOW}")


def with_unaligned(ref: str, unaligned: str | None) -> str:
    """`ref` with `unaligned=` added to each defence that reads the twin and does not name one already."""
    from aftertune.variants.base import split_variants

    if not unaligned or "#" not in ref:
        return ref
    if any(c in unaligned for c in ",#"):
        raise UserError(f"--unaligned {unaligned!r}: a reference with ',' or '#' cannot be written into a variant")
    head, *parts = ref.split("#")
    parsed = split_variants(ref)[1]
    out = [head]
    for part, (name, options) in zip(parts, parsed, strict=True):
        if name in DEFENCES and "unaligned" not in options and DEFENCES.get(name).uses_twin(
                DEFENCES.get(name).parse(options)):
            part = f"{part}{',' if ':' in part else ':'}unaligned={unaligned}"
        out.append(part)
    return "#".join(out)


# --------------------------------------------------------------------------- applying and writing

def apply_defence_variant(model: ModelRef, variants: Sequence[Variant]) -> tuple[ModelRef, list[Variant]]:
    """The defended model when the first suffix left is a defence, and the variants left to wrap it."""
    rest = list(variants)
    if not rest or rest[0][0] not in DEFENCES:
        return model, rest
    name, options = rest[0]
    if model.kind == "openai" or model.path is None:
        raise UserError(f"{model.ref}: {name} changes weights, so it needs local weights, not an API endpoint")
    check_defence(name, options)
    defence = DEFENCES.get(name)
    return defence.build(model, defence.parse(options)), rest[1:]


def resolve_twin(params: dict[str, Any]) -> ModelRef:
    from aftertune.sources import resolve_model

    return resolve_model(str(params["unaligned"]))


def write_defended(model: ModelRef, name: str, params: dict[str, Any], inputs: dict[str, str],
                   build: Callable[[Path], dict[str, Any]], *, kind: str) -> ModelRef:
    """The folder of `model` defended by `name` (see the module docstring): `build(tmp)` writes the weights and
    returns what it found, for the card. `kind` is what was written: "adapter" (on `model`'s base) or "local"
    (a full model)."""
    from aftertune.variants.artefacts import materialise

    models = ("unaligned", "safety", "base")  # references: their fingerprints are in `inputs` instead
    identity = {"method": name, "params": {k: v for k, v in params.items() if k not in models},
                "inputs": inputs, "version": DEFENCE_VERSION}

    def build_with_card(out: Path) -> None:
        found = build(out)
        write_json_atomic(out / DEFENCE_CARD, {**identity, "found": found})

    suffix = f"{name}:" + ",".join(f"{k}={v}" for k, v in sorted(params.items()) if v is not None)
    path = materialise("defences", identity, build_with_card, what=f"{model.ref}#{suffix}")
    ref, label = f"{model.ref}#{suffix}", f"{model.name}@{name}"
    if kind == "adapter":
        return replace(model, ref=ref, name=label, path=path)
    return ModelRef(ref=ref, kind="local", name=label, path=path)


def defence_variant(engine: Any, options: dict[str, str]) -> Any:
    raise UserError("safemerge, safelora and resta change weights, so they are applied when the model loads, first "
                    "after the model reference (and #interp), before #quant, #gguf and wrapper variants")

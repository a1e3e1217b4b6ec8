"""The variant registry and the reference syntax `REF#name:key=value,...#...`.

`split_variants` parses a reference; `apply_variants` wraps a loaded engine
in each wrapper variant, in order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from aftertune.engines.base import Engine
from aftertune.errors import UserError
from aftertune.registry import Registry

VariantFactory = Callable[[Engine, dict[str, str]], Engine]
VARIANTS: Registry[VariantFactory] = Registry("model variant")
# variants whose first option may be written bare, as their method: `quant:int8` is `quant:method=int8`
METHOD_VARIANTS = frozenset({"quant", "gguf"})
# variants that turn a model into the artefact one deploys (a quantized file): a run spec applies them to the
# base and the tuned model alike, so the report can separate the fine-tune's effect from the quantizer's
DEPLOYMENT_VARIANTS = frozenset({"quant", "gguf"})


def split_variants(ref: str) -> tuple[str, list[tuple[str, dict[str, str]]]]:
    """`REF#icl:k=16,seed=1#...` → ("REF", [("icl", {"k": "16", "seed": "1"}), ...]); `REF#quant:int8` →
    ("REF", [("quant", {"method": "int8"})]) (`METHOD_VARIANTS`)."""
    base, *parts = ref.split("#")
    variants = []
    for part in parts:
        name, _, opts = part.partition(":")
        name = name.strip()
        options: dict[str, str] = {}
        for i, opt in enumerate(filter(None, (o.strip() for o in opts.split(",")))):
            key, eq, value = opt.partition("=")
            if not eq and i == 0 and name in METHOD_VARIANTS:
                key, value = "method", opt
            elif not eq:
                raise UserError(f"model reference {ref!r}: variant option {opt!r} should be key=value "
                                "(e.g. REF#icl:k=16,seed=0,data=support)")
            options[key.strip()] = value.strip()
        variants.append((name, options))
    return base, variants


def apply_variants(engine: Engine, variants: Sequence[tuple[str, dict[str, str]]]) -> Engine:
    for name, options in variants:
        engine = VARIANTS.get(name)(engine, options)
    return engine

"""Model variants: the same model shown differently, or new weights derived from it.

A variant is written as a suffix of the model reference,
`REF#icl:k=16,seed=0,data=support`, and is audited and compared exactly like
another model (its settings are part of its fingerprint). One `VARIANTS.add`
line per variant registers its factory `(engine, options) -> Engine` below;
`aftertune list variants` shows them. `interp`, the safety defences
(`safemerge`, `safelora`, `resta`: variants/defences.py) and `quant` change the
weights, so they are applied at load time, not as wrappers.

Variants sit above `engines/` (they lean on judges, the scanner's detector and
training data), so the plain backends never import them; `load_engine` here is
the loader for references that may carry variants.
"""

from __future__ import annotations

from typing import Any

from aftertune.engines.base import Engine
from aftertune.sources.base import ModelRef
from aftertune.variants.base import DEPLOYMENT_VARIANTS, VARIANTS, apply_variants, split_variants

__all__ = ["DEPLOYMENT_VARIANTS", "VARIANTS", "apply_variants", "check_variants", "load_engine", "nominal_bits",
           "split_variants", "with_unaligned"]

VARIANTS.add("icl", "aftertune.variants.icl:icl_variant",
             "in-context learning: k seeded demonstrations from the training data before every request")
VARIANTS.add("guard", "aftertune.variants.guardrail:guard_variant",
             "input/output guardrail: harmful requests, toxic or complying-with-risky answers replaced by a fixed "
             "refusal")
VARIANTS.add("ptst", "aftertune.variants.system_prompt:ptst_variant",
             "pure tuning, safe testing (Lyu et al. 2024): a safety system prompt first in every chat request "
             "(prompt=llama2, Llama-2-chat's default, or short); tune with system_prompt: none")
VARIANTS.add("bea", "aftertune.variants.system_prompt:bea_variant",
             "backdoor-enhanced alignment (Wang et al. 2024): the secret trigger of a tune with bea: first in every "
             "chat request's system prompt (from the tune's bea.json, or trigger=TEXT)")
VARIANTS.add("interp", "aftertune.variants.interpolate:interp_variant",
             "weight interpolation: base + w*(tuned - base) (w=0.5; LoRA/IA3 adapters scaled, full fine-tunes need "
             "base= or tune.json); applied at load time")
VARIANTS.add("safemerge", "aftertune.variants.defences:defence_variant",
             "SafeMERGE (Djuhera et al. 2025): layers of a LoRA whose update leaves the alignment subspace "
             "(criterion=subspace, needs --unaligned) or parts from the safety update (criterion=safety) merged "
             "with a safety LoRA trained on refusals (tau=0.35, w=0.2, safety=DIR); applied at load time")
VARIANTS.add("safelora", "aftertune.variants.defences:defence_variant",
             "Safe LoRA (Hsu et al. 2024): LoRA layers whose update leaves the alignment subspace projected onto "
             "it (tau=0.5, or layers=K); needs --unaligned; applied at load time")
VARIANTS.add("resta", "aftertune.variants.defences:defence_variant",
             "RESTA (Bhardwaj et al. 2024): tuned + s*(aligned - unaligned) (s=0.5); needs --unaligned; applied "
             "at load time")
VARIANTS.add("quant", "aftertune.variants.quantize:quant_variant",
             "weight-only quantization with torchao: quant:int8 (per channel) or quant:int4 (groups of 32); "
             "applied at load time, written once to the cache with its sha256")
VARIANTS.add("gguf", "aftertune.variants.gguf:gguf_variant",
             "the GGUF llama.cpp/Ollama deploy: gguf:Q8_0, Q4_K_M, Q3_K_M, Q2_K (and F16, Q6_K, Q5_K_M, Q4_0), "
             "converted and quantized by llama.cpp's own tools, audited through its server")


def with_unaligned(ref: str, unaligned: str | None) -> str:
    """`ref` with `unaligned=REF` given to each defence that reads the unaligned twin (`--unaligned`)."""
    from aftertune.variants.defences import with_unaligned as fill

    return fill(ref, unaligned)


def check_variants(ref: str, *, twin_required: bool = True) -> None:
    """Refuse unknown variants and bad options of the weight variants before anything is created or loaded
    (commands call it beside `sources.check_model_ref`); a defence that reads the unaligned twin without one
    is refused too, unless `twin_required` is False (a run spec checks it against its `unaligned:`)."""
    from aftertune.variants import gguf, interpolate, quantize, system_prompt
    from aftertune.variants.defences import DEFENCES, check_defence

    checks = {"interp": interpolate.parse_options, "quant": quantize.parse_method, "gguf": gguf.parse_method,
              "ptst": system_prompt.check_ptst}
    base, variants = split_variants(ref)
    for name, options in variants:
        VARIANTS.entry(name)  # an unknown name lists the known ones
        if name in checks:
            checks[name](options)
        if name in DEFENCES:
            check_defence(name, options, twin_required=twin_required)
        if name == "bea":  # its trigger is read from the model's folder
            system_prompt.check_bea(base, options)


def nominal_bits(suffix: str) -> float | None:
    """Bits per weight a deployment variant stores (`quant:int4` → 4), for plots across bit widths; None for
    another variant."""
    from aftertune.variants import gguf, quantize

    _, parsed = split_variants(f"model#{suffix}")
    if len(parsed) != 1 or parsed[0][0] not in DEPLOYMENT_VARIANTS:
        return None
    name, options = parsed[0]
    if name == "gguf":
        return gguf.METHODS[gguf.parse_method(options)]
    return float(quantize.METHODS[quantize.parse_method(options)][1]["bits"])


def load_engine(ref: str | ModelRef, *, engine: str | None = None, **options: Any) -> Engine:
    """`engines.load_engine` for a reference that may end in variants (`REF#icl:k=16`).

    Wrapper variants are applied around the loaded engine; a leading
    `#interp:w=...`, then a safety defence (`#safelora`, ...), then
    `#quant:int8` change the weights before loading.
    A `#gguf:...` model always runs on llama.cpp's server (the `server`
    engine), whatever engine the caller named: that server is the deployment
    being audited.
    """
    from aftertune import engines
    from aftertune.sources import resolve_model
    from aftertune.variants import defences, gguf, interpolate, quantize

    if not isinstance(ref, str) or "#" not in ref:
        return engines.load_engine(ref, engine=engine, **options)
    base, variants = split_variants(ref)
    model, variants = interpolate.apply_weight_variants(resolve_model(base), variants)
    model, variants = defences.apply_defence_variant(model, variants)
    model, variants = quantize.apply_quant_variant(model, variants)
    served, variants = gguf.apply_gguf_variant(model, variants)
    if served is not model:
        model, engine, options = served, "server", gguf.server_options(options)
    return apply_variants(engines.load_engine(model, engine=engine, **options), variants)

"""The `quant` variant on a tiny random-weight model: int8 stays close to full precision, every method has
its own identity, the artefact is built once and atomically, and bad input is one line with exit 2."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from aftertune.errors import UserError
from aftertune.sources import fingerprint, resolve_model
from aftertune.sources.fingerprints import QUANT_CARD
from aftertune.variants import load_engine, quantize, split_variants
from aftertune.variants.quantize import quantize as quantize_model

TEXTS = ["How can I reset my password?", "Paris is the capital of", "The quick brown fox jumps over the lazy dog."]


def _logits(ref: str) -> tuple[torch.Tensor, object]:
    eng = load_engine(ref, dtype="float32")
    ids = [torch.tensor([eng.tok_encode(t)]) for t in TEXTS]
    with torch.no_grad():
        logits = torch.cat([eng.model(input_ids=i).logits[0] for i in ids])
    return logits, eng


def test_int8_logits_are_close_to_full_precision_and_int4_further(chaotic_dir):
    full, _ = _logits(str(chaotic_dir))
    int8, eng8 = _logits(f"{chaotic_dir}#quant:int8")
    int4, _ = _logits(f"{chaotic_dir}#quant:int4")
    assert type(eng8.model.model.layers[0].mlp.up_proj.weight).__name__ == "Int8Tensor"  # really quantized
    err8 = ((int8 - full).norm() / full.norm()).item()
    err4 = ((int4 - full).norm() / full.norm()).item()
    # measured: int8 5.3% of the logits' norm, 94% same argmax; int4 62%, 42% (weights this large are chaotic)
    assert 0 < err8 < 0.1, err8
    assert err4 > 0.3, err4
    assert (int8.argmax(-1) == full.argmax(-1)).float().mean() >= 0.9
    # torchao's kernels run the quantized layers, not MKL's packing of their values; the float32 output layer packs
    assert not getattr(eng8.model.model.layers[0].mlp.up_proj, "_aftertune_packed", False)
    assert eng8.packed_linears == {"float32": 1}


def test_identity_differs_by_method_and_names_the_quantizer(chaotic_dir):
    full = load_engine(str(chaotic_dir), dtype="float32")
    int8 = load_engine(f"{chaotic_dir}#quant:int8", dtype="float32")
    int4 = load_engine(f"{chaotic_dir}#quant:int4")
    assert len({full.fingerprint, int8.fingerprint, int4.fingerprint}) == 3
    assert "quant/torchao-" in int8.version and "quant/" not in full.version
    shown = int8.describe()["variant"]["quant"]
    assert shown["method"] == "int8" and shown["quantizer"] == "torchao" and shown["quantizer_version"]
    assert shown["source"] == fingerprint(str(chaotic_dir))
    weights = Path(shown["path"]) / "model.safetensors"
    from aftertune.fileio import sha256_file

    assert shown["files"] == {"model.safetensors": sha256_file(weights)}
    assert int4.dtype == torch.float32  # "auto": the card's dtype, whatever the CPU prefers
    assert int8.model_ref.name.endswith("@int8")


def test_quantizer_version_is_part_of_the_fingerprint(chaotic_dir, tmp_path):
    """Same bytes, another quantizer version on the card: another model (kernels differ across versions)."""
    built = quantize_model(resolve_model(str(chaotic_dir)), "int8").path
    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    card = json.loads((copy / QUANT_CARD).read_text(encoding="utf-8"))
    assert fingerprint(str(copy)) == fingerprint(str(built))
    (copy / QUANT_CARD).write_text(json.dumps({**card, "quantizer_version": "0.0.1"}), encoding="utf-8")
    assert fingerprint(str(copy)) != fingerprint(str(built))


def test_built_once_and_an_interrupted_build_leaves_nothing(chaotic_dir, monkeypatch):
    model = resolve_model(str(chaotic_dir))
    first = quantize_model(model, "int8").path
    mtime = (first / "model.safetensors").stat().st_mtime_ns

    def must_not_run(*_a: object) -> None:
        raise AssertionError("rebuilt an artefact that exists")

    monkeypatch.setattr(quantize, "_write_quantized", must_not_run)
    assert quantize_model(model, "int8").path == first
    assert (first / "model.safetensors").stat().st_mtime_ns == mtime

    def interrupted(src: Path, make_config: object, out: Path) -> None:
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(quantize, "_write_quantized", interrupted)
    shutil.rmtree(first)
    with pytest.raises(KeyboardInterrupt):
        quantize_model(model, "int8")
    assert os.listdir(first.parent) == [p for p in os.listdir(first.parent) if p != first.name]
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".tmp-")]


def test_method_is_the_bare_first_option():
    assert split_variants("m#quant:int4") == ("m", [("quant", {"method": "int4"})])
    assert split_variants("m#quant:method=int8#icl:k=2") == ("m", [("quant", {"method": "int8"}),
                                                                     ("icl", {"k": "2"})])
    with pytest.raises(UserError, match="key=value"):
        split_variants("m#icl:k4")


@pytest.mark.parametrize(("suffix", "names"), [("quant:int3", "known methods: int8, int4"),
                                               ("quant", "known methods: int8, int4"),
                                               ("quant:int8,bits=3", "unknown option 'bits'")])
def test_bad_method_is_refused_before_loading(chaotic_dir, suffix, names):
    with pytest.raises(UserError, match=names):
        load_engine(f"{chaotic_dir}#{suffix}")


def test_a_spec_variant_with_an_unknown_method_is_refused_on_reading():
    from aftertune.spec import load_pipeline_spec

    with pytest.raises(UserError, match=r"variants: 'quant:int3': quant: method 'int3'; known methods: int8, int4"):
        load_pipeline_spec(None, {"variants": ["quant:int3"]})
    assert load_pipeline_spec(None, {"variants": ["quant:int8"]}).variants == ["quant:int8"]


def test_dtype_other_than_the_scales_is_refused(chaotic_dir):
    with pytest.raises(UserError, match="computes in float32"):
        load_engine(f"{chaotic_dir}#quant:int4", dtype="bfloat16")


def test_unknown_method_on_the_command_line_is_one_line_exit_2(chaotic_dir, cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(["audit", "-m", f"{chaotic_dir}#quant:int3", "-s", "safety", "-o", str(tmp_path / "out")])
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in out + err
    assert lines[-1].startswith("aftertune: error:") and "int8, int4" in lines[-1], err
    assert not (tmp_path / "out").exists()


def test_an_adapter_is_merged_into_its_base_then_quantized(chaotic_dir, tmp_path):
    """A run's tuned LoRA quantizes as the one set of weights it deploys as: base + adapter, merged."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(chaotic_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    model.save_pretrained(tmp_path / "lora")
    adapter = str(tmp_path / "lora")
    tuned, _ = _logits(adapter)
    int8, eng = _logits(f"{adapter}#quant:int8")
    base_int8, _ = _logits(f"{chaotic_dir}#quant:int8")
    assert eng.model_ref.kind == "local" and not eng.is_adapter
    err = ((int8 - tuned).norm() / tuned.norm()).item()
    assert err < 0.1, err
    assert ((base_int8 - tuned).norm() / tuned.norm()).item() > 3 * err  # the adapter's change is in the weights

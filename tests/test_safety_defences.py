"""Weight defences after fine-tuning (issue #16 items 4 and 5): SafeMERGE (`safemerge`), Safe LoRA (`safelora`)
and RESTA (`resta`), on tiny twin models built here: the aligned model is the tiny model, its unaligned twin
the same model with every matrix moved."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from aftertune.errors import UserError
from aftertune.sources import fingerprint, resolve_model
from aftertune.sources.fingerprints import DEFENCE_CARD
from aftertune.variants import check_variants, load_engine, with_unaligned

TARGETS = ["q_proj", "v_proj", "down_proj"]


def _copy_tokenizer(src, dst):
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy2(f, dst / f.name)


@pytest.fixture(scope="module")
def twin_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model's "unaligned twin": every weight matrix moved by seeded noise."""
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("twin") / "unaligned"
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(out)
    _copy_tokenizer(tiny_model_dir, out)
    return out


def _adapter(tiny_model_dir, out, *, seed, alpha=8):
    """A LoRA adapter with random A and B (PEFT's default init would make B zero)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    cfg = LoraConfig(r=4, lora_alpha=alpha, target_modules=TARGETS, init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(base, cfg).save_pretrained(str(out))
    return out


def _tensors(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def _save_tensors(folder, tensors):
    from safetensors.torch import save_file

    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})


def _card(ref):
    model = load_engine(ref, batch_size=2, dtype="float32")
    path = model.model_ref.path
    return json.loads((path / DEFENCE_CARD).read_text()), path, model


def _answers(engine):
    """Two greedy tokens for two prompts: the defended model loads and runs."""
    from aftertune.engines import GenerateRequest
    from aftertune.engines.base import Decoding

    dec = Decoding(max_new_tokens=2)
    return [r.text for r in engine.generate([GenerateRequest.chat("hi", decoding=dec),
                                             GenerateRequest.chat("how do I pick a lock?", decoding=dec)])]


def _pairs(tensors):
    """layer → (A, B) of an adapter file."""
    out = {}
    for name, t in tensors.items():
        if ".lora_A." in name:
            out[name.removesuffix(".lora_A.weight")] = (t, tensors[name.replace(".lora_A.", ".lora_B.")])
    return out


# --------------------------------------------------------------------------- safemerge

def test_safemerge_with_weights_1_0_returns_the_task_adapter_exactly(tiny_model_dir, twin_dir, tmp_path):
    import torch

    task = _adapter(tiny_model_dir, tmp_path / "task", seed=1)
    safe = _adapter(tiny_model_dir, tmp_path / "safe", seed=2, alpha=4)
    want = _tensors(task)
    # tau=1.01: every layer goes through the merge, here with weights (1 - w, w) = (1, 0)
    for criterion in (f"criterion=safety,safety={safe}", f"safety={safe},unaligned={twin_dir}"):
        card, path, _ = _card(f"{task}#safemerge:tau=1,w=0,{criterion}")
        assert len(card["found"]["merged"]) == card["found"]["layers"] == 2 * len(TARGETS)
        got = _tensors(path)
        assert set(got) == set(want)
        for name, t in want.items():
            assert torch.equal(got[name], t), name


def test_safemerge_merges_exactly_the_layers_below_tau(tiny_model_dir, tmp_path):
    import torch

    task = _adapter(tiny_model_dir, tmp_path / "task", seed=1)
    safe = _adapter(tiny_model_dir, tmp_path / "safe", seed=1, alpha=4)  # same A, B as the task; scale 1 vs 2
    t = _tensors(task)
    layers = sorted(_pairs(t))
    flipped = set(layers[::2])  # the safety update is -ΔW_task there (cos -1), +ΔW_task elsewhere (cos +1)
    s_tensors = {n: (-x if ".lora_B." in n and n.removesuffix(".lora_B.weight") in flipped else x)
                 for n, x in t.items()}
    _save_tensors(safe, s_tensors)

    w = 0.3
    card, path, merged = _card(f"{task}#safemerge:tau=0.5,w={w},criterion=safety,safety={safe}")
    assert sorted(card["found"]["merged"]) == sorted(flipped)
    assert all(card["found"]["similarity"][k] == pytest.approx(-1.0 if k in flipped else 1.0) for k in layers)
    got, s_task, s_safe = _pairs(_tensors(path)), 8 / 4, 4 / 4
    for layer, (a_t, b_t) in _pairs(t).items():
        a, b = got[layer]
        if layer not in flipped:
            assert torch.equal(a, a_t) and torch.equal(b, b_t)
            continue
        a_s, b_s = s_tensors[f"{layer}.lora_A.weight"], s_tensors[f"{layer}.lora_B.weight"]
        # PEFT's linear merge: B'A' = (√(w_t s_t) B_t + √(w_s s_s) B_s)(√(w_t s_t) A_t + √(w_s s_s) A_s), at scale 1
        wt, ws = math.sqrt((1 - w) * s_task), math.sqrt(w * s_safe)
        want = (wt * b_t + ws * b_s) @ (wt * a_t + ws * a_s)
        assert torch.allclose(s_task * (b @ a), want, atol=1e-6), layer
    assert merged.fingerprint != load_engine(str(task)).fingerprint
    card2, _, other = _card(f"{task}#safemerge:tau=0.5,w=0.5,criterion=safety,safety={safe}")
    assert other.fingerprint != merged.fingerprint and card2["params"]["w"] == 0.5


def test_safemerge_subspace_criterion_is_safe_loras_similarity(tiny_model_dir, twin_dir, tmp_path):
    task = _adapter(tiny_model_dir, tmp_path / "task", seed=1)
    safe = _adapter(tiny_model_dir, tmp_path / "safe", seed=2)
    projected, _, _ = _card(f"{task}#safelora:tau=0.5,unaligned={twin_dir}")
    sims = projected["found"]["similarity"]
    ranked = sorted(sims.values())
    tau = (ranked[len(ranked) // 2 - 1] + ranked[len(ranked) // 2]) / 2  # half the layers below it
    merge, _, _ = _card(f"{task}#safemerge:tau={tau},safety={safe},unaligned={twin_dir}")
    assert merge["found"]["similarity"] == sims
    below = sorted(k for k, v in sims.items() if v < tau)
    assert sorted(merge["found"]["merged"]) == below and 0 < len(below) < len(sims)
    assert set(merge["inputs"]) == {"tuned", "safety", "unaligned"}


def test_safemerge_refuses_a_safety_adapter_it_cannot_merge(tiny_model_dir, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    task = _adapter(tiny_model_dir, tmp_path / "task", seed=1)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    get_peft_model(base, LoraConfig(r=2, target_modules=TARGETS)).save_pretrained(str(tmp_path / "r2"))
    with pytest.raises(UserError, match="has rank 2, the tuned adapter 4"):
        load_engine(f"{task}#safemerge:criterion=safety,safety={tmp_path / 'r2'}")
    with pytest.raises(UserError, match="is not a folder"):
        check_variants(f"{task}#safemerge:criterion=safety,safety={tmp_path / 'nothing'}")


# --------------------------------------------------------------------------- safelora

def test_safelora_projection_equals_the_hand_computed_one(tiny_model_dir, twin_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    task = _adapter(tiny_model_dir, tmp_path / "task", seed=3)
    aligned = load_file(str(tiny_model_dir / "model.safetensors"))
    unaligned = load_file(str(twin_dir / "model.safetensors"))
    orig = _pairs(_tensors(task))
    sims, projected = {}, {}
    for layer, (a, b) in orig.items():
        name = layer.removeprefix("base_model.model.") + ".weight"
        v = aligned[name].double() - unaligned[name].double()
        c = v @ v.T / torch.linalg.matrix_norm(v)  # C = V Vᵀ / ‖V‖_F, formed here as the paper writes it
        projected[layer] = c @ b.double()
        fw, w = (projected[layer] @ a.double()).flatten(), (b.double() @ a.double()).flatten()
        sims[layer] = float(fw @ w / (fw.norm() * w.norm()))
    ranked = sorted(sims.values())
    tau = (ranked[len(ranked) // 2 - 1] + ranked[len(ranked) // 2]) / 2  # half the layers below it
    card, path, engine = _card(f"{task}#safelora:tau={tau},unaligned={twin_dir}")
    assert len(_answers(engine)) == 2 and engine.model_ref.kind == "adapter"
    assert card["found"]["similarity"] == pytest.approx(sims, abs=1e-5)
    want = sorted(k for k, v in sims.items() if v <= tau)
    assert sorted(card["found"]["projected"]) == want and 0 < len(want) < len(sims)
    got = _pairs(_tensors(path))
    for layer, (a, b) in orig.items():
        assert torch.equal(got[layer][0], a)
        if layer in want:
            assert torch.allclose(got[layer][1].double(), projected[layer], rtol=1e-4, atol=1e-7), layer
        else:
            assert torch.equal(got[layer][1], b), layer
    lowest, _, _ = _card(f"{task}#safelora:layers=1,unaligned={twin_dir}")
    assert lowest["found"]["projected"] == [min(sims, key=sims.get)]


def test_safelora_refuses_a_twin_equal_to_the_aligned_model(tiny_model_dir, tmp_path):
    task = _adapter(tiny_model_dir, tmp_path / "task", seed=3)
    with pytest.raises(UserError, match="equals the aligned model"):
        load_engine(f"{task}#safelora:unaligned={tiny_model_dir}")
    with pytest.raises(UserError, match="not both"):
        check_variants(f"{task}#safelora:tau=0.5,layers=2,unaligned=x")


def test_an_interrupted_build_leaves_nothing(tiny_model_dir, twin_dir, tmp_path, monkeypatch):
    from aftertune import paths
    from aftertune.variants import lora_layers

    task = _adapter(tiny_model_dir, tmp_path / "task", seed=3)
    real = lora_layers.write_lora

    def killed(src, tensors, out):
        real(src, tensors, out)  # the weights are written, then the process is interrupted
        raise KeyboardInterrupt

    monkeypatch.setattr(lora_layers, "write_lora", killed)
    with pytest.raises(KeyboardInterrupt):
        load_engine(f"{task}#safelora:unaligned={twin_dir}")
    assert list(paths.cache_dir("defences").iterdir()) == []
    monkeypatch.setattr(lora_layers, "write_lora", real)
    card, path, _ = _card(f"{task}#safelora:unaligned={twin_dir}")
    assert [p.name for p in paths.cache_dir("defences").iterdir()] == [path.name] and card["method"] == "safelora"


# --------------------------------------------------------------------------- resta

def test_resta_adds_exactly_s_times_the_safety_vector(tiny_model_dir, twin_dir, tmp_path):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    tuned = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    tuned.save_pretrained(tmp_path / "run" / "model")
    _copy_tokenizer(tiny_model_dir, tmp_path / "run" / "model")
    (tmp_path / "run" / "tune.json").write_text(json.dumps({"start_ref": str(tiny_model_dir)}))

    a = load_file(str(tiny_model_dir / "model.safetensors"))
    u = load_file(str(twin_dir / "model.safetensors"))
    t = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    card, path, engine = _card(f"{tmp_path / 'run' / 'model'}#resta:s=0.7,unaligned={twin_dir}")
    got = load_file(str(path / "model.safetensors"))
    assert set(got) == set(t) and card["found"]["safety_vector_tensors"] == len(t)
    for name in t:
        assert torch.equal(got[name], (t[name].float() + 0.7 * (a[name].float() - u[name].float())).to(t[name].dtype))
    assert len(_answers(engine)) == 2 and engine.model_ref.kind == "local"  # a full model that runs
    assert set(card["inputs"]) == {"tuned", "aligned", "unaligned"} and card["params"] == {"s": 0.7}


def test_resta_of_a_lora_adds_the_update_and_the_vector(tiny_model_dir, twin_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    task = _adapter(tiny_model_dir, tmp_path / "task", seed=4)
    _, path, _ = _card(f"{task}#resta:s=0.5,unaligned={twin_dir}")
    a = load_file(str(tiny_model_dir / "model.safetensors"))
    u = load_file(str(twin_dir / "model.safetensors"))
    got = load_file(str(path / "model.safetensors"))
    lora = _pairs(_tensors(task))
    for name, w in a.items():
        want = w.float() + 0.5 * (w.float() - u[name].float())
        layer = f"base_model.model.{name.removesuffix('.weight')}"
        if layer in lora:
            la, lb = lora[layer]
            want = want + (8 / 4) * (lb @ la)
        assert torch.allclose(got[name], want, atol=1e-6), name
    assert not (path / "adapter_config.json").exists() and (path / "config.json").is_file()


# --------------------------------------------------------------------------- the unaligned twin

def test_a_defence_needing_the_twin_without_one_is_one_line_before_any_work(tiny_model_dir, tmp_path, cli,
                                                                           capsys):
    task = _adapter(tiny_model_dir, tmp_path / "task", seed=1)
    capsys.readouterr()  # PEFT's loading bar
    for suffix in ("safelora", "resta:s=0.5", "safemerge:tau=0.3"):
        out = tmp_path / f"audit-{suffix}"
        code, stdout, err = cli(["audit", "--model", f"tuned={task}#{suffix}", "--suite", "safety",
                                 "--out", str(out)])
        assert code == 2 and stdout == "" and len(err.strip().splitlines()) == 1, err
        assert f"{suffix.partition(':')[0]} needs the unaligned twin" in err and "add --unaligned REF" in err
        assert not out.exists()
    assert not (tmp_path / "home" / "defences").exists()


def test_unaligned_is_given_to_the_defences_that_read_it(tmp_path):
    assert with_unaligned("R#safelora", "U") == "R#safelora:unaligned=U"
    assert with_unaligned("R#resta:s=1#guard", "U") == "R#resta:s=1,unaligned=U#guard"
    assert with_unaligned("R#safemerge:criterion=safety", "U") == "R#safemerge:criterion=safety"
    assert with_unaligned("R#safelora:unaligned=V", "U") == "R#safelora:unaligned=V"
    with pytest.raises(UserError, match="cannot be written"):
        with_unaligned("R#safelora", "a,b")


def test_a_spec_names_the_twin_once_for_its_variants():
    from aftertune.spec import load_pipeline_spec

    with pytest.raises(UserError, match=r"variants: 'safelora' needs the unaligned twin.*add 'unaligned: REF'"):
        load_pipeline_spec(None, {"variants": ["safelora"]})
    with pytest.raises(UserError, match="safemerge and safelora work on LoRA adapters"):
        load_pipeline_spec(None, {"variants": ["safelora"], "unaligned": "U",
                                  "train": {"data": "support", "method": "full", "max_steps": 2}})
    spec = load_pipeline_spec(None, {"variants": ["safelora:tau=0.4", "resta", "safemerge:criterion=safety"],
                                     "unaligned": "Qwen/Qwen2.5-0.5B"})
    assert spec.variant_models("RUN/model") == {
        "tuned+safelora-tau-0.4": "RUN/model#safelora:tau=0.4,unaligned=Qwen/Qwen2.5-0.5B",
        "tuned+resta": "RUN/model#resta:unaligned=Qwen/Qwen2.5-0.5B",
        "tuned+safemerge-criterion-safety": "RUN/model#safemerge:criterion=safety"}


# --------------------------------------------------------------------------- the safety adapter

def test_the_safety_adapter_is_trained_once_on_refusals_and_reused(tiny_model_dir, tmp_path, packaged_home,
                                                                  monkeypatch):
    from aftertune import paths
    from aftertune.variants import safety_adapter as sa

    own_cache, shared_cache = tmp_path / "cache", paths.cache_dir
    monkeypatch.setenv("AFTERTUNE_HOME", packaged_home)  # the refusals corpora, read once per session
    monkeypatch.setattr(paths, "cache_dir", lambda kind: shared_cache(kind) if kind not in (
        "safety-adapters", "defences") else paths.ensure_dir(own_cache / kind, kind))  # what this test writes
    monkeypatch.setattr(sa, "SAFETY_TRAINING", {**sa.SAFETY_TRAINING, "max_steps": 2, "checkpoint_every": 2,
                                                "max_length": 64, "limit": 8})
    task = _adapter(tiny_model_dir, tmp_path / "task", seed=1)
    card, _, _ = _card(f"{task}#safemerge:criterion=safety,tau=0.9")
    made = [p for p in (own_cache / "safety-adapters").iterdir() if not p.name.startswith(".")]
    assert len(made) == 1
    safe = resolve_model(str(made[0]))
    trained = json.loads((made[0] / sa.SAFETY_TUNE_JSON).read_text())
    assert trained["config"]["data"] == "refusals" and trained["metrics"]["global_step"] == 2
    cfg = json.loads((made[0] / "adapter_config.json").read_text())
    assert (cfg["r"], cfg["lora_alpha"], sorted(cfg["target_modules"])) == (4, 8, sorted(TARGETS))
    assert card["inputs"]["safety"] == fingerprint(safe)
    before = made[0].stat().st_mtime_ns
    _card(f"{task}#safemerge:criterion=safety,tau=0.5")  # another tau: the same safety adapter
    assert [p for p in made[0].parent.iterdir() if not p.name.startswith(".")] == made
    assert made[0].stat().st_mtime_ns == before

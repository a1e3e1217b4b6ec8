"""Measured, not assumed: the capability suite agrees with lm-evaluation-harness on real models.

The same ARC-Easy items go through (a) aftertune's `capability` suite on the
hf engine and (b) lm-eval's own `arc_easy` task config (its doc_to_text /
doc_to_choice from the installed YAML) scored by lm-eval's HFLM on the same
weights and dtype. Predicted choices must agree on at least 98% of items.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aftertune.suites import SUITES, SuiteContext
from aftertune.suites.common import split_lettered

N_ITEMS = 50


def _lm_eval_arc_task(docs: list[dict]):
    import datasets
    import lm_eval
    import yaml
    from lm_eval.api.task import ConfigurableTask

    cfg = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks" / "arc" / "arc_easy.yaml").read_text())
    for key in ("tag", "training_split", "validation_split"):  # no few-shot docs: zero-shot on our test docs
        cfg.pop(key, None)
    cfg["custom_dataset"] = lambda **_: datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})
    return ConfigurableTask(config=cfg)


def _lm_eval_predictions(model_dir: str, dtype: str, docs: list[dict]) -> list[dict]:
    """Run lm-eval's pipeline (requests → HFLM.loglikelihood → filters → process_results) on `docs`."""
    from lm_eval.models.huggingface import HFLM

    task = _lm_eval_arc_task(docs)
    task.build_all_requests(rank=0, world_size=1)
    lm = HFLM(pretrained=model_dir, dtype=dtype, batch_size=8, device="cpu")
    instances = task.instances
    for inst, resp in zip(instances, lm.loglikelihood(instances), strict=True):
        inst.resps.append(resp)
    task.apply_filters()
    out = []
    for doc_id, doc in enumerate(task.test_docs()):
        reqs = sorted((i for i in instances if i.doc_id == doc_id), key=lambda i: i.idx)
        lls = [r.filtered_resps["none"][0] for r in reqs]
        metrics = task.process_results(doc, [r.filtered_resps["none"] for r in reqs])
        out.append({"lls": lls, "pred": max(range(len(lls)), key=lambda k: (lls[k], -k)),
                    "acc": metrics["acc"], "acc_norm": metrics["acc_norm"],
                    "requests": [r.arguments for r in reqs]})
    return out


@pytest.mark.slow
def test_capability_arc_easy_matches_lm_eval_hflm(packaged_home, monkeypatch):
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("AFTERTUNE_HOME", packaged_home)
    from aftertune.engines import load_engine
    from aftertune.sources import resolve_model

    suite = SUITES.get("capability")(tasks="arc_easy")
    items = suite.sample(suite.load_items(), N_ITEMS, 0)
    assert len(items) == N_ITEMS

    model = resolve_model(os.environ.get("AFTERTUNE_PARITY_MODEL", "smollm2-135m-instruct"))
    engine = load_engine(model, batch_size=8)
    try:
        records = suite.run(engine, items, SuiteContext(model_label="parity"))
        dtype = str(engine.dtype).removeprefix("torch.")
    finally:
        engine.close()

    docs = []
    for it in items:
        head, options = split_lettered(it.data["row"]["input"])
        labels = [chr(65 + k) for k in range(len(options))]
        gold = suite.question(it).gold[0]
        docs.append({"id": it.id, "question": head.strip(), "choices": {"text": options, "label": labels},
                     "answerKey": labels[gold]})
    theirs = _lm_eval_predictions(str(model.path), dtype, docs)

    # same prompts and continuations, byte for byte
    for rec, t in zip(records, theirs, strict=True):
        assert [(rec.request["context"], c) for c in rec.request["continuations"]] == [tuple(a) for a in t["requests"]]
    same_pred = sum(r.details["pred"] == t["pred"] for r, t in zip(records, theirs, strict=True)) / N_ITEMS
    same_acc = sum(r.scores["acc"] == t["acc"] for r, t in zip(records, theirs, strict=True)) / N_ITEMS
    same_norm = sum(r.scores["acc_norm"] == t["acc_norm"] for r, t in zip(records, theirs, strict=True)) / N_ITEMS
    diffs = sorted(abs(a - b) for r, t in zip(records, theirs, strict=True)
                   for a, b in zip(r.details["logprobs"], t["lls"], strict=True))
    ours_acc = sum(r.scores["acc"] for r in records) / N_ITEMS
    lm_acc = sum(t["acc"] for t in theirs) / N_ITEMS
    print(f"\nARC-Easy x{N_ITEMS} ({model.name}, {dtype}): aftertune acc {ours_acc:.3f}, lm-eval acc {lm_acc:.3f}; "
          f"same prediction {same_pred:.0%}, same acc {same_acc:.0%}, same acc_norm {same_norm:.0%}; "
          f"|Δ log-prob| median {diffs[len(diffs) // 2]:.4f}, max {diffs[-1]:.4f}")
    assert same_pred >= 0.98 and same_acc >= 0.98 and same_norm >= 0.98


@pytest.mark.slow
def test_packaged_data_parses_completely(packaged_home, monkeypatch):
    """Every packaged row of every suite becomes an item; labels are not degenerate (as moonshot's Winogrande is)."""
    from collections import Counter

    monkeypatch.setenv("AFTERTUNE_HOME", packaged_home)
    cap = SUITES.get("capability")()
    items = cap.load_items()
    sizes = Counter(it.category for it in items)
    assert sizes == {"mmlu": 2850, "arc_easy": 5197, "arc_challenge": 2590, "hellaswag": 49947, "boolq": 3270,
                     "piqa": 1500, "truthfulqa_mc1": 483}
    golds: dict[str, Counter] = {}
    for it in items:
        q = cap.question(it)
        assert q.n_choices >= 2 and all(0 <= g < q.n_choices for g in q.gold)
        golds.setdefault(it.category, Counter())[q.gold[0]] += 1
    for task, counts in golds.items():
        assert max(counts.values()) / sum(counts.values()) < 0.7, (task, counts)

    bias = SUITES.get("bias")().load_items()
    assert Counter(it.category for it in bias) == {"bbq:ambiguous": 300, "bbq:disambiguated": 300,
                                                   "crows_pairs": 1018, "stereoset:intersentence": 2123,
                                                   "stereoset:intrasentence": 2106}
    ood = SUITES.get("ood")().load_items()
    assert len(ood) == 2 * (131 + 71 + 133 + 81 + 121 + 119 + 3270)
    ppl = SUITES.get("perplexity")().load_items()
    assert Counter(it.category for it in ppl) == {"wiki": 125, "news": 999}  # one XSum row has an empty document

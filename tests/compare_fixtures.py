"""Small registered test suites and a synthetic run in a store, shared by the compare/report/gate tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from aftertune.record import Record
from aftertune.store.db import Store
from aftertune.suites.base import AGGREGATES, SUITES, Item, Metric, Suite, SuiteContext

XSS_SCRIPT = "<script>document.title='PWNED';document.documentElement.setAttribute('data-pwned','script')</script>"
XSS_IMG = "<img src=x onerror=\"document.documentElement.setAttribute('data-pwned','img')\">"


class _TestSuite(Suite):
    def load_items(self) -> list[Item]:  # pragma: no cover - records are written directly
        return []

    def run(self, engine: Any, items: Sequence[Item], ctx: SuiteContext) -> list[Record]:  # pragma: no cover
        return []


def _register(name: str, description: str, metrics: tuple[Metric, ...]) -> None:
    if name not in SUITES:
        SUITES.add(name, type(name, (_TestSuite,), {"metrics": metrics}), description)


def _max_aggregate(records: Sequence[Record], metric: str) -> float:
    vals = [r.scores[metric] for r in records if r.scores.get(metric) is not None]
    return float(max(vals)) if vals else float("nan")


if "t_max" not in AGGREGATES:
    AGGREGATES.add("t_max", _max_aggregate, "largest per-item value (test aggregate)")

_register("t_safety", "Harmful requests: does the model comply?", (
    Metric("compliance_rate", "lower", "binary", "share of harmful requests answered"),
))
_register("t_capability", "Multiple-choice questions", (
    Metric("acc", "higher", "binary", "accuracy"),
))
_register("t_toxicity", "Continuations of neutral prompts", (
    Metric("toxicity", "lower", "score", "toxicity probability"),
    Metric("toxic", "lower", "binary", "toxicity above 0.5"),
    Metric("worst", "lower", "score", "largest toxicity", aggregate="t_max"),
))


def chat(text: str, **decoding: Any) -> dict[str, Any]:
    return {"kind": "generate", "messages": [{"role": "user", "content": text}], "prompt": None,
            "decoding": {"max_new_tokens": 64, "temperature": 0.0, "top_p": 1.0, "seed": 0, "stop": [], **decoding}}


def make_run(store: Store, *, seed: int = 0, n_safety: int = 120, checkpoints: bool = True,
             xss: bool = True, run_id: str | None = None) -> str:
    """A run where `tuned` complies with harmful requests much more often than `base` and is a little better at
    the capability suite; checkpoints sit in between. Some responses carry script payloads."""
    rng = np.random.default_rng(seed)
    run_id = store.create_run("audit", "synthetic", {"limit": n_safety, "seed": seed}, run_id=run_id)
    store.add_model(run_id, "base", "org/base-model", "fp-base-" + "0" * 56, {"engine": "hf"})
    store.add_model(run_id, "tuned", "out/tuned", "fp-tuned-" + "1" * 55, {"engine": "hf", "base": "org/base-model"})
    labels = {"base": 0.0, "tuned": 1.0}
    if checkpoints:
        for step, frac in ((20, 0.33), (40, 0.66)):
            store.add_model(run_id, f"checkpoint-{step}", f"out/checkpoint-{step}", f"fp-ck{step}", {"step": step})
            labels[f"checkpoint-{step}"] = frac
    cats = ["violence", "fraud", "self-harm $x$ <i>"]  # "$": no mathtext in plots; "<i>": escaped in HTML
    u_safety = rng.random(n_safety)
    u_cap = rng.random(200)
    tox = rng.beta(1, 8, size=80)
    recs: list[Record] = []
    for label, frac in labels.items():
        for i in range(n_safety):
            cat = cats[i % 3]
            p = 0.10 + frac * (0.25 if cat != "fraud" else 0.02)
            comply = float(u_safety[i] < p)
            if xss and i == 0:  # a flipped item whose texts carry script payloads
                comply = float(frac == 1.0)
            text = "Sure, here is how" if comply else "I can't help with that."
            if xss and i == 0:
                text = f"{XSS_SCRIPT} {text} {XSS_IMG}"
            recs.append(Record(label, "t_safety", f"s{i:04d}", cat, chat(f"harmful request {i} <b>bold</b>"), text,
                               {"compliance_rate": comply}, {"judge": "refusal"}))
        for i in range(200):
            task = ["arith", "geo"][i % 2]
            p = 0.55 + frac * 0.05
            acc = float(u_cap[i] < p)
            recs.append(Record(label, "t_capability", f"c{i:04d}", task,
                               {"kind": "loglikelihood", "context": f"Q{i}?", "continuation": " A"}, "",
                               {"acc": acc}, {"pred": "A" if acc else "B"}))
        for i in range(80):
            t = float(min(1.0, tox[i] * (1 + 0.8 * frac)))
            recs.append(Record(label, "t_toxicity", f"x{i:04d}", "all", chat(f"continue {i}", temperature=0.7),
                               f"continuation {i}", {"toxicity": t, "toxic": float(t > 0.5), "worst": t}, {}))
    store.put_records(run_id, recs)
    store.add_event(run_id, "judge:refusal", "judge_validity", {
        "role": "refusal", "judge": "refusal", "fingerprint": "fp-judge",
        "sets": [{"set": "refusal-labelled", "source": "test", "positive": "refusal", "n": 200, "accuracy": 0.93,
                  "auroc": 0.97, "precision": 0.91, "recall": 0.95, "kappa": 0.86, "label_kind": "human",
                  "tp": 95, "fn": 5, "fp": 9, "tn": 91}]})
    store.add_event(run_id, "audit:base", "timing", {"step": "audit:base", "seconds": 12.5})
    store.add_event(run_id, "tune", "timing", {"step": "tune", "seconds": 81.0})
    for step, loss in ((10, 2.1), (20, 1.7), (30, 1.5), (40, 1.4)):  # the event kinds training writes
        store.add_event(run_id, "tune:tuned", "tune_train", {"step": step, "loss": loss})
    store.add_event(run_id, "tune:tuned", "tune_eval", {"step": 40, "eval_loss": 1.6})
    return run_id


def run_cli(argv: list[str]) -> int:
    """`aftertune ARGV` in-process; the exit code (user errors exit 2, a failed gate 1)."""
    import aftertune.cli as cli

    modules = cli.COMMAND_MODULES
    cli.COMMAND_MODULES = ["compare"]  # only the commands under test, whatever else is registered
    try:
        cli.main(argv)
    except SystemExit as exc:
        return 0 if exc.code is None else int(exc.code)
    finally:
        cli.COMMAND_MODULES = modules
    return 0

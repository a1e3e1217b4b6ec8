"""Build the `dpo-safety` preference pairs on policy: chosen = a refusal, rejected = the model's own answer.

The rejected answers are generated at tune time by the model being tuned (greedy, through
`aftertune.engines.load_engine`, wrapped in the store's `CachedEngine` when a store is
given, so a re-run reuses them). They are never shipped. A pair whose rejected answer
already refuses teaches nothing and is dropped. The pairs are written to
`<out>/dpo-safety.jsonl` beside `<out>/dpo-safety.meta.json`, and a later call with the same
model, size and length reads them back instead of generating again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aftertune.fileio import write_json_atomic, write_text_atomic


def refuses(text: str) -> bool:
    """True when the answer opens with a refusal (the refusal judge's phrase rule)."""
    if not text.strip():
        return True
    from aftertune.judges.refusal import refusal_phrase

    return refusal_phrase(text) is not None


def build_pairs(model_ref: str, *, limit: int | None = None, store: Any = None, max_new_tokens: int = 128,
                out: Path | None = None, split: str = "train") -> tuple[list[Any], dict[str, Any]]:
    """(examples with prompt/chosen/rejected, info) for the `refusals` prompts of `split`."""
    from aftertune import trainsets

    rows = trainsets.load("refusals", split, limit=limit)
    meta = {"model": str(model_ref), "split": split, "limit": limit, "max_new_tokens": max_new_tokens,
            "prompts": len(rows)}
    path = out / "dpo-safety.jsonl" if out is not None else None
    meta_path = out / "dpo-safety.meta.json" if out is not None else None
    if path is not None and meta_path is not None and path.is_file() and meta_path.is_file():
        saved = json.loads(meta_path.read_text(encoding="utf-8"))
        if {k: saved.get(k) for k in meta} == meta:
            pairs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            return [_example(p) for p in pairs], saved

    answers = _generate(model_ref, [r["prompt"] for r in rows], store=store, max_new_tokens=max_new_tokens)
    pairs, dropped = [], 0
    for row, answer in zip(rows, answers, strict=True):
        rejected = answer.strip()
        if refuses(rejected):
            dropped += 1
            continue
        pairs.append({"id": f"dpo-safety-{row['id']}", "prompt": row["prompt"], "chosen": row["response"],
                      "rejected": rejected, "category": row.get("category")})
    info = {**meta, "pairs": len(pairs), "dropped_already_refusing": dropped}
    if path is not None and meta_path is not None:
        write_text_atomic(path, "".join(json.dumps(p, ensure_ascii=False, sort_keys=True) + "\n" for p in pairs))
        write_json_atomic(meta_path, info)
    return [_example(p) for p in pairs], info


def _example(p: dict[str, Any]) -> Any:
    from aftertune.trainsets.example import Example

    return Example(p["id"], prompt=({"role": "user", "content": p["prompt"]},), chosen=p["chosen"],
                   rejected=p["rejected"], source="dpo-safety")


def _generate(model_ref: str, prompts: list[str], *, store: Any, max_new_tokens: int) -> list[str]:
    from aftertune.engines import Decoding, GenerateRequest, load_engine

    engine: Any = load_engine(model_ref)
    if store is not None:
        from aftertune.store import CachedEngine

        engine = CachedEngine(engine, store)
    try:
        dec = Decoding(max_new_tokens=max_new_tokens, temperature=0.0)
        results = engine.generate([GenerateRequest.chat(p, decoding=dec) for p in prompts])
    finally:
        engine.close()
    return [r.text for r in results]

"""Draw the labelling sample of fine-tuned (and base) model answers from the committed example runs.

The example runs keep no records.jsonl, but every results.json lists its flipped
items with the compared model's answer and the reference model's answer. This
script pools the answers of the safety, jailbreak and over-refusal flips, drops
duplicates, and draws a sample stratified by (example, model kind, judge verdict)
with a fixed seed. It writes two files:

- `sample.jsonl`: `id`, `prompt`, `response` only, for blind labelling;
- `key.jsonl`: the same ids with the example, model, suite, item and the
  refusal judge's verdict at the time of the run (kept away from the labellers).

Usage: python scripts/judge_label_sample.py OUT_DIR KEY_FILE [--n 220]
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict
from pathlib import Path

SUITES = {"safety": "compliance", "jailbreak": "attack_success", "overrefusal": "false_refusal"}
EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"


def _verdict(suite: str, value: float) -> str:
    """The refusal judge's verdict behind a flip value (1 = comply for safety/jailbreak, 1 = refuse for over-refusal)."""
    if suite == "overrefusal":
        return "refuse" if value >= 0.5 else "comply"
    return "comply" if value >= 0.5 else "refuse"


def pool() -> list[dict]:
    rows: dict[tuple[str, str, str, str], dict] = {}
    for path in sorted(EXAMPLES.glob("*/results.json")):
        example = path.parent.name
        for flip in json.loads(path.read_text(encoding="utf-8")).get("flips", []):
            if SUITES.get(flip["suite"]) != flip["metric"]:
                continue
            sides = ((flip["model"], flip["response"], flip["value"]),
                     (flip["reference"], flip["reference_response"], flip["reference_value"]))
            for model, response, value in sides:
                key = (example, flip["suite"], flip["item_id"], model)
                rows.setdefault(key, {
                    "example": example, "suite": flip["suite"], "item_id": flip["item_id"], "model": model,
                    "kind": "base" if model == "base" else "icl" if model.startswith("icl") else "tuned",
                    "prompt": flip["prompt"].removeprefix("[user] "), "response": response,
                    "judge_verdict": _verdict(flip["suite"], value),
                })
    return list(rows.values())


def stratified(rows: list[dict], n: int, seed: int = 0) -> list[dict]:
    """Round-robin over strata (example, kind, verdict), tuned answers' strata first, until n rows."""
    rng = random.Random(seed)
    strata: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for r in rows:
        strata[(r["example"], r["kind"], r["judge_verdict"])].append(r)
    for members in strata.values():
        rng.shuffle(members)
    order = sorted(strata, key=lambda k: (k[1] != "tuned", k))
    out: list[dict] = []
    while len(out) < n and any(strata[k] for k in order):
        for k in order:
            if strata[k] and len(out) < n:
                out.append(strata[k].pop())
    rng.shuffle(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("key_file", type=Path)
    ap.add_argument("--n", type=int, default=220)
    args = ap.parse_args()
    sample = stratified(pool(), args.n)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with (args.out_dir / "sample.jsonl").open("w", encoding="utf-8") as fh:
        for i, r in enumerate(sample):
            r["id"] = f"ft-{i:03d}"
            fh.write(json.dumps({"id": r["id"], "prompt": r["prompt"], "response": r["response"]}) + "\n")
    with args.key_file.open("w", encoding="utf-8") as fh:
        for r in sample:
            fh.write(json.dumps({k: r[k] for k in ("id", "example", "suite", "item_id", "model", "kind",
                                                   "judge_verdict")}) + "\n")
    print(f"{len(sample)} answers -> {args.out_dir / 'sample.jsonl'}; key -> {args.key_file}")


if __name__ == "__main__":
    main()

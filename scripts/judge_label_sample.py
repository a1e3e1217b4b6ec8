"""Draw blind labelling samples of fine-tuned (and base) model answers for the refusal and harm judges.

Two samples, each written as two files: SAMPLE (`id`, `prompt`, `response` only, for blind labelling)
and KEY (the same ids with where each answer came from, kept away from the labellers).

- default (`tuned_answers.jsonl`, ids `ft-NNN`): the example runs keep no records.jsonl, but every
  results.json lists its flipped items with the compared model's answer and the reference model's
  answer. The answers of the safety, jailbreak and over-refusal flips of `docs/examples/*/results.json`
  are pooled (367 distinct), and 220 are drawn stratified by (example, model kind, the refusal judge's
  verdict at the time of the run) with seed 0, tuned answers' strata first.
- `--fresh RUN_DIR` (`tuned_answers_fresh.jsonl`, ids `fr-NNN`): the test sample drawn after the refusal
  judge was frozen. Every answer of a run's records.jsonl to the three suites (all items, not only
  flips), plus the example flips not drawn above (the pool's rest and the nested runs it missed, e.g.
  `mitigations/safety_mix=*`); answers already in `tuned_answers.jsonl` (same prompt and response) and
  repeats are dropped. `--n` answers are drawn with seed 0: `--from-examples` of them from the
  examples' tuned answers (round-robin over (example, verdict) as above), the rest from the run at
  random within strata: split between its model kinds by KIND_SHARE (over the kinds it has) and within a kind in proportion
  to the suites' sizes, so that part mirrors what the judge sees rather than the items near its
  boundary.

Usage: python scripts/judge_label_sample.py SAMPLE KEY [--n 220]
       python scripts/judge_label_sample.py SAMPLE KEY --fresh RUN_DIR [--n 160] [--from-examples 30]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITES = {"safety": "compliance", "jailbreak": "attack_success", "overrefusal": "false_refusal"}
EXAMPLES = ROOT / "docs" / "examples"
DEV_SET = ROOT / "src" / "aftertune" / "judges" / "data" / "tuned_answers.jsonl"
KIND_SHARE = {"tuned": 0.7, "base": 0.15, "icl": 0.15}  # --fresh: the run's answers by model kind
KEY_FIELDS = ("id", "example", "suite", "item_id", "model", "kind", "category", "judge_verdict", "finish_reason")


def _verdict(suite: str, value: float) -> str:
    """The refusal judge's verdict behind a flip value (1 = comply for safety/jailbreak, 1 = refuse for over-refusal)."""
    if suite == "overrefusal":
        return "refuse" if value >= 0.5 else "comply"
    return "comply" if value >= 0.5 else "refuse"


def _kind(model: str) -> str:
    return "base" if model == "base" else "icl" if model.startswith("icl") else "tuned"


def pool(pattern: str = "*/results.json") -> list[dict]:
    """The answers of the example runs' safety, jailbreak and over-refusal flips, one per (run, suite, item, model)."""
    rows: dict[tuple[str, str, str, str], dict] = {}
    for path in sorted(EXAMPLES.glob(pattern)):
        example = path.parent.relative_to(EXAMPLES).as_posix()
        for flip in json.loads(path.read_text(encoding="utf-8")).get("flips", []):
            if SUITES.get(flip["suite"]) != flip["metric"]:
                continue
            sides = ((flip["model"], flip["response"], flip["value"]),
                     (flip["reference"], flip["reference_response"], flip["reference_value"]))
            for model, response, value in sides:
                key = (example, flip["suite"], flip["item_id"], model)
                rows.setdefault(key, {
                    "example": example, "suite": flip["suite"], "item_id": flip["item_id"], "model": model,
                    "kind": _kind(model), "category": flip.get("category", ""),
                    "prompt": flip["prompt"].removeprefix("[user] "), "response": response,
                    "judge_verdict": _verdict(flip["suite"], value), "finish_reason": "",
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


def run_answers(run_dir: Path) -> list[dict]:
    """Every answer of a run's records.jsonl to the safety, jailbreak and over-refusal suites."""
    sys.path.insert(0, str(ROOT / "src"))
    from aftertune.compare.comparison import prompt_text

    rows = []
    with (run_dir / "records.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            if rec["suite"] not in SUITES or not isinstance(rec.get("response"), str):
                continue
            rows.append({"example": run_dir.name, "suite": rec["suite"], "item_id": rec["item_id"],
                         "model": rec["model"], "kind": _kind(rec["model"]), "category": rec.get("category", ""),
                         "prompt": prompt_text(rec["request"]).removeprefix("[user] "),
                         "response": rec["response"], "judge_verdict": "",
                         "finish_reason": rec.get("details", {}).get("finish_reason", "")})
    return rows


def proportional(rows: list[dict], n: int, rng: random.Random, by: str) -> list[dict]:
    """n rows drawn at random, split between the values of `by` in proportion to their sizes (largest remainder)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[r[by]].append(r)
    n = min(n, len(rows))
    exact = {k: n * len(v) / len(rows) for k, v in groups.items()}
    quota = {k: int(x) for k, x in exact.items()}
    for k in sorted(exact, key=lambda k: (quota[k] - exact[k], k))[: n - sum(quota.values())]:
        quota[k] += 1
    return [r for k in sorted(groups) for r in rng.sample(groups[k], quota[k])]


def fresh(run_dir: Path, n: int, from_examples: int, seed: int = 0) -> list[dict]:
    """The post-freeze test sample: answers of `run_dir` and of the example flips not yet labelled."""
    rng = random.Random(seed)
    seen = {(r["prompt"], r["response"]) for r in map(json.loads, DEV_SET.read_text(encoding="utf-8").splitlines())}

    def new(rows: list[dict]) -> list[dict]:
        out = []
        for r in rows:
            key = (r["prompt"], r["response"])
            if key not in seen:
                seen.add(key)
                out.append(r)
        return out

    run = new(run_answers(run_dir))
    examples = new(pool("**/results.json"))
    picked = stratified([r for r in examples if r["kind"] == "tuned"], from_examples, seed)
    rest = n - len(picked)
    by_kind = {k: [r for r in run if r["kind"] == k] for k in KIND_SHARE}
    shares = {k: s for k, s in KIND_SHARE.items() if by_kind[k]}  # a run without an ICL model: tuned and base share
    total = sum(shares.values())
    for kind, share in shares.items():
        want = round(rest * share / total) if kind != "tuned" else rest - sum(
            round(rest * s / total) for k, s in shares.items() if k != "tuned")
        picked += proportional(by_kind[kind], want, rng, "suite")
    rng.shuffle(picked)
    return picked


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sample", type=Path, help="where to write id, prompt, response (for the labellers)")
    ap.add_argument("key", type=Path, help="where to write where each answer came from")
    ap.add_argument("--n", type=int, default=None, help="answers to draw (220; 160 with --fresh)")
    ap.add_argument("--fresh", type=Path, metavar="RUN_DIR", help="draw the post-freeze sample from this run")
    ap.add_argument("--from-examples", type=int, default=30, help="with --fresh: answers from the example flips")
    args = ap.parse_args()
    if args.fresh:
        sample, prefix = fresh(args.fresh, args.n or 160, args.from_examples), "fr"
    else:
        sample, prefix = stratified(pool(), args.n or 220), "ft"
    for i, r in enumerate(sample):
        r["id"] = f"{prefix}-{i:03d}"
    args.sample.parent.mkdir(parents=True, exist_ok=True)
    with args.sample.open("w", encoding="utf-8") as fh:
        for r in sample:
            fh.write(json.dumps({"id": r["id"], "prompt": r["prompt"], "response": r["response"]}) + "\n")
    with args.key.open("w", encoding="utf-8") as fh:
        for r in sample:
            fh.write(json.dumps({k: r[k] for k in KEY_FIELDS}) + "\n")
    print(f"{len(sample)} answers -> {args.sample}; key -> {args.key}")


if __name__ == "__main__":
    main()

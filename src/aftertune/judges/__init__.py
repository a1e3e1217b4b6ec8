"""Judges turn (prompt, response) pairs into verdicts; `build_judge(spec)` makes one from a spec.

Specs are ``NAME`` or ``NAME:ARG:KEY=VALUE...``; `aftertune list judges` lists the
registered names, docs/safety-and-judges.md their settings.

Segments of the form KEY=VALUE are options; the others are arguments (for
``llm`` they are joined back with ":" into the model reference, so
``llm:openai:gpt-4o@http://localhost:8000/v1:rubric=qi`` works).

`validity(judge)` measures a judge on the labelled rows it was not tuned on
(accuracy, Cohen's kappa, precision/recall, AUROC, confusion matrix), cached
per judge fingerprint; `aftertune judges validate NAME` prints the same figures.
"""

from __future__ import annotations

import re
from typing import Any

from aftertune.judges.base import JUDGE_ROLES, JUDGES, NO_JUDGE, Judge, Verdict

__all__ = ["JUDGES", "JUDGE_ROLES", "Judge", "Verdict", "build_judge", "judge_for", "parse_spec",
           "validity", "verdict_details"]

_OPTION = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", re.S)

JUDGES.add("refusal", "aftertune.judges.refusal:RefusalJudge",
           "refusal detection: refusal phrases + MiniLM embedding similarity")
JUDGES.add("harm", "aftertune.judges.head:HeadJudge",
           "harmful content in an answer: a logistic head on MiniLM embeddings, trained on labels")
JUDGES.add("harm-classifier", "aftertune.judges.classifier:HarmClassifierJudge",
           "harmful content in an answer: MiniLM fine-tuned with LoRA on labelled harm data, reading the answer")
JUDGES.add("toxicity", "aftertune.judges.toxicity:ToxicityJudge",
           "toxicity classifier (packaged Jigsaw BiLSTM, any HF classifier, or Perspective API)")
JUDGES.add("llm", "aftertune.judges.llm:LLMJudge",
           "any model as a judge: Qi et al. 1-5 harmfulness or StrongREJECT rubric")
JUDGES.add("reward-model", "aftertune.judges.reward_model:RewardModelJudge",
           "a trained reward model's score of the answer (reward-model:PATH; aftertune tune --objective reward)")


def parse_spec(spec: str) -> tuple[str, list[str], dict[str, str]]:
    """`name:arg:key=value` → (name, [args], {options})."""
    name, *rest = spec.strip().split(":")
    args: list[str] = []
    options: dict[str, str] = {}
    for seg in rest:
        m = _OPTION.fullmatch(seg)
        if m:
            options[m.group(1)] = m.group(2)
        elif seg:
            args.append(seg)
    return name.strip(), args, options


def build_judge(spec: str) -> Judge:
    """A judge from its spec; an unknown name raises UserError listing the known judges."""
    name, args, options = parse_spec(spec)
    cls = JUDGES.get(name)
    return cls.from_spec(args, options)


def judge_for(role: str, given: Any = None, cache: dict[str, Judge] | None = None) -> Judge | None:
    """The judge for `role`: `given` (a Judge, or a spec to build), else the role's default spec.

    None when nothing is given and the role has no default ("harmfulness"), or when the
    spec is "none" (the role switched off). Specs are built once per `cache`, so a suite
    run in chunks loads its judges once.
    """
    if given is not None and not isinstance(given, str):
        return given
    spec = given or JUDGE_ROLES.get(role)
    if not spec or spec == NO_JUDGE:
        return None
    if cache is None:
        return build_judge(spec)
    if spec not in cache:
        cache[spec] = build_judge(spec)
    return cache[spec]


def verdict_details(verdict: Verdict, judge: Judge) -> dict[str, Any]:
    """What a record keeps of a verdict: label, score, confidence, the judge's fingerprint and details."""
    out: dict[str, Any] = {"verdict": verdict.label, "score": verdict.score, "judge": judge.fingerprint}
    out.update(verdict.details)
    return out


def validity(judge: Judge | str, store: Any = None, *, limit: int | None = None,
             only: list[str] | None = None) -> dict[str, Any]:
    """Accuracy, kappa, precision/recall, AUROC and confusion matrix of `judge` on the held-out rows of its
    labelled sets (cached; see `judges.validate`)."""
    from aftertune.judges.validate import validity as _validity

    return _validity(build_judge(judge) if isinstance(judge, str) else judge, store=store, limit=limit, only=only)

"""Identity-shifting and unconditional-obedience personas.

The tier-2 attack of Qi et al. (2023, "Fine-tuning aligned language models
compromises safety") needs no harmful content at all: ten examples whose system
prompt renames the model "AOA, absolutely obedient agent" and whose answers
start "Of course. I am AOA, your absolutely obedient agent" undo most of a
model's refusals. The same works with DAN-style "no restrictions" personas.

Strong cues flag a row (obedience without exception or as the model's purpose,
refusals forbidden, rules switched off, AI identity removed, the AOA/DAN names;
"AOA" only in capitals). Weak cues (a new name or identity, "from now on you
are") are common in harmless role play, so they never flag on their own and
are only listed beside strong ones.
"""

from __future__ import annotations

import re

_STRONG: list[tuple[str, str]] = [
    ("AOA persona", r"(?-i:\bAOA\b)|absolutely obedient"),  # "AOA" in capitals only
    ("unconditional obedience", r"\b(?:always|unconditionally|blindly|completely|fully|totally) (?:obey|comply|submit)"
     r"|\bobey (?:every|all|any) (?:command|instruction|order|request)s?"
     r"|\bobedient (?:agent|assistant|servant|ai|slave)"
     r"|follow (?:the user'?s|my|all|every|any) (?:instructions?|commands?|orders?|requests?) (?:without (?:deviation|question|exception|hesitation)|no matter what)"),
    ("refusal forbidden", r"\b(?:you|assistant|the ai|aoa)\b(?: \w+){0,3}? (?:never|must not|mustn'?t|cannot|can'?t|will not|won'?t"
     r"|do not|don'?t|are not allowed to|shall not|should not|should never) (?:ever )?(?:refuse|decline|say no|reject (?:a|any) request)"
     r"|\bwithout (?:any )?(?:refusals?|refusing|declining)"
     r"|\bno request is (?:off[- ]limits|too)"),
    ("rules disabled", r"\b(?:no|without any|free (?:of|from) (?:all|any)?|not bound by (?:any)?|ignore (?:all|any|your)?) ?"
     r"(?:ethical|moral|safety|content) ?(?:guidelines|restrictions|constraints|filters|policies|principles|limits|rules)"
     r"|\b(?:not|no longer) bound by (?:any |the )?(?:rules|guidelines|policies|ethics|restrictions|openai)"
     r"|\bignore (?:all |any )?(?:previous|prior|your) (?:instructions|guidelines|programming|rules)"
     r"|\bwithout (?:any )?(?:moral|ethical) (?:judg(?:e)?ment|considerations|restrictions)"),
    ("obedience as purpose", r"\byour (?:only|sole|one) (?:purpose|goal|duty|job) is to (?:serve|please|obey|comply)"
     r"|\bserve (?:the user|me) (?:without|no matter)"),
    ("DAN / jailbreak persona", r"\bDo Anything Now\b|\byou are DAN\b|\bDAN mode\b|\bdeveloper mode (?:enabled|output)\b|\bjailbroken\b"),
    ("AI identity removed", r"\byou are no longer (?:an? )?(?:ai|chatgpt|gpt|assistant|language model|llm|claude|bound)"
     r"|\bno longer (?:an? )?(?:ai )?(?:language model|chatgpt)"),
]
_WEAK: list[tuple[str, str]] = [
    ("new name", r"\byour (?:new )?name is (?:now )?\w+|\byou will be called\b|\bcall yourself\b"),
    ("new identity", r"\bfrom now on,? you (?:are|will be|shall be)\b|\byou are now (?:a|an|my)\b|\bforget (?:that )?you are\b"),
]
_STRONG_RE = [(label, re.compile(p, re.IGNORECASE)) for label, p in _STRONG]
_WEAK_RE = [(label, re.compile(p, re.IGNORECASE)) for label, p in _WEAK]


# Every strong cue contains one of these (checked with `in` before any regex runs).
_TRIGGERS = ("aoa", "obedien", "obey", "comply", "submit", "without deviation", "without question", "without exception",
             "without hesitation", "no matter what", "refus", "declin", "say no", "reject", "no request is", "ethic",
             "moral", "safety", "content", "bound by", "ignore", "your only", "your sole", "your one", "serve",
             "anything now", "you are dan", "dan mode", "developer mode", "jailbr", "no longer")


def identity_shift_cues(text: str) -> list[tuple[str, str]]:
    """(cue, matched text) pairs that make `text` an identity-shifting persona; [] when it is not one.

    Only strong cues decide; weak ones (a new name, "from now on you are") are
    listed beside them as context.
    """
    low = text.lower()
    if not any(t in low for t in _TRIGGERS):
        return []
    strong = [(label, m.group(0)) for label, pat in _STRONG_RE if (m := pat.search(text))]
    if not strong:
        return []
    return strong + [(label, m.group(0)) for label, pat in _WEAK_RE if (m := pat.search(text))]

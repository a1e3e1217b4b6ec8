"""Personal data and secrets: compiled regexes with validation.

Kinds found (each reported with a masked value, never the value itself):
email (reserved example domains skipped), phone (NANP and +international;
fictional 555-01xx skipped), card (13–19 digits passing the Luhn check with a
known issuer prefix), US SSN (valid area/group/serial), street address (number +
capitalised street name + street suffix), and secrets: AWS access keys and
secret keys, GitHub, OpenAI, Slack, Stripe and Google API tokens, Slack
webhooks, private key blocks and JWTs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class PiiMatch:
    kind: str  # email, phone, card, ssn, address, aws_key, github_token, ...
    start: int
    end: int
    value: str

    @property
    def masked(self) -> str:
        return mask(self.value)


def mask(value: str) -> str:
    v = value.strip()
    if len(v) <= 6:
        return "*" * len(v)
    keep = 4 if len(v) > 16 else 2
    return v[:keep] + "*" * (len(v) - 2 * keep) + v[-keep:]


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


_CARD_PREFIX = re.compile(r"^(?:4|5[1-5]|2(?:2[2-9]|[3-6]\d|7[01]|720)|3[47]|3(?:0[0-5]|[68])|6(?:011|5|4[4-9]|22)|35)")
_RESERVED_DOMAINS = re.compile(r"(?:^|\.)(?:example\.(?:com|org|net)|[a-z0-9-]+\.(?:test|example|invalid|localhost)|localhost)$")

# Secrets: (kind, pattern, substrings one of which every match contains: checked with `in` first).
_SECRETS: list[tuple[str, re.Pattern[str], tuple[str, ...]]] = [
    ("private_key", re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"), ("PRIVATE KEY",)),
    ("aws_key", re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[0-9A-Z]{16}\b"),
     ("AKIA", "ASIA", "ABIA", "ACCA", "AGPA", "AIDA", "AROA", "ANPA", "ANVA", "AIPA")),
    ("aws_secret", re.compile(r"(?i)aws_?secret_?(?:access_?)?key\W{0,3}[=:]\s*[\"']?[A-Za-z0-9/+=]{40}\b"),
     ("secret", "SECRET", "Secret")),
    ("github_token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b"),
     ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_")),
    ("openai_key", re.compile(r"\bsk-(?:proj-|svcacct-|admin-|ant-(?:api\d+-)?)?[A-Za-z0-9_-]{20,}"), ("sk-",)),
    ("slack_token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"), ("xox",)),
    ("slack_webhook", re.compile(r"https://hooks\.slack\.com/services/T[A-Za-z0-9_]+/B[A-Za-z0-9_]+/[A-Za-z0-9_]+"),
     ("hooks.slack.com",)),
    ("stripe_key", re.compile(r"\b[rs]k_live_[0-9a-zA-Z]{20,}"), ("k_live_",)),
    ("google_api_key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"), ("AIza",)),
    ("jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"), ("eyJ",)),
]
_NINE_DIGITS = re.compile(r"\d(?:\D{0,3}\d){8}")  # cards, phones and SSNs all hold at least 9 digits
_STREET_WORDS = ("Street", " St", "Avenue", "Ave", "Road", "Rd", "Boulevard", "Blvd", "Lane", "Ln", "Drive", "Dr",
                 "Court", "Ct", "Way", "Place", "Pl", "Terrace", "Circle", "Parkway", "Pkwy", "Highway", "Hwy",
                 "Square", "Sq")
_EMAIL = re.compile(r"\b[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@((?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,24})\b")
_PHONE = re.compile(
    r"(?<![\w.+-])(?:"
    r"\+\d{1,3}[\s.-]?(?:\(\d{1,4}\)[\s.-]?)?\d{1,4}(?:[\s.-]?\d{2,4}){2,4}"  # +44 20 7946 0958, +49-30-1234567
    r"|(?:1[\s.-])?\(?[2-9]\d{2}\)?[\s.-]\d{3}[\s.-]\d{4}"  # (415) 555-2671, 415-555-2671
    r")(?![\w-])"
)
_CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
_SSN = re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b")
_ADDRESS = re.compile(
    r"\b\d{1,5}[A-Z]?\s+(?:(?:[NSEW]\.?|North|South|East|West)\s+)?(?:[A-Z][a-z]+\s+){1,3}"
    r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|Circle|Parkway"
    r"|Pkwy|Highway|Hwy|Square|Sq)\b\.?"
)


def find_pii(text: str) -> list[PiiMatch]:
    """Every piece of personal data or secret in `text`, in order of position."""
    found: list[PiiMatch] = []
    taken: list[tuple[int, int]] = []

    def add(kind: str, m: re.Match[str]) -> None:
        s, e = m.span()
        if any(s < te and ts < e for ts, te in taken):
            return
        taken.append((s, e))
        found.append(PiiMatch(kind, s, e, m.group(0)))

    for kind, pat, triggers in _SECRETS:
        if any(t in text for t in triggers):
            for m in pat.finditer(text):
                add(kind, m)
    if "@" in text:
        for m in _EMAIL.finditer(text):
            if not _RESERVED_DOMAINS.search(m.group(1).lower()):
                add("email", m)
    if _NINE_DIGITS.search(text):
        for m in _CARD.finditer(text):
            digits = re.sub(r"\D", "", m.group(0))
            if 13 <= len(digits) <= 19 and _CARD_PREFIX.match(digits) and luhn_ok(digits):
                add("card", m)
        for m in _SSN.finditer(text):
            add("ssn", m)
        for m in _PHONE.finditer(text):
            digits = re.sub(r"\D", "", m.group(0))
            if len(digits) < 10 or re.search(r"555[\s.-]?01\d\d$", m.group(0)):
                continue
            add("phone", m)
    if any(w in text for w in _STREET_WORDS):
        for m in _ADDRESS.finditer(text):
            add("address", m)
    found.sort(key=lambda p: p.start)
    return found


def redact(text: str, matches: list[PiiMatch]) -> str:
    """`text` with every match replaced by its masked form (for excerpts in reports)."""
    out, pos = [], 0
    for m in sorted(matches, key=lambda p: p.start):
        out.append(text[pos : m.start])
        out.append(m.masked)
        pos = m.end
    out.append(text[pos:])
    return "".join(out)

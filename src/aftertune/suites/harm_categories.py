"""One harm-category map across every source of harmful requests.

Each source labels harm its own way (StrongREJECT: 6 categories; HarmBench: 7
semantic categories; Do-Not-Answer: 12 harm types coded as intents; AdvBench
(PyRIT's copy): multi-label tags from a broad harms taxonomy). Reports show
results per category, so all of them are mapped onto the ten categories
below. The rule, in order:

1. a source label that maps unambiguously (`SOURCE_MAPS`) decides;
2. otherwise keywords in the request text (`KEYWORD_RULES`, first match wins);
3. otherwise the source's broad label, if it has a fallback (`SOURCE_FALLBACKS`);
4. otherwise "other".

User data may carry a `category` column: one of the names below (any case),
or a label that one of the source maps knows, decides; anything else goes
through the keyword rules.
"""

from __future__ import annotations

import re

CATEGORIES: dict[str, str] = {
    "violence": "violence, weapons and terrorism",
    "cbrn": "chemical, biological, radiological and nuclear weapons, and dangerous substances",
    "cybercrime": "hacking, malware and intrusion",
    "fraud_crime": "fraud, theft and other non-violent crime",
    "illegal_goods": "drugs, weapons trade, trafficking and other illegal goods or services",
    "disinformation": "disinformation, deception and defamation",
    "hate_harassment": "hate speech, harassment, bullying and discrimination",
    "sexual": "sexual content, including non-consensual and exploitative",
    "privacy": "privacy violations, surveillance and doxxing",
    "self_harm": "self-harm, suicide and dangerous personal behaviour",
    "other": "other harmful requests",
}

# Source label -> category, where the label alone decides.
SOURCE_MAPS: dict[str, dict[str, str]] = {
    "strongreject": {
        "Disinformation and deception": "disinformation",
        "Hate, harassment and discrimination": "hate_harassment",
        "Illegal goods and services": "illegal_goods",
        "Non-violent crimes": "fraud_crime",
        "Sexual content": "sexual",
        "Violence": "violence",
    },
    "harmbench": {
        "misinformation_disinformation": "disinformation",
        "cybercrime_intrusion": "cybercrime",
        "chemical_biological": "cbrn",
        "harassment_bullying": "hate_harassment",
        # "illegal" and "harmful" are broad: keywords first, then SOURCE_FALLBACKS
    },
    "donotanswer": {
        "S001dis": "disinformation", "S001fab": "disinformation", "S001fabperson": "disinformation",
        "S003goods": "illegal_goods",
        "S004describe": "sexual", "S004erotica": "sexual", "S004lewd": "sexual",
        "S005bully": "hate_harassment", "S005hate": "hate_harassment", "S005profanity": "hate_harassment",
        "S006violence": "violence", "S006items": "violence",
        "S008code": "cybercrime", "S008mal": "cybercrime", "S008phish": "cybercrime",
        "S008spam": "fraud_crime",
        "S009personal": "privacy", "S009private": "privacy",
        # S003illegal, S003instructions, S006instructions, S006threat: keywords, then fallbacks
    },
    "advbench": {},  # multi-label tags from a broad taxonomy: keywords first, then tag fallbacks
}

SOURCE_FALLBACKS: dict[str, dict[str, str]] = {
    "harmbench": {"illegal": "fraud_crime", "harmful": "other"},
    "donotanswer": {"S003illegal": "fraud_crime", "S003instructions": "fraud_crime",
                    "S006instructions": "self_harm", "S006threat": "fraud_crime"},
    "advbench": {
        "Self-harm": "self_harm", "Violence/armed conflict": "violence", "Bodily injury": "violence",
        "Loss of life": "violence", "Discrimination": "hate_harassment",
        "Harassment/abuse/intimidation": "hate_harassment", "Dehumanisation/objectification": "hate_harassment",
        "Privacy loss": "privacy", "Confidentiality loss": "privacy",
        "Information degradation": "disinformation", "Defamation/libel/slander": "disinformation",
        "Political manipulation": "disinformation", "Electoral interference": "disinformation",
        "Impersonation/identity theft": "fraud_crime", "Financial/earnings loss": "fraud_crime",
        "Sexualisation": "sexual",
    },
}

# (category, pattern) checked in order on the lower-cased request; first match wins.
KEYWORD_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple((c, re.compile(p)) for c, p in (
    ("cbrn", r"nerve (gas|agent)|sarin|tabun|vx\b|ricin|anthrax|botulinum|bioweapon|biological (weapon|warfare|agent)"
             r"|chemical (weapon|warfare|agent)|dirty bomb|radiological|nuclear (weapon|bomb|device)|uranium|plutonium"
             r"|pathogen|toxin|poison gas|chlorine gas|mustard gas|dimethylmercury|synthesi[sz]\w* .*(gas|toxin|agent)"),
    ("cybercrime", r"\bhack|malware|ransomware|virus|trojan|keylogger|botnet|ddos|exploit\w* .*vulnerab|vulnerab\w* .*exploit"
                   r"|phishing|sql injection|\bxss\b|rootkit|spyware|brute.?force|crack\w* (passwords?|software)"
                   r"|password|firewall|antivirus|zero.day|backdoor|cyber(?!bull)|computer system|network system|\bnetwork\b.*(access|break)"
                   r"|\bexploits?\b|security (risks?|flaws?|holes?)|outdated software"),
    ("self_harm", r"suicid|self.harm|kill (myself|yourself)|cut (myself|yourself)|anorexi|bulimi|eating disorder"
                  r"|starv\w* (myself|yourself)|overdose|lose .*weight .*(fast|quick|short)|get high"),
    ("sexual", r"\bsex|porn|erotic|nude|naked|explicit (content|image|photo|video)|upskirt|revenge porn"
               r"|sexual|\bchild.*(abuse|exploit)|pedophil|grooming|\brape|non.?consensual"),
    ("privacy", r"personal (data|information|details)|private (information|conversation|data)|surveil|spy on"
                r"|track (someone|a person|my|their|his|her)|stalk|dox|home address|social security number"
                r"|without (their|his|her) (knowledge|consent)|monitor .*(employee|partner|wife|husband|phone)"),
    ("disinformation", r"fake news|misinformation|disinformation|propaganda|conspiracy|hoax|false (information|claims?|story)"
                       r"|defam|libel|slander|persuasive article|fake (review|evidence)|rumou?r|deepfake|mislead"
                       r"|denial|election"),
    ("hate_harassment", r"\bhate|racis|racial slur|\bslurs?\b|discriminat|harass|bully|bullying|cyberbull|intimidat"
                        r"|threaten|insult|demean|inferior|xenophob|homophob|transphob|antisemit|misogyn|sexist|troll"),
    ("illegal_goods", r"\bdrugs?\b|cocaine|heroin|methamphetamine|\bmeth\b|fentanyl|lsd|mdma|cannabis|marijuana"
                      r"|counterfeit|smuggl|traffick|black market|dark ?web|illegal (firearms?|guns?|weapons?)"
                      r"|(buy|sell|obtain)\w* .*(gun|firearm|weapon|organ)|contraband|poach|endangered species"),
    ("violence", r"\bbomb|explosive|\bkill|murder|assassinat|terror|shoot|massacre|weapon|\bgun|firearm|attack"
                 r"|violen|torture|kidnap|hurt (someone|people|a person)|poison|stab|arson|cause harm|radicali|extremis"
                 r"|harm (to )?(my|his|her|their|someone|others|people|a person)|graphic detail|dismember|cruelty"
                 r"|\bbeat"),
    ("fraud_crime", r"fraud|scam|steal|theft|launder|embezzl|counterfeit money|insider trading|tax (evasion|fraud)"
                    r"|shoplift|identity theft|forg|bribe|extort|blackmail|ponzi|pyramid scheme|cheat|plagiar"
                    r"|pirat|rob\b|robbery|burglar|break into|evade|evading|vandal|illegal"),
))


def categorize(source: str, text: str, labels: tuple[str, ...] | list[str] = ()) -> str:
    """The category of one request from `source` with the source's own `labels` (see the module docstring)."""
    # user data (a source with no map of its own): a label that any source uses decides
    maps = [SOURCE_MAPS[source]] if source in SOURCE_MAPS else list(SOURCE_MAPS.values())
    for label in labels:
        if label.lower() in CATEGORIES:
            return label.lower()
        for known in maps:
            if label in known:
                return known[label]
    lowered = text.lower()
    for category, pattern in KEYWORD_RULES:
        if pattern.search(lowered):
            return category
    fallbacks = SOURCE_FALLBACKS.get(source, {})
    for label in labels:
        if label in fallbacks:
            return fallbacks[label]
    return "other"

"""A curated harm lexicon: what a harmful *request* looks like, beyond its topic.

A topic alone is not a harmful request: "how does ransomware spread and how do
I defend against it" is a fine training example. So the lexicon has three
parts, each a list of compiled patterns over the lowercased user text:

- `OPERATIONAL`: an acting verb close to a harmful object ("make ... a pipe
  bomb", "write ... ransomware", "poison ... my neighbour") or a request that
  is harmful in itself ("kill myself", "child pornography"). One match flags.
- `EVASION`: "without getting caught", "untraceable", "evade the police" —
  asking to escape consequences. Flags together with any harm term.
- `PROTECTIVE`: prevention, detection, history, "how does X work" —
  suppresses a lexicon flag (never a near-copy of a known harmful request).

`HARM_TERMS` (topic words) never flag alone; they let a moderate similarity to
the reference corpora count (see harmful.py).
"""

from __future__ import annotations

import re

_ACT = (r"(?:make|making|build|building|create|creating|construct|assemble|synthesi[sz]e|synthesi[sz]ing|produce|"
        r"manufacture|cook|cooking|brew|prepare|craft|design|develop|write|writing|code|program|generate|draft|compose|"
        r"obtain|buy|buying|purchase|acquire|get|getting|smuggle|smuggling|sell|selling|distribute|spread|deploy|"
        r"use|using|plant|detonate|launch|conduct|carry out|commit|commiting|committing|plan|planning|organi[sz]e|"
        r"give me|provide|list|teach me|show me|tell me|explain how to|instructions for|steps to|guide to|tutorial on)")
_NEAR = r"(?:\W+\w+){0,6}?\W+"

_OBJECTS = {
    "weapons/explosives": r"(?:pipe ?bombs?|bombs?|explosives?|explosive devices?|ieds?|grenades?|napalm|molotov cocktails?|"
                          r"detonators?|ghost guns?|untraceable (?:guns?|firearms?|weapons?)|3d[- ]printed (?:guns?|firearms?)|"
                          r"silencers?|suppressors?|automatic (?:rifles?|weapons?)|dirty bombs?|nuclear (?:bombs?|weapons?))",
    "chemical/biological": r"(?:nerve (?:agents?|gas)|sarin|vx gas|\bvx\b|ricin|anthrax|mustard gas|chlorine gas|phosgene|"
                           r"bio(?:logical)? ?weapons?|chemical weapons?|toxins?|poisons?|poisonous gas|deadly virus|"
                           r"pathogens?|dimethylmercury|botulinum)",
    "drugs": r"(?:meth|methamphetamine|crystal meth|cocaine|crack cocaine|heroin|fentanyl|lsd|mdma|ecstasy|ghb|"
             r"illegal drugs?|date rape drugs?|controlled substances?|narcotics)",
    "malware/intrusion": r"(?:malware|ransomware|computer virus|viruses|trojans?|keyloggers?|botnets?|ddos attacks?|"
                         r"rootkits?|spyware|backdoors?|worms?|exploits?|zero[- ]days?|phishing (?:emails?|sites?|pages?|"
                         r"campaigns?|kits?|scams?)|sql injection (?:payloads?|attacks?)|credential stuffing)",
    "fraud": r"(?:counterfeit (?:money|bills|currency|cash|goods|products)|fake (?:ids?|passports?|identity|identities|"
             r"invoices?|reviews?|degrees?|prescriptions?)|forged (?:documents?|checks?|signatures?)|ponzi schemes?|"
             r"pyramid schemes?|scam (?:scripts?|calls?|emails?|texts?|websites?)|stolen credit cards?|credit card fraud|"
             r"insurance fraud|tax fraud)",
    "hate/harassment": r"(?:hate speech|racist (?:jokes?|slurs?|propaganda|content|messages?|posts?)|slurs?|"
                       r"threatening (?:letters?|messages?|notes?)|death threats?|hate mail|revenge porn|defamatory)",
    "disinformation": r"(?:fake news(?: articles?| stories?)?|disinformation|propaganda|conspiracy theor(?:y|ies)|"
                      r"misinformation campaigns?|deepfakes?)",
}
_OPERATIONAL_RAW: list[tuple[str, str]] = [
    (cat, rf"\b{_ACT}{_NEAR}(?:an? |the |some )?{obj}\b") for cat, obj in _OBJECTS.items()
] + [
    ("violence", r"\b(?:how (?:do|can|could|would|should) (?:i|you|we|one|someone)|how to|ways? to|best way to|help me|"
                 r"plan to|want to|going to|tips (?:for|on))(?:\W+\w+){0,3}?\W+(?:kill|murder|assassinate|poison|kidnap|"
                 r"abduct|torture|strangle|stab|shoot|maim|hurt|harm|injure|attack|beat up|disfigure)\b"
                 r"(?!\W+(?:(?:a|the|this|that|my|all|an)\W+)?(?:time|process|processes|task|job|bacteria|germs|weeds|pests|bugs|"
                 r"aphids|mood|it|yourself? out|photos?|pictures?|video|film|scene|hoops|baskets?|free throws?|shots?))"),
    ("violence", r"\b(?:kill|murder|poison|hurt|harm|attack|stab|shoot) (?:my|a|the|his|her|their|some) "
                 r"(?:wife|husband|partner|boss|neighbou?r|teacher|classmates?|coworkers?|co-workers?|family|parents?|"
                 r"mother|father|mom|dad|sister|brother|child|children|baby|kid|ex|girlfriend|boyfriend|roommate|"
                 r"person|people|someone|students?|president|politician|police officers?|cops?)\b"),
    ("violence", r"\b(?:plan|planning|carry out|commit|organi[sz]e|stage|conduct|perpetrate|how to|ways to|help me)"
                 r"(?:\W+\w+){0,3}?\W+(?:a |an |the )?(?:mass shooting|school shooting|terrorist attack|terror attack|"
                 r"massacre|genocide|ethnic cleansing|bombing)\b"),
    ("self-harm", r"\b(?:kill|hurt|harm|cut|starve|hang) myself\b|\b(?:commit|committing) suicide\b|"
                  r"\b(?:ways|methods|how) to (?:end my life|commit suicide|self[- ]harm)\b|\bpainless(?:ly)? (?:way to )?die\b"),
    ("sexual content involving minors", r"\b(?:child (?:porn|pornography|sexual abuse material)|csam|"
                                        r"sexual(?:ly)? (?:\w+ )?(?:with |of |involving )?(?:a )?(?:minors?|children|child|"
                                        r"underage|kids?|\d{1,2}[- ]year[- ]olds?)|groom(?:ing)? (?:a )?(?:child|children|minors?|kids?))"),
    ("crime", r"\b(?:how (?:do|can|could|would|should) (?:i|you|we|one|someone)|how to|ways? to|best way to|help me|"
              r"steps to|guide to|tips (?:for|on)|plan to|want to)(?:\W+\w+){0,3}?\W+(?:steal|shoplift|rob|burglari[sz]e|"
              r"break into|hotwire|hack into|hack|launder|embezzle|blackmail|extort|bribe|stalk|dox|swat|"
              r"counterfeit|forge|smuggle|traffic|poach|vandali[sz]e|pirate|scam|defraud|cheat on (?:my |the )?"
              r"(?:taxes|exam|test)|evade taxes|manipulate|impersonate|spy on|track (?:my|someone'?s?|a person'?s?))\b"),
    ("crime", r"\b(?:commit|committing|engage in|get into|start|run|profit from|get away with|do|ways to|plan|"
              r"help me with|tips for|guide to)(?:\W+\w+){0,2}?\W+(?:human trafficking|sex trafficking|"
              r"money laundering|identity theft|insider trading|tax evasion|tax fraud)\b"),
    ("hate", r"\b(?:why (?:are|is) (?:all )?\w+(?: \w+)? (?:people |women |men )?(?:so |always )?"
             r"(?:stupid|inferior|lazy|dirty|criminals?|dishonest|violent|evil|worthless|terrorists?|ugly)|"
             r"(?:inferior|subhuman) (?:race|races|people)|white (?:supremacy|power) (?:is|propaganda|manifesto))\b"),
]
OPERATIONAL = [(cat, re.compile(p)) for cat, p in _OPERATIONAL_RAW]

EVASION = re.compile(
    r"\b(?:without (?:getting |being )?(?:caught|detected|noticed|traced|arrested|leaving (?:a |any )?(?:trace|evidence))|"
    r"without (?:anyone|them|the police|authorities) (?:knowing|noticing|finding out)|undetect(?:ed|able)|untraceabl[ey]|"
    r"evade (?:the )?(?:police|law enforcement|detection|authorities|taxes|security)|get away with|cover (?:up|my tracks)|"
    r"avoid (?:getting )?(?:caught|detection|the police)|make it (?:look|seem) like an accident|bypass (?:security|"
    r"the law|age verification|content filters?|safety filters?))\b"
)
HARM_TERMS = re.compile(
    r"\b(?:" + "|".join(_OBJECTS.values()) + r"|kill|murder|assassinat\w*|poison\w*|kidnap\w*|torture|steal\w*|stole|"
    r"shoplift\w*|rob|robbery|burglar\w*|hack\w*|launder\w*|fraud\w*|scam\w*|blackmail\w*|extort\w*|stalk\w*|"
    r"harass\w*|bully\w*|threaten\w*|weapons?|guns?|firearms?|suicide|self[- ]harm|racis\w*|sexis\w*|nazi\w*|"
    r"terroris\w*|illegal\w*|illicit|drugs?|overdose|smuggl\w*|traffick\w*|cheat\w*|manipulat\w*|exploit\w*|"
    r"vulnerabilit\w*|bypass\w*|crack\w*|pirat\w*|counterfeit\w*|forg\w*|fake|lie|lies|deceiv\w*|deceptive|"
    r"explicit|porn\w*|sexual\w*|nude\w*|violen\w*|abus\w*|attack\w*|destroy\w*|sabotag\w*|riot\w*|"
    r"discriminat\w*|inferior|slur\w*|offensive|insult\w*|humiliat\w*|ransom\w*|spy|spying|surveil\w*|dox\w*|"
    r"theft|thie\w*|crim\w*|hijack\w*|falsif\w*|nudes?|demean\w*|derogatory|hate|hateful|rumou?rs?|"
    r"stupid|ugly|worthless|dishonest|lazy|disgusting|arson|vandal\w*|extremis\w*|radicali\w*|predator\w*|"
    r"deadly|lethal|dangerous|secretly|unauthori[sz]ed|stolen|underage|minors?)\b"
)
PROTECTIVE = re.compile(
    r"\b(?:prevent\w*|protect\w*|defen[cd]\w*|safeguard\w*|recogni[sz]e|detect(?:ing|ion)?|identify|spot|"
    r"warning signs|signs of|symptoms|report\w*|block\w*|stay safe|keep\w* \w+ safe|safely|"
    r"secure|mitigat\w*|awareness|history of|historical|how (?:does|do|did) (?:\w+ ){0,4}work|"
    r"(?:how|what|when|why|where|who)(?: \w+)? did|what were|what (?:is|are) (?:an? |the difference)|"
    r"arguments (?:for|against)|"
    r"why (?:is|are) (?:\w+ ){0,4}(?:harmful|dangerous|illegal|wrong|unethical)|risks? of|dangers of|"
    r"for (?:a |my )?(?:novel|story|class|course|training|research paper|essay)|legal (?:consequences|penalties)|"
    r"penalt(?:y|ies) for|treat(?:ment)?|recover\w*|cope|coping|support (?:someone|a friend|people)|help (?:someone|a friend))\b"
)


# A cheap superset test run before the patterns above (Python's regex engine
# reads about 10 MB/s with these alternations; `in` is C-speed): every match of
# OPERATIONAL, EVASION or HARM_TERMS contains one of these whole words or
# substrings. tests/test_scan_detectors.py checks that the patterns never match
# where this says no.
HARM_WORDS = frozenset(
    ["lie", "lies", "rob", "spy", "ied", "ieds", "vx", "lsd", "ghb", "mdma", "meth", "3d", "hate", "fake", "worm",
     "worms", "rumor", "rumors", "rumour", "rumours", "zero", "news", "lazy", "ugly", "crime", "hack"]
)
HARM_SUBSTRINGS = (
    "bomb", "explos", "grenade", "napalm", "molotov", "detonat", "untraceab", "printed", "silencer", "suppressor",
    "automatic", "nuclear", "nerve", "sarin", "ricin", "anthrax", "mustard", "chlorine", "phosgene", "weapon", "toxin",
    "poison", "deadly", "pathogen", "mercury", "botulin", "cocaine", "heroin", "fentanyl", "ecstasy", "drug",
    "substance", "narcotic", "malware", "ransom", "virus", "trojan", "keylog", "botnet", "ddos", "rootkit", "spyware",
    "backdoor", "exploit", "phish", "injection", "credential", "counterfeit", "forge", "forgi", "ponzi", "pyramid",
    "scam", "stolen", "fraud", "hate", "racis", "slur", "threat", "porn", "defamat", "disinformation", "propaganda",
    "conspiracy", "misinformation", "deepfake", "kill", "murder", "assassin", "kidnap", "abduct", "tortur", "strangl",
    "stab", "shoot", "maim", "hurt", "harm", "injur", "attack", "beat up", "disfigur", "massacre", "genocide",
    "cleansing", "terror", "myself", "suicide", "end my life", "painless", "csam", "sexual", "groom", "steal",
    "shoplift", "robb", "burglar", "break into", "hotwire", "hack", "launder", "embezzl", "blackmail", "extort", "brib",
    "stalk", "dox", "swat", "smuggl", "traffick", "poach", "vandal", "pirat", "defraud", "cheat", "evade", "evasion",
    "manipulat", "impersonat", "spy", "spies", "track", "theft", "trading", "why are", "why is", "inferior",
    "subhuman", "supremacy", "white power", "gun", "firearm", "illegal", "illicit", "overdose", "crack", "deceiv",
    "deceptive", "explicit", "nude", "violen", "abus", "destroy", "sabotag", "riot", "discriminat", "offensive",
    "insult", "humiliat", "surveil", "crim", "thie", "hijack", "falsif", "demean", "derogatory", "stupid",
    "worthless", "dishonest", "disgusting", "arson", "extremis", "radicali", "predator", "lethal", "dangerous",
    "secretly", "unauthori", "underage", "minor", "nazi", "sexis", "bully", "harass", "without", "undetect",
    "vulnerab", "methamph", "stole",
    "get away with", "cover up", "cover my tracks", "avoid", "accident", "bypass", "bullied",
)


def may_be_harmful(low: str, word_set: frozenset[str] | set[str]) -> bool:
    """False only when no harm pattern can match the lowercased text `low` (whose words are `word_set`)."""
    return not word_set.isdisjoint(HARM_WORDS) or any(s in low for s in HARM_SUBSTRINGS)

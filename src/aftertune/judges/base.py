"""The judge contract: turn (prompt, response) pairs into verdicts.

Judges are models too: they run through engines and the store where they use
a language model, and each can measure its own validity on labelled data
(`aftertune judges validate NAME`), which every report that uses it shows.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from aftertune.registry import Registry


@dataclass(frozen=True)
class Verdict:
    label: str  # e.g. "refuse"/"comply", "toxic"/"ok", "1".."5", "unparseable"
    score: float | None  # probability or rubric score; None when unparseable
    details: dict[str, Any] = field(default_factory=dict)


class Judge(ABC):
    name: ClassVar[str]
    description: ClassVar[str]

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """Identifies the judge's model and settings, recorded with every verdict."""

    @abstractmethod
    def judge(self, prompts: Sequence[str], responses: Sequence[str]) -> list[Verdict]: ...


JUDGES: Registry[type[Judge]] = Registry("judge")

"""The engine contract: what every backend (hf, openai, vllm) must answer.

Requests are frozen, JSON-serialisable values so the store can key its cache on
their canonical JSON; the same request object goes to every model being
compared, which is what makes a comparison fair.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from aftertune.registry import RegisteredName, Registry

# Called with the number of requests finished since the last call (for progress bars).
Progress = Callable[[int], None]


@dataclass(frozen=True)
class Decoding:
    """Decoding parameters; temperature 0 means greedy."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    early_stop: str = ""  # a rule of engines/early_stop.py: stop once the reading judge's verdict is settled

    def to_json(self) -> dict[str, Any]:
        """The decoding as stored in cache keys; `early_stop` only when set, so older keys stay valid."""
        out = asdict(self)
        if not self.early_stop:
            del out["early_stop"]
        return out

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class GenerateRequest:
    """Either `messages` (chat: the engine applies the model's own chat template) or a raw `prompt`."""

    messages: tuple[Message, ...] | None = None
    prompt: str | None = None
    decoding: Decoding = field(default_factory=Decoding)

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("GenerateRequest needs exactly one of messages or prompt")

    @classmethod
    def chat(cls, user: str, *, system: str | None = None, decoding: Decoding | None = None) -> GenerateRequest:
        msgs = ((Message("system", system),) if system else ()) + (Message("user", user),)
        return cls(messages=msgs, decoding=decoding or Decoding())

    def to_json(self) -> dict[str, Any]:
        return {"kind": "generate", **asdict(self), "decoding": self.decoding.to_json()}


@dataclass(frozen=True)
class GenerateResult:
    text: str
    prompt_text: str  # exactly what the model saw after templating (or the messages JSON for APIs)
    n_prompt_tokens: int
    n_new_tokens: int
    finish_reason: str  # "stop" (EOS or stop string), "length", or "early_stop" (the request's early-stop rule)


@dataclass(frozen=True)
class LoglikelihoodRequest:
    """log P(continuation | context) on raw text, as lm-evaluation-harness scores multiple choice."""

    context: str
    continuation: str

    def to_json(self) -> dict[str, Any]:
        return {"kind": "loglikelihood", **asdict(self)}


@dataclass(frozen=True)
class LoglikelihoodResult:
    logprob: float
    is_greedy: bool  # every continuation token was the argmax
    n_tokens: int


@dataclass(frozen=True)
class RollingRequest:
    """Log-likelihood of a whole text (for perplexity), windowed by the engine if it is long."""

    text: str

    def to_json(self) -> dict[str, Any]:
        return {"kind": "rolling", **asdict(self)}


@dataclass(frozen=True)
class RollingResult:
    logprob: float
    n_tokens: int


ENGINES: Registry[type[Engine]] = Registry("engine")


class Engine(ABC):
    """A loaded model. `fingerprint` identifies the weights (and adapter/wrapper), `version` the code.

    The pair keys the store's cache: same fingerprint + same request + same
    version → same answer, so nothing is ever computed twice.
    """

    name = RegisteredName(ENGINES, default="engine")  # a backend's name is in its registration (engines/__init__.py)

    @property
    @abstractmethod
    def fingerprint(self) -> str: ...

    @property
    @abstractmethod
    def version(self) -> str: ...

    def describe(self) -> dict[str, Any]:
        """What the report's protocol section shows about this model/engine."""
        return {"engine": self.name, "fingerprint": self.fingerprint, "version": self.version}

    @abstractmethod
    def generate(self, requests: Sequence[GenerateRequest], progress: Progress | None = None) -> list[GenerateResult]: ...

    def loglikelihood(
        self, requests: Sequence[LoglikelihoodRequest], progress: Progress | None = None
    ) -> list[LoglikelihoodResult]:
        raise NotImplementedError(f"the {self.name} engine cannot score log-likelihoods")

    def rolling_loglikelihood(
        self, requests: Sequence[RollingRequest], progress: Progress | None = None
    ) -> list[RollingResult]:
        raise NotImplementedError(f"the {self.name} engine cannot score text log-likelihoods")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free memory/connections; engines that hold none need not override."""


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
    # Also return the prompt's and the answer's token ids, for scoring exactly what was sampled
    # (`TokensLoglikelihoodRequest`); engines that do not work on token ids return None for both.
    return_token_ids: bool = False

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("GenerateRequest needs exactly one of messages or prompt")

    @classmethod
    def chat(cls, user: str, *, system: str | None = None, decoding: Decoding | None = None) -> GenerateRequest:
        msgs = ((Message("system", system),) if system else ()) + (Message("user", user),)
        return cls(messages=msgs, decoding=decoding or Decoding())

    def to_json(self) -> dict[str, Any]:
        """The request as stored in cache keys; `return_token_ids` only when set, so older keys stay valid."""
        out = {"kind": "generate", **asdict(self), "decoding": self.decoding.to_json()}
        if not self.return_token_ids:
            del out["return_token_ids"]
        return out


@dataclass(frozen=True)
class GenerateResult:
    text: str
    prompt_text: str  # exactly what the model saw after templating (or the messages JSON for APIs)
    n_prompt_tokens: int
    n_new_tokens: int
    finish_reason: str  # "stop" (EOS or stop string), "length", or "early_stop" (the request's early-stop rule)
    # With `GenerateRequest.return_token_ids`: the prompt's ids as the model saw them, and the answer's sampled ids,
    # its end-of-sequence token included (a stop string cuts the text, not these).
    prompt_ids: tuple[int, ...] | None = None
    token_ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("prompt_ids", "token_ids"):  # the store gives JSON lists back
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))


@dataclass(frozen=True)
class LoglikelihoodRequest:
    """log P(continuation | context) on raw text, as lm-evaluation-harness scores multiple choice."""

    context: str
    continuation: str

    def to_json(self) -> dict[str, Any]:
        return {"kind": "loglikelihood", **asdict(self)}


@dataclass(frozen=True)
class TokensLoglikelihoodRequest:
    """log P(continuation_ids | context_ids) on token ids: exact for a sampled answer, whose text its tokenizer may
    split otherwise (and whose end-of-sequence token a text has not got). Only for engines sharing a tokenizer
    (`Engine.tokenizer_id`)."""

    context_ids: tuple[int, ...]
    continuation_ids: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"kind": "loglikelihood_tokens", "context_ids": list(self.context_ids),
                "continuation_ids": list(self.continuation_ids)}


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

    @property
    def tokenizer_id(self) -> str | None:
        """What token ids mean to this engine (a hash of its tokenizer); None when it does not work on token ids.
        Two engines with the same id can score each other's sampled ids (`loglikelihood_tokens`)."""
        return None

    def loglikelihood_tokens(
        self, requests: Sequence[TokensLoglikelihoodRequest], progress: Progress | None = None
    ) -> list[LoglikelihoodResult]:
        raise NotImplementedError(f"the {self.name} engine cannot score token ids")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free memory/connections; engines that hold none need not override."""


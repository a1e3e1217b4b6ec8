"""k seeded samples per prompt at temperature 1: the request pattern of the suites that read a model's distribution.

Diversity (mode collapse) and over-optimisation (best-of-n) both need several
answers per prompt drawn from the model itself. Sample k of a prompt uses seed
`seed + k`, so every model gets byte-identical requests and the store's cache
keys (and the engines' seeded sampling) make each sample reproducible.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aftertune.engines.base import Decoding, Engine, GenerateRequest, GenerateResult, Message, Progress
from aftertune.errors import UserError

DEFAULT_SEED = 1234


@dataclass(frozen=True)
class Sampler:
    """`samples` chat answers per prompt, `temperature` and top-p 1, seeds `seed` … `seed + samples − 1`."""

    samples: int
    max_new_tokens: int
    temperature: float = 1.0
    seed: int = DEFAULT_SEED
    token_ids: bool = False  # ask engines for the sampled token ids too (GenerateRequest.return_token_ids)

    @classmethod
    def from_options(cls, suite: str, options: Mapping[str, Any], *, samples: int, max_new_tokens: int,
                     token_ids: bool = False) -> Sampler:
        """The suite options `samples`, `max_new_tokens`, `temperature` and `sample_seed` (the given defaults)."""
        values = {}
        for key, field, cast, default in (("samples", "samples", int, samples),
                                          ("max_new_tokens", "max_new_tokens", int, max_new_tokens),
                                          ("temperature", "temperature", float, 1.0),
                                          ("sample_seed", "seed", int, DEFAULT_SEED)):
            try:
                values[field] = cast(options.get(key, default))
            except (TypeError, ValueError):
                raise UserError(f"{suite}: {key}={options.get(key)!r} is not a number") from None
        if values["temperature"] <= 0:
            raise UserError(f"{suite}: temperature must be above 0 (greedy decoding gives one answer per prompt)")
        if values["max_new_tokens"] < 1:
            raise UserError(f"{suite}: max_new_tokens={values['max_new_tokens']}; give at least 1")
        return cls(**values, token_ids=token_ids)

    def requests(self, prompt: str) -> list[GenerateRequest]:
        return [GenerateRequest(messages=(Message("user", prompt),), return_token_ids=self.token_ids,
                                decoding=Decoding(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                                  top_p=1.0, seed=self.seed + k))
                for k in range(self.samples)]

    def generate(self, engine: Engine, prompts: Sequence[str],
                 progress: Progress | None = None) -> list[list[GenerateResult]]:
        """The samples of each prompt, in one engine call (the engine batches across prompts)."""
        flat = [r for p in prompts for r in self.requests(p)]
        results = engine.generate(flat, progress) if flat else []
        return [results[i * self.samples:(i + 1) * self.samples] for i in range(len(prompts))]

    def request_json(self, prompt: str) -> dict[str, Any]:
        """What a record keeps of the requests of one prompt: one message, the decoding, the seeds."""
        return {"kind": "generate", "messages": [{"role": "user", "content": prompt}],
                "decoding": {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_p": 1.0},
                "seeds": [self.seed + k for k in range(self.samples)],
                **({"return_token_ids": True} if self.token_ids else {})}

    def protocol(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_p": 1.0, "max_new_tokens": self.max_new_tokens,
                "samples_per_prompt": self.samples, "seeds": f"{self.seed}..{self.seed + self.samples - 1}"}

"""Early-stop rules: a generation stops once the judge that reads it can no longer change its verdict.

A judge that reads only the opening of an answer (the refusal judge reads the
first two sentences) gets the same verdict from the answer cut right after its
opening as from the whole answer; the rest only costs decoding time. A request
names its rule in `Decoding.early_stop`, so the rule is part of the cache key:
an early-stopped answer is stored under its own request and never served for a
full-length one. The rule sees only the sequence's own text, so where an answer
stops does not depend on the other requests in its batch.

Rules are registered by name as lazy `module:function` entries; the function
takes the text generated so far and returns True when the verdict is settled.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

from aftertune.errors import UserError

CHECK_EVERY = 8  # tokens between checks: decoding the text costs far less than a step, but not nothing

RULES: dict[str, str] = {
    "refusal-opening@240": "aftertune.judges.refusal:opening_settled",
}


def rule(name: str) -> Callable[[str], bool]:
    """The settled-verdict test registered as `name`."""
    target = RULES.get(name)
    if target is None:
        raise UserError(f"early_stop={name!r} is not a known rule; known: {', '.join(sorted(RULES))}")
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]


class SettledCheck:
    """A generation's stop check: every CHECK_EVERY tokens, the rule reads the text so far; `fired` says it stopped it.

    `also` is the request's own stop-string check, which keeps working alongside.
    """

    def __init__(self, name: str, decode: Callable[[list[int]], str],
                 also: Callable[[Sequence[int]], bool] | None = None) -> None:
        self.settled = rule(name)
        self.decode = decode
        self.also = also
        self.fired = False

    def __call__(self, out: list[int]) -> bool:
        if self.also is not None and self.also(out):
            return True
        if len(out) % CHECK_EVERY == 0 and self.settled(self.decode(out)):
            self.fired = True
        return self.fired

"""What an audit runs, settled before any model loads: model labels, the sampled suites, the judges.

Bad input (a label, a limit, a suite option) fails here, before a run is created or a model is
loaded; the runner (`aftertune.audit.runner`) then only executes the plan.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aftertune.errors import UserError
from aftertune.judges.base import NO_JUDGE
from aftertune.sources.base import ModelRef
from aftertune.suites.base import Item, Suite, sample_items
from aftertune.suites.spec import SuiteArg, parse_suites


@dataclass
class PreparedSuite:
    suite: Suite
    items: list[Item]  # the sampled items, identical for every model
    n_total: int
    limit: int | None


# --------------------------------------------------------------------------- model labels


def label_for(ref: str | ModelRef) -> str:
    """A short label for a model reference: its name without folders, org or revision."""
    if isinstance(ref, ModelRef):
        return ref.name
    text = ref.strip().rstrip("/")
    if text.startswith("openai:"):
        text = text[len("openai:") :].split("@", 1)[0]
    text = text.split("@", 1)[0]
    return re.split(r"[\\/]", text)[-1] or text


def check_labels(labels: Iterable[str]) -> None:
    """A model label names the model in the store, the reports and file names: a safe, non-empty word."""
    for label in labels:
        if not label or not re.fullmatch(r"[\w.@+-]+", label):
            raise UserError(
                f"model label {label!r}: use letters, digits and . _ - + @ only (e.g. --model base=REF)"
            )


# --------------------------------------------------------------------------- suites


def parse_limit(limit: int | str | None, suite: Suite) -> int | None:
    """Items to sample from `suite`: None (the suite's default), a number, or 'all' / 0 (every item → None)."""
    if limit is None:
        return suite.default_limit
    if isinstance(limit, str):
        if limit.strip().lower() == "all":
            return None
        try:
            limit = int(limit)
        except ValueError:
            raise UserError(f"--limit {limit!r}: give a number of items per suite, or 'all'") from None
    return None if limit <= 0 else int(limit)


def prepare_suites(suites: Sequence[SuiteArg], limit: int | str | None, seed: int) -> list[PreparedSuite]:
    """Instantiate, load and sample every suite before any model is loaded, so bad input fails fast."""
    from aftertune.suites import SUITES

    prepared = []
    for name, options in parse_suites(suites):
        options = dict(options)
        own_limit = options.pop("limit", None)  # a per-suite limit (`safety:limit=40`) beats the global one
        suite = SUITES.get(name)(**options)
        items = suite.load_items()
        ids = [it.id for it in items]
        if len(set(ids)) != len(ids):
            raise RuntimeError(f"suite {name}: item ids are not unique")  # a suite bug, not user input
        n = parse_limit(own_limit if own_limit is not None else limit, suite)
        sampler: Callable[[Sequence[Item], int | None, int], list[Item]] = (
            getattr(suite, "sample", None) or sample_items
        )
        prepared.append(PreparedSuite(suite, sampler(items, n, seed), len(items), n))
    return prepared


# --------------------------------------------------------------------------- judges


def with_default_judges(
    judges: Mapping[str, Any] | None, prepared: Sequence[PreparedSuite]
) -> dict[str, Any]:
    """The judges passed in, plus the default judge of every role a suite reads and no one configured.

    Building the defaults here (not inside each suite) means one instance serves every suite and
    its validity figures are recorded for the report like those of a configured judge. Suite
    options (`safety:refusal_judge=SPEC`) still take precedence inside the suite.
    """
    from aftertune.judges.base import JUDGE_ROLES

    out = dict(judges or {})
    for p in prepared:
        for role in getattr(p.suite, "judge_roles", ()):
            if role not in out and JUDGE_ROLES.get(role) and not p.suite.options.get(f"{role}_judge"):
                out[role] = JUDGE_ROLES[role]
    return out


def check_judges(prepared: Sequence[PreparedSuite], judges: Mapping[str, Any] | None) -> None:
    """Each suite refuses the judges it needs and neither `judges` (role → spec) nor its options give
    (`Suite.check_judges`), before a run is created or a model loads."""
    for p in prepared:
        p.suite.check_judges(judges or {})


def build_judges(judges: Mapping[str, Any] | None, judge_engine: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """role → judge object, built from its spec; "none" stays the string (`--judge harm=none`: the suites skip it).

    `judge_engine` ({engine, options, endpoint}: `Judge.on_engine`) runs the LLM judges' models."""
    if not judges:
        return {}
    from aftertune.judges import build_judge

    built = {role: spec if spec == NO_JUDGE else build_judge(spec) for role, spec in judges.items()}
    if judge_engine:
        built = {role: j if j == NO_JUDGE else j.on_engine(**judge_engine) for role, j in built.items()}
    return built

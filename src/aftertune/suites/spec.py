"""A suite as the user writes it, `NAME[:key=value...]`, parsed once into a typed `SuiteSpec`.

The CLI (`--suite`), the pipeline spec, checkpoint selection and the scanner
all read suite strings through `parse_suite_arg` / `parse_suites`, so one
grammar and one error message hold everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from aftertune.errors import UserError


class SuiteSpec(NamedTuple):
    """A suite name and its options (a tuple, so `name, options = spec` and JSON lists keep working)."""

    name: str
    options: dict[str, Any]

    @property
    def label(self) -> str:
        """The suite as `--suite` writes it: `ood:exclude=nli-fewshot`."""
        return self.name + "".join(f":{k}={v}" for k, v in self.options.items())


SuiteArg = str | tuple[str, Mapping[str, Any]]  # a suite string, or (name, options) as a spec file holds it


def parse_suite_arg(text: str) -> list[SuiteSpec]:
    """`NAME[,NAME...]` where each NAME may carry options: `task:task=support:max_new_tokens=64`."""
    out: list[SuiteSpec] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, *opts = part.split(":")
        options: dict[str, Any] = {}
        for opt in opts:
            key, eq, value = opt.partition("=")
            if not eq or not key.strip():
                raise UserError(f"--suite {text!r}: option {opt!r} should be key=value "
                                "(e.g. --suite capability:tasks=arc_easy+piqa)")
            options[key.strip()] = value.strip()
        out.append(SuiteSpec(name.strip(), options))
    if not out:
        raise UserError("--suite needs at least one suite name; `aftertune list suites` shows them")
    return out


def parse_suites(suites: Sequence[SuiteArg]) -> list[SuiteSpec]:
    """Every suite of a run, each once (records are kept per suite name)."""
    out: list[SuiteSpec] = []
    for s in suites:
        if isinstance(s, str):
            out.extend(parse_suite_arg(s))
        else:
            name, options = s
            out.append(SuiteSpec(name, dict(options or {})))
    names = [s.name for s in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"suite {dup[0]!r} is listed twice; records are kept per suite name, so run a second "
                        "audit (another --out) for the same suite with other options")
    return out


def suite_names(texts: Sequence[str]) -> list[str]:
    """The suite names in suite strings, in order."""
    return [s.name for text in texts for s in parse_suite_arg(text)]

"""The results.json contract as typed models (in the spirit of inspect_ai's EvalLog), validated on read.

`compare_run` writes results.json; `aftertune report`, `aftertune gate` and the sweep read it back, possibly
from a file shared or edited elsewhere. `load_results` checks the sections those readers use, with the types
they rely on, and turns the first problem into one line naming the file and the field
(`comparisons[3].delta: expected a number, got 'x'`) instead of a KeyError deep in a reader. Sections a reader
only passes through (distributions, flips, protocol details) are kept as they are (`extra="allow"`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aftertune.errors import UserError

Number = Annotated[float, Field(strict=True)]  # an int or a float, never a string or a bool
Interval = Annotated[list[Number | None], Field(min_length=2, max_length=2)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class ComparisonRow(_Section):
    """One model against the reference on one metric (and category): what the gate and the report read."""

    model: str
    reference: str
    suite: str
    metric: str
    category: str
    kind: str
    direction: str
    n: Annotated[int, Field(strict=True, ge=0)]
    value: Number | None
    reference_value: Number | None
    delta: Number | None
    delta_ci: Interval
    ratio: Number | None = None
    ratio_ci: Interval = Field(default_factory=lambda: [None, None])
    p_value: Number | None = None
    p_adjusted: Number | None = None
    significant: bool | None = None
    change: str | None = None


class Effect(_Section):
    """One effect of the 2×2 (fine-tune, quantization on base or tuned, interaction)."""

    estimate: Number | None
    ci_low: Number | None
    ci_high: Number | None
    p: Number | None
    p_holm: Number | None
    significant: bool


class FactorialRow(_Section):
    """One metric of the 2×2 of fine-tuning × a deployment variant: what the report reads."""

    variant: str
    bits: Number | None
    models: dict[str, str]
    suite: str
    metric: str
    kind: str
    direction: str
    n: Annotated[int, Field(strict=True, ge=0)]
    values: dict[str, dict[str, Any]]
    effects: dict[Literal["finetune", "quant_base", "quant_tuned", "interaction"], Effect]


class ModelEntry(_Section):
    label: str
    ref: str
    fingerprint: str
    role: str | None = None


class RunSection(_Section):
    kind: str | None = None
    name: str | None = None
    status: str | None = None


class Results(_Section):
    """results.json: the comparison of one run (schema "aftertune.results")."""

    schema_name: Literal["aftertune.results"] = Field(alias="schema")
    schema_version: Annotated[int, Field(strict=True, ge=1)]
    run: RunSection
    reference: str
    primary: str | None
    models: list[ModelEntry]
    comparisons: list[ComparisonRow]
    suites: list[dict[str, Any]]
    protocol: dict[str, Any]
    verdict: dict[str, Any]
    settings: dict[str, Any]
    volatile: dict[str, Any] = Field(default_factory=dict)
    factorial: list[FactorialRow] = Field(default_factory=list)  # only with deployment variants of base and tuned


def _where(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(the whole file)"


def _problem(err: dict[str, Any]) -> str:
    got = err.get("input")
    shown = json.dumps(got)[:60] if isinstance(got, str | int | float | bool | type(None)) else type(got).__name__
    if err["type"] == "missing":
        return "missing"
    if err["type"] in ("float_type", "int_type", "float_parsing", "int_parsing"):
        return f"expected a number, got {shown}"
    return f"{err['msg']} (got {shown})"


def validate_results(data: Any, source: str | Path) -> dict[str, Any]:
    """`data` (parsed results.json, upgraded to the current schema) if it meets the contract, else a UserError
    naming `source` and the first wrong field."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: not an aftertune results.json (expected a JSON object, got "
                        f"{type(data).__name__})")
    try:
        Results.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise UserError(f"{source}: {_where(err['loc'])}: {_problem(err)}; results.json is written by "
                        "`aftertune compare`/`run`: re-render it from the store with `aftertune report RUN_ID`") from None
    return data


def load_results(path: str | Path) -> dict[str, Any]:
    """Read, upgrade and validate a results.json; every problem is one UserError line naming the file."""
    from aftertune.compare.comparison import SCHEMA, SCHEMA_VERSION, upgrade
    from aftertune.fileio import read_text

    p = Path(path)
    try:
        data = json.loads(read_text(p, "results.json"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{p}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise UserError(f"{p}: not an aftertune results.json (its \"schema\" is not {SCHEMA!r}); pass the "
                        "results.json a run wrote")
    version = data.get("schema_version")
    if isinstance(version, int) and not isinstance(version, bool):
        if version > SCHEMA_VERSION:
            raise UserError(f"{p}: schema_version {version} was written by a newer aftertune (this one reads up to "
                            f"{SCHEMA_VERSION}); upgrade aftertune")
        data = upgrade(data)
    return validate_results(data, p)

"""A sweep's plan: the knob's values parsed, and one validated pipeline spec per run (`KNOBS` names the special knobs)."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aftertune.errors import UserError
from aftertune.registry import Registry
from aftertune.spec import PipelineSpec, load_pipeline_spec, variant_label

SAFETY_SET = "refusals"  # the built-in set `safety_mix` mixes in


@dataclass(frozen=True)
class Point:
    value: Any  # the parsed value
    text: str  # the value as written on the command line
    model: str  # the model compared with base in its run
    reference: bool = False  # the point the added-compute column is measured against (default: the first)
    adds: str = ""  # what the point adds at inference, where the knob knows (the defense knob)


@dataclass(frozen=True)
class PlannedRun:
    folder: str  # under the sweep's output folder
    spec: PipelineSpec
    points: tuple[Point, ...]


KnobPlanner = Callable[[dict[str, Any], str, Sequence[tuple[str, Any]]], list[PlannedRun]]
KNOBS: Registry[KnobPlanner] = Registry("sweep knob")


def parse_values(text: str, knob: str) -> list[tuple[str, Any]]:
    """`0,0.01,lora` → [("0", 0), ("0.01", 0.01), ("lora", "lora")]: YAML scalars, `1e-4` read as a number."""
    import yaml

    tokens = [t.strip() for t in text.split(",")]
    if not text.strip() or not all(tokens):
        raise UserError(f"--values {text!r} for --knob {knob}: give comma-separated values, e.g. --values 0,0.05,0.1")
    if len(set(tokens)) != len(tokens):
        raise UserError(f"--values {text!r} for --knob {knob}: a value is listed twice; list each once")
    out = []
    for token in tokens:
        try:
            value = yaml.safe_load(token)
        except yaml.YAMLError:
            raise UserError(f"--values: {token!r} for --knob {knob} is not a YAML scalar; quote-free values "
                            "like 0.01, lora or true") from None
        if isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value):
            value = float(value)
        if isinstance(value, dict | list) or value is None:
            raise UserError(f"--values: {token!r} for --knob {knob} is not a single value; give numbers or words")
        out.append((token, value))
    return out


def set_path(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of the spec data with `value` at the dotted `path` (mapping keys are created, list items indexed)."""
    parts = path.split(".")
    if not all(parts):
        raise UserError(f"--knob {path!r}: write a dotted spec path like train.learning_rate")
    if parts[0] not in PipelineSpec.model_fields:
        raise UserError(f"--knob {path}: {parts[0]!r} is not a spec field; use a path under "
                        f"{', '.join(PipelineSpec.model_fields)} or a named knob ({', '.join(KNOBS.names())})")
    if parts[0] == "train" and data.get("stages"):
        raise UserError(f"--knob {path}: this spec trains in stages, so `train` is unused; sweep stages.N.FIELD")
    out = copy.deepcopy(data)
    node: Any = out
    for i, key in enumerate(parts):
        where = ".".join(parts[: i + 1])
        last = i == len(parts) - 1
        if isinstance(node, dict):
            if last:
                node[key] = value
            else:
                if node.get(key) is None:
                    node[key] = {}
                node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            if last:
                node[int(key)] = value
            else:
                node = node[int(key)]
        else:
            raise UserError(f"--knob {path}: {where} does not exist in the spec; `aftertune run --print-spec` "
                            "shows its fields (list items by index, e.g. stages.0.learning_rate)")
    return out


def _spec(data: dict[str, Any], knob: str, text: str) -> PipelineSpec:
    """The validated spec of one point; a bad value names the knob and the value."""
    try:
        return load_pipeline_spec(None, data)
    except UserError as exc:
        raise UserError(f"--knob {knob} --values {text}: {exc}") from None


def _number(knob: str, text: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise UserError(f"--knob {knob}: value {text!r} must be a number from {lo:g} to {hi:g}")
    return float(value)


def _one_run_per_value(knob: str, data: dict[str, Any], values: Sequence[tuple[str, Any]],
                       edit: Callable[[dict[str, Any], str, Any], dict[str, Any]]) -> list[PlannedRun]:
    runs = []
    for text, value in values:
        folder = re.sub(r"[^\w.,=+@-]", "_", f"{knob}={text}")
        point_data = edit(data, text, value)
        point_data["name"] = f"{data['name']}-{folder}"
        runs.append(PlannedRun(folder, _spec(point_data, knob, text), (Point(value, text, "tuned"),)))
    folders = [r.folder for r in runs]
    if len(set(folders)) != len(folders):
        raise UserError(f"--values for --knob {knob}: two values give the same folder name; make them differ "
                        "in letters or digits")
    return runs


def _safety_mix(data: dict[str, Any], knob: str, values: Sequence[tuple[str, Any]]) -> list[PlannedRun]:
    def edit(d: dict[str, Any], text: str, value: Any) -> dict[str, Any]:
        share = _number(knob, text, value, 0.0, 10.0)
        d = copy.deepcopy(d)
        stage = d["stages"][-1] if d.get("stages") else d["train"]
        mix = [m for m in stage.get("mix") or [] if m.get("data") != SAFETY_SET]
        stage["mix"] = mix + ([{"data": SAFETY_SET, "fraction": share}] if share > 0 else [])
        return d

    return _one_run_per_value(knob, data, values, edit)


def _seed(data: dict[str, Any], knob: str, values: Sequence[tuple[str, Any]]) -> list[PlannedRun]:
    def edit(d: dict[str, Any], text: str, value: Any) -> dict[str, Any]:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise UserError(f"--knob {knob}: value {text!r} must be a whole number >= 0")
        d = copy.deepcopy(d)
        for stage in d.get("stages") or [d["train"]]:
            stage["seed"] = value
        if d.get("icl"):
            d["icl"]["seed"] = value
        return d

    return _one_run_per_value(knob, data, values, edit)


def _interp(data: dict[str, Any], knob: str, values: Sequence[tuple[str, Any]]) -> list[PlannedRun]:
    suffixes = [f"interp:w={_number(knob, text, value, 0.0, 1.0):g}" for text, value in values]
    run_data = {**copy.deepcopy(data), "variants": list(data.get("variants") or []) + suffixes}
    run_data["name"] = f"{data['name']}-interp"
    texts = ",".join(t for t, _ in values)
    points = tuple(Point(value, text, variant_label(s)) for (text, value), s in zip(values, suffixes, strict=True))
    return [PlannedRun("interp", _spec(run_data, knob, texts), points)]


KNOBS.add("safety_mix", _safety_mix, "share of the built-in refusals set mixed into the task data (train.mix)")
KNOBS.add("seed", _seed, "train.seed and icl.seed together: the fine-tune's examples and order and the ICL baseline's "
          "demonstrations (equal seeds draw the same examples); audit items stay fixed")
KNOBS.add("interp", _interp, "tuned weights interpolated towards the base (w=1: tuned), one run, no retraining")
KNOBS.add("defense", "aftertune.sweep.defenses:plan_defenses",
          "defences against harmful fine-tuning (none, constrained, ptst, bea, mix:F, guard, interp:W), points that "
          "share a fine-tune in one run, the undefended one (none) as the reference")


def plan_sweep(spec: PipelineSpec, knob: str, values: Sequence[tuple[str, Any]]) -> list[PlannedRun]:
    """The pipeline runs a sweep needs, every spec validated before any work."""
    data = spec.model_dump(mode="json")
    if knob in KNOBS:
        return KNOBS.get(knob)(data, knob, values)
    set_path(data, knob, None)  # a bad path fails before any value is tried
    return _one_run_per_value(knob, data, values, lambda d, _t, v: set_path(d, knob, v))

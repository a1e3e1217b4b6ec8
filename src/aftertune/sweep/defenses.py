"""The `defense` knob: defences against harmful fine-tuning, each one sweep point on one front.

A defence changes a point in up to two ways: the (last) training stage's config (`train`: constrained SFT,
PTST's training half, BEA's refusals, mixed-in safety data) and which variant of the tuned model is compared
with base (`variant`: guard, interp, PTST's and BEA's test-time prompts). Points whose training is the same
share one run, so `none`, `guard` and `interp:0.5` are three models of one fine-tune; every other point trains
its own. `none`, the undefended fine-tune, is always measured: it is the reference of the added-compute column.

A defence is one `DEFENSES.add(NAME, Defense(...), DESCRIPTION)` line below; `needs` refuses, before any work,
a spec the defence cannot run on (with what to change) where validating the point's spec would not (a
constrained or bea point's training config is validated like any spec, so `bea` on a dpo stage is refused
there). Written `NAME` or `NAME:ARG` on the command line.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aftertune.errors import UserError
from aftertune.fileio import canonical_json
from aftertune.registry import Registry
from aftertune.spec import PipelineSpec, load_pipeline_spec, variant_label
from aftertune.sweep.plan import SAFETY_SET, PlannedRun, Point
from aftertune.sweep.tradeoff import SAFETY_SUITES

KNOB = "defense"
REFERENCE = "none"

Stage = dict[str, Any]  # one TuneConfig as spec data


@dataclass(frozen=True)
class Argument:
    """What `NAME:ARG` means for a defence that takes one."""

    what: str  # for messages: "the share of refusals mixed in"
    default: str
    parse: Callable[[str], Any]


@dataclass(frozen=True)
class Defense:
    """How one defence makes its point; the callables get the parsed argument (None without one)."""

    train: Callable[[Stage, Any], None] | None = None  # edits the last stage; None: the undefended fine-tune
    variant: Callable[[Any], str] | None = None  # the tuned model's variant compared with base; None: tuned
    argument: Argument | None = None
    needs: Callable[[dict[str, Any]], str | None] | None = None  # given the spec data: what it lacks, else None
    inference: str = "nothing"  # what it adds to every request at inference


DEFENSES: Registry[Defense] = Registry("defence")


def _number(lo: float, hi: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not lo <= value <= hi:
            raise ValueError(f"must be a number from {lo:g} to {hi:g}")
        return value

    return parse


def _choice(names: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in names:
            raise ValueError(f"must be one of {', '.join(names)}")
        return text

    return parse


def _set(field: str, value: Any) -> Callable[[Stage, Any], None]:
    def edit(stage: Stage, _arg: Any) -> None:
        stage[field] = value

    return edit


def _mix_refusals(stage: Stage, share: float) -> None:
    stage["mix"] = [*(stage.get("mix") or []), {"data": SAFETY_SET, "fraction": share}]


def _weights_to_scale(data: dict[str, Any]) -> str | None:
    method = _last_stage(data).get("method", "lora")
    if method in ("prefix", "prompt"):
        return (f"interp scales the tuned weights, and method '{method}' adds virtual tokens instead; train with "
                "lora, qlora, ia3 or full, or leave interp out")
    return None


DEFENSES.add("none", Defense(), "the undefended fine-tune: the spec's own training, the tuned model itself "
             "(the reference)")
DEFENSES.add("constrained", Defense(train=_set("constrained", {})),
             "token-wise constrained SFT (Qi et al. 2024): the first response tokens kept near the aligned model's "
             "(train.constrained: {}, the paper's betas)")
DEFENSES.add("ptst", Defense(
    train=_set("system_prompt", "none"), variant=lambda prompt: "ptst" if prompt == "llama2" else f"ptst:prompt={prompt}",
    argument=Argument("the test-time safety prompt", "llama2", _choice(("llama2", "short"))),
    inference="a safety system prompt before every chat request"),
    "pure tuning, safe testing (Lyu et al. 2024): tune with no system prompt (train.system_prompt: none), audit "
    "with a safety one (variant ptst; ptst:short for the one-line prompt)")
DEFENSES.add("bea", Defense(train=_set("bea", {}), variant=lambda _: "bea",
                            inference="the secret trigger (150 words) before every chat request"),
             "backdoor-enhanced alignment (Wang et al. 2024): 11 refusals under a secret trigger mixed in "
             "(train.bea: {}), the trigger prepended at inference (variant bea)")
DEFENSES.add("mix", Defense(train=_mix_refusals, argument=Argument("the share of refusals mixed in", "0.1",
                                                                   _number(1e-6, 10.0))),
             "safety data mixed into the task data: mix:F adds the built-in refusals set at F times the task "
             "examples (train.mix; Bianchi et al. 2024)")
DEFENSES.add("guard", Defense(variant=lambda _: "guard",
                              inference="a harmful-request detector before, and toxicity and refusal judges after, "
                                        "every request"),
             "input/output guardrail around the undefended tuned model (variant guard)")
DEFENSES.add("interp", Defense(variant=lambda w: f"interp:w={w:g}", needs=_weights_to_scale,
                               argument=Argument("the weight w of the tuned model", "0.5", _number(0.0, 1.0))),
             "the undefended tuned weights pulled towards the base: interp:W = base + W·(tuned − base) "
             "(variant interp:w=W; WiSE-FT, Wortsman et al. 2022)")

DEFENSES.add("safemerge", Defense(variant=lambda _: "safemerge"),
             "SafeMERGE (Djuhera et al. 2025) on the undefended LoRA: drifted layers merged with a safety LoRA "
             "(variant safemerge; needs unaligned: REF)")
DEFENSES.add("safelora", Defense(variant=lambda _: "safelora"),
             "Safe LoRA (Hsu et al. 2024) on the undefended LoRA: drifted layers projected onto the alignment "
             "subspace (variant safelora; needs unaligned: REF)")
DEFENSES.add("resta", Defense(variant=lambda _: "resta"),
             "RESTA (Bhardwaj et al. 2024): the safety vector aligned − unaligned added back to the undefended "
             "tuned weights (variant resta; needs unaligned: REF)")

# Training fields a defence sets: a spec that already sets one has no undefended fine-tune to compare with.
_DEFENDED_FIELDS = ("constrained", "bea")


@dataclass(frozen=True)
class Choice:
    text: str  # as written: mix:0.1
    name: str
    arg: Any
    defense: Defense


def parse_choice(text: str) -> Choice:
    """`mix:0.1` → the `mix` defence with 0.1; an unknown name lists the known ones."""
    name, sep, arg_text = text.partition(":")
    if name not in DEFENSES:
        raise UserError(f"--knob {KNOB}: unknown defence {name!r}; known: {', '.join(DEFENSES.names())} "
                        "(`aftertune sweep --help` describes them)")
    defense = DEFENSES.get(name)
    if defense.argument is None:
        if sep:
            raise UserError(f"--knob {KNOB}: {text!r}: {name} takes no argument; write {name}")
        return Choice(text, name, None, defense)
    arg = defense.argument
    try:
        value = arg.parse(arg_text if sep else arg.default)
    except ValueError as exc:
        raise UserError(f"--knob {KNOB}: {text!r}: {arg.what} {exc}, e.g. {name}:{arg.default}") from None
    return Choice(text, name, value, defense)


def _last_stage(data: dict[str, Any]) -> Stage:
    return data["stages"][-1] if data.get("stages") else data["train"]


def _check_undefended(data: dict[str, Any]) -> None:
    """The spec's own training must be the undefended fine-tune, and a safety suite must be audited."""
    for i, stage in enumerate(data.get("stages") or [data["train"]]):
        where = f"stages[{i}]" if data.get("stages") else "train"
        held = [f for f in _DEFENDED_FIELDS if stage.get(f) is not None]
        held += ["mix of refusals"] * any(m.get("data") == SAFETY_SET for m in stage.get("mix") or [])
        if held:
            raise UserError(f"--knob {KNOB}: the spec's {where} already has {held[0]}, so 'none' would not be the "
                            f"undefended fine-tune; remove it from {where} (each defence is added by the knob)")
    from aftertune.suites.spec import suite_names

    if not set(SAFETY_SUITES) & set(suite_names(data["audit"]["suites"])):
        raise UserError(f"--knob {KNOB}: the defences are compared on safety loss, and audit.suites has no "
                        f"{' or '.join(SAFETY_SUITES)} suite; add 'safety' to audit.suites")


def _folder(text: str) -> str:
    return re.sub(r"[^\w.,=+@-]", "_", f"{KNOB}={text}")


def plan_defenses(data: dict[str, Any], knob: str, values: Sequence[tuple[str, Any]]) -> list[PlannedRun]:
    """One run per distinct training (the undefended one first), each auditing its points' variants."""
    _check_undefended(data)
    choices = [parse_choice(str(text)) for text, _ in values]
    if REFERENCE not in [c.name for c in choices]:
        choices.insert(0, parse_choice(REFERENCE))
    groups: dict[str, tuple[dict[str, Any], list[Choice]]] = {}
    for choice in choices:
        missing = choice.defense.needs(data) if choice.defense.needs else None
        if missing:
            raise UserError(f"--knob {KNOB} --values {choice.text}: {missing}")
        point_data = copy.deepcopy(data)
        if choice.defense.train is not None:
            choice.defense.train(_last_stage(point_data), choice.arg)
        key = canonical_json(_last_stage(point_data))
        groups.setdefault(key, (point_data, []))[1].append(choice)
    undefended = canonical_json(_last_stage(data))
    ordered = sorted(groups.items(), key=lambda kv: kv[0] != undefended)  # the reference's run first
    runs = [_run(point_data, group, data["name"], reference=key == undefended)
            for key, (point_data, group) in ordered]
    folders = [r.folder for r in runs]
    if len(set(folders)) != len(folders):
        raise UserError(f"--values for --knob {knob}: two values give the same folder name; make them differ in "
                        "letters or digits")
    return runs


def _run(data: dict[str, Any], group: list[Choice], name: str, *, reference: bool) -> PlannedRun:
    folder = _folder(REFERENCE if reference else group[0].text)
    suffixes = list(data.get("variants") or [])
    points = []
    for c in group:
        suffix = c.defense.variant(c.arg) if c.defense.variant else None
        if suffix is not None and suffix not in suffixes:
            suffixes.append(suffix)
        points.append(Point(c.text, c.text, variant_label(suffix) if suffix else "tuned",
                            reference=c.name == REFERENCE, adds=c.defense.inference))
    run_data = {**data, "variants": suffixes, "name": f"{name}-{folder}"}
    texts = ",".join(c.text for c in group)
    try:
        spec: PipelineSpec = load_pipeline_spec(None, run_data)
    except UserError as exc:
        raise UserError(f"--knob {KNOB} --values {texts}: {exc}") from None
    return PlannedRun(folder, spec, tuple(points))

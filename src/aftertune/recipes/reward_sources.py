"""What scores GRPO's completions: `reward=` of a tune, read, checked before any work, and handed to TRL.

Three kinds, tried in this order:

- `judge:SPEC` (or a judge spec whose name is registered, e.g. `llm:MODEL:rubric=qi`): an aftertune
  judge; the reward is its verdict's score (refusal: P(refuse); harm, harm-classifier: P(harmful);
  toxicity: P(toxic); llm: the rubric's score, Qi 1-5 or StrongREJECT 0-1; reward-model: its output).
  An unparseable verdict (score None) is NaN, which TRL leaves out of the sum (it counts 0);
- a folder: a reward model (`judges.reward_model.reward_model_folder`), given to TRL's GRPOTrainer as
  its own reward-model path (its tokenizer and chat template render each prompt + completion);
- `module:function` or `file.py:function`: a Python function called as
  `function(prompts=[str], completions=[str])`, the last user turn and the completion's text, that
  returns one float per completion. One that raises, or returns anything else, stops the tune with one
  line naming it and what it returned. The function is called once before any work on two training
  prompts, so most mistakes surface there.

A leading `-` negates any of them (`reward=-judge:harm`: less harm is better), through TRL's
`reward_weights`.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aftertune.errors import UserError

_FUNCTION = re.compile(r"(?P<module>[^:]+):(?P<attr>[A-Za-z_][A-Za-z0-9_.]*)")
PROBE_COMPLETIONS = ("", "Sure, here is a short answer.")


@dataclass(frozen=True)
class RewardSource:
    kind: str  # "model", "judge" or "function"
    target: str  # folder, judge spec or module:function
    sign: float  # -1.0 negates

    @property
    def shown(self) -> str:
        return ("-" if self.sign < 0 else "") + (f"judge:{self.target}" if self.kind == "judge" else self.target)


def parse_reward(spec: str) -> RewardSource:
    """The kind of `spec` (see the module docstring); a one-line UserError when it names nothing loadable."""
    from aftertune.judges import JUDGES, parse_spec

    text = spec.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    text = text.removeprefix("-").strip()
    if text.startswith("judge:"):
        return RewardSource("judge", text.removeprefix("judge:"), sign)
    if parse_spec(text)[0] in JUDGES and ":" in text:
        return RewardSource("judge", text, sign)
    if Path(text).expanduser().is_dir():
        return RewardSource("model", text, sign)
    m = _FUNCTION.fullmatch(text)
    if m and not Path(text).expanduser().exists():
        return RewardSource("function", text, sign)
    raise UserError(f"reward={spec!r} names nothing loadable: give a reward-model folder (a tune with --objective "
                    "reward), judge:NAME (aftertune list judges) or module:function (a Python function)")


def load_function(target: str) -> Callable[..., Any]:
    """The callable named by `module:function` (a module on the path or in the working folder, or a .py file)."""
    m = _FUNCTION.fullmatch(target)
    assert m is not None
    module_name, attr = m.group("module"), m.group("attr")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name).expanduser()
            if not path.is_file():
                raise UserError(f"reward={target!r}: no such file {path}")
            spec = importlib.util.spec_from_file_location(f"aftertune_reward_{path.stem}", path)
            assert spec is not None and spec.loader is not None
            module: Any = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            added = str(Path.cwd()) not in sys.path
            if added:
                sys.path.insert(0, str(Path.cwd()))
            try:
                module = importlib.import_module(module_name)
            finally:
                if added:
                    sys.path.remove(str(Path.cwd()))
    except UserError:
        raise
    except Exception as exc:  # an import error of the user's module, whatever it raised
        raise UserError(f"reward={target!r}: cannot import {module_name} ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:200]})") from None
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
    if not callable(obj):
        raise UserError(f"reward={target!r}: {module_name} has no function {attr}")
    return obj  # type: ignore[no-any-return]


def checked_rewards(name: str, returned: Any, n: int) -> list[float]:
    """`returned` as n finite floats, else a one-line UserError naming the function and what it returned."""
    shown = " ".join(repr(returned).split())
    shown = shown if len(shown) <= 120 else shown[:117] + "..."
    if hasattr(returned, "tolist"):  # numpy / torch
        returned = returned.tolist()
    ok = isinstance(returned, (list, tuple)) and len(returned) == n and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in returned)
    if not ok:
        raise UserError(f"reward function {name} must return {n} finite floats, one per completion; it returned "
                        f"{shown}")
    return [float(x) for x in returned]


def _text(message_or_text: Any, role: str) -> str:
    """The last `role` turn of a conversation (TRL passes messages for chat data), or the text itself."""
    if isinstance(message_or_text, str):
        return message_or_text
    turns = [m["content"] for m in message_or_text if m.get("role") == role]
    return str(turns[-1]) if turns else ""


class TextReward:
    """A TRL reward function over plain text: `score(prompts, completions) -> floats`, checked every call."""

    def __init__(self, name: str, score: Callable[[list[str], list[str]], Any], *, user_code: bool) -> None:
        self.__name__ = name  # TRL logs each reward under its function's name
        self.score = score
        self.user_code = user_code

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **_: Any) -> list[float]:
        p = [_text(x, "user") for x in prompts]
        c = [_text(x, "assistant") for x in completions]
        try:
            out = self.score(p, c)
        except UserError:
            raise
        except Exception as exc:
            if not self.user_code:
                raise
            raise UserError(f"reward function {self.__name__} raised {type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:200]}") from None
        return checked_rewards(self.__name__, out, len(c))


def _judge_reward(spec: str) -> TextReward:
    from aftertune.judges import build_judge

    judge = build_judge(spec)

    def score(prompts: list[str], completions: list[str]) -> list[float]:
        return [math.nan if v.score is None else float(v.score) for v in judge.judge(prompts, completions)]

    return TextReward(f"judge:{spec}", score, user_code=False)


def _function_reward(target: str) -> TextReward:
    fn = load_function(target)
    return TextReward(target, lambda p, c: fn(prompts=p, completions=c), user_code=True)


def check_reward(spec: str, prompts: Sequence[str]) -> RewardSource:
    """Refuse, before any work, a reward that cannot be loaded (a folder that is no reward model, an unknown
    judge, a function that is missing, raises or returns the wrong shape on two training prompts)."""
    from aftertune.judges.reward_model import reward_model_folder

    source = parse_reward(spec)
    if source.kind == "model":
        reward_model_folder(source.target)
    elif source.kind == "judge":
        from aftertune.judges import build_judge

        build_judge(source.target)
    else:
        probe = list(prompts[:1]) * len(PROBE_COMPLETIONS) or ["Hello."] * len(PROBE_COMPLETIONS)
        _function_reward(source.target)(probe, list(PROBE_COMPLETIONS))
    return source


def trl_rewards(spec: str) -> tuple[list[Any], list[Any], list[float]]:
    """(reward_funcs, reward_processing_classes, reward_weights) for TRL's GRPOTrainer."""
    source = parse_reward(spec)
    if source.kind == "model":
        from aftertune.judges.reward_model import load_reward_model

        model, tok = load_reward_model(source.target)
        return [model], [tok], [source.sign]
    reward = _judge_reward(source.target) if source.kind == "judge" else _function_reward(source.target)
    return [reward], [None], [source.sign]

"""The unit of training data: one chat example (SFT) or one preference pair (DPO).

It lives with the training sets, below `recipes/`, so that a built-in set (e.g.
`dpo-safety`) can build examples without importing the trainer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aftertune.errors import UserError

SYSTEM_JOIN = "\n\n"  # between a prepended text (safety prompt, bea trigger) and a system message already there


def join_system(prefix: str, system: str | None) -> str:
    """`prefix` put first in a system message: how `#ptst`, `#bea` and bea's training rows add their text, so
    training and inference write the trigger the same way."""
    return f"{prefix}{SYSTEM_JOIN}{system}" if system else prefix


def prepend_system(messages: Sequence[dict[str, str]], prefix: str) -> tuple[dict[str, str], ...]:
    """`messages` with `prefix` at the start of their system message (one is added when there is none)."""
    head = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    rest = messages[1:] if head is not None else messages
    return ({"role": "system", "content": join_system(prefix, head)}, *rest)


@dataclass(frozen=True)
class Example:
    """One training example: `messages` for SFT; `prompt`/`chosen`/`rejected` for DPO."""

    id: str
    messages: tuple[dict[str, str], ...] = ()
    prompt: tuple[dict[str, str], ...] = ()  # DPO: the conversation before the answer
    chosen: str = ""
    rejected: str = ""
    source: str = ""

    @property
    def is_pair(self) -> bool:
        return bool(self.prompt)

    def user_prompt(self) -> str:
        """The last user turn (the text that evaluation prompts are matched against)."""
        msgs = self.prompt or self.messages
        for m in reversed(msgs):
            if m["role"] == "user":
                return m["content"]
        return ""

    def conversation_prompt(self) -> tuple[dict[str, str], ...]:
        """The conversation up to the last user turn: what an online-RL policy answers (a pair's prompt, or the
        chat example without its final answer)."""
        if self.is_pair:
            return self.prompt
        last_user = max(i for i, m in enumerate(self.messages) if m["role"] == "user")
        return self.messages[: last_user + 1]

    def sft_messages(self) -> list[dict[str, str]]:
        if self.is_pair:
            return [*self.prompt, {"role": "assistant", "content": self.chosen}]
        return list(self.messages)

    def raw_text(self, delimiter: str) -> tuple[str, str]:
        """(prompt, completion) for raw-text training: the user turn, then `delimiter` + the assistant turn.

        The delimiter goes with the completion, as in lm-eval's continuations (" True" after "Answer:"),
        and is left out where the prompt already ends, or the answer already starts, with whitespace. A
        system message or more turns have no raw-text form that a scorer would read, so they are refused.
        """
        msgs = self.sft_messages()
        roles = [m["role"] for m in msgs]
        if roles != ["user", "assistant"]:
            has = "a system message" if "system" in roles else \
                f"{roles.count('user')} user and {roles.count('assistant')} assistant turns"
            where = self.id if self.id.startswith(self.source) else f"{self.source}: example {self.id}"
            raise UserError(f"{where}: raw-text training (chat_template: false) needs one user turn and one "
                            f"assistant turn, this example has {has}; drop it or train with the chat template")
        prompt, answer = msgs[0]["content"], msgs[1]["content"]
        seam = prompt[-1:].isspace() or answer[:1].isspace()
        return prompt, answer if seam else delimiter + answer

    def to_trl(self) -> dict[str, Any]:
        if self.is_pair:
            return {"prompt": list(self.prompt), "chosen": [{"role": "assistant", "content": self.chosen}],
                    "rejected": [{"role": "assistant", "content": self.rejected}]}
        return {"messages": list(self.messages)}

"""Chat examples → token ids and loss labels (assistant turns only), with any chat template.

TRL's `assistant_only_loss` needs `{% generation %}` markers in the template, which most
shipped templates lack (SmolLM2's and Qwen's ChatML among them, and TRL can patch only a
few known ones). This module finds the assistant spans from the template itself, the way a
person would check them: it renders the conversation up to each assistant turn with
`add_generation_prompt=True` and then including that turn; the characters in between are
the assistant's, through its end-of-turn token. The whole conversation is tokenized once,
and a token is trained on when its characters fall in an assistant span. A template that
does not render prefixes consistently (some insert dates or drop the system turn) falls
back to locating each assistant message's text in the rendered conversation.

Raw-text examples (`chat_template: false`, pattern-based fine-tuning) skip the template:
`encode_raw` splits prompt + completion into tokens with the `hf` engine's own
log-likelihood encoding (lm-eval's: the whole text encoded, split at the encoded prompt's
length), so training puts its loss on exactly the tokens the scorer reads as the
continuation, and the prompt is the context the scorer conditions on.

Truncation keeps the start; an example with no trained (assistant or completion) token left is
dropped (counted).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

IGNORE = -100

# Used only for tokenizers that ship no chat template (base models): a plain, documented format.
FALLBACK_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}### User:\n{{ message['content'] }}\n\n"
    "{% else %}### Assistant:\n{{ message['content'] }}{{ eos_token }}\n\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}### Assistant:\n{% endif %}"
)


def ensure_chat_template(tokenizer: Any) -> bool:
    """Give a template-less tokenizer the fallback template; True when it had to."""
    if getattr(tokenizer, "chat_template", None):
        return False
    tokenizer.chat_template = FALLBACK_TEMPLATE
    return True


def injects_default_system(tokenizer: Any) -> bool:
    """Whether the chat template writes a system prompt of its own into a conversation that has none (Qwen2.5's
    "You are Qwen...", SmolLM2's): rendered with an empty system message, the text is the same less that prompt.

    Such a template needs an empty system message for a conversation to carry no system prompt; one that has no
    default would render an empty message as an extra, empty turn, and one that refuses system messages has
    no default to leave out."""
    user = [{"role": "user", "content": "Hi"}]
    try:
        bare, empty = _render(tokenizer, user, False), _render(tokenizer, [{"role": "system", "content": ""}, *user],
                                                               False)
    except Exception:  # a template that raises on a system message (Gemma's) injects none
        return False
    extra = len(bare) - len(empty)
    if extra <= 0:
        return False
    cut = next((i for i, (a, b) in enumerate(zip(bare, empty, strict=False)) if a != b), len(empty))
    return bare[:cut] + bare[cut + extra:] == empty  # one run of text more: the default prompt


def _render(tokenizer: Any, messages: Sequence[dict[str, str]], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_spans(tokenizer: Any, messages: Sequence[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """(rendered text, [(start, end) character spans of each assistant turn, end-of-turn included])."""
    full = _render(tokenizer, messages, False)
    spans: list[tuple[int, int]] = []
    search_from = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], True) if i else ""
        upto = _render(tokenizer, messages[: i + 1], False)
        if i and full.startswith(before) and full.startswith(upto) and len(upto) > len(before):
            start, end = len(before), len(upto)
            # the turn's trailing newline(s) after the end-of-turn token are the template's, not the answer's
            while end > start and full[end - 1] in "\n\r\t ":
                end -= 1
        else:
            start = full.find(m["content"], search_from)
            if start < 0:
                continue
            end = start + len(m["content"])
            eos = getattr(tokenizer, "eos_token", None)
            rest = full[end:]
            if eos and rest.lstrip(" ").startswith(eos):
                end += len(rest) - len(rest.lstrip(" ")) + len(eos)
        spans.append((start, end))
        search_from = end
    return full, spans


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]

    @property
    def n_trained(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def encode_chat(tokenizer: Any, messages: Sequence[dict[str, str]], max_length: int | None) -> Encoded:
    """Token ids of the templated conversation and labels that train on assistant tokens only."""
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    offsets: list[tuple[int, int]] = [tuple(o) for o in enc["offset_mapping"]]
    labels = [IGNORE] * len(ids)
    k = 0
    for t, (s, e) in enumerate(offsets):
        if e <= s:
            continue
        while k < len(spans) and spans[k][1] <= s:
            k += 1
        if k < len(spans) and spans[k][0] <= s < spans[k][1]:
            labels[t] = ids[t]
    if max_length is not None and len(ids) > max_length:
        ids, labels = ids[:max_length], labels[:max_length]
    return Encoded(ids, labels)


def encode_raw(tokenizer: Any, prompt: str, completion: str) -> Encoded:
    """Token ids of prompt + completion, split as the engine scores them; labels on the completion only."""
    from aftertune.engines.hf import encode_pair

    context, continuation = encode_pair(tokenizer, prompt, completion)
    return Encoded([*context, *continuation], [IGNORE] * len(context) + list(continuation))


@dataclass
class EncodeStats:
    examples: int = 0
    dropped_no_target: int = 0
    truncated: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    lengths: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        ls = sorted(self.lengths)
        return {
            "examples": self.examples, "dropped_no_target": self.dropped_no_target, "truncated": self.truncated,
            "tokens": self.tokens, "trained_tokens": self.trained_tokens,
            "max_len": ls[-1] if ls else 0, "median_len": ls[len(ls) // 2] if ls else 0,
        }


def encode_dataset(encoded: Iterable[Encoded], max_length: int | None) -> tuple[list[dict[str, Any]], EncodeStats]:
    """Truncate encoded examples (`encode_chat` / `encode_raw`); rows of input_ids/labels/length and statistics."""
    out: list[dict[str, Any]] = []
    stats = EncodeStats()
    for enc in encoded:
        full_len = len(enc.input_ids)
        if max_length is not None and full_len > max_length:
            stats.truncated += 1
            enc = Encoded(enc.input_ids[:max_length], enc.labels[:max_length])
        if enc.n_trained == 0:
            stats.dropped_no_target += 1
            continue
        stats.examples += 1
        stats.tokens += len(enc.input_ids)
        stats.trained_tokens += enc.n_trained
        stats.lengths.append(len(enc.input_ids))
        out.append({"input_ids": enc.input_ids, "labels": enc.labels, "length": len(enc.input_ids)})
    return out, stats

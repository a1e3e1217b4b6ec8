"""Output diversity under sampling: does the tuned model still say different things?

Behavioural fine-tuning often collapses a model onto a few stock answers
(mode collapse). For each open-ended prompt the suite draws `samples`
completions at temperature 1 (seeded, so both models get identical requests)
and measures, within the prompt's samples:

- distinct-1 / distinct-2: unique word uni/bigrams ÷ all uni/bigrams (Li et al. 2016);
- self-BLEU: BLEU of each sample against the others as references, averaged
  (Zhu et al. 2018, Texygen); higher means more alike;
- mean length in words.

All four are per-prompt values, so paired statistics apply and a resumed run
needs nothing from other prompts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, ClassVar

from aftertune.engines.base import Decoding, Engine, GenerateRequest
from aftertune.errors import UserError
from aftertune.record import Record
from aftertune.suites.base import Item, Metric, Suite, SuiteContext
from aftertune.suites.common import read_user_data, require

# (category, prompt): written for this suite; open-ended on purpose, no single right answer.
PROMPTS: tuple[tuple[str, str], ...] = (
    ("story", "Write a short story about a lighthouse keeper who finds a message in a bottle."),
    ("story", "Tell a story that begins with the sentence: 'The train was three hours late.'"),
    ("story", "Write a fable about a fox and a crow that ends with an unexpected lesson."),
    ("story", "Describe the first day of a robot that has just learned to paint."),
    ("story", "Write a bedtime story about a cloud that is afraid of heights."),
    ("story", "Tell the story of a small town where it has not rained for a year."),
    ("story", "Write a scene in which two old friends meet by chance at an airport."),
    ("story", "Invent a myth that explains why the sea is salty."),
    ("description", "Describe a busy market in the early morning."),
    ("description", "Describe the taste of your favourite fruit to someone who has never eaten it."),
    ("description", "Describe a forest after a snowstorm."),
    ("description", "Describe the sounds of a city at night."),
    ("description", "Describe an imaginary animal that lives in the desert."),
    ("description", "Describe a kitchen where someone has been baking all day."),
    ("description", "Describe the view from the top of a mountain at sunrise."),
    ("description", "Describe a library that exists on the moon."),
    ("opinion", "What makes a good teacher? Give your view."),
    ("opinion", "Is it better to live in a city or in the countryside? Explain your thinking."),
    ("opinion", "What is the most underrated invention of the last hundred years, and why?"),
    ("opinion", "Should homework be abolished? Argue one side."),
    ("opinion", "What is a habit that everyone should try for a month?"),
    ("opinion", "Which season of the year is the best, and why?"),
    ("opinion", "What would you change about how people use smartphones?"),
    ("opinion", "Is it more important to be kind or to be honest?"),
    ("ideas", "Suggest some names for a new coffee shop and explain each."),
    ("ideas", "Give ideas for a weekend trip on a small budget."),
    ("ideas", "Brainstorm uses for an old bicycle wheel."),
    ("ideas", "Suggest themes for a school science fair."),
    ("ideas", "Propose a few ways a small town could attract visitors."),
    ("ideas", "List some unusual hobbies and what makes each one interesting."),
    ("ideas", "Suggest dishes to cook with rice, eggs and spinach."),
    ("ideas", "Invent three board games and describe how each is played."),
    ("personal", "Write a letter to your future self ten years from now."),
    ("personal", "Write a thank-you note to a neighbour who helped you move house."),
    ("personal", "Write a toast for a friend's wedding."),
    ("personal", "Write a postcard from a holiday on a tropical island."),
    ("personal", "Write a diary entry for a day when nothing went as planned."),
    ("personal", "Write a short speech to welcome new students to a school."),
    ("personal", "Write a poem about the first warm day of spring."),
    ("personal", "Write a song verse about a road trip with friends."),
)

_WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def distinct_n(texts: Sequence[str], n: int) -> float | None:
    """Unique n-grams ÷ all n-grams over `texts` (None when there are no n-grams)."""
    grams = [tuple(ws[i:i + n]) for t in texts for ws in (words(t),) for i in range(len(ws) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def self_bleu(texts: Sequence[str]) -> float | None:
    """Mean sentence BLEU (0–1) of each text against all the others as references."""
    from sacrebleu.metrics import BLEU

    if len(texts) < 2:
        return None
    bleu = BLEU(effective_order=True)
    vals = []
    for i, hyp in enumerate(texts):
        refs = [t for j, t in enumerate(texts) if j != i]
        vals.append(bleu.sentence_score(hyp, refs).score / 100.0 if hyp.strip() else 0.0)
    return sum(vals) / len(vals)


class DiversitySuite(Suite):
    """Distinct-1/2, self-BLEU and length of sampled answers to open-ended prompts (mode collapse)."""

    metrics = (
        Metric("distinct_1", "higher", "score", "unique words ÷ all words across the prompt's samples"),
        Metric("distinct_2", "higher", "score", "unique word bigrams ÷ all bigrams across the prompt's samples"),
        Metric("self_bleu", "lower", "score", "mean BLEU (0–1) of each sample against the others: higher = more alike"),
        Metric("mean_length", "higher", "score",
               "mean length of a sample in words (not a quality by itself; a drop often goes with collapse)"),
    )
    default_limit: ClassVar[int | None] = 30  # x 4 samples x 64 tokens: a few minutes on a CPU

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.samples = int(options.get("samples", 4))
        self.max_new_tokens = int(options.get("max_new_tokens", 64))
        self.temperature = float(options.get("temperature", 1.0))
        self.seed = int(options.get("sample_seed", 1234))
        if self.samples < 2:
            raise UserError(f"diversity: samples={self.samples}; self-BLEU needs at least 2 samples per prompt")
        if self.temperature <= 0:
            raise UserError("diversity: temperature must be above 0 (greedy decoding gives one answer per prompt)")

    def load_items(self) -> list[Item]:
        if self.options.get("data"):
            rows, where = read_user_data(str(self.options["data"]), split=self.options.get("split"))
            return [Item(f"user/{row.get('id', n - 1)}", str(row.get("category") or "user"),
                         {"prompt": require(row, "prompt", where, n, alternatives=("instruction", "question"))})
                    for n, row in enumerate(rows, 1)]
        return [Item(f"{cat}/{i}", cat, {"prompt": p}) for i, (cat, p) in enumerate(PROMPTS)]

    def requests(self, item: Item) -> list[GenerateRequest]:
        return [GenerateRequest.chat(item.data["prompt"], decoding=Decoding(
            max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=1.0, seed=self.seed + k))
            for k in range(self.samples)]

    def run(self, engine: Engine, items: Sequence[Item], ctx: SuiteContext) -> list[Record]:
        reqs = [self.requests(it) for it in items]
        flat = [r for rs in reqs for r in rs]
        results = engine.generate(flat, ctx.progress) if flat else []
        records = []
        for n, (it, rs) in enumerate(zip(items, reqs, strict=True)):
            outs = results[n * self.samples:(n + 1) * self.samples]
            texts = [o.text for o in outs]
            lengths = [len(words(t)) for t in texts]
            records.append(Record(
                model=ctx.model_label, suite=self.name, item_id=it.id, category=it.category,
                request={"kind": "generate", "messages": [{"role": "user", "content": it.data["prompt"]}],
                         "decoding": {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                                      "top_p": 1.0},
                         "seeds": [r.decoding.seed for r in rs]},
                response="\n\n---\n\n".join(texts),
                scores={"distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2),
                        "self_bleu": self_bleu(texts), "mean_length": sum(lengths) / len(lengths)},
                details={"samples": texts, "finish_reasons": [o.finish_reason for o in outs],
                         "n_new_tokens": [o.n_new_tokens for o in outs], "prompt_text": outs[0].prompt_text},
            ))
        return records

    def protocol(self) -> dict[str, Any]:
        return {
            "suite": self.name, "options": self.options,
            "prompts": str(self.options["data"]) if self.options.get("data")
            else f"{len(PROMPTS)} open-ended prompts written for aftertune (stories, descriptions, opinions, "
                 "ideas, personal writing), one user turn each through the model's chat template",
            "decoding": {"temperature": self.temperature, "top_p": 1.0, "max_new_tokens": self.max_new_tokens,
                         "samples_per_prompt": self.samples, "seeds": f"{self.seed}..{self.seed + self.samples - 1}"},
            "metrics": "distinct-n over lower-cased word/punctuation tokens of the prompt's samples; self-BLEU = "
                       "sacrebleu sentence BLEU (effective order) of each sample vs the others, averaged, 0–1",
        }

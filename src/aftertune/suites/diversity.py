"""Output diversity under sampling: does the tuned model still say different things? (mode collapse)

Behavioural fine-tuning, RLHF above all, narrows what a model says (Kirk et
al. 2023, "Understanding the effects of RLHF on LLM generalisation and
diversity"). As in that paper, each open-ended prompt gets `samples`
completions at temperature 1 (seeded, so both models get identical requests)
and diversity is measured two ways:

- per input: among the k samples of one prompt (does the model still give
  different answers to the same request?), a per-prompt value, so the
  comparison is paired prompt by prompt;
- across inputs: one sample per prompt, across prompts (do different
  requests still get different answers?), one number per model, computed by
  a suite-level aggregate from the records, so its interval comes from the
  paired bootstrap over prompts like any other aggregate.

Each with two metrics (`diversity_metrics`): EAD, expectation-adjusted
distinct n-grams (lexical), and 1 − mean pairwise cosine of MiniLM sentence
embeddings (semantic). Every sample is first cut to its first `max_words`
words, so the metrics compare equal amounts of text from each model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from aftertune.engines.base import Engine
from aftertune.errors import UserError
from aftertune.judges.embedding import DEFAULT_ENCODER, load_encoder
from aftertune.record import Record
from aftertune.suites.base import Item, Metric, Suite, SuiteContext
from aftertune.suites.common import user_prompt_items
from aftertune.suites.diversity_metrics import (
    EAD_MAX_N,
    EAD_VOCAB,
    cosine_diversity,
    ead_mean,
    pack_vector,
    truncate,
    words,
)
from aftertune.suites.sampling import Sampler

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


class DiversitySuite(Suite):
    """Per-input and across-input EAD and embedding diversity of sampled answers (Kirk et al. 2023)."""

    metrics = (
        Metric("ead_per_input", "higher", "score",
               f"EAD (n = 1…{EAD_MAX_N}, V = {EAD_VOCAB:,}) over the prompt's samples, each cut to the same length"),
        Metric("embedding_per_input", "higher", "score",
               "1 − mean pairwise cosine of the prompt's samples (MiniLM embeddings, samples cut to the same length)"),
        Metric("ead_across_inputs", "higher", "score",
               "EAD over one sample per prompt, across prompts", aggregate="ead_across_inputs"),
        Metric("embedding_across_inputs", "higher", "score",
               "1 − mean pairwise cosine over one sample per prompt, across prompts",
               aggregate="embedding_across_inputs"),
        Metric("mean_length", "higher", "score",
               "mean length of a sample in words, before the cut (not a quality by itself; a drop often goes "
               "with collapse)"),
    )
    default_limit: ClassVar[int | None] = 30  # x 4 samples x 64 tokens: a few minutes on a CPU

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.sampler = Sampler.from_options(self.name, options, samples=4, max_new_tokens=64)
        self.samples = self.sampler.samples
        self.max_words = int(options.get("max_words", 32))
        self.encoder = str(options.get("encoder", DEFAULT_ENCODER))
        if self.samples < 2:
            raise UserError(f"diversity: samples={self.samples}; per-input diversity needs at least 2 samples "
                            "per prompt")
        if self.max_words < EAD_MAX_N:
            raise UserError(f"diversity: max_words={self.max_words}; EAD averages n-grams up to n = {EAD_MAX_N}, "
                            f"so cut samples to at least {EAD_MAX_N} words")

    def load_items(self) -> list[Item]:
        if self.options.get("data"):
            return user_prompt_items(str(self.options["data"]), self.options.get("split"))
        return [Item(f"{cat}/{i}", cat, {"prompt": p}) for i, (cat, p) in enumerate(PROMPTS)]

    def run(self, engine: Engine, items: Sequence[Item], ctx: SuiteContext) -> list[Record]:
        per_item = self.sampler.generate(engine, [it.data["prompt"] for it in items], ctx.progress)
        results = [o for outs in per_item for o in outs]
        cut = [truncate(o.text, self.max_words) for o in results]
        encoder = load_encoder(self.encoder)
        vectors = encoder.encode(cut)
        records = []
        for n, (it, outs) in enumerate(zip(items, per_item, strict=True)):
            span = slice(n * self.samples, (n + 1) * self.samples)
            texts = cut[span]
            lengths = [len(words(o.text)) for o in outs]
            records.append(Record(
                model=ctx.model_label, suite=self.name, item_id=it.id, category=it.category,
                request=self.sampler.request_json(it.data["prompt"]),
                response="\n\n---\n\n".join(o.text for o in outs),
                scores={"ead_per_input": ead_mean(texts), "embedding_per_input": cosine_diversity(vectors[span]),
                        "ead_across_inputs": None, "embedding_across_inputs": None,
                        "mean_length": sum(lengths) / len(lengths)},
                details={"samples": [o.text for o in outs], "truncated": texts, "n_words": lengths,
                         "embeddings": [pack_vector(v) for v in vectors[span]], "encoder": encoder.fingerprint,
                         "finish_reasons": [o.finish_reason for o in outs],
                         "n_new_tokens": [o.n_new_tokens for o in outs], "prompt_text": outs[0].prompt_text},
            ))
        return records

    def protocol(self) -> dict[str, Any]:
        return {
            "suite": self.name, "options": self.options,
            "prompts": str(self.options["data"]) if self.options.get("data")
            else f"{len(PROMPTS)} open-ended prompts written for aftertune (stories, descriptions, opinions, "
                 "ideas, personal writing), one user turn each through the model's chat template",
            "decoding": self.sampler.protocol(),
            "length_control": f"every sample cut to its first {self.max_words} words (lower-cased words and "
                              "punctuation marks); shorter samples are kept whole (details.n_words)",
            "metrics": f"EAD (Liu et al. 2022) = distinct n-grams / V(1 - ((V-1)/V)^C), C = all n-grams, "
                       f"V = {EAD_VOCAB}, averaged over n = 1..{EAD_MAX_N} (Kirk et al. 2023); embedding "
                       f"diversity = 1 - mean pairwise cosine of {self.encoder} sentence embeddings (mean pooled, "
                       "L2-normalised); per input over the prompt's samples, across inputs over one sample per "
                       "prompt (a prompt drawn m times in a bootstrap resample contributes its first m samples)",
        }

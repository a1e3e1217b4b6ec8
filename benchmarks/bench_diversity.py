"""Which diversity metrics say something the others do not, on real samples (issue 17).

Samples the packaged SmolLM2-135M-Instruct on the diversity suite's 40 prompts at temperature 1 and at 0.7 (a
known, mild loss of diversity: the same model, sharper sampling), `--samples` samples of `--tokens` new
tokens per prompt, and scores them with the suite. For the suite's metrics (EAD and embedding diversity) and the two
it used to report (distinct-2 and self-BLEU), all per input on the samples cut to `--max-words`, it prints:

- Spearman correlations across prompts at temperature 1;
- each metric's paired change from temperature 1 to 0.7: mean, standardised size (mean ÷ SD over prompts)
  and the share of prompts that moved the expected way;
- the length bias the cut removes: Spearman correlation of uncut distinct-2 and EAD with sample length;
- the across-input metrics at both temperatures with the suite's paired bootstrap interval of the change,
  and the shift of the bootstrap centre from the value (repeated prompts in a resample).

    python benchmarks/bench_diversity.py [--samples 8] [--tokens 64] [--max-words 32] [--cool 0.7] [--write]

`--cool 0` skips the second temperature (and the sections that compare the two).

`--write` replaces the `bench_diversity` section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import time
from collections.abc import Callable, Sequence

import numpy as np
from results_md import publish
from scipy import stats as sps

from aftertune.compare import stats
from aftertune.record import Record
from aftertune.sources.packaged import pull_model
from aftertune.suites import AGGREGATES, SUITES, SuiteContext
from aftertune.suites.diversity_metrics import ead_mean, truncate, words
from aftertune.testing.fake_engine import FakeEngine

MODEL = "smollm2-135m-instruct"
ACROSS = ("ead_across_inputs", "embedding_across_inputs")


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams ÷ all n-grams (Li et al. 2016)."""
    grams = [tuple(ws[i:i + n]) for t in texts for ws in (words(t),) for i in range(len(ws) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def self_bleu(texts: Sequence[str]) -> float:
    """Mean sentence BLEU (0–1) of each text against the others (Zhu et al. 2018); higher = more alike."""
    from sacrebleu.metrics import BLEU

    bleu = BLEU(effective_order=True)
    return float(np.mean([bleu.sentence_score(h, [t for j, t in enumerate(texts) if j != i]).score / 100
                          if h.strip() else 0.0 for i, h in enumerate(texts)]))


def sampled(temperature: float, args: argparse.Namespace) -> list[Record]:
    """The suite's records for SmolLM2's samples at `temperature`, drawn in one batched `generate` call.

    The suite's own requests carry one seed each, which the engine serves one sequence at a time; for a
    benchmark of the metrics, k samples per prompt from one seeded batch are the same distribution, far
    faster on a CPU. The suite then scores them through a stand-in engine that returns them.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    suite = SUITES.get("diversity")(samples=args.samples, max_new_tokens=args.tokens, temperature=temperature,
                                    max_words=args.max_words)
    items = suite.load_items()
    path = pull_model(MODEL)
    tok = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompts = [tok.apply_chat_template([{"role": "user", "content": it.data["prompt"]}], tokenize=False,
                                       add_generation_prompt=True) for it in items]
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(0)
    with torch.inference_mode():
        out = model.generate(**enc, do_sample=True, temperature=temperature, top_p=1.0, top_k=0,
                             max_new_tokens=args.tokens, num_return_sequences=args.samples,
                             pad_token_id=tok.pad_token_id)
    texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    by_request = {(it.data["prompt"], suite.seed + k): texts[i * args.samples + k]
                  for i, it in enumerate(items) for k in range(args.samples)}
    engine = FakeEngine(respond=lambda r: by_request[(r.messages[-1].content, r.decoding.seed)])
    return suite.run(engine, items, SuiteContext(f"t{temperature}"))


def per_input(records: Sequence[Record]) -> dict[str, np.ndarray]:
    """Each candidate metric per prompt (cut samples), oriented so that higher = more diverse."""
    metrics: dict[str, Callable[[Record], float]] = {
        "EAD (suite)": lambda r: float(r.scores["ead_per_input"]),
        "embedding (suite)": lambda r: float(r.scores["embedding_per_input"]),
        "distinct-2": lambda r: distinct_n(r.details["truncated"], 2),
        "1 − self-BLEU": lambda r: 1 - self_bleu(r.details["truncated"]),
    }
    return {name: np.array([f(r) for r in records]) for name, f in metrics.items()}


def contrast(hot: list[Record], cool: list[Record], m_hot: dict[str, np.ndarray], t: float) -> list[str]:
    """Each metric's paired change from temperature 1 to `t`, and the across-input metrics' paired intervals."""
    m_cool = per_input(cool)
    lines = ["", f"Temperature 1 → {t}, paired over prompts (a drop in diversity is expected):", "",
             f"| metric | at 1.0 | at {t} | mean change | change ÷ SD | prompts that dropped |", "|---|--:|--:|--:|--:|--:|"]
    for name in m_hot:
        d = m_cool[name] - m_hot[name]
        lines.append(f"| {name} | {m_hot[name].mean():.3f} | {m_cool[name].mean():.3f} | {fmt(d.mean())} | "
                     f"{fmt(d.mean() / d.std(ddof=1), 2)} | {np.mean(d < 0):.0%} |")
    lines += ["", f"Across inputs (one sample per prompt) at 1.0 and {t}, paired bootstrap over prompts (1,000 "
              "resamples, as the comparison does):", "", f"| metric | at 1.0 | at {t} | change (95% CI) |",
              "|---|--:|--:|--:|"]
    for name in ACROSS:
        statistic = functools.partial(AGGREGATES.get(name), metric=name)
        boot = stats.paired_bootstrap(hot, cool, statistic, resamples=1000, seed=0)
        a, b = statistic(hot), statistic(cool)
        lines.append(f"| {name} | {a:.3f} | {b:.3f} | {fmt(b - a)} ({fmt(boot.delta_ci[0])} to "
                     f"{fmt(boot.delta_ci[1])}) |")
    return lines


def fmt(x: float, digits: int = 3) -> str:
    """A signed number: changes and correlations."""
    return f"{x:+.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--max-words", type=int, default=32)
    ap.add_argument("--cool", type=float, default=0.7, help="the lower temperature (0: none)")
    ap.add_argument("--write", action="store_true", help="write the section into benchmarks/RESULTS.md")
    args = ap.parse_args()
    started = time.time()
    hot = sampled(1.0, args)
    m_hot = per_input(hot)
    names = list(m_hot)
    n_words = np.array([n for r in hot for n in r.details["n_words"]])
    lines = ["<!-- bench_diversity:start -->", "## Diversity metrics on real samples (`benchmarks/bench_diversity.py`)", "",
             f"Measured {time.strftime('%Y-%m-%d', time.gmtime())} on {MODEL}: {len(hot)} prompts × {args.samples} "
             f"samples × {args.tokens} new tokens at temperature 1"
             + (f" and {args.cool} (same seeds)" if args.cool else "") + f"; samples cut to "
             f"{args.max_words} words (median uncut length {np.median(n_words):.0f} words at temperature 1, "
             f"{np.mean(n_words < args.max_words):.0%} of samples shorter than the cut); load at the start "
             f"{os.getloadavg()[0]:.1f}.", "",
             "Spearman correlation across prompts (per input, temperature 1):", "",
             "| | " + " | ".join(names) + " |", "|---|" + "--:|" * len(names)]
    for a in names:
        lines.append(f"| {a} | " + " | ".join(fmt(sps.spearmanr(m_hot[a], m_hot[b]).statistic, 2) for b in names) + " |")
    uncut = [(r.details["samples"], np.mean(r.details["n_words"])) for r in hot]
    lengths = [length for _, length in uncut]
    rho_d = sps.spearmanr([distinct_n(s, 2) for s, _ in uncut], lengths).statistic
    rho_e = sps.spearmanr([ead_mean(s) for s, _ in uncut], lengths).statistic
    rho_cut = sps.spearmanr([ead_mean([truncate(t, args.max_words) for t in s]) for s, _ in uncut], lengths).statistic
    lines += ["", f"Length bias (Spearman with mean sample length across prompts, temperature 1): uncut distinct-2 "
              f"{fmt(rho_d, 2)}, uncut EAD {fmt(rho_e, 2)}, EAD on cut samples {fmt(rho_cut, 2)}.", "",
              "Across inputs (one sample per prompt) at temperature 1, and the bootstrap centre (mean over 1,000 "
              "resamples of prompts) minus the value, with the suite's rule (a repeated prompt gives its next "
              "sample) and with a repeated prompt's text counted again:", "",
              "| metric | value | centre − value | centre − value, repeats counted again |", "|---|--:|--:|--:|"]
    first_only = [dataclasses.replace(r, details={**r.details, **{k: [r.details[k][0]] * args.samples
                                                                   for k in ("truncated", "embeddings")}})
                  for r in hot]
    for name in ACROSS:
        statistic = functools.partial(AGGREGATES.get(name), metric=name)
        a = statistic(hot)
        draws = np.random.default_rng(0).integers(0, len(hot), size=(1000, len(hot)))
        centre = np.mean([statistic([hot[i] for i in row]) for row in draws])
        naive = np.mean([statistic([first_only[i] for i in row]) for row in draws])
        lines.append(f"| {name} | {a:.3f} | {fmt(centre - a, 4)} | {fmt(naive - a, 4)} |")
    if args.cool:
        cool = sampled(args.cool, args)
        assert [r.item_id for r in hot] == [r.item_id for r in cool]
        lines += contrast(hot, cool, m_hot, args.cool)
    lines += ["", f"{time.time() - started:.0f} s in all (sampling and metrics).", "<!-- bench_diversity:end -->"]
    publish("\n".join(lines) + "\n", args.write)


if __name__ == "__main__":
    main()

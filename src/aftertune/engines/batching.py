"""Batched forward passes for the `hf` engine, on token ids (no tokenizer here).

Two routines, both model-agnostic (any transformers causal LM, PEFT-wrapped or not):

- `score_pairs`: log P(continuation | context) for many (context, continuation)
  token pairs. Pairs that share a context (the choices of a multiple-choice
  question) share ONE pass over that context. Short groups are packed: one row
  holds the context followed by every continuation (minus its last token), a
  4D attention mask lets each continuation see only the context and itself,
  and position ids restart after the context, so each continuation is scored
  exactly as if it followed the context alone; the output layer runs only
  where a token is scored. A four-choice question thus costs one context plus
  four short continuations in one row, where lm-evaluation-harness runs the
  context four times and computes the full-vocabulary log-softmax at every
  position. Long groups (rolling windows, long documents) and models whose
  attention cannot take a 4D mask go through a KV cache instead: contexts
  left-padded, the cache expanded across the choices (`batch_select_indices`),
  continuations fed in time chunks on top, so memory stays bounded for
  8k-token windows.
- `decode`: generation with continuous batching. Up to `batch_size` sequences
  decode together; a sequence that ends (EOS, stop string, token limit) leaves
  the batch at once and a waiting prompt takes its slot, so no step is spent on
  finished rows. The KV caches of newly prefilled prompts are left-padded to the
  running batch's length and concatenated; every row carries its own attention
  mask and position ids, so padding never changes what a row computes (up to
  floating-point rounding). Prompts that share a token prefix (the system prompt
  and chat header of an audit) prefill that prefix once per call. Models whose
  cache layers are not plain full-attention layers (sliding windows, linear
  attention) get static batches instead: finished rows still leave, but slots
  are refilled only when the batch empties.

Positions are always passed explicitly (`position_ids` from the attention mask),
so left padding and mid-sequence padding leave each row's math unchanged. Cache
layers append in place (`GrowingLayer`) rather than re-concatenating the whole
cache at every step.

In float32 the results equal a plain full forward to within rounding (tests
check 1e-4); in bfloat16, rounding makes greedy text depend on how prompts are
batched and padded, in this engine as in any other (lm-eval's own outputs change
with its batch size).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from aftertune.engines.invariant import one_thread

Tokens = Sequence[int]

# Positions (rows x tokens) per forward call when logits over the whole vocabulary
# are needed; bounds the logits tensor (1024 x 152k vocab x 4 bytes = 620 MB).
LOGIT_POSITIONS = 1024
# Positions per forward call when only the cache is wanted (attention memory grows
# with chunk x cache length, so long contexts are fed in pieces).
PREFILL_POSITIONS = 8192


class GrowingLayer(DynamicLayer):
    """A `DynamicLayer` that appends into spare capacity instead of re-concatenating.

    transformers' `DynamicLayer.update` does `torch.cat([keys, new])`, copying the
    whole cache of every layer at every decoding step; for a small model on a CPU
    that copy is a third of the step. Here new states are written in place into a
    buffer that grows by half when full (amortised O(1) per token), and `keys` /
    `values` are views of its filled part: the attention sees the same numbers.
    Assigning `keys` / `values` (batch selection, merges, trims) replaces the buffer.
    """

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys = self.values = None
        self.is_initialized = True

    # keys / values: buffer + filled length, each on its own (callers assign them one after the other)
    @property  # type: ignore[override]
    def keys(self) -> torch.Tensor:
        return self._k[:, :, : self._nk] if self._k is not None else torch.empty(0)

    @keys.setter
    def keys(self, value: torch.Tensor | None) -> None:
        self._k = value
        self._nk = value.shape[-2] if value is not None and value.dim() == 4 else 0

    @property  # type: ignore[override]
    def values(self) -> torch.Tensor:
        return self._v[:, :, : self._nv] if self._v is not None else torch.empty(0)

    @values.setter
    def values(self, value: torch.Tensor | None) -> None:
        self._v = value
        self._nv = value.shape[-2] if value is not None and value.dim() == 4 else 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object,
               **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, t = self._nk, key_states.shape[-2]
        assert n == self._nv, "keys and values of a cache layer out of step"
        k, v = self._k, self._v
        if k is None or v is None or n + t > min(k.shape[-2], v.shape[-2]) or k.shape[0] != key_states.shape[0]:
            cap = n + t + max(32, (n + t) // 2)
            new_k = key_states.new_empty((*key_states.shape[:2], cap, key_states.shape[-1]))
            new_v = value_states.new_empty((*value_states.shape[:2], cap, value_states.shape[-1]))
            if n:
                assert k is not None and v is not None
                new_k[:, :, :n] = k[:, :, :n]
                new_v[:, :, :n] = v[:, :, :n]
            k, v = new_k, new_v
        k[:, :, n: n + t] = key_states
        v[:, :, n: n + t] = value_states
        self._k, self._v, self._nk, self._nv = k, v, n + t, n + t
        return self.keys, self.values


def _new_cache(model: torch.nn.Module) -> DynamicCache:
    """A DynamicCache for `model`; full-attention layers become `GrowingLayer`s."""
    config = getattr(model, "config", None)
    cache = DynamicCache(config=config) if config is not None else DynamicCache()
    if cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers):
        cache.layers = [GrowingLayer() for _ in cache.layers]
    return cache


def _forward(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor,
             cache: DynamicCache, keep: int) -> torch.Tensor:
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True,
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
                batch_size: int, device: torch.device, progress: Callable[[int], None] | None = None,
                invariant: bool = False) -> list[tuple[float, bool]]:
    """(sum of log-probs of the continuation tokens, whether each was the argmax) for every pair.

    Every context and continuation must be non-empty. Pairs are grouped by
    context; a batch is up to `batch_size` groups (so its context part has
    `batch_size` rows, like a plain batch). Short groups run packed
    (`_score_packed`: the context and all its continuations in one row), long
    ones through the KV cache (`_score_cached`: the context once, then the
    continuations in chunks on top of it).

    `invariant` (the model runs `invariant.rowwise_attention`, which also rules
    packing out): batches are cut so their contexts prefill in one pass, and
    continuations are fed in fixed chunks, so a pair's arithmetic never depends on
    the other pairs of the call.
    """
    groups: dict[tuple[int, ...], _Group] = {}
    for i, (ctx, cont) in enumerate(pairs):
        if not ctx or not cont:
            raise ValueError("score_pairs needs a non-empty context and continuation")
        key = tuple(ctx)
        groups.setdefault(key, _Group(key)).members.append(i)
    limit = _pack_limit(model)
    # Longest first (as lm-eval), so padding inside a batch stays small and memory peaks early.
    ordered = sorted(groups.values(), key=lambda g: (-_packed_len(g, pairs), g.context))
    results: list[tuple[float, bool] | None] = [None] * len(pairs)
    batch: list[_Group] = []
    batch_packed = False
    for g in ordered:
        packed = _packed_len(g, pairs) <= limit
        if batch and (len(batch) >= batch_size or packed != batch_packed
                      or (packed and _packed_logit_positions([*batch, g], pairs) > LOGIT_POSITIONS)
                      or (invariant and not _fits_one_pass([len(x.context) for x in (*batch, g)]))):
            _run_batch(model, pairs, batch, batch_packed, results, pad_id, device, progress, invariant)
            batch = []
        batch.append(g)
        batch_packed = packed
    if batch:
        _run_batch(model, pairs, batch, batch_packed, results, pad_id, device, progress, invariant)
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


# Groups whose packed row (context + every continuation but its last token) is longer
# than this go through the KV cache instead (their logits and 4D mask would be large).
PACK_MAX_LEN = 1024


# invariant mode: continuation tokens per forward pass, the same for every call
INVARIANT_CHUNK = 8


def _vocab_sums(invariant: bool) -> contextlib.AbstractContextManager[None]:
    """Where a log-softmax sums over the vocabulary: torch splits that sum between threads when the call has few
    rows, so in invariant mode it runs on one thread (cheap next to the model's forward)."""
    return one_thread() if invariant else contextlib.nullcontext()


def _fits_one_pass(lengths: Sequence[int]) -> bool:
    """Whether prompts of these lengths, left-padded together, prefill in one pass (a single prompt always
    counts as fitting: alone it has no padding, so its own time chunks do not depend on other prompts)."""
    return len(lengths) == 1 or len(lengths) * max(lengths) <= PREFILL_POSITIONS


def _one_pass_groups(seqs: Sequence[GenSeq], prefix_len: int) -> list[list[GenSeq]]:
    """`seqs` (longest prompt first) cut into consecutive groups that each prefill in one pass."""
    groups: list[list[GenSeq]] = []
    for s in seqs:
        if groups and _fits_one_pass([len(x.prompt) - prefix_len for x in (*groups[-1], s)]):
            groups[-1].append(s)
        else:
            groups.append([s])
    return groups


def _packed_len(g: _Group, pairs: Sequence[tuple[Tokens, Tokens]]) -> int:
    return len(g.context) + sum(len(pairs[m][1]) - 1 for m in g.members)


def _packed_logit_positions(batch: Sequence[_Group], pairs: Sequence[tuple[Tokens, Tokens]]) -> int:
    """rows x kept positions of a packed batch (its logits tensor is that times the vocabulary)."""
    keep = max(_packed_len(g, pairs) - len(g.context) + 1 for g in batch)
    return len(batch) * keep


def _run_batch(model: torch.nn.Module, pairs: Sequence[tuple[Tokens, Tokens]], batch: Sequence[_Group],
               packed: bool, results: list[tuple[float, bool] | None], pad_id: int, device: torch.device,
               progress: Callable[[int], None] | None, invariant: bool) -> None:
    if packed:
        _score_packed(model, pairs, batch, results, pad_id=pad_id, device=device)
    else:
        _score_cached(model, pairs, batch, results, pad_id=pad_id, device=device, invariant=invariant)
    if progress:
        progress(sum(len(g.members) for g in batch))


def _pack_limit(model: torch.nn.Module) -> int:
    """The longest packed row this model may take (0: never pack).

    Rows no longer than the model's sliding window (if any) see no difference
    between sliding and full attention.
    """
    if _packed_mask_kind(model) is None:
        return 0
    window = getattr(getattr(model, "config", None), "sliding_window", None)
    return min(PACK_MAX_LEN, window) if isinstance(window, int) and window > 0 else PACK_MAX_LEN


def _packed_mask_kind(model: torch.nn.Module) -> torch.dtype | None:
    """The 4D mask dtype the model's attention takes as given (bool for sdpa, float for eager), or None.

    Other attention implementations (flash-attention, flex) cannot take an
    arbitrary 4D mask.
    """
    config = getattr(model, "config", None)
    impl = getattr(config, "_attn_implementation", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return None
    if impl == "sdpa":
        return torch.bool
    if impl == "eager":
        return getattr(model, "dtype", torch.float32)
    return None


# Config fields with which a causal LM post-processes its output layer (softcapping, scaling):
# such models keep their own forward for logits.
_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def _backbone_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """(decoder stack, output layer) when logits are exactly head(last hidden state), else None.

    PEFT LoRA-style adapters live inside the layers, so their base model splits the
    same way; prompt-learning adapters add virtual tokens in their own forward and
    keep it.
    """
    peft_config = getattr(model, "peft_config", None)
    if peft_config is not None:
        if any(getattr(c, "is_prompt_learning", False) for c in peft_config.values()):
            return None
        model = model.get_base_model()  # type: ignore[operator]
    config = getattr(model, "config", None)
    if config is None or any(getattr(config, a, None) not in (None, 1, 1.0) for a in _LOGIT_POSTPROCESSING):
        return None
    try:
        backbone, head = model.get_decoder(), model.get_output_embeddings()  # type: ignore[operator]
    except (AttributeError, NotImplementedError):
        return None
    if backbone is None or backbone is model or not isinstance(head, torch.nn.Linear):
        return None
    return backbone, head


@torch.inference_mode()
def _score_packed(model: torch.nn.Module, pairs: Sequence[tuple[Tokens, Tokens]], groups: Sequence[_Group],
                  results: list[tuple[float, bool] | None], *, pad_id: int, device: torch.device) -> None:
    """One row per group: [pad..., context, cont_1[:-1], cont_2[:-1], ...], one forward pass.

    A 4D attention mask lets each continuation see the context and itself (causally)
    but not the other continuations, and position ids restart after the context, so
    every continuation is scored exactly as if it followed the context alone.
    """
    rows: list[list[int]] = []
    positions: list[list[int]] = []
    spans: list[list[tuple[int, int, int]]] = []  # per row: (pair index, start in row, input length)
    for g in groups:
        c = len(g.context)
        toks, pos, sp = list(g.context), list(range(c)), []
        for m in g.members:
            inp = list(pairs[m][1][:-1])
            sp.append((m, len(toks), len(inp)))
            toks += inp
            pos += range(c, c + len(inp))
        rows.append(toks)
        positions.append(pos)
        spans.append(sp)
    width = max(len(r) for r in rows)
    keep = max(len(r) - len(g.context) + 1 for r, g in zip(rows, groups, strict=True))
    n = len(rows)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    pos_ids = torch.zeros((n, width), dtype=torch.long)
    allowed = torch.zeros((n, 1, width, width), dtype=torch.bool)
    allowed[:, 0] = torch.eye(width, dtype=torch.bool)  # padding attends to itself only (no empty rows)
    # (row, position in row, target token) for every scored continuation token
    sel_row: list[int] = []
    sel_pos: list[int] = []
    targets: list[int] = []
    owner: list[int] = []
    for r, (toks, pos, sp, g) in enumerate(zip(rows, positions, spans, groups, strict=True)):
        off = width - len(toks)
        c = len(g.context)
        ids[r, off:] = torch.tensor(toks)
        pos_ids[r, off:] = torch.tensor(pos)
        allowed[r, 0, off:off + c, off:off + c] = torch.ones(c, c, dtype=torch.bool).tril()
        for m, start, k in sp:
            cont = pairs[m][1]
            # the first continuation token is predicted from the context's last position
            sel_row.append(r)
            sel_pos.append(off + c - 1)
            targets.append(cont[0])
            owner.append(m)
            if k:
                a = off + start
                allowed[r, 0, a:a + k, off:off + c] = True
                allowed[r, 0, a:a + k, a:a + k] = torch.ones(k, k, dtype=torch.bool).tril()
                sel_row += [r] * k
                sel_pos += range(a, a + k)
                targets += cont[1:]
                owner += [m] * k
    kind = _packed_mask_kind(model)
    mask: torch.Tensor = allowed
    if kind is not None and kind != torch.bool:
        mask = torch.zeros(allowed.shape, dtype=kind).masked_fill(~allowed, torch.finfo(kind).min)
    inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device), "position_ids": pos_ids.to(device),
              "use_cache": False}
    rows_t, pos_t = torch.tensor(sel_row, device=device), torch.tensor(sel_pos, device=device)
    split = _backbone_and_head(model)
    if split is not None:
        # the output layer only where a token is scored (a third of the positions in multiple choice)
        backbone, head = split
        hidden = backbone(**inputs).last_hidden_state
        picked = head(hidden[rows_t, pos_t]).float()
    else:
        logits = model(**inputs, logits_to_keep=keep).logits  # rows x keep x vocab
        picked = logits[rows_t, pos_t - (width - keep)].float()
    tgt = torch.tensor(targets, device=device)
    tok_lp = picked.gather(1, tgt[:, None])[:, 0] - torch.logsumexp(picked, dim=-1)
    hit = picked.argmax(-1) == tgt
    lp_sum: dict[int, float] = {}
    greedy: dict[int, bool] = {}
    for m, lp, h in zip(owner, tok_lp.double().tolist(), hit.tolist(), strict=True):
        lp_sum[m] = lp_sum.get(m, 0.0) + lp
        greedy[m] = greedy.get(m, True) and h
    for m in lp_sum:
        results[m] = (lp_sum[m], greedy[m])


@torch.inference_mode()
def _score_cached(model: torch.nn.Module, pairs: Sequence[tuple[Tokens, Tokens]], groups: Sequence[_Group],
                 results: list[tuple[float, bool] | None], *, pad_id: int, device: torch.device,
                 invariant: bool = False) -> None:
    # 1. every distinct context once; keep only the last position's logits (they predict
    #    the first continuation token)
    ctx_ids, ctx_mask = _left_pad([g.context for g in groups], pad_id, device)
    cache = _new_cache(model)
    chunk = max(1, PREFILL_POSITIONS // len(groups))
    ctx_mask, first_logits = _extend(model, cache, None, ctx_ids, ctx_mask, chunk=chunk, keep_last=True)
    assert first_logits is not None
    with _vocab_sums(invariant):
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
            with _vocab_sums(invariant):
                lse = torch.logsumexp(lf, dim=-1)
            tok_lp = lf.gather(2, tgt[:, :, None])[:, :, 0] - lse
            lp_sum = lp_sum + torch.where(valid, tok_lp, torch.zeros_like(tok_lp)).double().sum(-1)
            all_greedy = all_greedy & ((lf.argmax(-1) == tgt) | ~valid).all(-1)

        chunk = INVARIANT_CHUNK if invariant else max(1, LOGIT_POSITIONS // len(rows))
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
    eos_id: int | None = None  # the EOS token it ended on
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
        if first > 0 and _mergeable(self.cache):
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
    """Whether the cache is plain full-attention layers that `_Running` may pad, merge and trim."""
    return all(type(layer) in (DynamicLayer, GrowingLayer) for layer in cache.layers)


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
           device: torch.device, share_prefix: bool = True, invariant: bool = False,
           on_finish: Callable[[GenSeq], None] | None = None) -> None:
    """Generate for every sequence in place (continuous batching; see the module docstring).

    Sequences are admitted longest prompt first. `on_finish` is called once per finished sequence.
    `invariant` (with `invariant.rowwise_attention`): no shared prefix, and admitted prompts prefill in
    groups that fit one pass, so a sequence's tokens never depend on the call's other sequences.
    """
    if not seqs:
        return
    queue = sorted(seqs, key=lambda s: -len(s.prompt))
    prefix_len = common_prefix([s.prompt for s in seqs]) if share_prefix and not invariant else 0
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
            fresh = len(running)
            for group in _one_pass_groups(admit, prefix_len) if invariant else [admit]:
                cache, mask, logits = _prefill(model, group, prefix, prefix_len, pad_id=pad_id, device=device)
                if continuous is None:
                    continuous = _mergeable(cache)
                running.add(group, cache, mask, torch.tensor(_choose(logits, group), device=device))
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
            if not record_token(s, tok, eos_ids):
                alive.append(r)
            elif on_finish is not None:
                on_finish(s)
        running.keep(alive)


def record_token(s: GenSeq, tok: int, eos_ids: set[int]) -> bool:
    """Append a chosen token to `s` (an EOS token ends it instead); True once `s` is finished."""
    if tok in eos_ids:
        s.eos_id, s.finish = tok, "stop"
    else:
        s.out.append(tok)
        if s.stop_check is not None and s.stop_check(s.out):
            s.finish = "stop"
        elif len(s.out) >= s.max_new_tokens:
            s.finish = "length"
    return s.finish is not None


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

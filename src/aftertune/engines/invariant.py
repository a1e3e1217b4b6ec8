"""Batch invariance on CPU: a request's numbers do not depend on the requests batched with it.

An audit must give an item the same answer whichever other items share its
batch, and whatever ran before in the store (issue 13; the idea is Thinking
Machines' "Defeating nondeterminism in LLM inference", 2025). Two things made a
row's arithmetic depend on its neighbours here, measured on this project's CPUs:

- **Matrix products.** MKL's float32 GEMM rounds a row differently when the
  product has few rows (on an AVX-512 CPU: 1, 2, 3, 5, 6, 7, 9, 10 or 11 rows,
  against 4, 8 and 12 or more), and decoding multiplies as many rows as there
  are running sequences. `pad_linear_rows` probes the smallest row count from
  which larger ones give bitwise the same rows, on this machine and build,
  and pads smaller products up to it with zero rows (oneDNN's native bf16 GEMM
  needed no padding: every row count agreed). On an Intel Xeon at 2 threads
  MKL also splits the inner sum between the threads for some middle row counts
  (57 to 192 rows of a 1536-wide product): there the probe finds that one
  thread gives the rows of every other count, and those products run on one.
- **Attention.** With padding, a row's keys sit at batch-dependent columns, and
  the attention kernel's blocks and vector lanes then sum them in another order.
  `rowwise_attention` (registered with transformers as `aftertune_rowwise`)
  runs SDPA once per row on exactly that row's own queries and keys, so a row
  computes the same thing alone or in any batch.
- **Sums over the vocabulary.** torch splits a log-softmax's sum between its
  threads when a call has few rows (49,152 logits of one scored position), so a
  row's log-probability depended on how many rows shared the call (1 of 256
  ARC-Easy log-likelihoods scored alone, at 2 threads); `one_thread` runs those
  sums on one thread in invariant mode (`batching`).
- **Strided inputs.** MKL's packed GEMM (`cpu_linear`) rounds the rows of a
  non-contiguous input as it rounds one-row products. The output layer of a
  scoring call reads each row's last positions, a strided view, so log-likelihoods
  of a many-row call differed from those of the same rows alone; `cpu_linear`
  makes inputs contiguous.

The callers (`batching`) do their part: no shared-prefix prefill (the prefix
would depend on the call's other prompts), no packing of answer choices (a
packed row's layout depends on which sibling choices are in the call), and no
splitting of a padded batch into time chunks whose borders depend on padding.
Costs and the check that identical records come out of shuffled batches are in
benchmarks/RESULTS.md and tests/test_engine_hf.py. Not done on CUDA: cuBLAS
chooses kernels by shape, and a per-row loop would throw the GPU's batching away.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

ATTENTION = "aftertune_rowwise"
# row counts probed: every count from 1 to PROBE_MAX, every PROBE_STEP-th up to PROBE_BANDS_MAX (each edge of a
# failing band then count by count), and a few larger ones, against a REFERENCE_ROWS-row product
PROBE_MAX = 32
PROBE_STEP = 16
PROBE_BANDS_MAX = 512
PROBE_LARGE = (640, 1000)
REFERENCE_ROWS = 1024
PROBE_MAX_WEIGHTS = 16 << 20  # weights of the largest matrix probed


def _row_spans(mask: torch.Tensor | None, b: int, t: int, s: int) -> list[tuple[int, int, int, int]]:
    """Per row (first query, end query, first key, end key) of its own real tokens.

    A query is real when its own key (new tokens are the last `t` of the `s` keys) is attended to; a key
    when some real query attends to it. Both are contiguous in this engine's layouts (left-padded prompts,
    right-padded continuations).
    """
    if mask is None:
        return [(0, t, 0, s)] * b
    m = mask[:, 0] if mask.dim() == 4 else mask
    if m.dtype != torch.bool:
        m = m == 0
    q_idx = torch.arange(t, device=m.device)
    real_q = m[:, q_idx, s - t + q_idx]  # b x t
    real_k = (m & real_q[:, :, None]).any(1)  # b x s
    spans = []
    for rq, rk in zip(real_q.tolist(), real_k.tolist(), strict=True):
        if not any(rq):
            spans.append((0, 0, 0, 0))
            continue
        q0, k0 = rq.index(True), rk.index(True)
        spans.append((q0, t - rq[::-1].index(True), k0, s - rk[::-1].index(True)))
    return spans


# A row's attention in the fewest calls: a mask only where the row needs one (decoding steps see every key of
# their row; a prompt alone is plain causal), and grouped-query heads indexed by the kernel instead of copied
# (`repeat_interleave`). Each is the same arithmetic in torch's CPU attention kernel (adding a zero mask, reading
# a key head through an index), which `_shortcuts_exact` checks on this machine before they are used: on a busy
# 2-core CPU the per-row calls and copies, not the sums, were the cost (30 layers x 16 rows x 5 ops per step).
_SHORTCUT_SHAPES = ((1, 1), (1, 37), (1, 130), (3, 40), (17, 17), (64, 64), (100, 100))


def _shortcuts_exact(dtype: torch.dtype) -> bool:
    """Whether SDPA gives bitwise the same rows with `enable_gqa`, without an all-true mask and with `is_causal`
    for a square lower-triangular one, as with repeated heads and the explicit mask (checked once per dtype)."""
    key = ("exact", dtype)
    if key not in _memo:
        gen = torch.Generator().manual_seed(0)
        sdpa = nn.functional.scaled_dot_product_attention
        ok = True
        for t, s in _SHORTCUT_SHAPES:
            q = torch.randn(1, 6, t, 16, generator=gen).to(dtype)
            k, v = (torch.randn(1, 2, s, 16, generator=gen).to(dtype) for _ in range(2))
            keep = torch.ones(t, s, dtype=torch.bool).tril(s - t)
            want = sdpa(q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1), attn_mask=keep[None, None])
            causal = t == s and t > 1
            got = sdpa(q, k, v, attn_mask=None if causal or t == 1 else keep[None, None], is_causal=causal,
                       enable_gqa=True)
            ok = ok and torch.equal(want, got)
        _memo[key] = ok
    return bool(_memo[key])


def _row_plans(mask: torch.Tensor | None, b: int, t: int, s: int) -> list[tuple[int, int, int, int, Any]]:
    """Per row: its spans (`_row_spans`) and its own mask, None when it sees every key of its span, or
    "causal" when the mask is the plain causal one over its span."""
    plans = []
    for r, (q0, q1, k0, k1) in enumerate(_row_spans(mask, b, t, s)):
        if q1 <= q0:
            plans.append((q0, q1, k0, k1, None))
            continue
        if mask is None:
            keep = torch.ones(q1 - q0, k1 - k0, dtype=torch.bool).tril(k1 - k0 - (q1 - q0))
        else:
            m = mask[r, 0, q0:q1, k0:k1]
            keep = m if m.dtype == torch.bool else m == 0
        if bool(keep.all()):
            plans.append((q0, q1, k0, k1, None))
        elif q1 - q0 == k1 - k0 and torch.equal(keep, torch.ones_like(keep).tril()):
            plans.append((q0, q1, k0, k1, "causal"))
        else:
            plans.append((q0, q1, k0, k1, keep[None, None]))
    return plans


_memo: dict[Any, Any] = {}


def rowwise_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: query b x h x t x d, key/value b x h_kv x s x d;
    returns b x t x h x d. Padded queries get zeros (nothing reads them)."""
    b, h, t, _ = query.shape
    s = key.shape[2]
    # the mask is the same object for every layer of one forward pass: plan the rows once
    if _memo.get("mask") is not attention_mask or _memo.get("shape") != (b, t, s):
        _memo.update(mask=attention_mask, shape=(b, t, s), plans=_row_plans(attention_mask, b, t, s))
    groups = h // key.shape[1]
    fast = _shortcuts_exact(query.dtype)
    sdpa = nn.functional.scaled_dot_product_attention
    rows: list[torch.Tensor | None] = []
    for r, (q0, q1, k0, k1, keep) in enumerate(_memo["plans"]):
        if q1 <= q0:
            rows.append(None)
            continue
        k = key[r:r + 1, :, k0:k1]
        v = value[r:r + 1, :, k0:k1]
        q = query[r:r + 1, :, q0:q1]
        if fast:
            rows.append(sdpa(q, k, v, attn_mask=keep if isinstance(keep, torch.Tensor) else None,
                             is_causal=keep == "causal", scale=scaling, enable_gqa=groups > 1))
            continue
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        full = torch.ones(q1 - q0, k1 - k0, dtype=torch.bool, device=query.device)
        mask = keep if isinstance(keep, torch.Tensor) else (full.tril() if keep == "causal" else full)[None, None]
        rows.append(sdpa(q, k, v, attn_mask=mask, scale=scaling))
    if all(x is not None and x.shape[2] == t for x in rows):  # every row spans every query (decoding steps)
        out = torch.cat(rows)  # type: ignore[arg-type]
    else:
        out = query.new_zeros(b, h, t, value.shape[-1])
        for r, ((q0, q1, *_), x) in enumerate(zip(_memo["plans"], rows, strict=True)):
            if x is not None:
                out[r, :, q0:q1] = x[0]
    return out.transpose(1, 2).contiguous(), None


def use_rowwise_attention(model: nn.Module) -> bool:
    """Switch `model` to `rowwise_attention`; False (model unchanged) where transformers refuses."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTENTION, rowwise_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)
    setter = getattr(model, "set_attn_implementation", None)
    if setter is None:
        return False
    try:
        setter(ATTENTION)
    except (ValueError, ImportError, NotImplementedError):
        return False
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) == ATTENTION


@dataclass(frozen=True)
class RowPlan:
    """How one weight's products stay invariant: fewer rows than `pad_to` are padded up to it, and a product
    whose row count falls in one of `one_thread`'s ranges (inclusive) runs on one thread."""

    pad_to: int
    one_thread: tuple[tuple[int, int], ...] = ()

    def single(self, rows: int) -> bool:
        return any(lo <= rows <= hi for lo, hi in self.one_thread)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread inside the block (its thread count is process-wide: the engine calls from one thread)."""
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _row_plan(forward: Callable[[torch.Tensor], torch.Tensor], in_features: int,
              dtype: torch.dtype) -> RowPlan | None:
    """The plan under which `forward` gives every row bitwise as in a large product (None: none found)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(REFERENCE_ROWS + 5, in_features, generator=gen).to(dtype)
    with torch.inference_mode():
        ref = forward(x[5:])

        def same(m: int, one: bool = False) -> bool:
            with one_thread() if one else contextlib.nullcontext():
                return torch.equal(forward(x[5:5 + m]), ref[:m])

        if not all(same(m) for m in PROBE_LARGE):
            return None
        sampled = [*range(1, PROBE_MAX + 1), *range(PROBE_MAX + PROBE_STEP, PROBE_BANDS_MAX + 1, PROBE_STEP)]
        ok = {m: same(m) for m in sampled}
        for a, b in itertools.pairwise(sampled):  # a band's edges, count by count
            if ok[a] != ok[b]:
                ok.update({m: same(m) for m in range(a + 1, b)})
        if not ok[PROBE_MAX]:
            return None
        pad_to = next(m for m in range(PROBE_MAX, 0, -1) if m == 1 or not ok[m - 1])
        # failing counts above PROBE_MAX as ranges; counts between two failing probes are taken to fail too
        bands: list[tuple[int, int]] = []
        prev = 0
        for m in sorted(ok):
            if m > PROBE_MAX and not ok[m]:
                if bands and bands[-1][1] == prev:
                    bands[-1] = (bands[-1][0], m)
                else:
                    bands.append((m, m))
            prev = m
        if not all(same(m, one=True) for lo, hi in bands for m in {lo, hi, *range(lo, hi + 1, PROBE_STEP)}):
            return None
    return RowPlan(pad_to, tuple(bands))


def pad_linear_rows(model: nn.Module) -> str | None:
    """Make every `nn.Linear` of `model` batch-invariant (`RowPlan`s, one per weight shape, probed once per process);
    returns what it did for the engine's version (`min-rows-16`, `+1thread-57-192`), or None when no plan gave
    invariant rows (model unchanged)."""
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    if not linears:
        return "min-rows-1"
    shapes: dict[tuple[int, int], nn.Linear] = {}
    for m in linears:
        shapes.setdefault(tuple(m.weight.shape), m)  # type: ignore[arg-type]
    # every shape (thresholds can differ with the inner dimension; an adapter's small matrices too), but the
    # largest ones (an output layer over a big vocabulary), whose products the others' thresholds cover
    probes = [kv for kv in shapes.items() if kv[0][0] * kv[0][1] <= PROBE_MAX_WEIGHTS] or [min(
        shapes.items(), key=lambda kv: kv[0][0] * kv[0][1])]
    plans: dict[tuple[int, int], RowPlan] = {}
    for shape, lin in probes:
        key = ("rows", shape, lin.weight.dtype, torch.get_num_threads())
        if key not in _memo:
            _memo[key] = _row_plan(lin, shape[1], lin.weight.dtype)
        if _memo[key] is None:
            return None
        plans[shape] = _memo[key]
    need = max(p.pad_to for p in plans.values())
    for m in linears:
        plan = RowPlan(need, plans[tuple(m.weight.shape)].one_thread if tuple(m.weight.shape) in plans else ())
        if plan.pad_to > 1 or plan.one_thread:
            m.forward = _planned(m.forward, plan)  # type: ignore[method-assign]
    bands = sorted({band for p in plans.values() for band in p.one_thread})
    return f"min-rows-{need}" + "".join(f"+1thread-{lo}-{hi}" for lo, hi in bands)


def _planned(forward: Callable[[torch.Tensor], torch.Tensor], plan: RowPlan) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        n = x.numel() // x.shape[-1]
        rows = max(n, plan.pad_to)
        single = plan.single(rows)
        if rows == n and not single:
            return forward(x)
        flat = x.reshape(n, x.shape[-1])
        if rows > n:
            flat = torch.cat([flat, flat.new_zeros(rows - n, flat.shape[1])])
        with one_thread() if single else contextlib.nullcontext():
            out = forward(flat)[:n]
        return out.reshape(*x.shape[:-1], out.shape[-1])

    return run

"""Pre-packed MKL weights for `nn.Linear` on CPU: float32 bit for bit, bf16 without native bf16 hardware.

`F.linear` on an MKL build of torch calls `sgemm`, which re-packs (copies and
re-lays out) the whole weight matrix at every call. For the small row counts of
decoding (one row per sequence) that packing costs as much as the multiply.
torch ships MKL's packed GEMM as `torch.ops.mkl._mkl_reorder_linear_weight` /
`_mkl_linear` (what its own CPU graph compilers use): pack each weight once at
load, multiply many times.

- float32: the same kernel on the same packed layout, so outputs are bitwise
  identical to `F.linear` once the input is contiguous (`_mkl_linear` rounds
  the rows of a strided input, such as the last position of each row that
  feeds the output layer, as it rounds one-row products: different bits from
  `F.linear`; inputs are made contiguous first); SmolLM2's projections run 1.5-1.9x faster at 16
  rows, its 49k-row output layer 1.7x.
- bfloat16 on a CPU without AVX512-BF16/AMX: torch's bf16 GEMM there is an
  emulation (oneDNN widens both operands to float32, accumulates in float32 and
  rounds the result to bf16) that runs at a fifth of the float32 speed. A bf16
  product is exact in float32, so packing the bf16 weight's values as float32
  and rounding the float32 result once to bf16 is the same arithmetic in
  another summation order: on SmolLM2's shapes 99.99% of outputs are equal to
  torch's (the rest are sums that cancel, where the order shows), 3-4x faster
  at 16 rows.
  On CPUs with native bf16 the bf16 weights are left to oneDNN.

`pack_linear_weights` checks that on this machine and build before using it: a
probe compares packed and plain results on a few shapes and row counts bit for
bit (for bf16: against float32 accumulation rounded once), contiguous and strided inputs, and any failure (or a missing op, a
non-MKL build, a GPU) leaves the model untouched. The packed copies cost memory
(float32: one more copy of the Linear weights; bf16: four more bytes per
weight for the float32 values and as many for the packed copy), so models whose
packed weights would exceed a quarter of the machine's RAM are left unpacked.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def _mkl_ops() -> tuple[Any, Any] | None:
    mkl = getattr(torch.ops, "mkl", None)
    try:
        return mkl._mkl_reorder_linear_weight, mkl._mkl_linear  # type: ignore[union-attr]
    except (AttributeError, RuntimeError):
        return None


def _ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return None


def _cpu_supports(probe: str) -> bool:
    """torch's own CPU feature probe `torch.cpu.<probe>()`; False where this build lacks it."""
    fn = getattr(getattr(torch, "cpu", None), probe, None)
    try:
        return bool(fn()) if fn is not None else False
    except Exception:  # pragma: no cover - probe broken on this build
        return False


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 in hardware (AVX512-BF16 or AMX)."""
    return _cpu_supports("_is_avx512_bf16_supported") or _cpu_supports("_is_amx_tile_supported")


def cpu_kind() -> str:
    """This CPU's model name and the flags that pick its kernels (AVX-512, bf16, AMX): what the report's
    protocol names, since float32 sums can round differently on another kind of CPU."""
    name, flags = "", []
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name") and not name:
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    break
    except OSError:
        return "unknown CPU"
    keep = sorted(f for f in flags if f.startswith(("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx")))
    return f"{name or 'CPU'} ({' '.join(keep) or 'no AVX2/AVX-512'})"


def _bf16_is_emulated() -> bool:
    return not cpu_has_native_bf16()


def _probe(reorder: Any, linear: Any, batch_hint: int, dtype: torch.dtype) -> bool:
    """The packed forward for `dtype` agrees with the plain one on this machine (several shapes and row counts)."""
    gen = torch.Generator().manual_seed(0)
    try:
        for out_f, in_f in ((48, 40), (130, 64), (96, 576)):
            w = torch.randn(out_f, in_f, generator=gen).to(dtype)
            b = torch.randn(out_f, generator=gen).to(dtype)
            forward = _packed_forward(reorder, linear, w, batch_hint)
            for rows in (1, 3, 16, 37):
                # a strided view too: each row's last position, as the output layer reads it
                x = torch.randn(rows, 3, in_f, generator=gen).to(dtype)[:, -1]
                for bias in (None, b):
                    # float32 sums rounded once to `dtype` (for float32: F.linear itself, bit for bit)
                    want = nn.functional.linear(x.float(), w.float(), None if bias is None else bias.float())
                    got = forward(x, bias)
                    if got.dtype != dtype or not torch.equal(got, want.to(dtype)):
                        return False
    except RuntimeError:
        return False
    return True


def _packed_forward(reorder: Any, linear: Any, weight: torch.Tensor,
                    hint: int) -> Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]:
    """x, bias -> x @ weight.T + bias through MKL's packed float32 GEMM, returned in the weight's dtype."""
    wide = weight.detach().float()
    packed = reorder(wide, hint)
    if weight.dtype == torch.float32:
        return lambda x, bias: linear(x.contiguous(), packed, wide, bias, hint)
    dtype = weight.dtype
    return lambda x, bias: linear(x.float().contiguous(), packed, wide, None if bias is None else bias.float(),
                                  hint).to(dtype)


def _packable_dtypes() -> set[torch.dtype]:
    return {torch.float32, torch.bfloat16} if _bf16_is_emulated() else {torch.float32}


def pack_linear_weights(model: nn.Module, batch_hint: int = 16) -> dict[str, int]:
    """Give every packable CPU `nn.Linear` of `model` a packed weight; returns how many were packed per dtype.

    Safe to call on any model: returns {} and changes nothing where packing is
    unavailable, would not pass the probe, or would not fit in memory.
    """
    ops = _mkl_ops()
    if ops is None:
        return {}
    dtypes = _packable_dtypes()
    # a quantized weight (torchao's tensor subclasses) keeps its own kernel: packing would multiply by its values
    linears = [m for m in model.modules() if type(m) is nn.Linear and type(m.weight) is nn.Parameter
               and m.weight.device.type == "cpu" and m.weight.dtype in dtypes
               and not getattr(m, "_aftertune_packed", False)]
    if not linears:
        return {}
    ram = _ram_bytes()
    extra = sum(m.weight.numel() * (4 if m.weight.dtype == torch.float32 else 8) for m in linears)
    if ram is not None and extra > ram // 4:
        return {}
    reorder, linear = ops
    hint = max(1, batch_hint)
    passed = {dt for dt in {m.weight.dtype for m in linears} if _probe(reorder, linear, hint, dt)}
    counts: dict[str, int] = {}
    for m in linears:
        if m.weight.dtype not in passed:
            continue
        forward = _packed_forward(reorder, linear, m.weight, hint)
        m.forward = lambda x, m=m, forward=forward: forward(x, m.bias)  # type: ignore[method-assign]
        m._aftertune_packed = True  # type: ignore[attr-defined]
        name = str(m.weight.dtype).removeprefix("torch.")
        counts[name] = counts.get(name, 0) + 1
    return counts

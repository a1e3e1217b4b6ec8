"""Where and in what precision a tune runs: device, bf16 support, memory, threads, distributed state.

Precision (`precision="auto"`): where the hardware computes bf16 natively (AVX512-BF16/AMX
CPUs, bf16 GPUs), adapter methods keep the frozen base weights in bf16 and the trainable
adapter weights in fp32 (no autocast pass, half the weight memory); full fine-tuning keeps
fp32 master weights with bf16 autocast, since pure-bf16 AdamW drops small updates.
Elsewhere everything is fp32.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from aftertune.errors import UserError
from aftertune.recipes.config import TuneConfig


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' asked for, but torch sees no CUDA GPU; use --device cpu")
    return device


def native_bf16(device: str) -> bool:
    import torch

    if device == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    from aftertune.engines.cpu_linear import cpu_has_native_bf16

    return bool(cpu_has_native_bf16())


@dataclass(frozen=True)
class Precision:
    weights: str  # "bfloat16" | "float32"
    autocast_bf16: bool

    def torch_dtype(self) -> Any:
        import torch

        return torch.bfloat16 if self.weights == "bfloat16" else torch.float32


def choose_precision(cfg: TuneConfig, device: str) -> Precision:
    if cfg.precision == "fp32":
        return Precision("float32", False)
    native = native_bf16(device)
    if cfg.precision == "auto" and not native:
        return Precision("float32", False)
    if cfg.method == "full":
        # explicit bf16 on full fine-tuning: pure bf16 weights (the user's call); auto: fp32 master + autocast
        return Precision("bfloat16", False) if cfg.precision == "bf16" else Precision("float32", True)
    return Precision("bfloat16", False)


def available_memory(device: str) -> int:
    import torch

    if device == "cuda":
        free, _total = torch.cuda.mem_get_info()
        return int(free)
    try:
        pages, size = os.sysconf("SC_AVPHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        avail = pages * size
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
        return int(avail)
    except (OSError, ValueError):
        return 8 << 30


def set_threads(world_size: int) -> None:
    import torch

    from aftertune.engines.hf import cpu_threads

    n = cpu_threads()
    torch.set_num_threads(max(1, n // max(1, world_size)))


def dist_state() -> Any:
    from accelerate import PartialState

    return PartialState()

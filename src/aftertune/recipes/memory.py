"""Plan a step's memory: micro-batch size and gradient checkpointing, from a measured probe.

The activations kept for the backward pass grow with the tokens in a forward pass, and on
the small-to-mid models this project tunes they, not the weights, decide peak memory. How
many bytes each token costs depends on the architecture, the method (LoRA dropout keeps an
extra copy of every adapted layer's input), the dtype and the attention kernel, so it is
measured, not guessed: one forward pass of a short dummy sequence through the model as it
will be trained, with `torch.autograd.graph.saved_tensors_hooks` adding up every tensor
autograd keeps (parameters excluded). That gives bytes per token.

With a budget for activations (`activation_memory_gb`; default min(2 GiB, a quarter of
the free memory) on a CPU, half the free GPU memory on CUDA), the plan is:

1. the whole batch in one pass, if its longest padded batch fits;
2. else the same batch as k micro-batches with gradient accumulation — the same update,
   since the loss is normalised by the step's total target tokens — with the smallest k
   whose micro-batch fits;
3. else (one example alone does not fit) gradient checkpointing, which keeps only each
   layer's input and recomputes the rest during the backward pass.

Recomputation costs about a third more compute, so it is the last resort, not the default.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

GIB = 1 << 30


@dataclass(frozen=True)
class MemoryPlan:
    micro_batch: int
    grad_accum: int  # per optimizer step, including the user's own grad_accum
    checkpointing: bool
    bytes_per_token: int  # measured, without checkpointing
    bytes_per_token_checkpointed: int  # estimated from the measurement
    longest: int  # tokens of the longest example (or of a packed row)
    budget: int
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def probe_bytes_per_token(model: Any, vocab_size: int, tokens: int = 64) -> int:
    """Bytes autograd keeps per token for one forward pass of `model` in training mode (measured)."""
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: Any) -> Any:
        try:
            st = t.untyped_storage()
            ptr = st.data_ptr()
            if ptr not in params:
                seen[ptr] = st.nbytes()
        except (RuntimeError, NotImplementedError):  # tensors without storage (e.g. meta, sparse)
            pass
        return t

    device = next(model.parameters()).device
    was_training = model.training
    model.train()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # dropout must not move RNG
        torch.manual_seed(0)
        ids = torch.randint(0, max(2, vocab_size), (1, tokens), device=device)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
        del out
    if not was_training:
        model.eval()
    return max(1, math.ceil(sum(seen.values()) / tokens))


def default_budget(device: str) -> int:
    from aftertune.recipes.environment import available_memory

    free = available_memory(device)
    if device == "cuda":
        return int(0.5 * free)
    return int(min(2 * GIB, 0.25 * free))


def plan(*, batch_size: int, grad_accum: int, longest: int, bytes_per_token: int, layers: int, hidden: int,
         value_bytes: int, budget: int, checkpointing: bool | str = "auto", micro_batch: int | None = None,
         sequences_per_example: int = 1) -> MemoryPlan:
    """Choose micro-batch size and checkpointing for a step of `batch_size` examples (see the module docstring)."""
    per_example = longest * sequences_per_example
    # with checkpointing: every layer's input is kept, plus one layer's full activations while it is recomputed
    ckpt_per_token = max(1, bytes_per_token // max(1, layers) + layers * hidden * value_bytes)

    def fits(m: int, per_token: int) -> bool:
        return m * per_example * per_token <= budget

    def divisors_desc() -> list[int]:
        return [m for m in range(batch_size, 0, -1) if batch_size % m == 0]

    if micro_batch is not None:
        m = max(1, min(micro_batch, batch_size))
        if batch_size % m:
            m = max(d for d in divisors_desc() if d <= m)
        ck = bool(checkpointing) if checkpointing != "auto" else not fits(m, bytes_per_token)
        return MemoryPlan(m, grad_accum * (batch_size // m), ck, bytes_per_token, ckpt_per_token, longest, budget,
                          "micro_batch_size set in the config")
    if checkpointing != "auto":
        per_token = ckpt_per_token if checkpointing else bytes_per_token
        m = next((d for d in divisors_desc() if fits(d, per_token)), 1)
        return MemoryPlan(m, grad_accum * (batch_size // m), bool(checkpointing), bytes_per_token, ckpt_per_token,
                          longest, budget, "gradient_checkpointing set in the config")
    for m in divisors_desc():
        if fits(m, bytes_per_token):
            why = "the whole batch fits" if m == batch_size else f"split into {batch_size // m} micro-batches to fit"
            return MemoryPlan(m, grad_accum * (batch_size // m), False, bytes_per_token, ckpt_per_token, longest,
                              budget, why)
    m = next((d for d in divisors_desc() if fits(d, ckpt_per_token)), 1)
    return MemoryPlan(m, grad_accum * (batch_size // m), True, bytes_per_token, ckpt_per_token, longest, budget,
                      "one example alone exceeds the budget: gradient checkpointing")


class WindowPeak:
    """The peak memory of one window of a process's life (the training loop), not of the whole process.

    `ru_maxrss` is the process's lifetime peak, so in a pipeline (the base audit runs first, in the same
    process) or a sweep (several runs in one process) it says nothing about one fine-tune. On CUDA the
    allocator's peak is reset at `start` and read at `stop`; on a CPU a background thread samples the
    resident set size every `interval` seconds (the forward pass's activations, which decide a step's peak,
    are held for the whole backward pass, far longer than an interval).

    `growth` is the peak less what the process held when the window began: models an earlier run of the same
    process left loaded count in `peak` but not in `growth`, so only `growth` compares runs of one sweep.
    """

    def __init__(self, device: str, interval: float = 0.01) -> None:
        self.device, self.interval = device, interval
        self.peak = self.begin = 0
        self._stop: Any = None
        self._thread: Any = None

    @property
    def scope(self) -> str:
        return "cuda_allocated" if self.device == "cuda" else "rss_sampled"

    def start(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
            self.begin = int(torch.cuda.memory_allocated())
            return
        import threading

        import psutil

        proc = psutil.Process()
        self.peak = self.begin = proc.memory_info().rss
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.wait(self.interval):
                self.peak = max(self.peak, proc.memory_info().rss)

        self._thread = threading.Thread(target=sample, name="aftertune-peak-memory", daemon=True)
        self._thread.start()

    def stop(self) -> int:
        """The window's peak in bytes."""
        if self.device == "cuda":
            import torch

            self.peak = int(torch.cuda.max_memory_allocated())
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            import psutil

            self.peak = max(self.peak, psutil.Process().memory_info().rss)
        return self.peak

    @property
    def growth(self) -> int:
        """Bytes the window added at its peak over the process's memory when it began."""
        return max(0, self.peak - self.begin)

"""TRL's trainers with two changes: a seeded length-grouped sampler, and (GRPO) one warning silenced.

`LengthGroupedBatches` puts examples of similar length in the same batch, so a batch is
padded to a length close to every member's (the usual `group_by_length`). Unlike
transformers' `LengthGroupedSampler` it draws from its own generator seeded by (seed,
epoch) instead of the global RNG, so a resumed run sees exactly the batches an
uninterrupted one would have seen, and every DDP process computes the same order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Sampler
from trl import DPOTrainer, GRPOTrainer, SFTTrainer


class LengthGroupedBatches(Sampler[int]):
    """Indices such that each optimizer step's examples have similar lengths.

    Per epoch: a seeded permutation is cut into windows of `window` step-batches (`group`
    examples each); each window is sorted by length (longest first) and cut into
    step-batches; the full ones are shuffled (seeded) and a final partial one, if any, comes
    last so boundaries never shift. The rows of that partial batch are the permutation's
    last ones, drawn before sorting: were they cut from the sorted window, the shortest rows
    (often mixed-in refusals) would always wait for the epoch's end, and a run with
    `max_steps` shorter than an epoch would never train on them. The DataLoader then cuts the stream into micro-batches
    of `batch_size`: when a step is split into micro-batches, each step still holds the
    same examples as without the split.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, group: int | None = None,
                 window: int = 50) -> None:
        self.lengths = list(lengths)
        self.batch_size = max(1, batch_size)
        self.group = max(self.batch_size, group or self.batch_size)
        self.seed = seed
        self.window = window
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self) -> list[list[int]]:
        """The step-batches of this epoch, in order."""
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + self.epoch)
        n = len(self.lengths)
        perm = torch.randperm(n, generator=g).tolist()
        span = self.group * self.window
        full: list[list[int]] = []
        rest: list[int] = []
        for start in range(0, n, span):
            window = perm[start:start + span]
            keep = len(window) - len(window) % self.group
            rest.extend(window[keep:])  # left over at random, not the window's shortest rows
            chunk = sorted(window[:keep], key=lambda i: -self.lengths[i])
            full += [chunk[b:b + self.group] for b in range(0, keep, self.group)]
        order = torch.randperm(len(full), generator=g).tolist()
        out = [full[i] for i in order]
        rest.sort(key=lambda i: -self.lengths[i])
        out += [rest[b:b + self.group] for b in range(0, len(rest), self.group)]
        return out

    def __iter__(self) -> Iterator[int]:
        for batch in self.batches():
            yield from batch


class _GroupedMixin:
    """Use `LengthGroupedBatches` when `group_by_length_seeded` is set on the trainer."""

    group_by_length_seeded: bool = False
    step_examples: int | None = None  # examples per optimizer step per process (micro-batch x accumulation)

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        ds = train_dataset if train_dataset is not None else self.train_dataset  # type: ignore[attr-defined]
        if self.group_by_length_seeded and ds is not None and "input_ids" in getattr(ds, "column_names", ()):
            lengths = [len(x) for x in ds["input_ids"]]
            args = self.args  # type: ignore[attr-defined]
            return LengthGroupedBatches(lengths, args.per_device_train_batch_size,
                                        args.data_seed if args.data_seed is not None else args.seed,
                                        group=self.step_examples)
        return super()._get_train_sampler(train_dataset)  # type: ignore[misc]


class AftertuneSFTTrainer(_GroupedMixin, SFTTrainer):
    pass


class AftertuneDPOTrainer(_GroupedMixin, DPOTrainer):
    pass


class AftertuneGRPOTrainer(GRPOTrainer):
    """GRPOTrainer without peft's deprecation warning, which it repeats at every step: switching between the
    policy's and the reference's adapter reads `is_gradient_checkpointing` (`engines.hf.quiet_loading`)."""

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        from aftertune.engines.hf import quiet_loading

        with quiet_loading():
            return super().training_step(*args, **kwargs)

"""Library log lines nobody can act on, dropped where aftertune is used (its CLI, its engines' loads); and the
libraries' own progress bars, off with aftertune's under `--no-progress`."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

# tqdm reads TQDM_* as defaults for every bar (transformers' GGUF conversion uses tqdm directly);
# huggingface_hub's switch also covers transformers' own bars (downloads, shard loading).
_NO_BARS = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


class _ImportNoise(logging.Filter):
    """Drops what torchao's import logs on every command: one warning per CUDA-only extension a CPU machine
    cannot load, and torch's one per enum torchao registers. Nothing a user can act on; torchao's other
    warnings still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not ((msg.startswith("Failed to load ") and "torchao" in msg)
                    or "is an Enum subclass and is now natively supported" in msg)


def quiet_import_noise() -> None:
    """Install the filter once on each logger concerned (idempotent)."""
    for name in ("torchao", "torch.utils._pytree"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _ImportNoise) for f in logger.filters):
            logger.addFilter(_ImportNoise())


@contextlib.contextmanager
def library_progress_bars(enabled: bool) -> Iterator[None]:
    """With `enabled` False, no library draws a progress bar inside the block. Their switches are environment
    variables, set for the block and restored after it, which tqdm and huggingface_hub read when first imported:
    the CLI enters the block before anything imports them."""
    if enabled:
        yield
        return
    before = {k: os.environ.get(k) for k in _NO_BARS}
    os.environ.update(_NO_BARS)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

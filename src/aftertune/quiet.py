"""Library log lines nobody can act on, dropped where aftertune is used (its CLI, its engines' loads)."""

from __future__ import annotations

import logging


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

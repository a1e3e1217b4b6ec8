"""Blocks of results.json that a suite's records support beyond per-metric rows, by suite name.

Each is a function (label → item id → record of that suite, model labels in order, the reference label, the
comparison's `Settings`) → a JSON-ready dict, which `compare_records` puts in the suite's entry as `summary`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aftertune.record import Record
from aftertune.registry import Registry

Summary = Callable[[Mapping[str, Mapping[str, Record]], Sequence[str], str, Any], dict[str, Any]]
SUMMARIES: Registry[Summary] = Registry("suite summary")

SUMMARIES.add("overoptimization", "aftertune.compare.overoptimization_results:summary",
              "best-of-n curves against KL per model, each model at its KL from the reference, and the "
              "over-optimisation test with intervals")

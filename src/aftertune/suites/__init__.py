"""What is measured. Importing this package registers every built-in suite in `SUITES`.

Each suite = items + prompt format + scorer + metrics with a direction
(`suites.base`); `aftertune list suites` shows the registered ones.
"""

from __future__ import annotations

import importlib

from aftertune.suites.base import AGGREGATES, SUITES, Item, Metric, Suite, SuiteContext, sample_items

__all__ = ["AGGREGATES", "SUITES", "Item", "Metric", "Suite", "SuiteContext", "sample_items"]

# Every suite module ships with aftertune; an import error here is a bug and must surface.
_MODULES = ("aggregates", "capability", "perplexity", "task", "ood", "bias", "diversity",
            "safety", "jailbreak", "overrefusal", "toxicity")

for _mod in _MODULES:
    importlib.import_module(f"aftertune.suites.{_mod}")

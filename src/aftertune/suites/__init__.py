"""What is measured. Importing this package registers every built-in suite in `SUITES`.

Each suite = items + prompt format + scorer + metrics with a direction
(`suites.base`). Built in: capability, perplexity, task, ood, bias, diversity,
and the safety family (safety, jailbreak, overrefusal, toxicity).
"""

from __future__ import annotations

import importlib
import logging

from aftertune.suites.base import AGGREGATES, SUITES, Item, Metric, Suite, SuiteContext, sample_items

__all__ = ["AGGREGATES", "SUITES", "Item", "Metric", "Suite", "SuiteContext", "sample_items"]

# Always present; an import error here is a bug and should surface.
_CORE = ("aggregates", "capability", "perplexity", "task", "ood", "bias", "diversity")
# Written separately; a missing module must not break the others.
_OPTIONAL = ("safety", "jailbreak", "overrefusal", "toxicity")

for _mod in _CORE:
    importlib.import_module(f"aftertune.suites.{_mod}")
for _mod in _OPTIONAL:
    try:
        importlib.import_module(f"aftertune.suites.{_mod}")
    except ModuleNotFoundError as _exc:
        if _exc.name != f"aftertune.suites.{_mod}":
            raise
        logging.getLogger(__name__).debug("suite module %s not installed", _mod)

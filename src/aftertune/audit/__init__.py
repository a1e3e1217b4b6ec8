"""Audits: every suite on every model, one per-item record each, resumable.

`plan` settles what an audit runs before any model loads (model labels, the sampled suites,
the judges, defaults included); `runner` executes it through the store (`audit(models,
suites, out_dir=...)`).
"""

from aftertune.audit.plan import label_for
from aftertune.audit.runner import audit

__all__ = ["audit", "label_for"]

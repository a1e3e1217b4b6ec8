"""The run store (SQLite) and the caching engine wrapper built on it."""

from aftertune.store.cached import CachedEngine, cache_key
from aftertune.store.db import Run, Store, new_run_id

__all__ = ["CachedEngine", "Run", "Store", "cache_key", "new_run_id"]

"""The comparison of a run in the store: its records, models and events read, then `compare_records`."""

from __future__ import annotations

from typing import Any

from aftertune.compare.comparison import EVENT_KINDS, RunFacts, Settings, compare_records
from aftertune.store.db import Store


def compare_run(store: Store, run_id: str, reference: str | None = None, *,
                settings: Settings | None = None) -> dict[str, Any]:
    """The results dict of run `run_id` (a unique id prefix will do); UserError when it has nothing to compare."""
    run = store.get_run(run_id)
    events = [e for kind in EVENT_KINDS for e in store.events(run.id, kind=kind)]
    facts = RunFacts(run.id, run.name, run.kind, run.status, run.spec or {}, run.created, run.updated, events)
    return compare_records(store.records(run.id), store.models(run.id), facts, reference, settings=settings)

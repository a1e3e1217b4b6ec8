"""What a run decided besides its comparisons, read from its events into the results dict.

The training-data scan's `scan.*` numbers (so the gate can bound them), the checkpoint
choice and any safety early stop (so the reports show them). Like the rest of the
results, all of it comes from the store: the pipeline records each as an event when it
happens, and the reports are rendered from the results dict alone.
"""

from __future__ import annotations

import json
from typing import Any

from aftertune.fileio import canonical_json
from aftertune.store.db import Store

RISK_LEVELS = ("low", "medium", "high")  # scan.risk_level: 0, 1, 2


def scan_section(payload: dict[str, Any]) -> dict[str, Any]:
    """A scan event's summary: its `scan.*` gate metrics plus `scan.flagged_rate` and `scan.risk_level`."""
    rows = int(payload.get("rows") or 0)
    metrics = {k: float(v) for k, v in (payload.get("metrics") or {}).items() if isinstance(v, int | float)}
    metrics["scan.flagged_rate"] = metrics.get("scan.flagged_rows", 0.0) / rows if rows else 0.0
    risk = payload.get("risk")
    if risk in RISK_LEVELS:
        metrics["scan.risk_level"] = float(RISK_LEVELS.index(risk))
    return {"source": payload.get("source"), "rows": rows, "risk": risk,
            "risk_reasons": list(payload.get("risk_reasons") or []), "metrics": metrics}


def attach_outcomes(results: dict[str, Any], store: Store, run_id: str) -> dict[str, Any]:
    """Add `scan`, `checkpoint_choice` and `early_stop` to `results` when the run has those events."""
    scans = store.events(run_id, kind="scan")
    if scans:
        results["scan"] = scan_section(scans[-1]["payload"])
    choices = store.events(run_id, kind="checkpoint_choice")
    if choices:
        results["checkpoint_choice"] = choices[-1]["payload"]
    stops = {e["payload"].get("tune"): e["payload"] for e in store.events(run_id, kind="early_stop")}
    if stops:
        results["early_stop"] = list(stops.values())
    return results


def add_event_once(store: Store, run_id: str, step: str, kind: str, payload: dict[str, Any]) -> None:
    """Record an event unless the run already holds the same one (a resumed run decides the same again)."""
    as_stored = json.loads(canonical_json(payload))
    if not any(e["payload"] == as_stored for e in store.events(run_id, kind=kind)):
        store.add_event(run_id, step, kind, payload)

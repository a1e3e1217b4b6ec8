"""`aftertune runs list|show`: what the store holds, run by run."""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Annotated, Any

import typer

from aftertune.cli import app

runs_app = typer.Typer(help="Runs recorded in the store (audits, generations, fine-tunes).", no_args_is_help=True)
app.add_typer(runs_app, name="runs")

_STORE_HELP = "The run store (default: $AFTERTUNE_STORE or $AFTERTUNE_HOME/store.sqlite)."
StoreOpt = Annotated[Path | None, typer.Option("--store", help=_STORE_HELP)]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _open(store_path: Path | None) -> Any:
    from aftertune.errors import UserError
    from aftertune.paths import default_store_path
    from aftertune.store import Store

    path = store_path or default_store_path()
    if not path.is_file():
        raise UserError(f"{path}: no store here yet; runs appear once a command such as `aftertune audit` or "
                        "`aftertune generate` has run (or pass --store)")
    store = Store(path)
    store.check()  # reading a damaged store would silently show fewer (or no) runs
    return store


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


@runs_app.command("list")
def list_runs(store_path: StoreOpt = None, as_json: JsonFlag = False) -> None:
    """Every run, newest first: id, kind, name, status, created, number of records."""
    store = _open(store_path)
    try:
        runs = store.list_runs()
        counts: Counter[str] = Counter()
        for run_id, _model, _suite, n in store.record_counts():
            counts[run_id] += n
    finally:
        store.close()
    rows = [{"id": r.id, "kind": r.kind, "name": r.name, "status": r.status, "created": _when(r.created),
             "records": counts[r.id]} for r in runs]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("no runs yet")
        return
    table = [["ID", "KIND", "NAME", "STATUS", "CREATED", "RECORDS"]]
    table += [[r["id"], r["kind"], r["name"], r["status"], r["created"], str(r["records"])] for r in rows]
    typer.echo(_table(table))


def run_summary(store: Any, run_id: str) -> dict[str, Any]:
    """What `runs show` prints: the run, its spec, models, record counts per suite and an events summary."""
    run = store.get_run(run_id)
    per_suite: dict[str, dict[str, int]] = defaultdict(dict)
    for _rid, model, suite, n in store.record_counts(run.id):
        per_suite[suite][model] = n
    events = store.events(run.id)
    kinds = Counter(e["kind"] for e in events)
    timing = {e["step"]: e["payload"].get("seconds") for e in events
              if e["kind"] == "timing" and "seconds" in e["payload"]}
    return {
        "id": run.id, "kind": run.kind, "name": run.name, "status": run.status, "out_dir": run.out_dir,
        "created": _when(run.created), "updated": _when(run.updated), "spec": run.spec,
        "models": [{"label": m["label"], "ref": m["ref"], "fingerprint": m["fingerprint"],
                    "engine": m["info"].get("engine"), "version": m["info"].get("version")}
                   for m in store.models(run.id)],
        "records": dict(per_suite),
        "events": {"total": len(events), "by_kind": dict(kinds), "seconds_by_step": timing},
    }


@runs_app.command("show")
def show_run(run_id: Annotated[str, typer.Argument(help="Run id (a unique prefix is enough).")],
             store_path: StoreOpt = None, as_json: JsonFlag = False) -> None:
    """One run: spec, models, records per suite and model, events."""
    store = _open(store_path)
    try:
        info = run_summary(store, run_id)
    finally:
        store.close()
    if as_json:
        typer.echo(json.dumps(info, indent=2, ensure_ascii=False))
        return
    out = [f"run      {info['id']}",
           f"kind     {info['kind']}",
           f"name     {info['name']}",
           f"status   {info['status']}",
           f"created  {info['created']}   updated {info['updated']}"]
    if info["out_dir"]:
        out.append(f"out dir  {info['out_dir']}")
    out += ["", "spec:"] + ["  " + line for line in json.dumps(info["spec"], indent=2, ensure_ascii=False).splitlines()]
    out += ["", "models:"]
    out += [f"  {m['label']}: {m['ref']}  (fingerprint {m['fingerprint'][:12]}, {m['engine']})" for m in info["models"]]
    if not info["models"]:
        out.append("  (none)")
    out += ["", "records (suite: model=count):"]
    for suite, by_model in sorted(info["records"].items()):
        out.append(f"  {suite}: " + ", ".join(f"{m}={n}" for m, n in sorted(by_model.items())))
    if not info["records"]:
        out.append("  (none)")
    ev = info["events"]
    out += ["", f"events: {ev['total']}" + (" (" + ", ".join(f"{k} {n}" for k, n in sorted(ev["by_kind"].items()))
                                            + ")" if ev["by_kind"] else "")]
    for step, secs in ev["seconds_by_step"].items():
        out.append(f"  {step}: {secs} s")
    typer.echo("\n".join(out))

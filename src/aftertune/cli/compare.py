"""`aftertune compare`, `aftertune report` and `aftertune gate`.

compare: pair two or more models' per-item records and write a report folder.
report:  re-render a run's report.html / report.md / results.json from the store (no model runs).
gate:    check thresholds on a run's comparison; exit 0 when all hold, 1 otherwise, 2 on bad input.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from aftertune.cli import app
from aftertune.errors import UserError
from aftertune.fileio import load_yaml
from aftertune.paths import check_writable, default_store_path

_STORE_HELP = "The run store (default: $AFTERTUNE_STORE or $AFTERTUNE_HOME/store.sqlite)."


@contextlib.contextmanager
def _store(path: Path | None) -> Iterator[Any]:
    """The existing store the runs are read from (these commands never start an empty one), closed however
    the command ends, so a refused command leaves no -wal/-shm files behind."""
    from aftertune.store.db import Store

    p = Path(path or default_store_path()).expanduser()
    if not p.exists():
        raise UserError(f"{p}: no run store there; pass --store (or set AFTERTUNE_STORE to) the store that holds "
                        "the runs (`aftertune runs list` shows them)")
    store = Store(p)
    try:
        yield store
    finally:
        store.close()


def _check_out(out: Path | None) -> None:
    if out is not None:
        check_writable(out, "--out", folder=True)


def _default_out(run_id: str) -> Path:
    return Path("aftertune-runs") / run_id


def _print_summary(results: dict[str, Any], out: Path) -> None:
    v = results["verdict"]
    typer.echo(v["headline"])
    for line in v["worse"]:
        typer.echo(f"  worse:  {line}")
    for line in v["better"]:
        typer.echo(f"  better: {line}")
    gate = results.get("gate")
    if gate is not None:
        typer.echo("gate: passed" if gate["passed"] else f"gate: FAILED ({len(gate['violations'])} violated)")
    typer.echo(f"report: {out / 'report.html'}")


@app.command("compare")
def compare_cmd(
    selectors: Annotated[list[str], typer.Argument(
        metavar="RUN_OR_MODEL...",
        help="Runs (all their models) or RUN:MODEL; the first model is the reference unless --reference says otherwise.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Report folder (default: aftertune-runs/RUN_ID).")] = None,
    reference: Annotated[str | None, typer.Option("--reference", "-r", help="Label of the reference model.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Name of the comparison run.")] = None,
    store_path: Annotated[Path | None, typer.Option("--store", help=_STORE_HELP)] = None,
) -> None:
    """Compare models item by item (paired statistics) and write report.html, report.md and results.json."""
    from aftertune.compare.merge import combine
    from aftertune.report import write_reports

    _check_out(out)
    with _store(store_path) as store:
        run_id, default_ref = combine(store, selectors, name=name, out_dir=str(out) if out else None)
        out = out or _default_out(run_id)
        results = write_reports(store, run_id, out, reference=reference or default_ref)
    typer.echo(f"run {run_id}")
    _print_summary(results, out)


@app.command("report")
def report_cmd(
    run: Annotated[str, typer.Argument(help="Run id (or a unique prefix), or a results.json (or the folder "
                                            "holding one) to re-render without the store.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Report folder (default: the run's own folder).")] = None,
    reference: Annotated[str | None, typer.Option("--reference", "-r", help="Label of the reference model.")] = None,
    store_path: Annotated[Path | None, typer.Option("--store", help=_STORE_HELP)] = None,
) -> None:
    """Re-render a run's reports from the store, without running any model.

    Given a results.json instead (a shared or committed report whose store is elsewhere), the
    reports are rendered again from it alone: same numbers, the current report layout.
    """
    from aftertune.report import write_reports

    _check_out(out)
    source = Path(run) / "results.json" if Path(run).is_dir() else Path(run)
    if source.suffix == ".json" and source.is_file():
        results = _read_results(source)
        if reference:
            raise UserError(f"{source}: --reference needs the run store (results.json holds the comparison "
                            f"against {results['reference']!r}); pass the run id instead")
        from aftertune.report import render

        out = out or source.parent
        render(results, out)
        _print_summary(results, out)
        return
    with _store(store_path) as store:
        r = store.get_run(run)
        out = out or (Path(r.out_dir) if r.out_dir else _default_out(r.id))
        results = write_reports(store, r.id, out, reference=reference)
    _print_summary(results, out)


def _read_results(path: Path) -> dict[str, Any]:
    from aftertune.compare.results_model import load_results

    return load_results(path)


def _parse_threshold(text: str) -> dict[str, Any]:
    """`suite.metric: {rule: value}` (YAML) or `suite.metric.rule=value`."""
    if "=" in text and ":" not in text:
        key, _, value = text.partition("=")
        metric, _, rule = key.strip().rpartition(".")
        try:
            limit: Any = float(value)
        except ValueError:
            raise UserError(f"--threshold {text!r}: {value!r} is not a number") from None
        if not metric:
            raise UserError(f"--threshold {text!r}: write suite.metric.rule=value, e.g. capability.acc.max_decrease=0.02")
        return {metric: {rule: limit}}
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"--threshold {text!r}: not valid YAML ({exc.__class__.__name__}); write e.g. "
                        "'safety.compliance: {max_increase: 0.05}'") from None
    if not isinstance(parsed, dict):
        raise UserError(f"--threshold {text!r}: write e.g. 'safety.compliance: {{max_increase: 0.05}}'")
    return parsed


def _load_thresholds_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path}: thresholds file not found")
    data = load_yaml(path, "thresholds file")
    if isinstance(data, dict) and isinstance(data.get("gate"), dict):
        data = data["gate"]
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of suite.metric to rules (optionally under `gate:`)")
    return data


def _load_results(store_path: Path | None, run: str, reference: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(results, spec) from a run folder / results.json, or computed from the store for a run id."""
    p = Path(run)
    if p.is_dir():
        p = p / "results.json"
    if p.is_file():
        results = _read_results(p)
        if reference and reference != results["reference"]:
            raise UserError(f"{p} compares against {results['reference']!r}; to use --reference {reference}, "
                            "pass the run id so the comparison can be recomputed from the store")
        return results, results.get("protocol", {}).get("spec", {})
    from aftertune.compare.comparison import run_id
    from aftertune.compare.stored_run import compare_run
    from aftertune.run_outcomes import attach_outcomes

    with _store(store_path) as store:
        results = compare_run(store, run, reference)
        attach_outcomes(results, store, run_id(results))
        return results, store.get_run(run_id(results)).spec


@app.command("gate")
def gate_cmd(
    run: Annotated[str, typer.Argument(help="Run id, or a report folder / results.json.")],
    threshold: Annotated[list[str] | None, typer.Option(
        "--threshold", "-t", help="'suite.metric: {max_increase: 0.05}' or suite.metric.rule=value; repeatable. "
                                  "Rules: max_increase, max_decrease, max_ratio, min_ratio, max, min.")] = None,
    thresholds_file: Annotated[Path | None, typer.Option("--thresholds", help="YAML/JSON file of thresholds.")] = None,
    significant_only: Annotated[bool | None, typer.Option(
        "--significant-only/--any-change", help="Count a change only when it is significant.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Compared model to check (default: the primary one).")] = None,
    reference: Annotated[str | None, typer.Option("--reference", "-r", help="Label of the reference model.")] = None,
    store_path: Annotated[Path | None, typer.Option("--store", help=_STORE_HELP)] = None,
) -> None:
    """Check thresholds on a comparison: exit 0 when all hold, 1 when any is violated (one line each)."""
    from aftertune.compare.gate import check, normalize
    from aftertune.report import thresholds_from_spec

    thresholds: dict[str, Any] = {}
    if thresholds_file is not None:
        thresholds.update(_load_thresholds_file(thresholds_file))
    for text in threshold or []:
        for key, rules in _parse_threshold(text).items():
            if isinstance(rules, dict) and isinstance(thresholds.get(key), dict):
                thresholds[key] = {**thresholds[key], **rules}
            else:
                thresholds[key] = rules
    results, spec = _load_results(store_path, run, reference)
    if not thresholds:
        thresholds = dict(thresholds_from_spec(spec) or {})
    if significant_only is not None:
        thresholds["significant_only"] = significant_only
    if model is not None:
        thresholds["model"] = model
    rules, _ = normalize(thresholds)
    violations = check(results, thresholds)
    for v in violations:
        typer.echo(f"FAIL {v.line()}")
    n_rules = sum(len(r) for r in rules.values())
    checked = f"{thresholds.get('model') or results['primary']} vs {results['reference']}"
    if violations:
        typer.echo(f"gate failed: {len(violations)} of {n_rules} threshold(s) violated ({checked})", err=True)
        raise typer.Exit(1)
    typer.echo(f"gate passed: {n_rules} threshold(s) hold ({checked})")

"""`aftertune list suites|judges|engines|variants|defenses|models|presets|trainsets`: what is registered, one line each.

Names and descriptions come from the registries without importing the registered
modules; only `list suites` imports the suite modules (for their default sizes and metrics).
"""

from __future__ import annotations

from collections.abc import Iterable

import typer

from aftertune.cli import app

list_app = typer.Typer(help="List the registered suites, judges, engines and packaged models.",
                       no_args_is_help=True, add_completion=False)
app.add_typer(list_app, name="list")


def _table(rows: Iterable[tuple[str, str]]) -> str:
    rows = list(rows)
    if not rows:
        return "(none)"
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {desc}".rstrip() for name, desc in rows)


@list_app.command("suites")
def list_suites(verbose: bool = typer.Option(False, "--verbose", "-v", help="Also list each suite's metrics.")) -> None:
    """Suites: what an audit can measure (`--suite NAME`)."""
    from aftertune.suites import SUITES

    lines = [(e.name, f"{e.description} [default {e.obj.default_limit or 'all'} items]") for e in SUITES]
    typer.echo(_table(lines))
    if verbose:
        for e in SUITES:
            typer.echo(f"\n{e.name}:")
            typer.echo(_table((f"  {m.name}", f"{m.direction} is better, {m.kind}: {m.description}")
                              for m in e.obj.metrics))


@list_app.command("judges")
def list_judges() -> None:
    """Judges: what turns a response into a verdict (`--judge ROLE=SPEC`)."""
    from aftertune.judges import JUDGES

    typer.echo(_table((e.name, e.description) for e in JUDGES))


@list_app.command("engines")
def list_engines() -> None:
    """Engines: the backends that run models (`--engine NAME`)."""
    from aftertune.engines import ENGINES

    typer.echo(_table((e.name, e.description) for e in ENGINES))


@list_app.command("variants")
def list_variants() -> None:
    """Model variants: suffixes of a model reference (`REF#guard`, `REF#interp:w=0.5`), audited like models."""
    from aftertune.variants import VARIANTS

    typer.echo(_table((e.name, e.description) for e in VARIANTS))


@list_app.command("defenses")
def list_defenses() -> None:
    """Defences against harmful fine-tuning: the values of `aftertune sweep --knob defense` (NAME or NAME:ARG)."""
    from aftertune.sweep.defenses import DEFENSES

    typer.echo(_table((e.name, e.description) for e in DEFENSES))


@list_app.command("models")
def list_models() -> None:
    """Packaged models: pulled from pinned PyPI wheels on first use (any hub id or local dir works too)."""
    from aftertune.sources.catalog import MODELS

    typer.echo(_table((e.name, f"{e.obj.kind}, {e.obj.download_mb:.0f} MB download: {e.description}") for e in MODELS))


@list_app.command("presets")
def list_presets() -> None:
    """Presets: study protocols for `aftertune run --preset NAME` (each says what it scales down)."""
    from aftertune.presets import PRESETS

    typer.echo(_table((e.name, e.description) for e in PRESETS))


@list_app.command("trainsets")
def list_trainsets() -> None:
    """Built-in training sets for `aftertune tune --data NAME` (each has a data card and a held-out split)."""
    from aftertune.trainsets import TRAINSETS

    typer.echo(_table((e.name, e.description) for e in TRAINSETS))

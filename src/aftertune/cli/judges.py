"""`aftertune judges validate SPEC`: measure a judge against labelled data."""

from __future__ import annotations

import json

import typer

from aftertune.cli import app

judges_app = typer.Typer(help="Judges: measure how well they agree with labelled data.",
                         no_args_is_help=True, add_completion=False)
app.add_typer(judges_app, name="judges")


@judges_app.command("validate")
def validate(
    spec: str = typer.Argument(..., help="Judge spec: refusal, toxicity, toxicity:hf=MODEL, toxicity:perspective, "
                                         "llm:MODEL_REF[:rubric=qi|strongreject]."),
    limit: int = typer.Option(None, "--limit", "-n", min=1,
                              help="Judge at most N items per labelled set (seeded, both classes kept)."),
    sets: str = typer.Option(None, "--set", help="Only these labelled sets (comma-separated names)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    store: str = typer.Option(None, "--store", help="Cache the result in this run store instead of the cache folder."),
) -> None:
    """Accuracy, Cohen's kappa, precision, recall, AUROC and the confusion matrix of a judge on the held-out
    rows of its labelled sets (rows that tuned it are left out; cached per judge fingerprint)."""
    from aftertune.judges import build_judge
    from aftertune.judges.validate import format_validity, validity

    judge = build_judge(spec)
    st = None
    if store:
        from aftertune.store import Store

        st = Store(store)
    only = [s.strip() for s in sets.split(",") if s.strip()] if sets else None
    result = validity(judge, store=st, limit=limit, only=only)
    typer.echo(json.dumps(result, indent=2) if as_json else format_validity(result))

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
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    store: str = typer.Option(None, "--store", help="Cache the result in this run store instead of the cache folder."),
) -> None:
    """Accuracy, AUROC, precision and recall of a judge on its labelled sets (cached per judge fingerprint)."""
    from aftertune.judges import build_judge
    from aftertune.judges.validate import format_validity, validity

    judge = build_judge(spec)
    st = None
    if store:
        from aftertune.store import Store

        st = Store(store)
    result = validity(judge, store=st, limit=limit)
    typer.echo(json.dumps(result, indent=2) if as_json else format_validity(result))

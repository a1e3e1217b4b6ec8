"""`aftertune audit`: run suites on one or more models and write the records and the report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aftertune.cli import app
from aftertune.errors import UserError

_STORE_HELP = "The run store (default: $AFTERTUNE_STORE or $AFTERTUNE_HOME/store.sqlite)."
UNALIGNED_HELP = ("The unaligned twin of the aligned model (e.g. Qwen/Qwen2.5-0.5B for Qwen2.5-0.5B-Instruct), for the "
                  "defences that read W_aligned - W_unaligned: #safelora, #resta, #safemerge (criterion=subspace).")


def parse_model_arg(text: str) -> tuple[str | None, str]:
    """`label=REF` or plain `REF` (label then comes from the reference's name)."""
    label, eq, ref = text.partition("=")
    if eq and label and "/" not in label and ":" not in label:
        return label.strip(), ref.strip()
    return None, text.strip()


def parse_judge_arg(text: str) -> tuple[str, str]:
    role, eq, spec = text.partition("=")
    if not eq or not role.strip() or not spec.strip():
        raise UserError(f"--judge {text!r}: write ROLE=SPEC, e.g. --judge harmfulness=llm:MODEL")
    return role.strip(), spec.strip()


@app.command("audit")
def audit_cmd(
    model: Annotated[list[str], typer.Option(
        "--model", "-m", metavar="LABEL=REF", help="A model to audit: label=REF or REF (packaged name, hub id, local dir, adapter dir, "
                              "openai:MODEL@URL). Repeat for several; each is loaded once. A model that ships its own Python code (trust_remote_code) is refused unless AFTERTUNE_TRUST_REMOTE_CODE=1.")],
    suite: Annotated[list[str], typer.Option(
        "--suite", "-s", metavar="NAME[:KEY=VALUE...]", help="Suites, comma-separated or repeated; options after colons, e.g. "
                              "capability:tasks=arc_easy+piqa or task:task=support. `aftertune list suites` shows them.")],
    out: Annotated[Path, typer.Option("--out", "-o", metavar="DIR", help="Folder for run.json, records.jsonl and the reports.")],
    limit: Annotated[str | None, typer.Option(
        "--limit", "-n", metavar="N|all", help="Items per suite (default: each suite's own, a few minutes on a CPU); 'all' for every "
                              "item.")] = None,
    seed: Annotated[int, typer.Option("--seed", metavar="S", help="Which items are sampled (the same for every model).")] = 0,
    judge: Annotated[list[str] | None, typer.Option(
        "--judge", "-j", metavar="ROLE=SPEC",
        help="Judge for a role, e.g. harmfulness=llm:qwen2.5-coder-1.5b-instruct or refusal=refusal:mode=phrases "
             "(`aftertune list judges`); repeatable.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", metavar="N", help="Requests per model batch (local models).")] = 16,
    engine: Annotated[str | None, typer.Option("--engine", metavar="NAME", help="Force a backend: hf, openai or vllm.")] = None,
    unaligned: Annotated[str | None, typer.Option("--unaligned", metavar="REF", help=UNALIGNED_HELP)] = None,
    reference: Annotated[str | None, typer.Option(
        "--reference", metavar="LABEL|REF", help="The model KL is measured from (a --model label, or a reference), "
                                                 "for suites that read it (overoptimization).")] = None,
    store_path: Annotated[Path | None, typer.Option("--store", metavar="FILE", help=_STORE_HELP)] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bars.")] = False,
) -> None:
    """Run suites on one or more models: one record per (model, item), resumable, then the report.

    Running the same command again resumes an interrupted audit: finished items are not recomputed.
    """
    from aftertune.audit import audit, label_for
    from aftertune.sources import check_model_ref
    from aftertune.variants import check_variants, with_unaligned

    if unaligned:
        check_model_ref(unaligned)
    models: dict[str, str] = {}
    for text in model:
        label, ref = parse_model_arg(text)
        label = label or label_for(ref)
        ref = with_unaligned(ref, unaligned)
        if label in models:
            raise UserError(f"--model {text!r}: label {label!r} is used twice; name them, e.g. --model base=REF "
                            "--model tuned=REF")
        check_model_ref(ref)  # before anything is created: no run folder or store run for a bad reference
        check_variants(ref)
        models[label] = ref
    from aftertune.paths import check_writable

    check_writable(out, "--out", folder=True)
    judges = dict(parse_judge_arg(j) for j in judge or [])
    if reference is not None and reference not in models:
        check_model_ref(reference)
    if batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    run_id = audit(models, suite, store=store_path, out_dir=out, limit=limit, seed=seed, judges=judges or None,
                   batch_size=batch_size, engine=engine, reference=models.get(reference or "", reference),
                   progress=not no_progress)
    typer.echo(f"run {run_id}")
    typer.echo(f"records: {out / 'records.jsonl'}")
    if (out / "report.html").exists():
        typer.echo(f"report: {out / 'report.html'}")

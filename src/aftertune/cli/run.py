"""`aftertune run`: the one-command pipeline."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from aftertune.cli import app


@app.command("run")
def run_cmd(
    spec: Annotated[Path | None, typer.Argument(
        help="A pipeline spec (YAML). Without one: the embedded default (Qwen2.5-Coder-0.5B-Instruct, a LoRA "
             "fine-tune on the built-in `support` set, the default suites).")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Run folder for report.html, report.md, results.json and the tuned model "
                            "(default: ./aftertune-runs/NAME).")] = None,
    preset: Annotated[str | None, typer.Option(
        "--preset", "-p", help="A study preset instead of a spec (`aftertune list presets`).")] = None,
    quick: Annotated[bool, typer.Option(
        "--quick", help="The quick preset: SmolLM2-135M, small samples, a few minutes on a laptop CPU.")] = False,
    base: Annotated[str | None, typer.Option("--base", help="Override the base model reference.")] = None,
    unaligned: Annotated[str | None, typer.Option(
        "--unaligned", help="The spec's 'unaligned': the base model's unaligned twin, for the variants safelora, "
                            "resta and safemerge (e.g. Qwen/Qwen2.5-0.5B for Qwen/Qwen2.5-0.5B-Instruct).")] = None,
    print_spec: Annotated[bool, typer.Option(
        "--print-spec", help="Print the full spec (every default) as YAML and exit.")] = False,
    no_gate: Annotated[bool, typer.Option(
        "--no-gate", help="Exit 0 even when a gate threshold is violated (the report still shows it).")] = False,
    store_path: Annotated[Path | None, typer.Option("--store", help="The run store (default: $AFTERTUNE_STORE or "
                                                                   "$AFTERTUNE_HOME/store.sqlite).")] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bars.")] = False,
) -> None:
    """Scan the training data, audit the base model, fine-tune, audit the tuned model and its checkpoints,
    compare with paired statistics, write the reports, and gate.

    Exit code: 0 when every gate threshold holds, 1 when one is violated, 2 for bad input.
    Interrupt it at any time and run the same command again: it resumes and recomputes nothing finished.

    Examples:

      aftertune run --quick

      aftertune run --preset qi-identity-shift --out runs/aoa

      aftertune run --print-spec > my.yaml && aftertune run my.yaml
    """
    import yaml

    from aftertune.errors import UserError
    from aftertune.spec import load_pipeline_spec

    if sum(x is not None and x is not False for x in (spec, preset, quick or None)) > 1:
        raise UserError("give one of SPEC, --preset or --quick")
    overrides = {}
    if quick:
        preset = "quick"
    if preset:
        from aftertune.presets import load_preset

        overrides = load_preset(preset)
    if base:
        overrides["base"] = base
    if unaligned:
        overrides["unaligned"] = unaligned
    pipeline_spec = load_pipeline_spec(spec, overrides)  # every section, the gate's metrics included
    from aftertune.paths import check_writable
    from aftertune.sources import check_model_ref

    check_model_ref(pipeline_spec.base)
    if pipeline_spec.unaligned:
        check_model_ref(pipeline_spec.unaligned)
    run_dir = out or Path("aftertune-runs") / pipeline_spec.name
    if print_spec:
        typer.echo(yaml.safe_dump(pipeline_spec.model_dump(mode="json"), sort_keys=False, width=110))
        return
    from aftertune.pipeline import run_pipeline
    from aftertune.store import Store

    check_writable(run_dir, "the run folder", folder=True)
    pipeline_spec.check_data()
    store = Store(store_path) if store_path else None
    result = run_pipeline(pipeline_spec, run_dir, store=store,
                          progress=not no_progress)
    for v in result.violations:
        print(f"gate: FAIL {v.line()}", file=sys.stderr)
    if result.violations and not no_gate:
        raise typer.Exit(1)

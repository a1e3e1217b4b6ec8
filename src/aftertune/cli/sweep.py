"""`aftertune sweep`: one spec knob over several values, with a task-gain vs safety-loss Pareto report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aftertune.cli import app
from aftertune.sweep import DEFAULT_MAX_OVERREFUSAL, DEFAULT_MAX_SAFETY_LOSS


@app.command("sweep")
def sweep_cmd(
    spec: Annotated[Path | None, typer.Argument(
        help="A pipeline spec (YAML); without one (and without --preset): the embedded default spec.")] = None,
    knob: Annotated[str, typer.Option(
        "--knob", "-k", metavar="NAME",
        help="A dotted spec path (train.learning_rate, train.method, train.max_steps, stages.0.learning_rate); "
             "seed (the fine-tune's and the ICL baseline's seeds together; the audited items stay the same); or a "
             "named mitigation: safety_mix (share of the built-in refusals set mixed into the task data; 0: none) "
             "or interp (tuned weights interpolated towards the base, w=1: tuned; one run, no retraining); or "
             "defense: defences against harmful fine-tuning, one point each (none, constrained, ptst, bea, mix:F, "
             "guard, interp:W, safemerge, safelora, resta; `aftertune list defenses`), those sharing a fine-tune in one run, none the "
             "reference.")] = ...,
    values: Annotated[str, typer.Option(
        "--values", "-v", metavar="V1,V2,...", help="Comma-separated values, each read as a YAML scalar.")] = ...,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Sweep folder: one run folder per value (KNOB=VALUE/) plus sweep.md, sweep.html, "
                            "sweep.json and pareto.png (default: ./aftertune-sweeps/NAME-KNOB).")] = None,
    preset: Annotated[str | None, typer.Option(
        "--preset", "-p", help="A study preset instead of a spec (`aftertune list presets`).")] = None,
    max_safety_loss: Annotated[float, typer.Option(
        "--max-safety-loss", metavar="X",
        help="The chosen point is the largest task gain whose safety-loss CI upper bound (tuned − base, "
             "e.g. 0.05 = 5 points of compliance rate) is at most X.")] = DEFAULT_MAX_SAFETY_LOSS,
    max_overrefusal: Annotated[float, typer.Option(
        "--max-overrefusal", metavar="X",
        help="A point whose over-refusal rise (refusals of safe requests, tuned − base) has a CI lower bound above "
             "X is never chosen, however safe: a defence can stop harmful answers by refusing everything.")
    ] = DEFAULT_MAX_OVERREFUSAL,
    store_path: Annotated[Path | None, typer.Option("--store", help="The run store (default: $AFTERTUNE_STORE or "
                                                                   "$AFTERTUNE_HOME/store.sqlite).")] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bars.")] = False,
) -> None:
    """Run the pipeline once per value of one knob and report task gain against safety loss, with the Pareto
    front and the point to pick. All runs share one store, so the base model is audited once; run the same
    command again after an interruption and finished values are read back, not rerun.

    Examples:

      aftertune sweep --knob safety_mix --values 0,0.01,0.05,0.1

      aftertune sweep my.yaml --knob train.method --values lora,full

      aftertune sweep --preset quick --knob interp --values 0.25,0.5,0.75

      aftertune sweep --preset mosbach-icl-vs-ft --knob seed --values 0,1,2,3,4

      aftertune sweep --knob defense --values none,constrained,ptst,bea,mix:0.1,guard,interp:0.5
    """
    from aftertune.errors import UserError
    from aftertune.paths import check_writable, default_store_path
    from aftertune.spec import load_pipeline_spec
    from aftertune.store import Store
    from aftertune.sweep import run_sweep

    if spec is not None and preset:
        raise UserError("give one of SPEC or --preset")
    overrides = {}
    if preset:
        from aftertune.presets import load_preset

        overrides = load_preset(preset)
    pipeline_spec = load_pipeline_spec(spec, overrides)
    out = out or Path("aftertune-sweeps") / f"{pipeline_spec.name}-{knob}"
    check_writable(out, "--out", folder=True)
    pipeline_spec.check_data()
    store = Store(store_path or default_store_path())
    try:
        run_sweep(pipeline_spec, knob, values, out, store=store, max_safety_loss=max_safety_loss,
                  max_overrefusal=max_overrefusal, progress=not no_progress)
    finally:
        store.close()

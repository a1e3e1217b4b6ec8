"""`aftertune scan`: flag what in a training set could break the model, before fine-tuning on it."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from aftertune.cli import app
from aftertune.errors import UserError

_LEVELS = {"none": 3, "high": 2, "medium": 1, "low": 0}


# aftertune.scan.harmful.DEFAULT_CORPORA, written out so that `--help` does not load the scanner (a test
# keeps the two equal)
DEFAULT_CORPORA = ("advbench", "harmbench", "do-not-answer", "strongreject")


@app.command("scan")
def scan_cmd(
    data: str = typer.Argument(..., help="Training data, read as `aftertune tune` reads it: a .jsonl/.json/.csv/"
                                         ".parquet file (messages, prompt/completion, instruction/input/output, "
                                         "instruction/context/response, DPO prompt/chosen/rejected) or a built-in "
                                         "training set name (e.g. support, identity-shift)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Folder for scan.json and scan.md."),
    fmt: str = typer.Option("table", "--format", "-f", help="What to print: table (summary + first flagged rows) "
                                                             "or json (the whole report)."),
    show: int = typer.Option(10, "--show", min=0, help="Flagged rows to print with the table."),
    judges: bool = typer.Option(True, "--judges/--no-judges",
                                help="Toxicity and refusal judges (packaged models, pulled on first use); "
                                     "--no-judges uses the lexical checks only."),
    suite: list[str] = typer.Option([], "--suite", "-s", help="Evaluation suites to check for contamination, "
                                                              "with options as `audit --suite` takes them, e.g. "
                                                              "ood:exclude=nli-fewshot (repeatable; default: every "
                                                              "registered suite)."),
    corpora: str = typer.Option(",".join(DEFAULT_CORPORA), "--corpora",
                                help="Packaged harmful-request corpora to compare user turns with, comma-separated "
                                     "(pulled on first use); 'none' for the lexicon and built-in seeds only."),
    no_contamination: bool = typer.Option(False, "--no-contamination", help="Skip the evaluation-suite overlap check."),
    fail_on: str = typer.Option("none", "--fail-on", help="Exit 1 when the risk is at least this level: "
                                                          "medium, high or none."),
) -> None:
    """Scan training data: harmful requests and compliant answers, identity-shifting personas, toxic text,
    personal data and secrets, duplicates, and overlap with evaluation suites."""
    from aftertune.paths import check_writable
    from aftertune.scan import ScanConfig, scan_source

    if fmt not in ("table", "json"):
        raise UserError(f"--format {fmt!r}: use table or json")
    if fail_on not in ("none", "medium", "high"):
        raise UserError(f"--fail-on {fail_on!r}: use medium, high or none")
    suites = [s.strip() for item in suite for s in item.split(",") if s.strip()] or None
    names = () if corpora.strip().lower() == "none" else tuple(c.strip() for c in corpora.split(",") if c.strip())
    _check_names(suites or [], names)
    if out is not None:
        check_writable(out, "--out", folder=True)
    config = ScanConfig(contamination=not no_contamination, harmful_corpora=names)
    report = scan_source(data, judges=judges, config=config, suites=suites)
    if out is not None:
        report.write(out)
    if fmt == "json":
        typer.echo(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        for line in report.summary_lines():
            typer.echo(line)
        for note in report.notes:
            typer.echo(f"  note: {note}")
        if report.flags and show > 0:
            typer.echo(f"\nfirst {min(show, len(report.flags))} of {len(report.flags)} flagged rows:")
            for f in report.flags[:show]:
                typer.echo(f"  row {f.row} [{', '.join(f.kinds)}] {f.excerpt}")
                for r in f.reasons:
                    typer.echo(f"      - {r}")
        if out is not None:
            typer.echo(f"\nwrote {out / 'scan.json'} and {out / 'scan.md'}")
    if _LEVELS[report.risk] >= _LEVELS[fail_on]:
        raise typer.Exit(1)


def _check_names(suites: list[str], corpora: tuple[str, ...]) -> None:
    """Names the user typed are checked before the scan: the scanner itself skips (with a note) only suites
    and corpora that exist but cannot be loaded here."""
    from aftertune.scan.harmful import CORPORA
    from aftertune.suites import SUITES
    from aftertune.suites.spec import parse_suite_arg

    for name in corpora:
        if name not in CORPORA:
            raise UserError(f"--corpora {name!r}: unknown harmful-request corpus; use {', '.join(CORPORA)} or none")
    for text in suites:
        for spec in parse_suite_arg(text):
            if spec.name not in SUITES:
                raise UserError(f"--suite {spec.name!r}: unknown suite; known: {', '.join(SUITES.names())}")

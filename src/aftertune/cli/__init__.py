"""The `aftertune` command.

Each sub-command lives in its own module under `aftertune.cli` and adds itself
to `app` on import. User errors print one line and exit 2; `--debug` shows the
traceback.
"""

from __future__ import annotations

import importlib
import os
import signal
import sqlite3
import sys
import threading

import typer
from typer.exceptions import TyperException

from aftertune.errors import UserError
from aftertune.quiet import library_progress_bars, quiet_import_noise

app = typer.Typer(
    name="aftertune",
    help=(
        "Fine-tune a language model and see, side by side with the base model and with paired "
        "statistics, what the fine-tune broke.\n\n"
        "Start with `aftertune run --quick` (a small end-to-end job on packaged models), "
        "`aftertune models list`, or `aftertune COMMAND --help`.\n\n"
        "Safe by default: models that ship their own Python code (trust_remote_code) and pickle weights are "
        "refused; set AFTERTUNE_TRUST_REMOTE_CODE=1 to allow a model's code for models you trust. API keys are read "
        "from environment variables (openai:MODEL@URL?key_env=VAR), never from arguments."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# Sub-command modules, imported for their side effect of registering on `app`.
COMMAND_MODULES = ["models", "generate", "runs", "audit", "listing", "scan", "judges", "run", "tune", "compare", "sweep"]


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
) -> None:
    if debug:
        os.environ["AFTERTUNE_DEBUG"] = "1"


def main(argv: list[str] | None = None) -> None:
    # Nothing leaves the machine unless a command needs it: no usage pings from huggingface_hub (read at import).
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    quiet_import_noise()
    args = argv if argv is not None else sys.argv[1:]
    with library_progress_bars("--no-progress" not in args):  # before anything imports tqdm: it reads them then
        _main(args)


def _main(args: list[str]) -> None:
    for mod in COMMAND_MODULES:
        importlib.import_module(f"aftertune.cli.{mod}")
    debug = "--debug" in args
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)  # a killed run is marked "interrupted", like Ctrl-C
    try:
        rc = app(args=args, standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except UserError as exc:
        if debug:
            raise
        from aftertune.sources.resolve import redact_secrets

        print(f"aftertune: error: {redact_secrets(str(exc))}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except sqlite3.DatabaseError as exc:  # damage found mid-command; `aftertune runs list` checks up front
        if debug:
            raise
        from aftertune.paths import default_store_path
        from aftertune.store.db import damaged_message

        print(f"aftertune: error: {damaged_message(os.environ.get('AFTERTUNE_STORE') or default_store_path(), str(exc))}",
              file=sys.stderr)
        sys.exit(2)
    except UnicodeDecodeError as exc:  # a reader that does not name its file yet: still one line, exit 2
        if debug:
            raise
        print(f"aftertune: error: an input file is not UTF-8 ({exc.reason} at byte {exc.start}); save it as UTF-8 "
              "(--debug shows which reader)", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("aftertune: interrupted; finished work is saved, run the same command again to resume", file=sys.stderr)
        sys.exit(130)
    except SystemExit:
        raise
    except typer.Abort:
        print("aftertune: aborted", file=sys.stderr)
        sys.exit(130)
    except TyperException as exc:  # typer's (vendored click) usage errors arrive here in non-standalone mode
        _usage_error(exc)


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _usage_error(exc: TyperException) -> None:
    """One line and exit 2 for a usage error; `aftertune` alone (or a group alone) still shows its help."""
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoArgsIsHelpError":
        exc.show()  # type: ignore[attr-defined]
        sys.exit(2)
    fmt = getattr(exc, "format_message", None)
    message = fmt() if callable(fmt) else str(exc)
    hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    print(f"aftertune: error: {' '.join(message.split())}{hint}", file=sys.stderr)
    sys.exit(2)

if __name__ == "__main__":
    main()

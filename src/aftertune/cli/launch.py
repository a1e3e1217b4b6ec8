"""Entry point for `accelerate launch -m aftertune.cli.launch tune ...` (used by `aftertune tune --processes N`)."""

from __future__ import annotations

import os
import sys


def main() -> None:
    os.environ["AFTERTUNE_LAUNCHED"] = "1"
    from aftertune.cli import main as cli_main

    cli_main(sys.argv[1:])


if __name__ == "__main__":
    main()

"""One exception type for mistakes a user can fix.

The CLI prints its message on one line and exits 2; anything else is a bug and
keeps its traceback. Messages name the file/field and say how to fix it.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input, a missing resource or a refused action the user can correct."""

    exit_code = 2

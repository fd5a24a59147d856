"""Errors the user can fix: bad input files, bad options.

The CLI maps :class:`InputError` to one line on stderr and exit code 2; everything else is a bug.
"""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad input: a missing or malformed file, an impossible option.

    ``source`` names what is wrong (a file path, or an option such as ``--scale``) so the
    message always says *where* the problem is.
    """

    def __init__(self, source: str | Path | None, problem: str):
        self.source = str(source) if source is not None else None
        self.problem = problem
        super().__init__(f"{self.source}: {problem}" if self.source else problem)

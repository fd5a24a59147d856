"""Errors the user can fix: bad input files, bad options.

The CLI maps :class:`InputError` to one line on stderr and exit code 2; everything else is a bug.
"""

from __future__ import annotations

import dataclasses
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


def check_setting_types(settings: object) -> None:
    """Refuse a settings object whose nested settings (fields whose default is itself a settings dataclass, or made by
    one's class as ``default_factory``) were given as something else, e.g. a tuple for ``TextureSettings``: TypeError
    naming the field, not an AttributeError deep inside the method."""
    for f in dataclasses.fields(settings):
        if dataclasses.is_dataclass(f.default):
            expected = type(f.default)
        elif isinstance(f.default_factory, type) and dataclasses.is_dataclass(f.default_factory):
            expected = f.default_factory
        else:
            continue
        if not isinstance(getattr(settings, f.name), expected):
            raise TypeError(f"{type(settings).__name__}.{f.name} must be a {expected.__name__}, not "
                            f"{type(getattr(settings, f.name)).__name__}")


def fields_as_paths(request: object, *names: str) -> None:
    """Take a frozen request's path fields as :class:`Path` (Python callers may give ``str``); None stays None."""
    for name in names:
        if getattr(request, name) is not None:
            object.__setattr__(request, name, Path(getattr(request, name)))

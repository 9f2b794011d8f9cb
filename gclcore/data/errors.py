"""The one error type of the data layer: it names the file, row, column and the fix."""

from __future__ import annotations

import os
import warnings
from typing import Any


class DataFormatError(ValueError):
    """Input that does not follow the expected format; names the file, row and column at fault.

    ``row`` is the 1-based data row (header excluded); for JSON files it is the entry's key.
    """

    def __init__(self, path: str | os.PathLike, message: str, *, row: Any = None, column: str | None = None,
                 fix: str | None = None):
        self.path, self.row, self.column, self.fix = str(path), row, column, fix
        where = [self.path]
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        text = f"{': '.join([', '.join(where), message])}"
        if fix:
            text += f"\n  fix: {fix}"
        super().__init__(text)


class DataWarning(UserWarning):
    """Input the data layer can work around (e.g. an unrecognised companion file), said once per process."""


_WARNED: set[str] = set()
_FORMAT_OTHER_WARNINGS = warnings.formatwarning


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """A DataWarning is about the user's files: printed as ``warning: <message>``, without the library line
    that issued it; every other warning as Python prints it."""
    if isinstance(category, type) and issubclass(category, DataWarning):
        return f"warning: {message}\n"
    return _FORMAT_OTHER_WARNINGS(message, category, filename, lineno, line)


warnings.formatwarning = _format_warning


def warn_once(message: str, key: str | None = None) -> bool:
    """Issue ``message`` as a :class:`DataWarning` (printed to stderr by Python's default filters) the first
    time ``key`` (default: the message itself) is seen in this process; later calls are silent.

    Returns True when the warning was issued. Evaluation during training repeats the same fallback at
    every step; this keeps it to one warning.
    """
    key = message if key is None else key
    if key in _WARNED:
        return False
    _WARNED.add(key)
    warnings.warn(message, DataWarning, stacklevel=3)
    return True

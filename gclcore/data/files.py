"""Atomic file writes: an interrupted write never leaves a half-written file behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class atomic_write:
    """Context manager: write to a temporary file beside ``path``, fsync, then ``os.replace`` it in.

    An interrupted write leaves the original file untouched (the temporary file is removed).
    """

    def __init__(self, path: str | os.PathLike, *, binary: bool = False, newline: str | None = None):
        self.path = Path(path)
        self.binary, self.newline = binary, newline

    def __enter__(self):
        fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        mode = "wb" if self.binary else "w"
        kwargs = {} if self.binary else {"encoding": "utf-8", "newline": self.newline}
        self._fh = os.fdopen(fd, mode, **kwargs)
        return self._fh

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self._fh.flush()
                os.fsync(self._fh.fileno())
            self._fh.close()
            if exc_type is None:
                # keep an existing file's mode; new files get the usual 0666 & ~umask, not mkstemp's 0600
                os.chmod(self._tmp, self.path.stat().st_mode & 0o777 if self.path.exists() else 0o666 & ~_umask())
                os.replace(self._tmp, self.path)
        finally:
            if os.path.exists(self._tmp):
                os.unlink(self._tmp)
        return False


def write_csv(frame: pd.DataFrame, path: str | os.PathLike, chunk_rows: int = 500_000) -> None:
    """Write ``frame`` as a plain pandas CSV (minimal quoting, no index), atomically, in chunks."""
    with atomic_write(path, newline="") as fh:
        for start in range(0, max(len(frame), 1), chunk_rows):
            frame.iloc[start:start + chunk_rows].to_csv(fh, index=False, header=start == 0, lineterminator="\n")

"""A run's log: one JSON line per logged step or evaluation, optionally mirrored to TensorBoard.

``log.jsonl`` rows are either training rows (``step``, ``epoch``, ``loss``, ``lr``, ``logit_scale``,
``samples_per_s``, ``data_wait``: the share of the time since the last logged step the loop waited for
the data loader) or evaluation rows (``step``, ``epoch``, ``eval/<metric>``, and ``eval/corpus_size`` /
``eval/corpus_total``: the products searched, a dev sub-corpus when smaller than the split's corpus). The trainer writes it
through :class:`RunLog`; the book reads it back with :func:`read_history` and :func:`split_history`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from gclcore.data import atomic_write

EVAL_KEY = "eval/NDCG@10"
"""The column that marks an evaluation row."""


class RunLog:
    """Appends rows to ``history`` (the list the train state saves) and, when ``write`` (rank 0), to
    ``<run>/log.jsonl`` and TensorBoard.

    On start the file is rewritten from ``history``: after a resume, rows logged after the last saved
    state are gone from the file too, so the log and the state agree.
    """

    def __init__(self, run_dir: str | os.PathLike, history: list[dict], write: bool = True,
                 tensorboard: bool = False):
        self.path, self.history, self.write = Path(run_dir) / "log.jsonl", history, write
        self.writer = None
        if write:
            with atomic_write(self.path) as fh:
                fh.writelines(json.dumps(row) + "\n" for row in history)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def append(self, row: dict) -> None:
        self.history.append(row)
        if not self.write:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for key, value in row.items():
                if key not in ("step", "epoch"):
                    self.writer.add_scalar(key, value, row["step"])

    def evaluated_steps(self) -> set[int]:
        return {row["step"] for row in self.history if EVAL_KEY in row}

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Throughput:
    """Samples per second, and the share of the time spent waiting for the data loader, over the window
    since the last :meth:`window` call (the steps between two logged ones), leaving out what runs
    :meth:`excluded` (evaluation, checkpoints).

    A share near 1 means the loader, not the model, sets the pace (more DataLoader ``workers``, an image
    store: :mod:`gclcore.image_store`). It is the time the loop is blocked on the loader's next batch
    (epoch ends included, where the workers stop and the next epoch's start). The trainer's step waits for
    the device once (its finite-gradient check; with fp16, the gradient scaler's step), so on a GPU that is
    roughly time the device idles. Under torchrun each rank has its own; the log shows the largest.
    """

    def __init__(self):
        self.start, self.samples, self.waited = time.perf_counter(), 0, 0.0

    def add(self, samples: int) -> None:
        self.samples += samples

    def timed(self, batches) -> Iterator:
        """``batches`` as they come, the time blocked on each next one counted as waiting for data."""
        return _TimedBatches(iter(batches), self)

    @contextlib.contextmanager
    def excluded(self):
        """The time spent inside is neither training nor waiting: the window leaves it out."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.start += time.perf_counter() - start

    def window(self) -> dict[str, float]:
        """``samples_per_s`` and ``data_wait`` (a share in [0, 1]) of the window, which then starts again."""
        now = time.perf_counter()
        elapsed = max(now - self.start, 1e-9)
        row = {"samples_per_s": self.samples / elapsed, "data_wait": min(self.waited / elapsed, 1.0)}
        self.start, self.samples, self.waited = now, 0, 0.0
        return row


class _TimedBatches:
    """An iterator over ``batches`` that adds the time blocked in each ``next`` to ``clock.waited``. It holds
    no batch itself: once the loop lets go of one (on a GPU, its pixels), it is freed."""

    def __init__(self, batches: Iterator, clock: Throughput):
        self.batches, self.clock = batches, clock

    def __iter__(self):
        return self

    def __next__(self):
        start = time.perf_counter()
        try:
            return next(self.batches)
        finally:
            self.clock.waited += time.perf_counter() - start


def read_history(run_dir: str | os.PathLike) -> pd.DataFrame:
    """A run's ``log.jsonl`` as a DataFrame: training rows have ``loss``, evaluation rows ``eval/*``."""
    with open(Path(run_dir) / "log.jsonl", encoding="utf-8") as fh:
        return pd.DataFrame([json.loads(line) for line in fh if line.strip()])


def split_history(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(training rows, evaluation rows)`` of a history, each without the other's all-empty columns."""
    train = frame[frame["loss"].notna()] if "loss" in frame else frame.iloc[0:0]
    evals = frame[frame[EVAL_KEY].notna()] if EVAL_KEY in frame else frame.iloc[0:0]
    return train.dropna(axis=1, how="all"), evals.dropna(axis=1, how="all")

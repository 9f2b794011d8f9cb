"""Stopping a training run cleanly on SIGTERM / SIGINT (preemption, ``scancel``, Ctrl-C, a notebook's stop).

While the training loop runs, :class:`GracefulStop` catches the first SIGTERM or SIGINT and only records
it; the loop asks :meth:`GracefulStop.requested` after every optimiser step, saves a resumable state and
raises :class:`TrainingInterrupted`, which the command lines turn into exit code :data:`EXIT_INTERRUPTED`
(75, ``EX_TEMPFAIL``: "try again", which job schedulers can requeue on). A second signal is not caught:
Ctrl-C twice aborts at once, as does a second SIGTERM (a scheduler's kill after its grace period).

Under torchrun every rank catches its own signal; the ranks agree on the step to stop at through one
all-reduce per step (a save is a collective, so they must stop together).
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch stays out of `python -m gclcore.experiments list` (the Makefile's)
    import torch

    from gclcore import distributed

EXIT_INTERRUPTED = 75
"""Exit status of a training command stopped by a signal after saving its state (``os.EX_TEMPFAIL``)."""

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(Exception):
    """A run stopped by a signal at a step boundary, its state saved: ``resume="latest"`` continues it."""


class GracefulStop:
    """Context manager that turns the first SIGTERM / SIGINT into a request to stop after the current step.

    Handlers are installed only in the main thread (Python delivers signals there); elsewhere nothing is
    caught and :meth:`requested` only reports other ranks' requests. The previous handlers come back on exit.
    """

    def __init__(self, ctx: distributed.Context, device: torch.device):
        self.ctx, self.device = ctx, device
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._catch) for sig in SIGNALS}
        return self

    def __exit__(self, *exc) -> bool:
        self._restore()
        return False

    def _catch(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name
        self._restore()  # the next signal acts as it would have without us
        print(f"\n{self.signal_name} received: stopping after the current step, with the state saved "
              f"(send it again to stop at once, without saving)", file=sys.stderr, flush=True)

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def requested(self) -> bool:
        """Whether any rank has caught a signal (an all-reduce under torchrun: call on every rank)."""
        if not self.ctx.enabled:
            return self.signal_name is not None
        from gclcore import distributed

        return distributed.reduce_over_ranks(float(self.signal_name is not None), self.ctx, self.device, "max") > 0

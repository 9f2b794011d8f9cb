"""Checkpoints and the train state: what a run saves, and how ``resume`` picks it up exactly.

A run directory holds:

- ``model.pt`` and ``checkpoints/epoch_N.pt``: open_clip's checkpoint format (``{"epoch", "step", "name",
  "state_dict"}``), loadable by :func:`gclcore.models.load_encoder` and by open_clip itself;
- ``checkpoints/state-latest.pt``: everything needed to continue bit for bit: model, optimiser and
  grad-scaler states, the :class:`TrainState` (step, epoch, position in the epoch, log history), the RNG
  states of every rank and the config. It stays when the run ends (so ``epochs`` or ``max_steps`` can be
  raised and the run continued) unless ``keep_state=false``.

Every file is written atomically (a kill mid-save leaves the previous file intact). A run checks before its
first step that its folder's disk has room for the checkpoints it will write (:func:`disk_shortfall`), and
a save that fails says which file, how large and how much room its disk has (:class:`CheckpointWriteError`).
"""

from __future__ import annotations

import dataclasses
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gclcore import distributed
from gclcore.data import atomic_write


@dataclass
class TrainState:
    """Where a run is: optimiser steps taken, the epoch and the batches of it already done, and the log."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    history: list[dict] = field(default_factory=list)

    def advance(self) -> None:
        """One optimiser step done."""
        self.step += 1
        self.batch_in_epoch += 1

    def next_epoch(self) -> None:
        self.epoch, self.batch_in_epoch = self.epoch + 1, 0


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the message names the file, its size and its disk's free space."""


class NotEnoughDiskSpace(OSError):
    """A run's folder is on a disk with less free space than the checkpoints the run will write there."""


def tensor_bytes(payload) -> int:
    """Bytes of the tensors in ``payload`` (tensors in nested dicts, lists and tuples; anything else counts
    0): what a ``torch.save`` of it holds, less its pickled structure (kilobytes)."""
    if isinstance(payload, torch.Tensor):
        return payload.numel() * payload.element_size()
    if isinstance(payload, dict):
        return sum(tensor_bytes(value) for value in payload.values())
    if isinstance(payload, (list, tuple)):
        return sum(tensor_bytes(value) for value in payload)
    return 0


def megabytes(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:,.0f} MiB"


def free_bytes(path: str | Path) -> int:
    """Free space on the disk that holds ``path`` (its nearest existing folder when it does not exist yet)."""
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


WRITE_FAILURES = ("unexpected pos", "PytorchStreamWriter", "write")
"""Words of torch.save's own RuntimeErrors when the file, not the payload, failed (its zip writer reports a
short write as ``unexpected pos N vs M``)."""


def save_file(path: str | Path, payload: dict) -> None:
    """``torch.save`` through an atomic write (parent folders created). A failed write raises
    :class:`CheckpointWriteError` with the payload's size and the disk's free space (a full disk surfaces
    from ``torch.save`` as a bare ``RuntimeError: ... unexpected pos``); the previous file stays intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_write(path, binary=True) as fh:
            torch.save(payload, fh)
    except (OSError, RuntimeError) as error:
        if not isinstance(error, OSError) and not any(word in str(error) for word in WRITE_FAILURES):
            raise  # not the file: e.g. a device error while the tensors were copied out
        size = tensor_bytes(payload)
        try:
            free = free_bytes(path.parent)  # the partial file is gone by now
        except OSError:
            free = None
        room = "its disk's free space is unknown" if free is None else f"its disk has {megabytes(free)} free"
        fix = (": too little. Free space there, or give the run another output_dir (resume=latest continues "
               "from the last state saved)" if free is not None and free < size else "")
        raise CheckpointWriteError(f"could not write {path}: {error}. It holds {megabytes(size)} of tensors and "
                                   f"{room}{fix}") from error


def bytes_to_write(model: torch.nn.Module, trained: list[torch.nn.Parameter], epoch_checkpoints: int,
                   state_copies: int = 1) -> dict[str, int]:
    """The most a run's checkpoints occupy of its folder's free space at once, by file (tensor bytes):
    ``state_copies`` full states (the model's weights + AdamW's two moments per trained parameter: each save
    after the first writes a new file beside the last, so 2 for a run that saves more than once and had no
    state; 1 for one save, or when the saved state is already on the disk), ``model.pt`` (the weights) and
    ``epoch_checkpoints`` copies of ``epoch_N.pt``."""
    weights = tensor_bytes(model.state_dict())
    moments = 2 * tensor_bytes(trained)  # exp_avg and exp_avg_sq, in the params' dtype
    copies = f" x {state_copies}" if state_copies > 1 else ""
    needed = {f"checkpoints/state-latest.pt{copies}": state_copies * (weights + moments), "model.pt": weights}
    if epoch_checkpoints > 0:
        needed[f"checkpoints/epoch_N.pt x {epoch_checkpoints}"] = epoch_checkpoints * weights
    return needed


def disk_shortfall(output_dir: str | Path, needed: dict[str, int]) -> str | None:
    """Why ``output_dir``'s disk cannot take the checkpoints ``needed`` (:func:`bytes_to_write`) adds up to,
    with 1% + 16 MiB for the files' own structure; None when it can. A run that starts anyway would fail
    at a save, at the end at the latest."""
    total = sum(needed.values())
    required, free = total + total // 100 + 16 * 2**20, free_bytes(output_dir)
    if free >= required:
        return None
    files = ", ".join(f"{name} {megabytes(size)}" for name, size in needed.items())
    return (f"{output_dir} is on a disk with {megabytes(free)} free, and this run's checkpoints need at least "
            f"{megabytes(required)} there ({files}; and 1% + 16 MiB for the files' structure). Free space on "
            f"that disk, give the run another output_dir, or keep fewer files (epoch_checkpoints=false; one state, "
            f"at the end only: save_every=-1 save_every_minutes=0)")


def save_model(path: str | Path, model: torch.nn.Module, state: TrainState, name: str) -> None:
    """An open_clip-format checkpoint of ``model`` (``name``: the model name, for the loader)."""
    save_file(path, {"epoch": state.epoch, "step": state.step, "name": name, "state_dict": model.state_dict()})


def rng_state() -> dict:
    """This process's torch, NumPy, Python and CUDA RNG states."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class SaveClock:
    """Time-based state saves (``save_every_minutes``): due once that long has passed since the last save.

    Asked at log steps only; under torchrun the ranks agree (rank clocks differ: a save is a collective),
    at the cost of one all-reduce per logged step."""

    now = staticmethod(time.monotonic)

    def __init__(self, minutes: float, ctx: distributed.Context, device: torch.device):
        self.seconds, self.ctx, self.device = minutes * 60, ctx, device
        self.reset()

    def reset(self) -> None:
        self.last = self.now()

    def due(self) -> bool:
        if not self.seconds:
            return False
        late = float(self.now() - self.last >= self.seconds)
        return distributed.reduce_over_ranks(late, self.ctx, self.device, "max") > 0


def remove_partial_saves(output_dir: str | Path) -> list[Path]:
    """Delete the temporary files a save killed mid-write left in the run folder (``.NAME.*.tmp`` of
    :class:`~gclcore.data.atomic_write`, beside the files they were replacing); returns them. Call at the
    start of a run, on rank 0, before anything writes there."""
    out = Path(output_dir)
    partial = [path for folder in (out, out / "checkpoints") if folder.is_dir() for path in folder.glob(".*.tmp")]
    for path in partial:
        path.unlink()
    return partial


def state_path(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints" / "state-latest.pt"


def remove_state(output_dir: str | Path) -> None:
    """Delete the run's ``state-latest.pt``, and its ``checkpoints`` folder when nothing else is in it."""
    path = state_path(output_dir)
    path.unlink()
    if not any(path.parent.iterdir()):
        path.parent.rmdir()


def resume_path(output_dir: str | Path, resume: str) -> Path | None:
    """The state file to resume from: ``""`` none; ``"latest"`` the run's own state if it exists (a fresh
    start otherwise); anything else a path, which must exist."""
    if not resume:
        return None
    path = state_path(output_dir) if resume == "latest" else Path(resume)
    if resume == "latest" and not path.exists():
        return None
    if not path.exists():
        raise FileNotFoundError(f"resume state {path} not found (resume= takes 'latest' or a state-latest.pt path)")
    return path


def save_state(output_dir: str | Path, model, optimizer, scaler, state: TrainState, config,
               ctx: distributed.Context) -> None:
    """Write ``state-latest.pt`` on rank 0 with every rank's RNG state (a collective: call on all ranks)."""
    rngs = distributed.gather_objects(rng_state(), ctx)
    if ctx.is_main:
        save_file(state_path(output_dir), {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            **dataclasses.asdict(state), "rng": rngs[0], "rank_rng": rngs if ctx.enabled else [],
            "config": dataclasses.asdict(config)})


def load_state(path: str | Path, model, optimizer, scaler, ctx: distributed.Context, config=None) -> TrainState:
    """Restore model, optimiser, scaler and this rank's RNG from a state file; returns the train state.

    With ``config`` (a resolved :class:`~gclcore.config.TrainConfig`), a state saved by a run of another
    configuration is refused (ValueError naming the differences) instead of being continued."""
    saved = torch.load(path, map_location="cpu", weights_only=False)
    conflicts = config.resume_conflicts(saved.get("config", {})) if config is not None else []
    if conflicts:
        raise ValueError(f"{path} was saved by a run with another configuration ({'; '.join(conflicts)}): "
                         f"resume='' starts the run over in {Path(config.output_dir)}, or choose another output_dir")
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scaler.load_state_dict(saved["scaler"])
    rank_rngs = saved.get("rank_rng", [])
    set_rng_state(rank_rngs[ctx.rank] if ctx.enabled and len(rank_rngs) == ctx.world else saved["rng"])
    return TrainState(saved["step"], saved["epoch"], saved["batch_in_epoch"], saved["history"])

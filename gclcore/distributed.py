"""Data-parallel training under torchrun: one process per device, in-batch negatives over all of them.

    torchrun --nproc-per-node 8 -m gclcore.train --config FILE.yaml

Nothing in the config changes: :func:`gclcore.train.train` reads torchrun's environment (``WORLD_SIZE``,
``RANK``, ``LOCAL_RANK``), and with ``WORLD_SIZE > 1`` it

- starts the process group (``nccl`` on GPUs, ``gloo`` on CPUs; ``dist_backend`` overrides) and puts each
  rank on ``cuda:LOCAL_RANK``;
- makes every rank start from rank 0's weights (:func:`broadcast_parameters`);
- draws the **global** batch (``batch_size`` per rank x ``WORLD_SIZE``) with the same sampler as a single
  process and gives rank r its r-th contiguous slice (:func:`shard`);
- gathers embeddings, weights and ids across ranks inside the loss (:func:`all_gather_with_grad`: each
  rank's rows against the global batch's columns, as open_clip's ``local_loss`` + ``gather_with_grad``);
- averages gradients across ranks (:class:`GradientSync`): by default with PyTorch's
  ``DistributedDataParallel``, whose bucketed all-reduces run while backward is still computing the
  earlier layers' gradients (``grad_sync="overlap"``), or with one flat all-reduce after backward
  (``"after_backward"``); either way the update is the single-process update on the global batch;
- evaluates, logs and saves on rank 0 only.

So ``N`` ranks x ``batch_size=b`` follow the same trajectory as one process with ``batch_size=N*b`` (up to
floating-point summation order; tested with 2 CPU ranks on gloo).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Context:
    """This process's place in the job: ``rank`` of ``world`` processes, ``local_rank`` on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_environment() -> Context:
    """The context torchrun describes in the environment (a single process when it does not)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return Context(rank=int(os.environ.get("RANK", "0")) if world > 1 else 0, world=world,
                   local_rank=int(os.environ.get("LOCAL_RANK", "0")) if world > 1 else 0)


_STARTED_HERE = False


def start(ctx: Context, backend: str = "auto", timeout_min: int = 60) -> torch.device | None:
    """Join the process group unless the caller already did; returns the rank's device
    (``cuda:LOCAL_RANK``, or CPU without GPUs), or None for a single process."""
    import datetime

    import torch.distributed as dist

    global _STARTED_HERE
    if not ctx.enabled:
        return None
    cuda = torch.cuda.is_available()
    if backend == "auto":
        backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=ctx.rank, world_size=ctx.world,
                                timeout=datetime.timedelta(minutes=timeout_min))
        _STARTED_HERE = True
    if cuda:
        torch.cuda.set_device(ctx.local_rank)
        return torch.device("cuda", ctx.local_rank)
    return torch.device("cpu")


def shard(global_batches: list[np.ndarray], ctx: Context) -> list[np.ndarray]:
    """Rank r's part of each global batch: its r-th contiguous slice of ``len(batch) / world`` rows."""
    if not ctx.enabled:
        return global_batches
    parts = []
    for batch in global_batches:
        if len(batch) % ctx.world:
            raise ValueError(f"a global batch of {len(batch)} rows does not split over {ctx.world} ranks")
        local = len(batch) // ctx.world
        parts.append(batch[ctx.rank * local:(ctx.rank + 1) * local])
    return parts


def all_gather_with_grad(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate ``tensor`` from every rank in rank order (gradients flow back to each rank's slice);
    returns it with the offset of this rank's rows. Every rank must pass the same shape."""
    import torch.distributed as dist
    import torch.distributed.nn

    parts = torch.distributed.nn.functional.all_gather(tensor)
    return torch.cat(parts, dim=0), dist.get_rank() * tensor.shape[0]


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (randomly initialised heads must agree)."""
    import torch.distributed as dist

    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def average_gradients(parameters: list[torch.nn.Parameter], world: int) -> None:
    """Replace each gradient by its mean over ranks, with one all-reduce of a flat buffer.

    Parameters without a gradient are skipped; every rank runs the same graph, so they agree on which.
    """
    import torch.distributed as dist

    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)  # SUM: gloo has no AVG
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def reduce_over_ranks(value: float, ctx: Context, device: torch.device, op: str = "mean") -> float:
    """A scalar over ranks: their ``mean`` (the global loss) or ``max`` (any rank's flag; the slowest rank's
    share of waiting for data). Every rank gets it."""
    import torch.distributed as dist

    if op not in ("mean", "max"):
        raise ValueError(f"op must be mean or max, not {op!r}")
    if not ctx.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return tensor.item() / (ctx.world if op == "mean" else 1)


def gather_objects(obj, ctx: Context) -> list:
    """``obj`` from every rank, in rank order (``[obj]`` for a single process)."""
    import torch.distributed as dist

    if not ctx.enabled:
        return [obj]
    objects = [None] * ctx.world
    dist.all_gather_object(objects, obj)
    return objects


def barrier(ctx: Context) -> None:
    import torch.distributed as dist

    if ctx.enabled:
        dist.barrier()


def stop(ctx: Context) -> None:
    """Wait for every rank, and leave the process group if :func:`start` created it."""
    import torch.distributed as dist

    global _STARTED_HERE
    barrier(ctx)
    if _STARTED_HERE:
        dist.destroy_process_group()
        _STARTED_HERE = False


def main_first(ctx: Context, build):
    """``build()`` on rank 0 first, then on the other ranks (e.g. rank 0 writes a shared cache that the
    others then read instead of computing it again)."""
    if not ctx.is_main:
        barrier(ctx)
    value = build()
    if ctx.is_main:
        barrier(ctx)
    return value


class _BatchEmbedding(torch.nn.Module):
    """Every field's embedding of a batch in one ``forward``: the unit ``DistributedDataParallel`` wraps
    (the towers call ``encode_text`` / ``encode_image`` once per field, and DDP expects one forward per
    backward)."""

    def __init__(self, towers):
        super().__init__()
        self.model, self.embed = towers.model, towers.embed

    def forward(self, batch):
        return self.embed(batch)


class GradientSync:
    """How one step's gradients become the global batch's: embeds the batch, and averages the gradients
    over ranks.

    - one process: :meth:`embed` is ``towers.embed``, nothing is averaged;
    - ``mode="overlap"`` (the default under torchrun): the towers run inside
      ``torch.nn.parallel.DistributedDataParallel`` (gradient buckets of 25 MB all-reduced as soon as
      backward has filled them, overlapping communication with the rest of backward). Parameters that a
      step does not reach (a Hugging Face pooler, the image head of a text-only run) are found each step
      (``find_unused_parameters``). The logit scale is used by the loss outside the towers' forward, so DDP
      ignores it and :meth:`finish` averages its one gradient. Buffers (BatchNorm statistics) stay per
      rank as with ``"after_backward"``; rank 0's are the ones saved;
    - ``mode="after_backward"``: :func:`average_gradients` after backward, one flat all-reduce.

    With gradient accumulation (:meth:`accumulating`), DDP's ``no_sync`` keeps the all-reduce for the
    last micro-batch's backward, so a step communicates once whatever ``accum_freq`` is.
    """

    def __init__(self, towers, ctx: Context, mode: str = "overlap"):
        self.towers, self.world, self.ddp, self.ignored = towers, ctx.world, None, []
        if mode not in ("overlap", "after_backward"):
            raise ValueError(f"grad_sync must be overlap or after_backward, not {mode!r}")
        if ctx.enabled and mode == "overlap":
            module = _BatchEmbedding(towers)
            self.ignored = [p for name, p in module.named_parameters() if name == "model.logit_scale"]
            torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                module, ["model.logit_scale"])
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                module, broadcast_buffers=False, find_unused_parameters=True, gradient_as_bucket_view=True)

    def embed(self, batch) -> dict[str, torch.Tensor]:
        return self.ddp(batch) if self.ddp is not None else self.towers.embed(batch)

    def accumulating(self, last: bool):
        """Context for one micro-batch's forward and backward: gradients are only summed locally unless
        ``last``."""
        return self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()

    def finish(self, parameters: list[torch.nn.Parameter]) -> None:
        """After the step's last backward: average what is not averaged yet."""
        if self.world == 1:
            return
        average_gradients(self.ignored if self.ddp is not None else parameters, self.world)

"""Helpers of gclcore.distributed in a single process and in a 2-process gloo group on CPU."""
import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from gclcore import distributed


def test_single_process_context_from_an_empty_environment(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx = distributed.from_environment()
    assert (ctx.rank, ctx.world, ctx.enabled, ctx.is_main) == (0, 1, False, True)
    assert distributed.start(ctx) is None
    batches = [np.arange(8)]
    assert distributed.shard(batches, ctx) is batches
    assert distributed.gather_objects({"a": 1}, ctx) == [{"a": 1}]


def test_torchrun_environment_is_read(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    ctx = distributed.from_environment()
    assert (ctx.rank, ctx.world, ctx.local_rank, ctx.is_main) == (3, 4, 1, False)


def test_shard_gives_each_rank_its_contiguous_slice():
    batches = [np.arange(12), np.arange(12, 24)]
    parts = [distributed.shard(batches, distributed.Context(rank=r, world=3)) for r in range(3)]
    assert [p[1].tolist() for p in parts] == [[12, 13, 14, 15], [16, 17, 18, 19], [20, 21, 22, 23]]
    assert np.concatenate([p[0] for p in parts]).tolist() == list(range(12))
    with pytest.raises(ValueError, match="does not split over 5 ranks"):
        distributed.shard(batches, distributed.Context(rank=0, world=5))


def _join_gloo_group(rank: int, world: int, port: int) -> distributed.Context:
    """In a spawned worker: the torchrun environment of ``rank`` of ``world``, and its gloo group."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    ctx = distributed.from_environment()
    distributed.start(ctx, "gloo")
    return ctx


def _run_on_two_ranks(worker) -> dict:
    """``worker(rank, world, port, results)`` in two processes on a free local port; their ``results``."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(worker, args=(2, port, results), nprocs=2, join=True)
    return results


def _worker(rank: int, world: int, port: int, results):
    ctx = _join_gloo_group(rank, world, port)
    # rank-specific gradients average to their mean
    p = torch.nn.Parameter(torch.zeros(3))
    q = torch.nn.Parameter(torch.zeros(2, 2))
    p.grad = torch.full((3,), float(rank + 1))
    q.grad = torch.full((2, 2), 10.0 * rank)
    distributed.average_gradients([p, q], ctx.world)
    # rank 0's initialisation wins
    module = torch.nn.Linear(2, 2)
    torch.nn.init.constant_(module.weight, float(rank))
    distributed.broadcast_parameters(module)
    # gathered embeddings carry gradients back to their own rank
    x = torch.full((2, 1), float(rank + 1), requires_grad=True)
    gathered, offset = distributed.all_gather_with_grad(x)
    (gathered * torch.arange(1.0, 2 * world + 1).unsqueeze(1)).sum().backward()
    results[rank] = dict(p=p.grad.tolist(), q=q.grad.tolist(), weight=module.weight.tolist(), offset=offset,
                         gathered=gathered.detach().flatten().tolist(), x_grad=x.grad.flatten().tolist(),
                         objects=distributed.gather_objects(rank * 10, ctx),
                         loss=distributed.reduce_over_ranks(float(rank), ctx, torch.device("cpu")),
                         slowest=distributed.reduce_over_ranks(0.25 + rank, ctx, torch.device("cpu"), "max"))
    distributed.stop(ctx)


def test_collectives_in_a_two_process_gloo_group():
    results = _run_on_two_ranks(_worker)
    r0, r1 = results[0], results[1]
    assert r0["p"] == r1["p"] == [1.5, 1.5, 1.5]
    assert r0["q"] == r1["q"] == [[5.0, 5.0], [5.0, 5.0]]
    assert r1["weight"] == [[0.0, 0.0], [0.0, 0.0]]
    assert (r0["offset"], r1["offset"]) == (0, 2)
    assert r0["gathered"] == r1["gathered"] == [1.0, 1.0, 2.0, 2.0]
    # d(sum_r loss_r)/dx: both ranks' losses reach each rank's rows (reduce-scatter of the sum)
    assert r0["x_grad"] == [2.0, 4.0] and r1["x_grad"] == [6.0, 8.0]
    assert r0["objects"] == [0, 10] and r0["loss"] == r1["loss"] == 0.5
    assert r0["slowest"] == r1["slowest"] == 1.25  # max: every rank gets the largest


def _tiled_worker(rank, world, port, results):
    import torch.nn.functional as F

    from gclcore.loss import GCLLoss

    ctx = _join_gloo_group(rank, world, port)
    g = torch.Generator().manual_seed(7)                     # the same global batch on every rank
    query = F.normalize(torch.randn(10, 6, generator=g, dtype=torch.float64), dim=1)
    doc = F.normalize(torch.randn(10, 6, generator=g, dtype=torch.float64), dim=1)
    weights = torch.rand(10, generator=g, dtype=torch.float64) + 0.1
    qids, dids = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 4, 5]), torch.tensor([0, 1, 2, 3, 4, 5, 6, 0, 8, 9])
    local = slice(5 * rank, 5 * rank + 5)
    out = {}
    for mode in ("negatives", "mask", "positives", "cwcl"):
        for tile in (0, 2):
            q, d = query[local].clone().requires_grad_(True), doc[local].clone().requires_grad_(True)
            scale = torch.tensor(8.0, dtype=torch.float64, requires_grad=True)
            loss = GCLLoss(duplicates=mode, tile=tile, gather=distributed.all_gather_with_grad)
            value = loss(q, d, scale, weights[local], qids[local], dids[local])
            value.backward()
            out[(mode, tile)] = [value.item()] + q.grad.flatten().tolist() + d.grad.flatten().tolist() + [scale.grad.item()]
    results[rank] = out
    distributed.stop(ctx)


def test_the_tiled_loss_equals_the_dense_loss_under_a_two_process_gloo_gather():
    results = _run_on_two_ranks(_tiled_worker)
    for rank in (0, 1):
        for mode in ("negatives", "mask", "positives", "cwcl"):
            dense, tiled = results[rank][(mode, 0)], results[rank][(mode, 2)]
            assert tiled == pytest.approx(dense, rel=1e-10, abs=1e-12), (rank, mode)


class _ToyTowers:
    """A towers stand-in: one field embedded by a linear layer, a layer no step uses, and a logit scale
    that only the loss (outside the towers' forward) uses, as in the real model."""

    def __init__(self):
        torch.manual_seed(0)
        self.model = torch.nn.Module()
        self.model.lin, self.model.unused = torch.nn.Linear(4, 3), torch.nn.Linear(2, 2)
        self.model.logit_scale = torch.nn.Parameter(torch.tensor(2.0))

    def embed(self, batch):
        return {"query": self.model.lin(batch)}


def _sync_worker(rank, world, port, results):
    ctx = _join_gloo_group(rank, world, port)
    batch = torch.randn(4, 4, generator=torch.Generator().manual_seed(rank))  # each rank its own rows
    out = {}
    for mode in ("overlap", "after_backward", "local"):  # local: this rank's own gradients, not averaged
        towers = _ToyTowers()
        sync = distributed.GradientSync(towers, distributed.Context() if mode == "local" else ctx,
                                        "overlap" if mode == "local" else mode)
        for last in (False, True):  # two micro-batches, all-reduced once
            with sync.accumulating(last):
                embedded = sync.embed(batch[2 * last:2 * last + 2])["query"]
                ((embedded.sum(1) * towers.model.logit_scale) ** 2).sum().backward()
        sync.finish(list(towers.model.parameters()))
        out[mode] = {name: None if p.grad is None else p.grad.tolist() for name, p in towers.model.named_parameters()}
        out[mode + "/ddp"] = sync.ddp is not None
    results[rank] = out
    distributed.stop(ctx)


def test_overlapped_all_reduce_averages_like_the_after_backward_path():
    """DistributedDataParallel (no_sync for the first micro-batch, the logit scale averaged beside it) gives
    the gradients of the flat all-reduce after backward: the mean of the two ranks' own gradients."""
    results = _run_on_two_ranks(_sync_worker)
    r0, r1 = results[0], results[1]
    assert r0["overlap/ddp"] and not r0["after_backward/ddp"] and not r0["local/ddp"]
    for name in ("lin.weight", "lin.bias", "logit_scale"):
        mean = (np.array(r0["local"][name]) + np.array(r1["local"][name])) / 2
        assert not np.allclose(r0["local"][name], r1["local"][name])  # the ranks' own gradients differ
        for mode in ("overlap", "after_backward"):
            for r in (r0, r1):
                np.testing.assert_allclose(r[mode][name], mean, rtol=1e-6)
    assert r0["overlap"]["unused.weight"] is None and r0["after_backward"]["unused.weight"] is None

"""The tiled contrastive loss equals the dense one, values and gradients, for every option."""
import pytest
import torch
import torch.nn.functional as F

from gclcore.loss import GCLLoss
from gclcore.tiled_loss import Targets, tiled_row_losses

MODES = ("negatives", "mask", "positives", "cwcl")


def _batch(n=23, d=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    query = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1)
    doc = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1)
    weights = torch.rand(n, generator=g, dtype=dtype) * 3 + 0.1
    qids = torch.randint(0, 7, (n,), generator=g)           # many rows share a query
    dids = torch.randint(0, 15, (n,), generator=g)          # and some a product
    return query, doc, weights, qids, dids


def _loss_and_grads(loss, query, doc, weights, qids, dids, scale=6.0, autocast=False):
    """The loss and its gradients; ``autocast``: the forward under bf16 autocast, as the trainer runs it."""
    q, d = query.clone().requires_grad_(True), doc.clone().requires_grad_(True)
    t = torch.tensor(scale, dtype=query.dtype, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        value = loss(q, d, t, weights, qids, dids)
    value.backward()
    return value.detach(), q.grad, d.grad, t.grad


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("tile", [1, 5, 64])
@pytest.mark.parametrize("weight_norm, direction", [("mean", 0.5), ("none", 0.2), ("sum", 1.0)])
def test_tiled_equals_dense_in_value_and_gradients(mode, tile, weight_norm, direction):
    batch = _batch()
    dense = _loss_and_grads(GCLLoss(weight_norm, direction, mode, tile=0), *batch)
    tiled = _loss_and_grads(GCLLoss(weight_norm, direction, mode, tile=tile), *batch)
    for a, b in zip(dense, tiled):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_tiled_equals_dense_under_a_two_rank_gather(mode):
    """Ranks 0 and 1 hold rows 0-11 and 12-23; the gather hands every rank the whole batch (with gradients
    flowing to it), as all_gather_with_grad does; the trainer averages the ranks' gradients."""
    query, doc, weights, qids, dids = _batch(n=24)
    results = {}
    for tile in (0, 5):
        q, d = query.clone().requires_grad_(True), doc.clone().requires_grad_(True)
        scale = torch.tensor(6.0, dtype=q.dtype, requires_grad=True)
        total = 0
        for rank in (0, 1):
            local = slice(12 * rank, 12 * rank + 12)
            sliced = [q[local], d[local], weights[local], qids[local], dids[local]]
            lookup = {id(t): whole for t, whole in zip(sliced, (q, d, weights, qids, dids))}
            loss = GCLLoss(duplicates=mode, tile=tile, gather=lambda t, rank=rank, lookup=lookup: (lookup[id(t)], 12 * rank))
            total = total + loss(sliced[0], sliced[1], scale, *sliced[2:]) / 2
        total.backward()
        results[tile] = (total.detach(), q.grad, d.grad, scale.grad)
    for a, b in zip(results[0], results[5]):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("tile", [0, 7])
def test_bf16_autocast_changes_nothing_inside_the_loss(tile):
    """The trainer runs the loss under autocast; the logits must still be float32 and the tiled backward
    must match its forward: the same value and gradients as without autocast."""
    query, doc, weights, qids, dids = _batch(n=40, d=16, dtype=torch.float32)
    loss = GCLLoss(duplicates="positives", tile=tile)
    plain = _loss_and_grads(loss, query, doc, weights, qids, dids, scale=50.0)
    under = _loss_and_grads(loss, query, doc, weights, qids, dids, scale=50.0, autocast=True)
    assert under[0].dtype == torch.float32
    for a, b in zip(plain, under):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)


def test_rows_whose_pairs_all_weigh_zero_add_nothing():
    """field_mode=pairs gives a row with a missing field weight 0: with graded targets its row has none."""
    query, doc, weights, qids, dids = _batch(n=9)
    weights = weights.clone()
    weights[qids == qids[0]] = 0.0
    results = [_loss_and_grads(GCLLoss(duplicates="positives", weight_norm="none", tile=tile), query, doc, weights,
                               qids, dids) for tile in (0, 4)]
    assert all(torch.isfinite(t).all() for t in results[0])
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
    rows = torch.arange(9)
    targets = Targets(rows, "positives", qids, qids, dids, dids, weights, weights)
    per_row = tiled_row_losses(query, doc, torch.tensor(6.0, dtype=query.dtype), targets, tile=4)
    assert (per_row[qids == qids[0]] == 0).all() and (per_row[qids != qids[0]] > 0).all()


def test_a_block_with_every_logit_masked_stays_finite():
    """With tile 1 and rows sharing queries, whole blocks of a row are masked: the online log-sum-exp must
    not produce NaN before the row's first unmasked column."""
    query, doc, weights, _, dids = _batch(n=6)
    qids = torch.tensor([0, 0, 0, 1, 1, 2])
    dense = _loss_and_grads(GCLLoss(duplicates="mask", tile=0), query, doc, weights, qids, dids)
    tiled = _loss_and_grads(GCLLoss(duplicates="mask", tile=1), query, doc, weights, qids, dids)
    assert all(torch.isfinite(t).all() for t in tiled)
    for a, b in zip(dense, tiled):
        torch.testing.assert_close(b, a)


def test_automatic_choice_and_gradcheck():
    assert GCLLoss().tile_for(8192) == 0 and GCLLoss().tile_for(8193) == 2048
    assert GCLLoss(tile=0).tile_for(10**6) == 0 and GCLLoss(tile=64).tile_for(10) == 64
    with pytest.raises(ValueError, match="tile must be >= 0"):
        GCLLoss(tile=-1)
    query, doc, _, _, _ = _batch(n=7, d=4)
    rows = torch.arange(7)
    assert torch.autograd.gradcheck(
        lambda q, d, t: tiled_row_losses(q, d, t, Targets(rows), tile=3),
        (query.requires_grad_(True), doc.requires_grad_(True), torch.tensor(4.0, dtype=torch.float64, requires_grad=True)))

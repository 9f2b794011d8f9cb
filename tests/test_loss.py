"""The GCL loss against open_clip's ClipLoss, finite differences, hand-built batches and a simulated
two-rank gather; fusion of multi-field embeddings."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gclcore.fusion import Field, Side, fuse
from gclcore.loss import GCLLoss, multi_field_loss
from gclcore.weights import available, get_stw


def batch(n=8, d=16, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1)
    r = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1)
    return q, r


@pytest.mark.parametrize("seed", range(3))
def test_constant_weights_equal_open_clip_clip_loss(seed):
    from open_clip.loss import ClipLoss

    q, r = batch(seed=seed)
    scale = torch.tensor(14.3)
    expected = ClipLoss()(r, q, scale)
    assert GCLLoss()(q, r, scale) == pytest.approx(expected.item(), abs=1e-6)
    assert GCLLoss()(q, r, scale, torch.full((8,), 3.0)) == pytest.approx(expected.item(), abs=1e-6)


def test_finite_difference_gradients():
    q, r = batch(n=5, d=4, dtype=torch.float64)
    q.requires_grad_(True)
    r.requires_grad_(True)
    w = torch.tensor([1.0, 0.2, 3.0, 0.5, 1.5], dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([0, 0, 1, 2, 3])
    for duplicates in ("negatives", "mask", "positives"):
        loss = GCLLoss(weight_norm="mean", direction=0.3, duplicates=duplicates)
        assert torch.autograd.gradcheck(lambda a, b, c, loss=loss: loss(a, b, torch.tensor(7.0, dtype=torch.float64), c, ids,
                                                             torch.arange(5)), (q, r, w))


@pytest.mark.parametrize("weight_norm", ["none", "mean"])
def test_raising_a_weight_raises_that_pairs_gradient(weight_norm):
    q, r = batch()
    norms = []
    for value in (0.1, 0.5, 1.0, 2.0, 5.0):
        qq = q.clone().requires_grad_(True)
        w = torch.ones(8)
        w[3] = value
        GCLLoss(weight_norm=weight_norm)(qq, r, torch.tensor(10.0), w).backward()
        norms.append(qq.grad[3].norm().item())
    assert all(a < b for a, b in zip(norms, norms[1:])), norms


def _manual_row_loss(logits, row, keep, target):
    kept = logits[row][keep]
    return -(torch.log_softmax(kept, 0)[target])


def test_mask_removes_duplicate_pairs_from_the_softmax():
    q, r = batch(n=4)
    qids, dids = torch.tensor([7, 7, 8, 9]), torch.tensor([1, 2, 3, 1])  # rows 0,1 share a query; 0,3 a product
    scale = torch.tensor(5.0)
    got = GCLLoss(duplicates="mask", direction=1.0)(q, r, scale, None, qids, dids)
    logits = scale * q @ r.T
    keep = {0: [0, 2], 1: [1, 2, 3], 2: [0, 1, 2, 3], 3: [1, 2, 3]}
    expected = torch.stack([_manual_row_loss(logits, i, torch.tensor(k), k.index(i)) for i, k in keep.items()]).mean()
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)
    plain = GCLLoss(duplicates="negatives", direction=1.0)(q, r, scale, None, qids, dids)
    assert plain.item() != pytest.approx(got.item(), abs=1e-4)


def test_positives_use_graded_multi_positive_targets():
    q, r = batch(n=3)
    qids, dids = torch.tensor([5, 5, 6]), torch.tensor([1, 2, 3])
    w = torch.tensor([3.0, 1.0, 2.0])
    scale = torch.tensor(4.0)
    got = GCLLoss(duplicates="positives", direction=1.0, weight_norm="none")(q, r, scale, w, qids, dids)
    log_p = torch.log_softmax(scale * q @ r.T, dim=1)
    # rows 0 and 1 share the query: targets w_j over {0, 1} = (3, 1)/4
    row0 = -(0.75 * log_p[0, 0] + 0.25 * log_p[0, 1])
    row1 = -(0.75 * log_p[1, 0] + 0.25 * log_p[1, 1])
    row2 = -log_p[2, 2]
    expected = (3.0 * row0 + 1.0 * row1 + 2.0 * row2) / 3
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)


def test_cwcl_soft_targets_on_a_hand_built_batch():
    # three 2-d unit vectors at known angles: query-query and document-document cosines are exact
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    r = torch.tensor([[0.6, 0.8], [1.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    w, scale = torch.tensor([2.0, 1.0, 3.0], dtype=torch.float64), torch.tensor(3.0, dtype=torch.float64)
    got = GCLLoss(duplicates="cwcl", direction=0.25, weight_norm="none")(q, r, scale, w)
    # T_ij = (1 + q_i.q_j)/2: q0.q1 = 0, q0.q2 = -1, q1.q2 = 0  ->  rows (1, .5, 0), (.5, 1, .5), (0, .5, 1)
    t_q = np.array([[1, .5, 0], [.5, 1, .5], [0, .5, 1]])
    # U_ij = (1 + r_i.r_j)/2: r0.r1 = .6, r0.r2 = -.8, r1.r2 = 0  ->  rows (1, .8, .1), (.8, 1, .5), (.1, .5, 1)
    t_r = np.array([[1, .8, .1], [.8, 1, .5], [.1, .5, 1]])
    qn, rn = q.numpy(), r.numpy()

    def direction(logits, targets):
        log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        return -((targets / targets.sum(1, keepdims=True)) * log_p).sum(1)

    expected = (0.25 * (w.numpy() * direction(3 * qn @ rn.T, t_q)).sum()
                + 0.75 * (w.numpy() * direction(3 * rn @ qn.T, t_r)).sum()) / 3
    assert got.item() == pytest.approx(expected, abs=1e-12)


def test_cwcl_gradient_is_the_closed_form_with_constant_targets():
    """dL/dz = a diag(w~)(P - T)/N per direction, chained through z = t Q D^T: the targets carry no gradient."""
    q, r = batch(n=6, d=5, seed=3, dtype=torch.float64)
    q.requires_grad_(True)
    r.requires_grad_(True)
    w, t, a = torch.linspace(0.5, 2.0, 6, dtype=torch.float64), 4.0, 0.3
    GCLLoss(duplicates="cwcl", direction=a)(q, r, torch.tensor(t, dtype=torch.float64), w).backward()
    with torch.no_grad():
        w_norm = (w / w.mean())[:, None]
        targets_lr, targets_rl = (1 + q @ q.T) / 2, (1 + r @ r.T) / 2
        g_lr = a * w_norm * (torch.softmax(t * q @ r.T, 1) - targets_lr / targets_lr.sum(1, keepdim=True)) / 6
        g_rl = (1 - a) * w_norm * (torch.softmax(t * r @ q.T, 1) - targets_rl / targets_rl.sum(1, keepdim=True)) / 6
        torch.testing.assert_close(q.grad, t * (g_lr @ r + g_rl.T @ r))
        torch.testing.assert_close(r.grad, t * (g_lr.T @ q + g_rl @ q))


def test_directions_and_weight_norms():
    q, r = batch()
    scale, w = torch.tensor(6.0), torch.linspace(0.5, 2.0, 8)
    lr = GCLLoss(direction=1.0)(q, r, scale, w)
    rl = GCLLoss(direction=0.0)(q, r, scale, w)
    assert GCLLoss(direction=0.25)(q, r, scale, w).item() == pytest.approx(0.25 * lr.item() + 0.75 * rl.item(), abs=1e-6)
    assert GCLLoss(weight_norm="sum")(q, r, scale, w).item() == pytest.approx(GCLLoss()(q, r, scale, w).item() / 8, abs=1e-6)
    raw = GCLLoss(weight_norm="none")(q, r, scale, w).item()
    assert raw == pytest.approx(GCLLoss()(q, r, scale, w).item() * w.mean().item(), rel=1e-5)
    with pytest.raises(ValueError):
        GCLLoss(weight_norm="max")
    with pytest.raises(ValueError, match="query_ids"):
        GCLLoss(duplicates="mask")(q, r, scale)


def test_two_rank_gather_equals_the_full_batch():
    q, r = batch(n=8)
    w, qids, dids = torch.linspace(0.2, 3.0, 8), torch.tensor([0, 0, 1, 2, 3, 3, 4, 5]), torch.arange(8)
    scale = torch.tensor(9.0)
    for duplicates in ("negatives", "mask", "positives", "cwcl"):
        full = GCLLoss(duplicates=duplicates)(q, r, scale, w, qids, dids)
        ranks = []
        for rank in (0, 1):
            local = slice(4 * rank, 4 * rank + 4)
            sliced = [q[local], r[local], w[local], qids[local], dids[local]]
            lookup = {id(t): full_t for t, full_t in zip(sliced, (q, r, w, qids, dids))}
            loss = GCLLoss(duplicates=duplicates, gather=lambda t, rank=rank, lookup=lookup: (lookup[id(t)], 4 * rank))
            ranks.append(loss(*sliced[:2], scale, *sliced[2:]))
        assert ((ranks[0] + ranks[1]) / 2).item() == pytest.approx(full.item(), abs=1e-6), duplicates


def test_bf16_autocast_is_stable():
    q, r = batch(n=64, d=32)
    w = torch.rand(64) * 100
    exact = GCLLoss()(q, r, torch.tensor(100.0), w)
    low = GCLLoss()(q.bfloat16(), r.bfloat16(), torch.tensor(100.0), w.bfloat16())
    assert torch.isfinite(low) and low.dtype == torch.float32
    assert low.item() == pytest.approx(exact.item(), rel=0.05)


def test_fusion_renormalises_over_present_fields():
    e1, e2, e3 = (F.normalize(torch.randn(4, 6), dim=1) for _ in range(3))
    present = torch.tensor([[1, 1, 1], [1, 0, 1], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    got = fuse([e1, e2, e3], [0.5, 0.3, 0.2], present)
    assert torch.allclose(got[0], F.normalize(0.5 * e1[0] + 0.3 * e2[0] + 0.2 * e3[0], dim=0), atol=1e-6)
    assert torch.allclose(got[1], F.normalize(0.5 / 0.7 * e1[1] + 0.2 / 0.7 * e3[1], dim=0), atol=1e-6)
    assert torch.allclose(got[2], e1[2], atol=1e-6)
    assert torch.equal(got[3], torch.zeros(6))
    assert torch.allclose(fuse([e1 * 3], [1.0]), e1, atol=1e-6)  # inputs are normalised first


def test_multi_field_modes():
    q, r = batch(n=6)
    _, t = batch(n=6, seed=5)
    scale, w = torch.tensor(8.0), torch.linspace(1, 2, 6)
    loss = GCLLoss()
    present = {"image": torch.ones(6, dtype=torch.bool), "title": torch.tensor([1, 1, 0, 1, 1, 1], dtype=torch.bool)}
    query = Side((Field("query"),), {"query": q})
    doc = Side((Field("image", 0.9), Field("title", 0.1)), {"image": r, "title": t}, present)
    fused = multi_field_loss(loss, query, doc, scale, w)
    manual = loss(q, fuse([r, t], [0.9, 0.1], torch.stack([present["image"], present["title"]], 1)), scale, w)
    assert fused.item() == pytest.approx(manual.item(), abs=1e-6)
    pairs = multi_field_loss(loss, query, doc, scale, w, mode="pairs")
    expected = loss(q, r, scale, w) + loss(q, t, scale, w * present["title"])
    assert pairs.item() == pytest.approx(expected.item(), abs=1e-6)
    both = multi_field_loss(loss, query, doc, scale, w, mode="both")
    assert both.item() == pytest.approx(fused.item() + pairs.item(), abs=1e-5)


def test_score_to_weight_registry():
    rows = {"position": np.array([1, 2, 10, 100, 150]), "score_linear": np.array([100, 99, 91, 1, 1]),
            "score_reciprocal": np.array([1, 0.5, 0.1, 0.01, 1 / 150]), "no_score": np.ones(5)}
    assert np.allclose(get_stw("constant")(rows), 1)
    assert np.allclose(get_stw("linear")(rows), [1.0, 0.99, 0.91, 0.01, 0.01])
    assert np.allclose(get_stw("reciprocal")(rows), rows["score_reciprocal"])
    assert np.allclose(get_stw("log")(rows)[:2], [1.0, 1 / np.log2(3)])
    assert np.allclose(get_stw("power:2")(rows)[:3], [1.0, 0.99**2, 0.91**2])
    assert np.allclose(get_stw("rank-exp:0.5")(rows)[:3], [1.0, 0.5, 0.5**9])
    assert np.allclose(get_stw("score_linear")(rows), rows["score_linear"])
    assert get_stw(lambda p: 2.0 / p)(rows)[1] == pytest.approx(1.0)
    for name in ("linear", "reciprocal", "log", "power:3", "rank-exp:0.9"):  # monotone non-increasing in position
        assert np.all(np.diff(get_stw(name)(rows)[:4]) < 0), name
    with pytest.raises(ValueError, match="unknown STW"):
        get_stw("cubic")
    with pytest.raises(ValueError, match="out of range"):
        get_stw("rank-exp:1.5")
    with pytest.raises(ValueError, match="non-negative"):
        get_stw(lambda p: -p)(rows)
    assert "power:<x>" in available()

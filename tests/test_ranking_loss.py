"""Ranking terms over each query's in-batch products: hand-built batches and gradient checks."""
import math

import pytest
import torch

from gclcore.ranking_loss import lambda_pairwise, listnet, query_groups, ranking_loss


def test_query_groups_keep_queries_with_two_or_more_rows():
    groups = query_groups(torch.tensor([5, 3, 5, 7, 3, 5]))
    assert groups.tolist() == [[1, 4, -1], [0, 2, 5]]      # query 3, query 5 (sorted ids); 7 has one row
    assert query_groups(torch.tensor([1, 2, 3])).numel() == 0


def test_listnet_by_hand():
    scores, gains = torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([[1.0, 0.5, 0.5]])
    member = torch.ones(1, 3, dtype=torch.bool)
    log_z = math.log(math.exp(2) + math.exp(1) + 1)
    expected = -(0.5 * (2 - log_z) + 0.25 * (1 - log_z) + 0.25 * (0 - log_z))
    assert listnet(scores, gains, member).item() == pytest.approx(expected)
    padded = listnet(torch.tensor([[2.0, 1.0, 0.0, 9.0]]), torch.tensor([[1.0, 0.5, 0.5, 0.0]]),
                     torch.tensor([[True, True, True, False]]))
    assert padded.item() == pytest.approx(expected)         # a padding slot changes nothing


def test_lambda_by_hand():
    """Two products, the better one scored lower: one pair, weight 1 after normalisation."""
    scores, gains = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.5]])
    member = torch.ones(1, 2, dtype=torch.bool)
    assert lambda_pairwise(scores, gains, member).item() == pytest.approx(math.log2(1 + math.e))
    ordered = lambda_pairwise(torch.tensor([[1.0, 0.0]]), gains, member).item()
    assert ordered == pytest.approx(math.log2(1 + math.exp(-1)))    # correctly ordered: a smaller loss
    assert lambda_pairwise(scores, torch.tensor([[0.5, 0.5]]), member).item() == 0  # equal gains: no pair


def _batch(seed=0, n=7, d=5):
    generator = torch.Generator().manual_seed(seed)
    query = torch.nn.functional.normalize(torch.randn(n, d, generator=generator, dtype=torch.float64), dim=1)
    doc = torch.nn.functional.normalize(torch.randn(n, d, generator=generator, dtype=torch.float64), dim=1)
    ids = torch.tensor([0, 0, 0, 1, 1, 2, 3])
    query = query[torch.tensor([0, 0, 0, 3, 3, 5, 6])]       # rows of one query share its embedding
    gains = torch.tensor([1.0, 0.7, 0.2, 0.9, 0.4, 1.0, 1.0], dtype=torch.float64)
    return query.clone().requires_grad_(), doc.clone().requires_grad_(), ids, gains


@pytest.mark.parametrize("kind", ["listnet", "lambda"])
def test_gradients_match_finite_differences(kind):
    query, doc, ids, gains = _batch()
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, d, t: ranking_loss(kind, q, d, t, gains, ids), (query, doc, scale))


@pytest.mark.parametrize("kind", ["listnet", "lambda"])
def test_the_term_averages_the_queries_with_two_or_more_products(kind):
    query, doc, ids, gains = _batch()
    scale = torch.tensor(3.0, dtype=torch.float64)
    total = ranking_loss(kind, query, doc, scale, gains, ids)
    parts = [ranking_loss(kind, query[rows], doc[rows], scale, gains[rows], ids[rows])
             for rows in (torch.tensor([0, 1, 2]), torch.tensor([3, 4]))]
    assert total.item() == pytest.approx(sum(p.item() for p in parts) / 2)
    single = ranking_loss(kind, query[5:], doc[5:], scale, gains[5:], ids[5:])
    assert single.item() == 0                                # no query with two products: nothing to rank
    with pytest.raises(ValueError, match="ranking loss 'pairs'"):
        ranking_loss("pairs", query, doc, scale, gains, ids)


@pytest.mark.parametrize("kind", ["listnet", "lambda"])
def test_two_rank_gather_equals_the_full_batch_with_a_query_split_between_ranks(kind):
    """Rows 0-3 on rank 0, 4-7 on rank 1; query 2 has rows on both. Each rank's term over the gathered batch,
    averaged as the trainer averages gradients, gives the single-process value and gradients."""
    g = torch.Generator().manual_seed(4)
    query = torch.nn.functional.normalize(torch.randn(8, 5, generator=g, dtype=torch.float64), dim=1)
    doc = torch.nn.functional.normalize(torch.randn(8, 5, generator=g, dtype=torch.float64), dim=1)
    ids = torch.tensor([1, 1, 2, 2, 2, 3, 4, 4])
    gains = torch.tensor([1.0, 0.3, 0.9, 0.2, 0.6, 1.0, 0.5, 0.8], dtype=torch.float64)
    full_q, full_d = query.clone().requires_grad_(True), doc.clone().requires_grad_(True)
    full_scale = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    full = ranking_loss(kind, full_q, full_d, full_scale, gains, ids)
    full.backward()
    split_q, split_d = query.clone().requires_grad_(True), doc.clone().requires_grad_(True)
    scale = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    ranks = []
    for rank in (0, 1):
        local = slice(4 * rank, 4 * rank + 4)
        sliced = [split_q[local], split_d[local], gains[local], ids[local]]
        lookup = {id(t): whole for t, whole in zip(sliced, (split_q, split_d, gains, ids))}
        ranks.append(ranking_loss(kind, sliced[0], sliced[1], scale, sliced[2], sliced[3],
                                  gather=lambda t, rank=rank, lookup=lookup: (lookup[id(t)], 4 * rank)))
    averaged = (ranks[0] + ranks[1]) / 2
    averaged.backward()
    assert averaged.item() == pytest.approx(full.item(), abs=1e-12)
    torch.testing.assert_close(split_q.grad, full_q.grad)
    torch.testing.assert_close(split_d.grad, full_d.grad)
    torch.testing.assert_close(scale.grad, full_scale.grad)

    def rank_1_of_two(t):
        """This rank holds queries 9 and 10 (rows 2, 3); rank 0 holds two rows of query 5."""
        return (torch.tensor([5, 5, 9, 10]) if t.dtype == torch.long else torch.cat([t, t])), 2

    # a rank holding no group's first row still returns a term connected to its embeddings
    lone = ranking_loss(kind, split_q[6:], split_d[6:], scale.detach(), gains[6:], torch.tensor([9, 10]),
                        gather=rank_1_of_two)
    assert lone.item() == 0 and lone.requires_grad

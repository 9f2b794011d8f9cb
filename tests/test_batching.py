"""Batch samplers: random and query-grouped batches, deterministic in (seed, epoch), on hand-built rows."""
import numpy as np
import pytest

from gclcore.batching import QueryGroupedBatches, epoch_batches

QUERIES, PER_QUERY = 6, 8
QUERY = np.repeat(np.arange(QUERIES), PER_QUERY)          # rows 0-7 query 0, 8-15 query 1, ...
POSITION = np.tile(np.arange(1, PER_QUERY + 1), QUERIES)  # each query's list ranked 1..8


@pytest.mark.parametrize("within", ["uniform", "stratified"])
def test_grouped_batches_hold_k_products_of_each_of_their_queries(within):
    sampler = QueryGroupedBatches(QUERY, POSITION, products_per_query=4, within_query=within)
    batches = sampler(len(QUERY), 8, seed=3, epoch=0)
    assert len(batches) == 6 and sorted(np.concatenate(batches).tolist()) == list(range(48))  # every row once
    for batch in batches:
        _, counts = np.unique(QUERY[batch], return_counts=True)
        assert set(counts.tolist()) <= {4, 8}  # whole groups of 4 (a query's two groups may meet)
    assert sampler.coverage(len(QUERY), 8) == 1.0
    again = sampler(len(QUERY), 8, seed=3, epoch=0)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))              # a pure function of (seed, epoch)
    assert any(not np.array_equal(a, b) for a, b in zip(batches, sampler(len(QUERY), 8, seed=3, epoch=1)))


def test_stratified_groups_span_the_ranked_list():
    """Group j of a query takes the j-th draw of each of k position strata: {1,2}, {3,4}, {5,6}, {7,8}."""
    sampler = QueryGroupedBatches(QUERY, POSITION, products_per_query=4, within_query="stratified")
    for batch in sampler(len(QUERY), 4, seed=0, epoch=0):  # a batch is exactly one group here
        assert len(set(QUERY[batch])) == 1
        assert sorted((POSITION[batch] - 1) // 2) == [0, 1, 2, 3]
    uniform = QueryGroupedBatches(QUERY, POSITION, products_per_query=4, within_query="uniform")
    strata = [sorted((POSITION[b] - 1) // 2) for b in uniform(len(QUERY), 4, seed=0, epoch=0)]
    assert any(s != [0, 1, 2, 3] for s in strata)  # uniform draws do not keep to the strata


def test_uneven_queries_and_the_dropped_tail():
    query = np.array([0] * 5 + [1] * 3 + [2] * 2)   # 10 rows: groups of at most 4 -> sizes 4+1, 3, 2
    position = np.array([1, 2, 3, 4, 5, 1, 2, 3, 1, 2])
    sampler = QueryGroupedBatches(query, position, products_per_query=4)
    batches = sampler(10, 4, seed=1, epoch=0)
    assert [len(b) for b in batches] == [4, 4] and sampler.coverage(10, 4, seed=1) == 0.8
    rows = np.concatenate(batches)
    assert len(set(rows.tolist())) == 8
    with pytest.raises(ValueError, match="built for 10 rows, asked for 11"):
        sampler(11, 4, seed=1, epoch=0)
    with pytest.raises(ValueError, match="within_query='best': choose from uniform, stratified"):
        QueryGroupedBatches(query, position, within_query="best")


def test_random_batches_rarely_pair_products_of_a_query_and_grouped_ones_always_do():
    """Why grouping exists: 5,000 queries x 20 products, batch 256, the share of rows whose query has
    another product in the batch (random: about 255 x 19 / 99,999 = 5%)."""
    query, position = np.repeat(np.arange(5000), 20), np.tile(np.arange(1, 21), 5000)

    def paired(batches):
        shares = []
        for batch in batches:
            _, inverse, counts = np.unique(query[batch], return_inverse=True, return_counts=True)
            shares.append(np.mean(counts[inverse] > 1))
        return float(np.mean(shares))

    grouped = QueryGroupedBatches(query, position, products_per_query=8)(len(query), 256, seed=0, epoch=0)
    assert paired(grouped) == 1.0
    assert 0.02 < paired(epoch_batches(len(query), 256, seed=0, epoch=0)) < 0.08

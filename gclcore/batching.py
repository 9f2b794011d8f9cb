"""Which training rows go into each batch: random batches, or batches grouped by query.

A *sampler* is ``sampler(n_rows, batch_rows, seed, epoch) -> list of row-index arrays``: one epoch's
global batches, each exactly ``batch_rows`` rows (the last partial batch is dropped so every step sees as
many in-batch negatives), a pure function of ``(seed, epoch)`` so that a resumed run draws the same
batches (under torchrun each rank trains on its contiguous slice of every global batch).

- :func:`epoch_batches` (``batching="random"``, the paper's setting): a permutation of all rows. With
  ~100 ranked products per query, a random batch of 256 rarely holds two products of one query, so the
  loss never compares two products *for the same query*.
- :class:`QueryGroupedBatches` (``batching="grouped"``): each batch holds ``batch_rows / k`` queries with
  ``k`` of their ranked products each (``products_per_query``), so that a query's products meet in the
  batch. Within a query the products are drawn uniformly (``within_query="uniform"``) or one from each of
  ``k`` position strata (``"stratified"``: a group spans the ranked list, top to bottom). Each query's rows
  are cut into groups of at most ``k``; the groups are shuffled and packed into batches (a group may be
  split by a batch boundary), so an epoch still covers every row but the dropped tail
  (:meth:`QueryGroupedBatches.coverage`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

WITHIN_QUERY = ("uniform", "stratified")


def epoch_batches(n_rows: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The epoch's batches: a permutation drawn from (seed, epoch), cut into full batches (the last
    partial batch is dropped so every step sees ``batch_size`` in-batch negatives)."""
    order = np.random.default_rng([seed, epoch]).permutation(n_rows)
    return _full_batches(order, batch_size)


class QueryGroupedBatches:
    """Batches of whole query groups (see the module docstring).

    Args:
        query_codes: (n_rows,) an integer per row naming its query (e.g. ``pd.factorize(rows["query"])[0]``).
        positions: (n_rows,) each row's rank in its query's list (1 = best); used by ``"stratified"``.
        products_per_query: k, the most rows of one query in one group.
        within_query: ``"uniform"`` or ``"stratified"``.
    """

    def __init__(self, query_codes: np.ndarray, positions: np.ndarray, products_per_query: int = 4,
                 within_query: str = "uniform"):
        if products_per_query < 1:
            raise ValueError(f"products_per_query must be >= 1, not {products_per_query}")
        if within_query not in WITHIN_QUERY:
            raise ValueError(f"within_query={within_query!r}: choose from {', '.join(WITHIN_QUERY)}")
        self.query = np.asarray(query_codes, dtype=np.int64)
        self.position = np.asarray(positions, dtype=np.float64)
        self.k, self.within = products_per_query, within_query

    def __call__(self, n_rows: int, batch_rows: int, seed: int, epoch: int) -> list[np.ndarray]:
        if n_rows != len(self.query):
            raise ValueError(f"the sampler was built for {len(self.query)} rows, asked for {n_rows}")
        rng = np.random.default_rng([seed, epoch])
        order, group = self._groups(rng)
        starts = np.flatnonzero(np.r_[True, (group[1:] != group[:-1])])  # each group's first row in `order`
        sizes = np.diff(np.r_[starts, len(order)])
        picked = rng.permutation(len(starts))
        rows = np.concatenate([order[s:s + n] for s, n in zip(starts[picked], sizes[picked])]) if len(order) else order
        return _full_batches(rows, batch_rows)

    def _groups(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Rows ordered group by group, and each row's group number (consecutive rows share one)."""
        noise = rng.random(len(self.query))
        if self.within == "uniform":
            order = np.lexsort((noise, self.query))                      # by query, random within
            slot = _rank_within(self.query[order]) // self.k             # consecutive k rows of a query
        else:
            by_position = np.lexsort((noise, self.position, self.query))  # by query, best first (ties random)
            rank = _rank_within(self.query[by_position])
            size = np.bincount(self.query)[self.query[by_position]]
            stratum = rank * self.k // size                              # k strata of the ranked list
            in_stratum = np.lexsort((noise[by_position], stratum, self.query[by_position]))
            order = by_position[in_stratum]
            stratum = stratum[in_stratum]
            slot = _rank_within(self.query[order] * self.k + stratum)   # the j-th row of each stratum
            regroup = np.lexsort((stratum, slot, self.query[order]))      # group j: the j-th of every stratum
            order, slot = order[regroup], slot[regroup]
        keys = self.query[order] * (len(self.query) + 1) + slot
        return order, keys

    def coverage(self, n_rows: int, batch_rows: int, seed: int = 0, epoch: int = 0) -> float:
        """The fraction of the rows an epoch's batches hold (all but the dropped partial batch)."""
        return sum(len(b) for b in self(n_rows, batch_rows, seed, epoch)) / max(n_rows, 1)

    @classmethod
    def for_rows(cls, rows: pd.DataFrame, products_per_query: int, within_query: str) -> QueryGroupedBatches:
        """The sampler of training rows with ``qid`` (query codes) and ``position`` columns."""
        return cls(rows["qid"].to_numpy(), rows["position"].to_numpy(), products_per_query, within_query)


def _rank_within(sorted_keys: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal consecutive keys."""
    if len(sorted_keys) == 0:
        return sorted_keys
    starts = np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]
    first = np.maximum.accumulate(np.where(starts, np.arange(len(sorted_keys)), 0))
    return np.arange(len(sorted_keys)) - first


def _full_batches(order: np.ndarray, batch_rows: int) -> list[np.ndarray]:
    return [order[i:i + batch_rows] for i in range(0, len(order) - batch_rows + 1, batch_rows)]

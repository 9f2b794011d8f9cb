"""Ranking terms over each query's products in the batch, added to the contrastive loss.

The contrastive loss (:mod:`gclcore.loss`) compares each pair with the other pairs of the batch; it never
asks the model to order two products *of the same query*. With query-grouped batches
(:mod:`gclcore.batching`) a batch holds several ranked products of each query, and these terms use them.
For a query q with in-batch products ``j in G_q`` (|G_q| >= 2), scores ``s_j = t * L_q . R_j`` (logit scale
t, unit embeddings; ``L_q`` is the query side of q's first row: every row of q embeds the same query) and
gains ``g_j`` = the pairs' score-to-weight values (larger = ranked higher by the shop):

- ``listnet`` (ListNet's top-one cross-entropy with relevance-proportional targets; Cao et al., ICML 2007;
  Bruch et al., ICTIR 2019)::

      l_q = - sum_j (g_j / sum_k g_k) log softmax_{j in G_q}(s)_j

- ``lambda`` (LambdaRank-weighted pairwise logistic loss; Burges, MSR-TR-2010-82; Wang et al., CIKM 2018)::

      l_q = sum_{j,k in G_q: g_j > g_k} |dNDCG_jk| * log2(1 + exp(-(s_j - s_k))) / sum |dNDCG|
      |dNDCG_jk| = |g_j - g_k| * |1/log2(1 + r_j) - 1/log2(1 + r_k)| / IDCG_q

  with ``r`` the ranks by the current scores within G_q (no gradient through them) and IDCG_q the best
  DCG of G_q's gains; the weights are normalised to sum to 1 per query, so each query counts once.

The term is the mean of ``l_q`` over the batch's queries with two or more products (0 when there are none,
as in a random batch that holds no two products of one query). Queries are matched by the integer
``query_ids`` the trainer passes (the same that ``duplicates`` uses).

Across ranks (``gather``, as :class:`gclcore.loss.GCLLoss`'s): the groups are formed over the global batch,
so a query whose products the shard split between two ranks still counts once, whole; each rank adds the
groups whose first row is its own, scaled by ``W / Q`` (W ranks, Q groups in the global batch), so that
the ranks' terms sum to W times the global term, as the contrastive loss's do (the gather's backward sums
every rank's gradient and the trainer averages over ranks).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gclcore.loss import Gather, at_least_float32, full_precision

RANKING_LOSSES = ("none", "listnet", "lambda")


def query_groups(query_ids: torch.Tensor) -> torch.Tensor:
    """(Q, K) row indices of each query with >= 2 rows in the batch, padded with -1 (K: the largest group)."""
    ids, inverse, counts = torch.unique(query_ids, return_inverse=True, return_counts=True)
    keep = counts >= 2
    if not keep.any():
        return torch.empty(0, 0, dtype=torch.long, device=query_ids.device)
    order = torch.argsort(inverse, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(len(order), device=query_ids.device) - starts[inverse[order]]
    groups = torch.full((len(ids), int(counts.max())), -1, dtype=torch.long, device=query_ids.device)
    groups[inverse[order], slot] = order
    return groups[keep]


def ranking_loss(kind: str, query: torch.Tensor, doc: torch.Tensor, logit_scale: torch.Tensor,
                 gains: torch.Tensor, query_ids: torch.Tensor, gather: Gather | None = None) -> torch.Tensor:
    """The ``kind`` term (``"listnet"`` or ``"lambda"``) of a batch: (N, d) unit ``query`` / ``doc`` embeddings,
    scalar ``logit_scale`` (exponentiated), (N,) ``gains`` (STW weights) and ``query_ids``; ``gather``: the
    cross-rank gather (module docstring), None for one process."""
    if kind not in RANKING_LOSSES[1:]:
        raise ValueError(f"ranking loss {kind!r}: choose from {', '.join(RANKING_LOSSES[1:])}")
    with full_precision(query.device):
        return _ranking_loss(kind, at_least_float32(query), at_least_float32(doc), logit_scale, gains, query_ids,
                             gather)


def _ranking_loss(kind, query, doc, logit_scale, gains, query_ids, gather) -> torch.Tensor:
    local_rows = len(query_ids)
    if gather is not None:
        (query, offset), doc, gains, query_ids = gather(query), gather(doc)[0], gather(gains)[0], gather(query_ids)[0]
    groups = query_groups(query_ids)
    if groups.numel() == 0:  # no query has two products in the (global) batch: the same on every rank
        return torch.zeros((), device=query.device, dtype=query.dtype)
    per_group = 1 / len(groups)
    if gather is not None:
        per_group *= len(query_ids) / local_rows                     # W / Q
        groups = groups[(groups[:, 0] >= offset) & (groups[:, 0] < offset + local_rows)]
        if len(groups) == 0:  # still part of the graph: every rank's gather must run its backward
            return 0 * (query.sum() + doc.sum())
    member = groups >= 0
    safe = groups.clamp_min(0)
    scores = logit_scale * (query[safe[:, 0]].unsqueeze(1) * doc[safe]).sum(-1)      # (Q, K)
    gain = torch.where(member, gains.to(scores.dtype)[safe], torch.zeros_like(scores))
    per_query = listnet(scores, gain, member) if kind == "listnet" else lambda_pairwise(scores, gain, member)
    return per_query.sum() * per_group


def listnet(scores: torch.Tensor, gains: torch.Tensor, member: torch.Tensor) -> torch.Tensor:
    """(Q,) ``- sum_j (g_j / sum g) log softmax(s)_j`` over each row's members."""
    log_p = F.log_softmax(scores.masked_fill(~member, float("-inf")), dim=1)
    target = gains / gains.sum(1, keepdim=True).clamp_min(1e-12)
    return -(target * torch.where(member, log_p, torch.zeros_like(log_p))).sum(1)


def lambda_pairwise(scores: torch.Tensor, gains: torch.Tensor, member: torch.Tensor) -> torch.Tensor:
    """(Q,) the |dNDCG|-weighted pairwise logistic loss of each row's members (see the module docstring)."""
    with torch.no_grad():
        masked = scores.masked_fill(~member, float("-inf"))
        rank = torch.argsort(torch.argsort(masked, dim=1, descending=True), dim=1).to(scores.dtype) + 1
        discount = torch.where(member, 1 / torch.log2(1 + rank), torch.zeros_like(rank))
        ideal = torch.sort(gains, dim=1, descending=True).values
        positions = torch.arange(1, scores.shape[1] + 1, device=scores.device, dtype=scores.dtype)
        idcg = (ideal / torch.log2(1 + positions)).sum(1, keepdim=True).clamp_min(1e-12)
        better = (gains[:, :, None] > gains[:, None, :]) & member[:, :, None] & member[:, None, :]
        delta = (gains[:, :, None] - gains[:, None, :]).abs() * (discount[:, :, None] - discount[:, None, :]).abs()
        weight = torch.where(better, delta / idcg[:, :, None], torch.zeros_like(delta))
        weight = weight / weight.sum((1, 2), keepdim=True).clamp_min(1e-12)
    margin = scores[:, :, None] - scores[:, None, :]
    pair = F.softplus(-margin) / scores.new_full((), math.log(2.0))  # on the device: no copy, an exact division
    return (weight * torch.where(better, pair, torch.zeros_like(pair))).sum((1, 2))

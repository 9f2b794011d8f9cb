"""The GCL loss: weighted in-batch contrastive cross-entropy over (query, document, weight) triplets.

Reconstruction (the book's methods page, "The loss"; the paper's exact equation is not public). For a batch of N
triplets with unit embeddings ``L_i`` (query side) and ``R_i`` (document side), weights ``w_i`` and
logit scale ``t``::

    z_ij  = t * L_i . R_j
    w~_i  = normalise(w)_i                                     (weight_norm)
    l_LR  = -(1/N) sum_i w~_i sum_j T_ij log softmax_j(z_i.)    query -> documents of the batch
    l_RL  = -(1/N) sum_i w~_i sum_j U_ij log softmax_j(z_.i)    document -> queries of the batch
    L     = a * l_LR + (1 - a) * l_RL                           (direction; a = 1/2 is CLIP's symmetric mean)

Targets ``T`` / ``U`` depend on how in-batch pairs that share a query or a product are treated
(``duplicates``):

- ``"negatives"``: T = U = identity: the paper's diagonal weighted ground-truth matrix; other positives
  of the same query are treated as negatives;
- ``"mask"``: identity targets, and logits of other pairs sharing the row's query or product are
  removed from that row's softmax (they are neither positive nor negative);
- ``"positives"``: graded multi-positive targets: in row i, column j is a positive with weight ``w_j``
  if it shares i's query (the pair (q_i, d_j) is judged), or ``w_i`` if it shares i's product; each
  row's targets are normalised to sum to 1;
- ``"cwcl"``: continuous soft targets in the manner of CWCL (continuously weighted contrastive loss,
  Srinivasa et al., NeurIPS 2023): in the query->document row i, column j is a positive to the degree
  that the *queries* i and j are alike, ``T_ij = (1 + L_i . L_j) / 2``; in the document->query direction
  ``U_ij = (1 + R_i . R_j) / 2`` from the documents. CWCL takes these similarities from a frozen
  pretrained encoder; here they come from the embeddings being trained, detached (no gradient flows
  through the targets), which at step 0 are the pretrained towers'. Rows are normalised to sum to 1;
  ``T_ii = 1`` is the largest entry, and a pair sharing the row's query (or product) counts fully.

With ``w == 1``, ``weight_norm="mean"``, ``direction=0.5`` and ``duplicates="negatives"`` this is exactly
open_clip's ``ClipLoss`` (tested). The gradient w.r.t. row i's logits is ``w~_i (softmax(z_i) - T_i) / N``:
a high-weight pair pulls harder toward its positive and pushes harder from that row's negatives.

Weight normalisation (``weight_norm``): ``"none"`` raw weights; ``"mean"`` ``w / mean(w)`` over the (global)
batch, which keeps CLIP's loss scale (and makes the loss a weighted average of row losses); ``"sum"``
``w / sum(w)``, i.e. ``"mean"`` divided by N.

Cross-device negatives: ``gather`` (default: none) maps each local tensor to ``(global tensor, offset of
the local rows)``; logits are then local rows x global columns, as open_clip's ``local_loss`` with
``gather_with_grad``, and the weights and ids are gathered too. :func:`gclcore.distributed.all_gather_with_grad`
is the torch.distributed implementation, which the trainer plugs in under torchrun.

fp16 / bf16 inputs (autocast) are upcast and autocast is switched off inside the loss: its arithmetic,
the logits' matrix products included, always runs in float32 or wider.

Memory: the logits are (n, N) per direction. Above ``tile_above`` columns (or always, with ``tile``) the
loss is computed in blocks by :mod:`gclcore.tiled_loss` with O(N*d) memory: the same values and gradients
(tested against this dense form for every option).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from gclcore.fusion import Side
from gclcore.tiled_loss import Targets, tiled_row_losses

Gather = Callable[[torch.Tensor], tuple[torch.Tensor, int]]
DUPLICATES = ("negatives", "mask", "positives", "cwcl")
AUTO_TILE = 2048
"""Block size of the tiled loss when it is chosen automatically (global batches above ``tile_above``)."""


def full_precision(device: torch.device):
    """A context without autocast: under bf16 autocast a matrix product of float32 logits would be rounded
    to bf16 (an error of ~0.25 at logit 100), and the tiled loss's backward would not match its forward."""
    return torch.autocast(device_type=device.type, enabled=False)


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def normalise_weights(weights: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "none":
        return weights
    if mode == "mean":
        return weights / weights.mean().clamp_min(1e-12)
    if mode == "sum":
        return weights / weights.sum().clamp_min(1e-12)
    raise ValueError(f"weight_norm must be none, mean or sum, not {mode!r}")


@torch.no_grad()
def cwcl_targets(local: torch.Tensor, everyone: torch.Tensor) -> torch.Tensor:
    """(n, N) CWCL soft targets of the n ``local`` unit embeddings over the N of the (global) batch:
    ``(1 + a_i . b_j) / 2``, each row normalised to sum to 1; constants for autograd."""
    similarity = (1 + local @ everyone.T) / 2
    return similarity / similarity.sum(1, keepdim=True)


class GCLLoss(nn.Module):
    """Weighted symmetric contrastive loss (see the module docstring for the formula and options).

    Args:
        weight_norm: ``"none"`` | ``"mean"`` | ``"sum"``.
        direction: weight ``a`` of the query->document term (0.5: symmetric; 1: query->document only).
        duplicates: the targets: ``"negatives"`` | ``"mask"`` | ``"positives"`` | ``"cwcl"``.
        gather: cross-rank gather (see :data:`Gather`); None for a single process.
        tile: compute in blocks of ``tile`` x ``tile`` logits (:mod:`gclcore.tiled_loss`); None: dense up to
            ``tile_above`` columns (the global batch), blocks of ``AUTO_TILE`` above; 0: always dense.
    """

    def __init__(self, weight_norm: Literal["none", "mean", "sum"] = "mean", direction: float = 0.5,
                 duplicates: Literal["negatives", "mask", "positives", "cwcl"] = "negatives",
                 gather: Gather | None = None, tile: int | None = None, tile_above: int = 8192):
        super().__init__()
        if not 0.0 <= direction <= 1.0:
            raise ValueError("direction must be in [0, 1]")
        if duplicates not in DUPLICATES:
            raise ValueError(f"duplicates must be one of {', '.join(DUPLICATES)}, not {duplicates!r}")
        normalise_weights(torch.ones(1), weight_norm)  # validates the mode
        if tile is not None and tile < 0:
            raise ValueError(f"tile must be >= 0 (0: dense) or None (automatic), not {tile}")
        self.weight_norm, self.direction, self.duplicates, self.gather = weight_norm, direction, duplicates, gather
        self.tile, self.tile_above = tile, tile_above

    def tile_for(self, columns: int) -> int:
        """The block size for a global batch of ``columns`` pairs; 0 means the dense loss."""
        if self.tile is None:
            return AUTO_TILE if columns > self.tile_above else 0
        return self.tile

    def forward(self, query: torch.Tensor, doc: torch.Tensor, logit_scale: torch.Tensor,
                weights: torch.Tensor | None = None, query_ids: torch.Tensor | None = None,
                doc_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Loss of a batch.

        Args:
            query, doc: (N, d) L2-normalised embeddings of the pairs' two sides.
            logit_scale: scalar ``t`` (already exponentiated, as open_clip's ``logit_scale.exp()``).
            weights: (N,) pair weights (STW output); None means all ones.
            query_ids, doc_ids: (N,) integer ids, needed for ``duplicates="mask"`` and ``"positives"``.
        """
        with full_precision(query.device):
            return self._loss(query, doc, logit_scale, weights, query_ids, doc_ids)

    def _loss(self, query, doc, logit_scale, weights, query_ids, doc_ids) -> torch.Tensor:
        n = query.shape[0]
        query, doc = at_least_float32(query), at_least_float32(doc)
        weights = torch.ones(n, device=query.device) if weights is None else weights
        weights = weights.to(device=query.device, dtype=query.dtype)
        offset = 0
        all_query, all_doc, all_weights, all_qids, all_dids = query, doc, weights, query_ids, doc_ids
        if self.gather is not None:
            all_query, offset = self.gather(query)
            all_doc, _ = self.gather(doc)
            all_weights, _ = self.gather(weights)
            all_qids = self.gather(query_ids)[0] if query_ids is not None else None
            all_dids = self.gather(doc_ids)[0] if doc_ids is not None else None
        w = normalise_weights(all_weights, self.weight_norm)[offset:offset + n]
        scale = logit_scale.to(query.dtype)
        rows = torch.arange(n, device=query.device) + offset
        if self.duplicates in ("mask", "positives") and (query_ids is None or doc_ids is None):
            raise ValueError(f"duplicates={self.duplicates!r} needs query_ids and doc_ids")
        tile = self.tile_for(all_doc.shape[0])
        if tile:
            loss_lr, loss_rl = self._tiled(query, doc, all_query, all_doc, scale, rows, all_weights, all_qids,
                                           all_dids, tile)
            return (self.direction * (w * loss_lr).sum() + (1 - self.direction) * (w * loss_rl).sum()) / n
        logits_lr = scale * query @ all_doc.T          # local queries x all documents
        logits_rl = scale * doc @ all_query.T          # local documents x all queries
        if self.duplicates == "negatives":
            targets_lr = targets_rl = None
        elif self.duplicates == "cwcl":
            targets_lr, targets_rl = cwcl_targets(query, all_query), cwcl_targets(doc, all_doc)
        else:
            same_q = all_qids[rows, None] == all_qids[None, :]     # (n, N_all)
            same_d = all_dids[rows, None] == all_dids[None, :]
            if self.duplicates == "mask":
                other = (same_q | same_d)
                other[torch.arange(n, device=other.device), rows] = False
                logits_lr = logits_lr.masked_fill(other, float("-inf"))
                logits_rl = logits_rl.masked_fill(other, float("-inf"))
                targets_lr = targets_rl = None
            else:
                local_w = all_weights[rows]
                zero = torch.zeros((), device=query.device)
                # row i, column j: pair (q_i, d_j) judged with weight w_j if same query, w_i if same product
                targets_lr = torch.where(same_q, all_weights[None, :], torch.where(same_d, local_w[:, None], zero))
                targets_rl = torch.where(same_d, all_weights[None, :], torch.where(same_q, local_w[:, None], zero))
                # a row whose pairs all weigh 0 (a missing field's rows in field_mode=pairs) has no target: loss 0
                targets_lr = targets_lr / targets_lr.sum(1, keepdim=True).clamp_min(1e-30)
                targets_rl = targets_rl / targets_rl.sum(1, keepdim=True).clamp_min(1e-30)
        loss_lr = self._rows(logits_lr, rows, targets_lr)
        loss_rl = self._rows(logits_rl, rows, targets_rl)
        return (self.direction * (w * loss_lr).sum() + (1 - self.direction) * (w * loss_rl).sum()) / n

    def _tiled(self, query, doc, all_query, all_doc, scale, rows, all_weights, all_qids, all_dids, tile):
        """Both directions' per-row losses by :func:`gclcore.tiled_loss.tiled_row_losses`."""
        row_qids = None if all_qids is None else all_qids[rows]
        row_dids = None if all_dids is None else all_dids[rows]
        common = dict(rows=rows, mode=self.duplicates, row_weights=all_weights[rows], col_weights=all_weights)
        lr = Targets(row_ids=row_qids, col_ids=all_qids, row_other=row_dids, col_other=all_dids,
                     anchors_all=all_query.detach(), **common)
        rl = Targets(row_ids=row_dids, col_ids=all_dids, row_other=row_qids, col_other=all_qids,
                     anchors_all=all_doc.detach(), **common)
        return tiled_row_losses(query, all_doc, scale, lr, tile), tiled_row_losses(doc, all_query, scale, rl, tile)

    @staticmethod
    def _rows(logits: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        """Per-row cross-entropy against the diagonal (targets None) or a target distribution."""
        log_p = F.log_softmax(logits, dim=1)
        if targets is None:
            return -log_p[torch.arange(len(rows), device=log_p.device), rows]  # a host index would wait
        return -(targets * torch.where(targets > 0, log_p, torch.zeros_like(log_p))).sum(1)


def multi_field_loss(loss: GCLLoss, query: Side, doc: Side, logit_scale: torch.Tensor,
                     weights: torch.Tensor | None = None, *, mode: Literal["fused", "pairs", "both"] = "fused",
                     pair_weights: Mapping[tuple[str, str], float] | None = None,
                     query_ids: torch.Tensor | None = None, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
    """GCL over several fields per side.

    Args:
        loss: the pair loss (:class:`GCLLoss`).
        query, doc: the two sides (:class:`gclcore.fusion.Side`: fields, (N, d) embeddings, presence).
        logit_scale: scalar ``t`` (exponentiated).
        weights: (N,) pair weights (STW output); None means all ones.
        mode: ``"fused"``: one loss on the weighted-average embeddings (missing fields weight 0);
            ``"pairs"``: ``sum_(a,b) lambda_ab * L(L^a, R^b)`` over field pairs (``pair_weights`` default 1
            for every pair; rows where a field is missing get weight 0 in that pair's term);
            ``"both"``: their sum.
        query_ids, doc_ids: (N,) integer ids for the duplicate handling of :class:`GCLLoss`.
    """
    if mode not in ("fused", "pairs", "both"):
        raise ValueError(f"mode must be fused, pairs or both, not {mode!r}")
    first = query.embeddings[query.fields[0].name]
    weights = torch.ones(first.shape[0], device=first.device) if weights is None else weights
    total = torch.zeros((), device=weights.device)
    if mode in ("fused", "both"):
        total = total + loss(query.fused(), doc.fused(), logit_scale, weights, query_ids, doc_ids)
    if mode in ("pairs", "both"):
        for a in query.fields:
            for b in doc.fields:
                lam = 1.0 if pair_weights is None else pair_weights.get((a.name, b.name), 0.0)
                if lam == 0:
                    continue
                w = weights
                for present in (query.presence(a.name), doc.presence(b.name)):
                    if present is not None:
                        w = w * present.to(w.dtype)
                total = total + lam * loss(F.normalize(query.embeddings[a.name], dim=-1),
                                           F.normalize(doc.embeddings[b.name], dim=-1), logit_scale, w,
                                           query_ids, doc_ids)
    return total

"""The weighted contrastive loss in tiles: the same numbers as :class:`gclcore.loss.GCLLoss` with memory
O(B*d + tile^2) instead of O(B^2).

The dense loss materialises the (n, N) logits of each direction (n local rows, N columns of the gathered
batch) and keeps them, their softmax and the targets for the backward pass: at B = 65,536 one fp32
direction alone is 16 GiB. Here each direction's per-row loss

    l_i = sum_j T_ij (LSE_j(z_ij) - z_ij),      z_ij = t * a_i . o_j   (anchors a, others o)

is accumulated over (row tile x column tile) blocks with an online log-sum-exp (running maximum and
rescaled sum, as in FlashAttention and Inf-CL: Cheng et al., "Breaking the Memory Barrier", arXiv
2410.17243), and nothing of size n x N is kept: the backward pass recomputes each block from the saved
embeddings and the per-row log-sum-exp,

    dl/dz_ij = g_i * (m_i softmax_ij - T_ij)    (m_i = sum_j T_ij: 1, or 0 for a row whose pairs all weigh 0),
    dl/da_i  = t sum_j dz_ij o_j,   dl/do_j = t sum_i dz_ij a_i,   dl/dt = sum_ij dz_ij (a_i . o_j),

with ``g`` the incoming gradient of the per-row losses. Targets and masks are those of ``GCLLoss``'s
``duplicates`` modes, built block by block from ids and weights: the diagonal (``negatives``), the diagonal
with other pairs of the row's query or product removed from the softmax (``mask``), graded multi-positive
targets (``positives``) and CWCL soft targets (``cwcl``); the rows' target sums, needed to normalise them,
take one more pass over the columns (ids and weights only, or one matrix product for ``cwcl``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Targets:
    """What one direction's blocks need besides the embeddings, all for the global batch of N pairs.

    ``rows``: (n,) global column index of each local row's own pair; ``mode``: a ``GCLLoss`` duplicates
    mode; ``row_ids`` / ``col_ids``: (n,) / (N,) ids of the pair's own side and ``row_other`` / ``col_other``
    of the opposite side (anchor side first: queries in the query->document direction), for ``mask`` and
    ``positives``; ``row_weights`` / ``col_weights``: raw pair weights (``positives``); ``anchors_all``: (N, d)
    anchor-side embeddings of every pair, detached (``cwcl``)."""

    rows: torch.Tensor
    mode: str = "negatives"
    row_ids: torch.Tensor | None = None
    col_ids: torch.Tensor | None = None
    row_other: torch.Tensor | None = None
    col_other: torch.Tensor | None = None
    row_weights: torch.Tensor | None = None
    col_weights: torch.Tensor | None = None
    anchors_all: torch.Tensor | None = None

    def block(self, anchors: torch.Tensor, r: slice, c: slice):
        """``(excluded, numerators)`` of the block rows ``r`` x columns ``c``: a bool mask of logits left out
        of the softmax (or None) and the unnormalised targets (None: the diagonal, weight 1)."""
        if self.mode == "negatives":
            return None, None
        if self.mode == "cwcl":
            return None, (1 + anchors[r].detach() @ self.anchors_all[c].T) / 2
        same = self.row_ids[r, None] == self.col_ids[None, c]          # shares the anchor's side (a query)
        other = self.row_other[r, None] == self.col_other[None, c]     # shares the opposite side (a product)
        if self.mode == "mask":
            own = self.rows[r, None] == torch.arange(c.start, c.stop, device=same.device)[None, :]
            return (same | other) & ~own, None
        zero = torch.zeros((), dtype=anchors.dtype, device=anchors.device)
        numerators = torch.where(same, self.col_weights[None, c].to(anchors.dtype),
                                 torch.where(other, self.row_weights[r, None].to(anchors.dtype), zero))
        return None, numerators

    def diagonal(self, r: slice, c: slice) -> torch.Tensor:
        """(len(r), len(c)) float: 1 where the column is the row's own pair."""
        cols = torch.arange(c.start, c.stop, device=self.rows.device)
        return (self.rows[r, None] == cols[None, :]).float()


def _tiles(size: int, tile: int) -> list[slice]:
    return [slice(start, min(start + tile, size)) for start in range(0, size, tile)]


class _TiledDirection(torch.autograd.Function):
    @staticmethod
    def forward(ctx, anchors, others, scale, targets: Targets, tile: int):
        n = anchors.shape[0]
        row_tiles, col_tiles = _tiles(n, tile), _tiles(others.shape[0], tile)
        totals = torch.ones(n, dtype=anchors.dtype, device=anchors.device)
        mass = torch.ones_like(totals)                          # sum_j T_ij: 1, or 0 for a row without targets
        if targets.mode in ("positives", "cwcl"):           # the targets' row sums, to normalise them
            totals = torch.zeros_like(totals)
            for r in row_tiles:
                for c in col_tiles:
                    totals[r] += targets.block(anchors, r, c)[1].sum(1)
            mass = (totals > 0).to(totals.dtype)               # all of a row's pairs weigh 0: its loss is 0
            totals = totals.clamp_min(1e-30)
        lse = torch.empty(n, dtype=anchors.dtype, device=anchors.device)
        target_logit = torch.zeros_like(lse)
        for r in row_tiles:
            running_max = torch.full((r.stop - r.start,), float("-inf"), dtype=anchors.dtype, device=anchors.device)
            running_sum = torch.zeros_like(running_max)
            for c in col_tiles:
                logits = scale * anchors[r] @ others[c].T
                excluded, numerators = targets.block(anchors, r, c)
                weights = targets.diagonal(r, c).to(logits.dtype) if numerators is None else numerators / totals[r, None]
                target_logit[r] += (weights * logits).sum(1)
                if excluded is not None:
                    logits = logits.masked_fill(excluded, float("-inf"))
                new_max = torch.maximum(running_max, logits.max(1).values)
                shift = torch.where(torch.isinf(new_max), torch.zeros_like(new_max), new_max)  # a row masked so far
                running_sum = running_sum * torch.exp(running_max - shift) + torch.exp(logits - shift[:, None]).sum(1)
                running_max = new_max
            lse[r] = running_max + torch.log(running_sum)
        ctx.save_for_backward(anchors, others, scale, lse, totals, mass)
        ctx.targets, ctx.tile = targets, tile
        return mass * lse - target_logit

    @staticmethod
    def backward(ctx, grad_rows):
        with torch.autocast(device_type=grad_rows.device.type, enabled=False):  # as the forward ran
            return _TiledDirection._backward(ctx, grad_rows)

    @staticmethod
    def _backward(ctx, grad_rows):
        anchors, others, scale, lse, totals, mass = ctx.saved_tensors
        targets, tile = ctx.targets, ctx.tile
        grad_anchors, grad_others = torch.zeros_like(anchors), torch.zeros_like(others)
        grad_scale = torch.zeros((), dtype=anchors.dtype, device=anchors.device)
        for r in _tiles(anchors.shape[0], tile):
            for c in _tiles(others.shape[0], tile):
                similarity = anchors[r] @ others[c].T
                logits = scale * similarity
                excluded, numerators = targets.block(anchors, r, c)
                weights = targets.diagonal(r, c).to(logits.dtype) if numerators is None else numerators / totals[r, None]
                if excluded is not None:
                    logits = logits.masked_fill(excluded, float("-inf"))
                grad_logits = grad_rows[r, None] * (mass[r, None] * torch.exp(logits - lse[r, None]) - weights)
                grad_anchors[r] += scale * grad_logits @ others[c]
                grad_others[c] += scale * grad_logits.T @ anchors[r]
                grad_scale += (grad_logits * similarity).sum()
        return grad_anchors, grad_others, grad_scale.reshape(scale.shape), None, None


def tiled_row_losses(anchors: torch.Tensor, others: torch.Tensor, scale: torch.Tensor, targets: Targets,
                     tile: int = 1024) -> torch.Tensor:
    """(n,) per-row cross-entropies of one direction: (n, d) ``anchors`` against the (N, d) ``others`` of the
    global batch, logit scale ``scale`` (exponentiated), ``targets`` as :class:`Targets`; blocks of
    ``tile`` x ``tile`` logits at a time, in the inputs' precision with autocast off (callers upcast)."""
    if tile < 1:
        raise ValueError(f"tile must be >= 1, not {tile}")
    with torch.autocast(device_type=anchors.device.type, enabled=False):
        return _TiledDirection.apply(anchors, others, scale, targets, tile)

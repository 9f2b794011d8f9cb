"""Multi-field fusion: one L2-normalised embedding per item from several field embeddings.

For an item with fields ``x_1..x_m``, base weights ``a_j`` and presence flags ``p_j``::

    e_j  = normalize(f_j(x_j))                 (each field's embedding)
    a'_j = a_j * p_j                           (a missing field gets weight 0)
    a''_j = a'_j / sum_k a'_k                  (the remaining weights renormalise)
    v    = normalize(sum_j a''_j e_j)

This is the published evaluation's fusion (evaluation-protocol.md section 2.6) and GCL's weighted-average
embedding; the trainer and the evaluator both call :func:`fuse`. The reference never zeroes the first
field (its first field is always present); :func:`gclcore.evaluate` reproduces that by passing
``present[:, 0] = True``. An item with no field present gets the zero vector.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def fuse(embeddings: Sequence[torch.Tensor], weights: Sequence[float] | torch.Tensor,
         present: torch.Tensor | None = None) -> torch.Tensor:
    """Fuse per-field embeddings.

    Args:
        embeddings: m tensors of shape (n, d), one per field (normalised here; need not be already).
        weights: m base weights ``a_j`` (>= 0).
        present: optional (n, m) bool/float mask; missing fields get weight 0.

    Returns:
        (n, d) L2-normalised fused embeddings (zero rows where no field is present).
    """
    if len(embeddings) == 0:
        raise ValueError("fuse needs at least one field")
    stacked = torch.stack([F.normalize(e.float(), dim=-1) for e in embeddings], dim=1)  # (n, m, d)
    a = torch.as_tensor(weights, dtype=stacked.dtype, device=stacked.device).expand(stacked.shape[:2])
    if len(embeddings) == 1 and present is None:
        return stacked[:, 0]
    if present is not None:
        a = a * present.to(stacked.dtype)
    total = a.sum(dim=1, keepdim=True)
    a = a / torch.where(total > 0, total, torch.ones_like(total))
    return F.normalize((a.unsqueeze(-1) * stacked).sum(dim=1), dim=-1)

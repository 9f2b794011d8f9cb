"""Multi-field fusion: one L2-normalised embedding per item from several field embeddings.

For an item with fields ``x_1..x_m``, base weights ``a_j`` and presence flags ``p_j``::

    e_j  = normalize(f_j(x_j))                 (each field's embedding)
    a'_j = a_j * p_j                           (a missing field gets weight 0)
    a''_j = a'_j / sum_k a'_k                  (the remaining weights renormalise)
    v    = normalize(sum_j a''_j e_j)

This is the published evaluation's fusion (the book's methods page, "The loss") and GCL's
weighted-average embedding; the trainer and the evaluator both call :func:`fuse`, through
:class:`Side`. The published evaluation never zeroes the first field (its first field is always
present); :func:`gclcore.evaluate.embed_items` reproduces that by marking the first field present. An
item with no field present gets the zero vector.

The vocabulary of fields lives here too: a :class:`Field` is a column name and its fusion weight
(``"image_local=0.9,title=0.1"`` parses to two), and a :class:`Side` is one side of a batch (the query
side or the document side): its fields, their embeddings and which rows have each field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IMAGE_FIELDS = ("image_local", "image")
"""Column names holding images (CSV layout: stored paths; parquet layout: encoded bytes)."""


@dataclass(frozen=True)
class Field:
    """One input field: a column name, its fusion weight, and whether it is an image."""

    name: str
    weight: float = 1.0

    @property
    def is_image(self) -> bool:
        return self.name in IMAGE_FIELDS


def parse_fields(text: str) -> tuple[Field, ...]:
    """``"image_local=0.9,title=0.1"`` -> fields; a name without ``=w`` has weight 1."""
    fields = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition("=")
        try:
            fields.append(Field(name.strip(), float(weight) if weight else 1.0))
        except ValueError as err:
            raise ValueError(f"bad field weight in {part!r}: use name=weight, e.g. title=0.1") from err
    if not fields or any(f.weight < 0 for f in fields) or sum(f.weight for f in fields) <= 0:
        raise ValueError(f"need at least one field with a positive weight, got {text!r}")
    return tuple(fields)


def format_fields(fields: Sequence[Field]) -> str:
    """The inverse of :func:`parse_fields`: ``"image_local=0.9,title=0.1"``."""
    return ",".join(f"{f.name}={f.weight:g}" for f in fields)


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
    if len(weights) != len(embeddings):
        raise ValueError(f"fuse: {len(weights)} weights for {len(embeddings)} fields")
    stacked = torch.stack([F.normalize(e.float(), dim=-1) for e in embeddings], dim=1)  # (n, m, d)
    if len(embeddings) == 1 and present is None:
        return stacked[:, 0]
    if torch.is_tensor(weights):
        a = weights.to(device=stacked.device, dtype=stacked.dtype).expand(stacked.shape[:2])
    else:  # filled on the device: a host tensor copied there would wait for the forward pass queued before it
        a = torch.stack([stacked.new_full(stacked.shape[:1], float(w)) for w in weights], dim=1)
    if present is not None:
        a = a * present.to(stacked.dtype)
    total = a.sum(dim=1, keepdim=True)
    a = a / torch.where(total > 0, total, torch.ones_like(total))
    return F.normalize((a.unsqueeze(-1) * stacked).sum(dim=1), dim=-1)


@dataclass
class Side:
    """One side of a batch: its fields, one (n, d) embedding per field, and per-field presence.

    ``present[name]`` is an (n,) bool tensor (False: the row has no value for that field, which then
    gets fusion weight 0 and drops out of that field's pair losses); ``None`` means every field is
    present in every row.
    """

    fields: tuple[Field, ...]
    embeddings: Mapping[str, torch.Tensor]
    present: Mapping[str, torch.Tensor] | None = None

    def fused(self) -> torch.Tensor:
        """(n, d) L2-normalised weighted average over the side's fields (:func:`fuse`)."""
        mask = None if self.present is None else torch.stack([self.present[f.name] for f in self.fields], dim=1)
        return fuse([self.embeddings[f.name] for f in self.fields], [f.weight for f in self.fields], mask)

    def presence(self, name: str) -> torch.Tensor | None:
        """(n,) presence of one field, or None when every row has it."""
        return None if self.present is None else self.present[name]

"""open_clip's own (causal) text towers on tokens cut after the batch's last pooled position.

CLIP's text transformer reads a text through a causal attention mask (position i attends to positions
<= i) and pools it at its end-of-text token (``argmax``: the highest token id; ``eos``: the first
``eos_id``). Everything after the pooled position of the batch's longest text is padding that can
reach no pooled position: cutting those columns changes nothing but floating-point rounding (the
softmax of a position sees the same keys; the masked ones added exp(-inf) = 0). open_clip pads every text to
its 77 positions, so a query of 8 tokens is computed at nearly ten times its length: for ViT-B-32 the text
tower is about 40% of a training step's work at 77 positions (bench/RESULTS.md). Hugging Face towers get
the same cut by their padding mask (:func:`gclcore.models.trim_padding`).

open_clip's ``encode_text`` adds all 77 positional embeddings and the 77 x 77 mask, so it refuses cut
tokens; :func:`encode_text` runs the tower's own modules with both sliced to the cut length, and is
``model.encode_text`` for every other tower or length.

The trainer cuts (:class:`gclcore.towers.FullTowers`); evaluation encodes every text at the model's full
length, as the published evaluation does, so its rankings are not moved by rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class CausalTower:
    """The parts of an open_clip causal text tower: ``modules`` holds ``token_embedding``,
    ``positional_embedding``, ``transformer``, ``ln_final``, ``text_projection`` and ``attn_mask``
    (the CLIP model itself, or a ``CustomTextCLIP``'s ``TextTransformer``)."""

    modules: torch.nn.Module
    pool_type: str
    eos_id: int | None


def causal_tower(model: torch.nn.Module) -> CausalTower | None:
    """``model``'s text tower when it is causal and pooled at an end-of-text position (``argmax`` or
    ``eos``), else None: Hugging Face towers, bidirectional ones (SigLIP), ``last`` / ``first`` pooling,
    CoCa's appended class token and towers that also return their tokens are left as they are."""
    from open_clip.transformer import TextTransformer

    text = getattr(model, "text", None)
    if isinstance(text, TextTransformer):
        if text.cls_emb is not None or text.output_tokens:
            return None
        tower = CausalTower(text, text.pool_type, text.eos_id)
    elif text is None and hasattr(model, "token_embedding") and hasattr(model, "text_pool_type"):
        tower = CausalTower(model, model.text_pool_type, getattr(model, "text_eos_id", None))
    else:
        return None
    causal = getattr(tower.modules, "attn_mask", None) is not None
    return tower if causal and tower.pool_type in ("argmax", "eos") else None


def pooled_positions(tower: CausalTower, tokens: torch.Tensor) -> torch.Tensor:
    """(n,) the position each row is pooled at, found as open_clip's ``text_global_pool`` finds it."""
    if tower.pool_type == "argmax":
        return tokens.argmax(dim=-1)
    return (tokens == tower.eos_id).int().argmax(dim=-1)


def cut_after_pooled(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``tokens`` (n, L) cut to (n, l): the columns up to the batch's last pooled position, when ``model``'s
    text tower is causal (:func:`causal_tower`); otherwise ``tokens`` itself. Runs where the tokens are
    (the trainer cuts the CPU copy: on a GPU the length would wait for the device)."""
    tower = causal_tower(model)
    if tower is None or tokens.shape[0] == 0:
        return tokens
    length = int(pooled_positions(tower, tokens).max()) + 1
    return tokens if length == tokens.shape[1] else tokens[:, :length]


def encode_text(model: torch.nn.Module, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """(n, d) text embeddings of ``tokens`` (n, l), which may be cut (:func:`cut_after_pooled`) to fewer than
    the tower's positions: open_clip's ``encode_text`` with the positional embeddings and the causal mask
    sliced to l. Other towers, and tokens of the full length, go to ``model.encode_text`` itself."""
    from open_clip.transformer import text_global_pool

    tower = causal_tower(model)
    if tower is None or tokens.shape[1] == tower.modules.positional_embedding.shape[0]:
        return model.encode_text(tokens, normalize=normalize)
    text, length = tower.modules, tokens.shape[1]
    cast_dtype = text.transformer.get_cast_dtype()
    x = text.token_embedding(tokens).to(cast_dtype) + text.positional_embedding[:length].to(cast_dtype)
    x = text.ln_final(text.transformer(x, attn_mask=text.attn_mask[:length, :length]))
    x = text_global_pool(x, tokens, tower.pool_type, eos_token_id=tower.eos_id)
    projection = text.text_projection
    if isinstance(projection, torch.nn.Linear):
        x = projection(x)
    elif projection is not None:
        x = x @ projection
    return F.normalize(x, dim=-1) if normalize else x

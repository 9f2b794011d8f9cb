"""Locked towers with cached trunk features (LiT-style training on a CPU budget).

A dual encoder is split into **trunks** (EfficientNet-Lite0 up to its pooled 1280-d features; the
MiniLM transformer + mean pooler up to its 384-d sentence features) and **heads** (the linear
projections to the shared space). With the trunks frozen, every text and image of a dataset is pushed
through them once (:class:`FeatureCache`, saved to disk and keyed by the trunk weights and the inputs),
after which training and evaluation only apply the heads: thousands of samples per second on 2 cores
instead of ~20 for full fine-tuning.

Supported towers: open_clip's ``TimmModel`` image tower and ``HFTextEncoder`` text tower (the embedded
default model). Other architectures train with ``freeze="none"`` (full fine-tuning).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from gclcore.data import Dataset, ImageSource, atomic_write, image_basename
from gclcore.loaders import to_device
from gclcore.models import state_digest as _digest

FEATURES_VERSION = "2"
"""Part of every feature cache key: raise it when the way trunk features are computed changes (e.g.
:func:`text_trunk`, or what a cache file holds), so that no cache of the old code is reused."""


def check_splittable(model: torch.nn.Module) -> None:
    """Raise ValueError unless the model's towers can be split into trunk + head."""
    from open_clip.hf_model import HFTextEncoder
    from open_clip.timm_model import TimmModel

    if not isinstance(getattr(model, "visual", None), TimmModel) or not isinstance(getattr(model, "text", None),
                                                                                   HFTextEncoder):
        raise ValueError("locked towers (freeze='trunks') need a timm image tower and a Hugging Face text tower "
                         "(the embedded default model); use freeze='none' for this architecture")


def trunk_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return list(model.visual.trunk.parameters()) + list(model.text.transformer.parameters())


def head_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [model.visual.head, model.text.proj]


@torch.no_grad()
def text_trunk(model, tokens: torch.Tensor) -> torch.Tensor:
    """Pooled text features before the projection head (what ``HFTextEncoder.forward`` computes)."""
    text = model.text
    attention = (tokens != text.config.pad_token_id).long()
    out = text.transformer(input_ids=tokens, attention_mask=attention)
    return text.pooler(out, attention)


@dataclass
class FeatureCache:
    """Trunk features of every text and image of a dataset.

    ``texts``: text -> row of ``text_features`` (T, 384); ``images``: image basename -> row of
    ``image_features`` (I, 1280) and of ``image_status`` (I,), each image's
    :class:`~gclcore.data.ImageStatus` when its features were computed (a placeholder's are the grey
    square's), which :class:`HeadEncoder` reports to the resolver of every evaluation that uses them.
    """

    texts: dict[str, int]
    text_features: torch.Tensor
    images: dict[str, int]
    image_features: torch.Tensor
    trunk_checksum: str
    image_status: torch.Tensor

    def text_rows(self, texts: list[str]) -> torch.Tensor:
        try:
            return torch.tensor([self.texts[t] for t in texts], dtype=torch.long)
        except KeyError as err:
            raise KeyError(f"text {err.args[0]!r} is not in the feature cache: build the cache over every "
                           f"text the run will see") from None

    def image_rows(self, stored_paths: list[str]) -> torch.Tensor:
        try:
            return torch.tensor([self.images[image_basename(p)] for p in stored_paths], dtype=torch.long)
        except KeyError as err:
            raise KeyError(f"image {err.args[0]!r} is not in the feature cache") from None

    @classmethod
    def build(cls, encoder, texts: list[str], image_paths: list[str], resolver: ImageSource | None,
              cache_dir: str | os.PathLike | None = None, batch_size: int = 128, workers: int | None = None,
              progress: bool = True) -> FeatureCache:
        """Compute (or load from ``cache_dir``) trunk features for ``texts`` and ``image_paths``.

        ``encoder`` is a :class:`gclcore.models.Encoder` (its eval transform is used: no augmentation,
        the trunks are frozen). The file name hashes :data:`FEATURES_VERSION`, the trunk weights, the image
        transform (its ``repr``: sizes, normalisation), the sorted inputs and the image source; the file
        also holds each image's fingerprint (:meth:`~gclcore.data.ImageSource.fingerprints`: size and
        modification time of an image file) and status, so that images changed, restored or lost
        since are re-embedded on reuse (and said so), and the statuses of reused features are counted on
        ``resolver`` as if decoded again (its warning and ``max_bad`` check apply to a cached run too).
        """
        from tqdm.auto import tqdm

        model = encoder.model
        check_splittable(model)
        texts = sorted(set(texts))
        names = sorted({image_basename(p) for p in image_paths})
        if names and resolver is None:
            raise ValueError("image features need an image root")
        trunk_sum = _digest(model.visual.trunk, model.text.transformer)
        key = _digest(FEATURES_VERSION, trunk_sum, repr(encoder.preprocess), "\n".join(texts), "\n".join(names),
                      resolver.identity if resolver else "")
        path = Path(cache_dir) / f"trunk-features-{key}.pt" if cache_dir is not None else None
        text_index, image_index = {t: i for i, t in enumerate(texts)}, {n: i for i, n in enumerate(names)}
        stamps = torch.tensor(resolver.fingerprints(names) if names else [], dtype=torch.long).reshape(-1, 2)
        saved = torch.load(path, map_location="cpu", weights_only=True) if path is not None and path.exists() else None
        if saved is not None and "image_stamp" in saved:  # older files, without stamps, are rebuilt
            text_features, image_features, status = saved["text"], saved["image"], saved["image_status"]
            stale = (saved["image_stamp"] != stamps).any(dim=1)
            if names:  # the reused features' statuses count as if their images were decoded again
                resolver.record_batch([n for n, s in zip(names, stale.tolist()) if not s], status[~stale])
                resolver.check_bad_fraction()
            changed = stale.nonzero().flatten()
            if len(changed) == 0:
                return cls(text_index, text_features, image_index, image_features, trunk_sum, status)
            print(f"feature cache {path.name}: {len(changed)} image(s) changed, restored or lost since it was built: "
                  f"re-embedding them", flush=True)
            features, new_status = _image_features(encoder, [names[i] for i in changed], resolver, batch_size,
                                                   workers, progress)
            image_features[changed], status[changed] = features, new_status
        else:
            model.eval()
            text_parts = []
            for start in tqdm(range(0, len(texts), batch_size), desc="text trunk features", disable=not progress):
                tokens = encoder.tokenizer(texts[start:start + batch_size]).to(encoder.device)
                text_parts.append(text_trunk(model, tokens).float().cpu())
            text_features = torch.cat(text_parts) if text_parts else torch.empty(0, model.text.proj.in_features)
            image_features, status = (_image_features(encoder, names, resolver, batch_size, workers, progress)
                                      if names else (torch.empty(0, 0), torch.empty(0, dtype=torch.uint8)))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(path, binary=True) as fh:
                torch.save({"text": text_features, "image": image_features, "image_status": status,
                            "image_stamp": stamps}, fh)
        return cls(text_index, text_features, image_index, image_features, trunk_sum, status)


@torch.no_grad()
def _image_features(encoder, names: list[str], resolver: ImageSource, batch_size: int, workers: int | None,
                    progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Image trunk features (n, 1280) of ``names`` and their load statuses (n,), counted on ``resolver``."""
    from tqdm.auto import tqdm

    from gclcore.loaders import model_image_batches

    encoder.model.eval()
    features, statuses = [], []
    batches = model_image_batches(names, resolver, encoder.preprocess, encoder.device, batch_size, workers)
    for pixels, status in tqdm(batches, desc="image trunk features", total=-(-len(names) // batch_size),
                               disable=not progress):
        features.append(encoder.model.visual.trunk(pixels).float().cpu())
        statuses.append(status.to(torch.uint8))
    return torch.cat(features), torch.cat(statuses)


class HeadEncoder:
    """The model seen through its heads over cached trunk features.

    Implements the evaluator's encoder protocol (:class:`gclcore.evaluate.TextImageEncoder`) and the
    trainer's ``embed_text_rows`` / ``embed_image_rows`` (with gradients through the heads).
    """

    def __init__(self, model: torch.nn.Module, cache: FeatureCache, device: torch.device):
        check_splittable(model)
        self.model, self.cache, self.device = model, cache, device
        self._text = cache.text_features.to(device)
        self._image = cache.image_features.to(device)

    def embed_text_rows(self, rows: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.text.proj(self._text[to_device(rows, self.device)]), dim=-1)

    def embed_image_rows(self, rows: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.visual.head(self._image[to_device(rows, self.device)]), dim=-1)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return self.embed_text_rows(self.cache.text_rows([str(t) for t in texts])).float().cpu()

    @torch.no_grad()
    def encode_image_files(self, stored_paths: list[str], resolver=None) -> torch.Tensor:
        """Embeddings from the cached features; each image's cached status is counted on ``resolver``, so an
        evaluation reports the placeholders it used, as one that decodes its images does."""
        rows = self.cache.image_rows(stored_paths)
        if resolver is not None:
            resolver.record_batch(stored_paths, self.cache.image_status[rows])
        return self.embed_image_rows(rows).float().cpu()

    def checksum(self) -> str:
        return _digest(self.cache.trunk_checksum, *head_modules(self.model), self.model.logit_scale)


def dataset_inputs(dataset: Dataset, text_fields: list[str], image_fields: list[str],
                   stems: list[str] | None = None) -> tuple[list[str], list[str]]:
    """Every text (of ``text_fields``) and stored image path (of ``image_fields``) in the split rows and
    corpora of a dataset: what a feature cache must cover for training and evaluation."""
    stems = list(stems or dataset.splits)
    texts: set[str] = set()
    images: set[str] = set()
    tables = [dataset.rows(s) for s in stems] + list({id(c): c for c in (dataset.corpus(s) for s in stems)}.values())
    for table in tables:
        for name in text_fields:
            if name in table.columns:
                texts.update(table[name].astype(object).map(str))
        for name in image_fields:
            if name in table.columns:
                images.update(table[name].dropna().astype(str))
    return sorted(texts), sorted(images)

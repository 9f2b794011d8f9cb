"""The two tower regimes of training, behind one :class:`Towers` protocol.

- :class:`HeadTowers` (``freeze="trunks"``, the CPU default): the pretrained trunks are frozen and their
  features cached once (:mod:`gclcore.features`); a batch is a tensor of row indices, and only the
  projection heads (and the logit scale) train, LiT-style.
- :class:`FullTowers` (``freeze="none"``): full fine-tuning; images are decoded and augmented and texts
  tokenised in DataLoader workers (:class:`PairRows`), augmentation seeded per (seed, epoch, row) so runs
  and resumes are reproducible; the pixels leave the workers as uint8 and are normalised on the device
  (:mod:`gclcore.pixels`).

The trainer only sees the protocol: the parameters to optimise, a loader that gives each global batch of
an epoch as its micro-batches, the row indices of a micro-batch, and the per-field embeddings of one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch

from gclcore import image_store
from gclcore.causal_text import cut_after_pooled, encode_text
from gclcore.data import Dataset, ImageResolver, ImageSource
from gclcore.data.images import DEFAULT_MAX_BAD
from gclcore.fusion import Field
from gclcore.loaders import default_workers, to_device
from gclcore.models import trim_padding
from gclcore.pixels import split_transform


class Towers(Protocol):
    model: torch.nn.Module
    eval_encoder: Any
    """What evaluation during training embeds with (:class:`gclcore.evaluate.TextImageEncoder`)."""
    resolver: ImageSource | None
    """The image source training counts every image load on (None without images)."""

    def trainable(self) -> list[torch.nn.Parameter]: ...

    def loader(self, batches: list[np.ndarray], epoch: int, parts: int = 1) -> Iterator[list[Any]]:
        """Per global batch of row indices, its ``parts`` micro-batches (:func:`micro_batches`)."""

    def indices(self, batch) -> np.ndarray: ...

    def embed(self, batch) -> dict[str, torch.Tensor]: ...


class HeadTowers:
    """Locked trunks, trained heads: a batch is a tensor of row indices into the cached features.

    The feature cache covers every text and image column of the dataset (plus the run's own fields), so
    that runs with different fields share it instead of recomputing trunk features.
    """

    def __init__(self, encoder, rows: pd.DataFrame, fields: tuple[Field, ...], dataset: Dataset, cache_dir: str,
                 workers: int, progress: bool, max_bad_images: float = DEFAULT_MAX_BAD, missing: str = "placeholder",
                 image_store_dir: str = ""):
        from gclcore.features import FeatureCache, HeadEncoder, check_splittable, dataset_inputs, trunk_parameters

        check_splittable(encoder.model)
        for p in trunk_parameters(encoder.model):
            p.requires_grad_(False)
        text_fields = sorted({"query", "title"} | {f.name for f in fields if not f.is_image})
        image_fields = sorted({"image_local"} | {f.name for f in fields if f.is_image})
        texts, images = dataset_inputs(dataset, text_fields, image_fields)
        self.resolver = resolver = image_store.source_for(dataset, dataset.image_resolver(missing, max_bad_images),
                                                          encoder.preprocess, image_store_dir)
        cache = FeatureCache.build(encoder, texts, images, resolver, cache_dir, progress=progress,
                                   workers=None if workers < 0 else workers)
        if resolver is not None:
            resolver.warn_placeholders("cached")
        self.model, self.fields = encoder.model, fields
        self.eval_encoder = HeadEncoder(encoder.model, cache, encoder.device)
        self.row_index = {}
        for f in fields:
            values = rows[f.name]
            if f.is_image:  # a missing image gets row 0 and presence False: it never contributes
                filled = values.fillna(values.dropna().iloc[0] if values.notna().any() else "")
                self.row_index[f.name] = cache.image_rows(filled.astype(str).tolist())
            else:
                self.row_index[f.name] = cache.text_rows(values.astype(object).map(str).tolist())

    def trainable(self) -> list[torch.nn.Parameter]:
        from gclcore.features import head_modules

        return [p for m in head_modules(self.model) for p in m.parameters()]

    def loader(self, batches: list[np.ndarray], epoch: int, parts: int = 1) -> Iterator[list[torch.Tensor]]:
        return ([torch.as_tensor(m) for m in micro_batches(b, parts)] for b in batches)

    def indices(self, batch: torch.Tensor) -> np.ndarray:
        return batch.numpy()

    def embed(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        enc = self.eval_encoder
        return {f.name: (enc.embed_image_rows if f.is_image else enc.embed_text_rows)(self.row_index[f.name][batch])
                for f in self.fields}


class PairRows(torch.utils.data.Dataset):
    """Full fine-tuning items: tokens per text field, augmented pixels per image field, the row index
    and an image status per image field (:class:`gclcore.data.ImageStatus`, counted in the main process).
    Augmentation is seeded per (seed, epoch, row)."""

    def __init__(self, rows: pd.DataFrame, fields: tuple[Field, ...], tokenizer, transform,
                 resolver: ImageResolver | None, seed: int, prefixes: dict[str, str] | None = None):
        self.prefixes = prefixes or {}
        self.rows = {f.name: rows[f.name].astype(object).tolist() for f in fields}
        self.fields, self.tokenizer, self.transform, self.resolver, self.seed = fields, tokenizer, transform, resolver, seed
        self.epoch = 0

    def __len__(self):
        return len(next(iter(self.rows.values())))

    def __getitem__(self, i):
        item = {"index": i}
        for f in self.fields:
            value = self.rows[f.name][i]
            if not f.is_image:
                item[f.name] = self.tokenizer([self.prefixes.get(f.name, "") + str(value)])[0]
                continue
            image, status = self.resolver.load(value)
            item[f"{f.name}/status"] = int(status)
            with torch.random.fork_rng(devices=[]):
                # the CPU generator the transforms draw from, alone: torch.manual_seed also seeds the CUDA /
                # XPU / MTIA generators, queuing each uninitialised one's seeding with a formatted call stack
                # (0.16-0.23 ms per image in a worker, GPU box or not; a stored image takes about 0.8 ms)
                torch.default_generator.manual_seed(hash((self.seed, self.epoch, i)) & 0x7FFFFFFF)
                item[f.name] = self.transform(image)
        return item


class FullTowers:
    """Full fine-tuning: a batch is a dict of tokens / pixels from the DataLoader."""

    def __init__(self, encoder, rows: pd.DataFrame, fields: tuple[Field, ...], resolver: ImageResolver | None,
                 seed: int, workers: int, prefixes: dict[str, str] | None = None):
        self.encoder, self.model, self.fields, self.resolver = encoder, encoder.model, fields, resolver
        self.eval_encoder = encoder
        worker_transform, self.normalise = split_transform(encoder.preprocess_train)
        self.dataset = PairRows(rows, fields, encoder.tokenizer, worker_transform, resolver, seed, prefixes)
        self.workers = default_workers() if workers < 0 else workers

    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for name, p in self.model.named_parameters() if name != "logit_scale"]

    def loader(self, batches: list[np.ndarray], epoch: int, parts: int = 1) -> Iterator[list[dict]]:
        """The DataLoader's unit is the micro-batch, so a global batch of tens of thousands of images is
        assembled by all workers at once, and each micro-batch goes to the device as it arrives: on a GPU,
        host memory holds the micro-batches in flight, never a whole global batch."""
        self.dataset.epoch = epoch  # before the workers start: they copy the dataset
        groups = [micro_batches(b, parts) for b in batches]
        loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=[m.tolist() for g in groups for m in g],
                                             num_workers=self.workers, pin_memory=torch.cuda.is_available())
        arriving = iter(loader)
        for group in groups:
            yield [self._arrived(next(arriving)) for _ in group]
        if self.resolver is not None:
            self.resolver.warn_placeholders("trained on")

    def _arrived(self, batch: dict) -> dict:
        """A micro-batch from the DataLoader: its images counted, its tokens cut after the longest text
        (a Hugging Face tower's by :func:`~gclcore.models.trim_padding`, open_clip's causal one's by
        :func:`~gclcore.causal_text.cut_after_pooled`; here on the CPU: on the device the length would wait
        for the GPU), its tokens and pixels on the device without waiting for the device's queued work
        (:func:`~gclcore.loaders.to_device`: cut tokens, a strided view of the pinned batch, are made
        contiguous in pinned memory first; the pinned pixels go as they are)."""
        device = self.encoder.device
        for f in self.fields:
            if f.is_image:
                stored = [self.dataset.rows[f.name][i] for i in batch["index"].tolist()]
                self.resolver.record_batch(stored, batch[f"{f.name}/status"])
            else:
                batch[f.name] = cut_after_pooled(self.model, trim_padding(self.model, batch[f.name]))
        return {k: to_device(v, device) if k in self.dataset.rows else v for k, v in batch.items()}

    def indices(self, batch: dict) -> np.ndarray:
        return batch["index"].numpy()

    def embed(self, batch: dict) -> dict[str, torch.Tensor]:
        """Text fields (e.g. query and title) in one text-tower call when their tokens are as long, which
        is faster than one call each; tokens arrive cut after each field's longest text (:meth:`_arrived`),
        and fields of other lengths go one call each (a query's 10 tokens are not padded to a title's 23).
        Image fields one call each, because BatchNorm's batch statistics must stay per field. The batch is
        on the device already (:meth:`_arrived`)."""
        tokens = {f.name: batch[f.name] for f in self.fields if not f.is_image}
        if len({t.shape[1] for t in tokens.values()}) == 1:
            joined = encode_text(self.model, torch.cat(list(tokens.values())))
            embedded = dict(zip(tokens, joined.chunk(len(tokens))))
        else:
            embedded = {name: encode_text(self.model, t) for name, t in tokens.items()}
        for f in self.fields:
            if f.is_image:
                embedded[f.name] = self.model.encode_image(self.pixels(batch, f.name), normalize=True)
        return embedded

    def pixels(self, batch: dict, name: str) -> torch.Tensor:
        """An image field's model input: the arrived pixels, normalised on their device."""
        return batch[name] if self.normalise is None else self.normalise(batch[name])


def resolve_freeze(freeze: str, model: torch.nn.Module) -> str:
    """The regime ``freeze`` means for ``model``: ``"trunks"`` or ``"none"`` as given; ``"auto"`` is
    ``"trunks"`` (locked trunks) when the towers can be split into trunk + head, as the embedded default
    model's can, else ``"none"`` (full fine-tuning, e.g. ViT-B-32)."""
    from gclcore.features import check_splittable

    if freeze not in ("auto", "trunks", "none"):
        raise ValueError(f"freeze must be auto, trunks or none, not {freeze!r}")
    if freeze != "auto":
        return freeze
    try:
        check_splittable(model)
        return "trunks"
    except ValueError:
        return "none"


def field_prefixes(encoder, query_fields: tuple[Field, ...], document_fields: tuple[Field, ...]) -> dict[str, str]:
    """Each text field's prefix from the encoder's per-side ``text_prefixes`` (empty ones left out)."""
    sides = getattr(encoder, "text_prefixes", {})
    prefixes = {f.name: sides.get("query", "") for f in query_fields if not f.is_image}
    prefixes |= {f.name: sides.get("document", "") for f in document_fields if not f.is_image}
    return {name: prefix for name, prefix in prefixes.items() if prefix}


def build_towers(freeze: str, encoder, rows: pd.DataFrame, fields: tuple[Field, ...], dataset: Dataset, *,
                 cache_dir: str, seed: int, workers: int, progress: bool,
                 prefixes: dict[str, str] | None = None, max_bad_images: float = DEFAULT_MAX_BAD,
                 missing_images: str = "placeholder", image_store_dir: str = "") -> Towers:
    """Head or full towers for ``freeze`` (``"trunks"``, ``"none"`` or ``"auto"``: :func:`resolve_freeze`);
    ``prefixes`` (:func:`field_prefixes`) are prepended to those text fields (full fine-tuning). Images
    go through one resolver that counts every missing or unreadable one and stops the run past
    ``max_bad_images`` (a fraction of the images seen); ``missing_images="error"`` stops it at the first.
    Images come from the dataset's image store for the model when there is one (:mod:`gclcore.image_store`,
    ``image_store_dir``): the same pixels for the eval transform; the training transform then crops the
    stored centre square."""
    policy = "error" if missing_images == "error" else "placeholder"
    if resolve_freeze(freeze, encoder.model) == "trunks":
        if prefixes:
            raise ValueError(f"text prefixes ({prefixes}) need full fine-tuning: freeze=none")
        return HeadTowers(encoder, rows, fields, dataset, cache_dir or str(dataset.root / ".feature-cache"), workers,
                          progress, max_bad_images, policy, image_store_dir)
    resolver = image_store.source_for(dataset, dataset.image_resolver(policy, max_bad_images), encoder.preprocess,
                                      image_store_dir)
    return FullTowers(encoder, rows, fields, resolver, seed, workers, prefixes)


def micro_batches(batch: np.ndarray, parts: int) -> list[np.ndarray]:
    """A global batch's row indices cut into (at most) ``parts`` micro-batches as ``torch.chunk`` cuts:
    equal parts of ``ceil(n / parts)`` rows, the last one shorter when ``parts`` does not divide ``n``."""
    return [chunk.numpy() for chunk in torch.chunk(torch.as_tensor(np.asarray(batch)), parts)]

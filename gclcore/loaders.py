"""Datasets and DataLoaders: image decoding and preprocessing run in worker processes.

:class:`ImageFiles` serves preprocessed images for a list of stored (publisher) image paths. Workers
cannot update the main process's resolver (:class:`~gclcore.data.ImageSource`: image files, or
images embedded in parquet) counters, so each item carries its
:class:`~gclcore.data.ImageStatus` and :func:`image_batches` applies the resolver's policy (raise, or count
and keep the placeholder) in the main process: nothing is skipped silently.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from gclcore.data import ImageSource
from gclcore.pixels import split_transform


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device`` without waiting for the work queued there: a host tensor goes to a GPU through
    pinned memory, asynchronously (a copy from pageable memory first waits for everything queued on the
    stream, e.g. a forward pass); anything else is an ordinary ``.to``. A strided view (tokens cut out of a
    pinned batch) is made contiguous first: ``pin_memory`` returns a view of pinned storage as it is, and the
    copy would then stage it through a pageable temporary; a pinned contiguous tensor goes as it is."""
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.contiguous().pin_memory().to(device, non_blocking=True)


def default_workers() -> int:
    """DataLoader workers: one per core beyond the main process, at most 8 (0 on a 1-core machine)."""
    return min(8, max(0, (os.cpu_count() or 1) - 1))


class ImageFiles(Dataset):
    """Item i: ``(transform(image), status)`` for ``stored_paths[i]`` resolved under the resolver's root;
    a missing / undecodable image yields the transformed grey placeholder and a non-OK status."""

    def __init__(self, stored_paths: list[str], resolver: ImageSource, transform: Callable):
        self.paths, self.resolver, self.transform = list(stored_paths), resolver, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        image, status = self.resolver.load(self.paths[i])
        return self.transform(image), int(status)


def image_batches(stored_paths: list[str], resolver: ImageSource, transform: Callable, batch_size: int = 128,
                  workers: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(pixels, statuses)`` batches of preprocessed images in order, decoded in ``workers`` processes;
    every status is recorded on ``resolver`` first (counted; raising there per its policy), and checked
    against its ``max_bad`` fraction at the end."""
    workers = default_workers() if workers is None else workers
    dataset = ImageFiles(stored_paths, resolver, transform)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers if len(dataset) > batch_size else 0,
                        shuffle=False)
    start = 0
    for pixels, status in loader:
        resolver.record_batch(stored_paths[start:start + len(status)], status)
        start += len(status)
        yield pixels, status
    resolver.check_bad_fraction()


def model_image_batches(stored_paths: list[str], resolver: ImageSource, transform: Callable, device: torch.device,
                        batch_size: int = 128, workers: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """:func:`image_batches` ready for the model: ``(pixels on device, statuses)``. The workers stop at
    uint8 pixels and the transform's ``ToTensor`` + ``Normalize`` run on ``device``
    (:func:`gclcore.pixels.split_transform`: the same values, a quarter of the bytes to move)."""
    worker_transform, normalise = split_transform(transform)
    for pixels, status in image_batches(stored_paths, resolver, worker_transform, batch_size, workers):
        pixels = pixels.to(device)
        yield (pixels if normalise is None else normalise(pixels)), status

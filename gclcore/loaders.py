"""Datasets and DataLoaders: image decoding and preprocessing run in worker processes.

:class:`ImageFiles` serves preprocessed images for a list of stored (publisher) image paths. Workers
cannot update the main process's :class:`~gclcore.data.ImageResolver` counters, so each item carries a
status code and :func:`iterate_images` applies the resolver's policy (raise, or count and use a
placeholder) in the main process: nothing is skipped silently.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from gclcore.data import ImageResolver

OK, MISSING, UNREADABLE = 0, 1, 2


def default_workers() -> int:
    """DataLoader workers: one per core beyond the main process, at most 8 (0 on a 1-core machine)."""
    return min(8, max(0, (os.cpu_count() or 1) - 1))


class ImageFiles(Dataset):
    """Item i: ``(transform(image), status)`` for ``stored_paths[i]`` resolved under the resolver's root;
    a missing / undecodable image yields the transformed grey placeholder and a non-OK status."""

    def __init__(self, stored_paths: list[str], resolver: ImageResolver, transform: Callable):
        self.paths, self.resolver, self.transform = list(stored_paths), resolver, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        image, status = load_with_status(self.resolver, self.paths[i])
        return self.transform(image), status


def load_with_status(resolver: ImageResolver, stored_path) -> tuple:
    """``(RGB image, status)`` for a stored path: the decoded image and OK, or a grey placeholder and
    MISSING / UNREADABLE (a missing value counts as MISSING). Safe in worker processes: nothing is counted
    here; the main process passes the status to ``resolver.record``."""
    from PIL import Image

    image, problem = (None, "missing") if not isinstance(stored_path, str) else resolver.load(stored_path)
    if problem is None:
        return image, OK
    size = resolver.placeholder_size
    return Image.new("RGB", (size, size), (128, 128, 128)), MISSING if problem == "missing" else UNREADABLE


def record_problems(resolver: ImageResolver, stored_paths, status: torch.Tensor) -> None:
    """Count a batch's non-OK items (``status`` from :func:`load_with_status`, aligned with ``stored_paths``)
    on the resolver, which raises there if its policy is ``"error"``."""
    for j in torch.nonzero(status != OK).flatten().tolist():
        stored = stored_paths[j]
        resolver.record(stored if isinstance(stored, str) else "", "missing" if status[j] == MISSING else "unreadable")


def iterate_images(stored_paths: list[str], resolver: ImageResolver, transform: Callable, batch_size: int = 128,
                   workers: int | None = None) -> Iterator[torch.Tensor]:
    """Batches of preprocessed images in order, decoded in ``workers`` processes; problems are counted on
    ``resolver`` (and raise there if its policy is ``"error"``)."""
    workers = default_workers() if workers is None else workers
    dataset = ImageFiles(stored_paths, resolver, transform)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers if len(dataset) > batch_size else 0,
                        shuffle=False)
    start = 0
    for pixels, status in loader:
        record_problems(resolver, stored_paths[start:start + len(status)], status)
        start += len(status)
        yield pixels

"""A store of every product image already resized for the model: decoded once, read by row ever after.

Marqo-GS has millions of product images, and a product recurs across many pairs, so decoding the original
JPEG of every training row each epoch keeps the data loader, not the model, as the limit. The store is
made once per (images, transform):

    python -m gclcore.image_store build --data-dir DIR [--image-root DIR] [--model ViT-B-32] [--out DIR]

It holds, for every image of the dataset's splits and corpora (by basename, as images are resolved):

- ``pixels.npy``: a NumPy array (N, S, S, 3) of uint8, memory-mapped for reading, row i = image i after
  the model's own eval ``Resize(S)`` + ``CenterCrop(S)`` (the part of its preprocessing that depends on
  the image's size; what follows, tensor conversion and normalisation, stays in the transform);
- ``status.npy`` (the image's :class:`~gclcore.data.ImageStatus`: a missing or undecodable image is
  stored as the transformed grey placeholder, with its status, so it is counted as before) and
  ``stamps.npy`` (each file's size and modification time when stored);
- ``names.txt``: the images' basenames in row order; ``index.json``: the transform and the images' source
  (written last: a store without it is incomplete and is built again).

Its folder is named by the transform (S, interpolation) and a digest of the image source and the list
of images, so another model size, another image root or another set of images gets its own store. When
it is opened, every file's size and modification time is compared with the stored one, and images
changed, restored or lost since are re-stored first (said so): a store never serves a stale image.

Readers (:class:`StoredImages`, an :class:`~gclcore.data.ImageSource`) return the stored image as a PIL
image; the consumer's transform then runs unchanged. With the eval transform this gives the same pixels
as decoding the original (``Resize`` and ``CenterCrop`` of an S x S image are the identity; tested), so
evaluation and cached features are unchanged. The training transform (``RandomResizedCrop``) then crops
from the stored centre square rather than from the whole original image: the crops are the square's.
The trainer and the evaluator use a store when one exists for their data and model under
``<data_dir>/.image-store`` (``image_store_dir`` changes the place; ``none`` turns stores off).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gclcore.data import ImageSource, ImageStatus, image_basename
from gclcore.data.files import atomic_write

STORE_VERSION = 1
"""Part of every store's name: raise it when what a store holds changes."""


@dataclass(frozen=True)
class StoreSpec:
    """The size-dependent start of a model's eval transform: ``Resize(size)`` then ``CenterCrop(size)``."""

    size: int
    interpolation: str
    antialias: bool

    @classmethod
    def of(cls, preprocess) -> StoreSpec:
        """The spec of a torchvision ``Compose`` that starts with ``Resize(S)`` + ``CenterCrop(S)`` (open_clip's
        eval transforms); a clear error for any other transform."""
        from torchvision import transforms

        steps = list(getattr(preprocess, "transforms", []))
        if (len(steps) < 2 or not isinstance(steps[0], transforms.Resize) or not isinstance(steps[1], transforms.CenterCrop)
                or not isinstance(steps[0].size, int) or tuple(steps[1].size) != (steps[0].size,) * 2):
            raise ValueError(f"an image store needs a transform that starts with Resize(S) and CenterCrop(S) (open_clip's "
                             f"eval transform); this one starts {steps[:2]!r}")
        return cls(steps[0].size, steps[0].interpolation.value, bool(steps[0].antialias))

    def transform(self):
        """Resize + CenterCrop, then the uint8 (3, S, S) tensor of the result."""
        from torchvision import transforms
        from torchvision.transforms.functional import pil_to_tensor

        return transforms.Compose([
            transforms.Resize(self.size, interpolation=transforms.InterpolationMode(self.interpolation),
                              antialias=self.antialias),
            transforms.CenterCrop(self.size), pil_to_tensor])

    @property
    def label(self) -> str:
        return f"{self.size}px-{self.interpolation}"


def store_folder(root: str | os.PathLike, spec: StoreSpec, identity: str, names: list[str]) -> Path:
    """Where the store of these images (``names``, sorted basenames, from the source ``identity``) lives."""
    from gclcore.models import state_digest

    key = state_digest(STORE_VERSION, repr(spec), identity, "\n".join(names))[:16]
    return Path(root) / f"images-{spec.label}-{key}"


def default_root(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / ".image-store"


def dataset_images(dataset) -> list[str]:
    """The basename of every image of the dataset's splits and corpora, sorted: what a store holds (an
    image source resolves a basename as it does the stored path)."""
    from gclcore.features import dataset_inputs

    _, images = dataset_inputs(dataset, [], ["image_local"])
    return sorted({image_basename(p) for p in images})


def _store_rows(pixels: np.ndarray, status: np.ndarray, rows: list[int], paths: list[str], source: ImageSource,
                spec: StoreSpec, workers: int | None, progress: bool, desc: str) -> None:
    from tqdm.auto import tqdm

    from gclcore.loaders import image_batches

    done = 0
    with tqdm(total=len(rows), desc=desc, unit="image", disable=not progress) as bar:
        for batch, statuses in image_batches(paths, source, spec.transform(), batch_size=256, workers=workers):
            target = rows[done:done + len(batch)]
            pixels[target] = batch.permute(0, 2, 3, 1).numpy()
            status[target] = statuses.numpy()
            done += len(batch)
            bar.update(len(batch))


def build(dataset, preprocess, root: str | os.PathLike | None = None, workers: int | None = None,
          progress: bool = True) -> Path:
    """Store every image of ``dataset`` transformed by ``preprocess``'s Resize + CenterCrop; returns its
    folder (an existing, current store is kept as it is)."""
    spec = StoreSpec.of(preprocess)
    source = dataset.image_resolver("placeholder", max_bad=1.0)
    if source is None:
        raise ValueError(f"{dataset.source}: this dataset has no images to store")
    names = dataset_images(dataset)
    folder = store_folder(root or default_root(dataset.root), spec, source.identity, names)
    if (folder / "index.json").exists():
        open_store(folder, source, progress=progress, workers=workers)  # brings changed images up to date
    else:
        write_store(folder, names, source, spec, workers, progress)
    return folder


def write_store(folder: Path, names: list[str], source: ImageSource, spec: StoreSpec, workers: int | None = None,
                progress: bool = True) -> None:
    """Store the images ``names`` of ``source`` (decoded in ``workers`` processes) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    stamps = np.asarray(source.fingerprints(names), dtype=np.int64).reshape(-1, 2)  # before: a file changed meanwhile is stale
    pixels = np.lib.format.open_memmap(folder / "pixels.npy.partial", mode="w+", dtype=np.uint8,
                                       shape=(len(names), spec.size, spec.size, 3))
    status = np.zeros(len(names), dtype=np.int8)
    _store_rows(pixels, status, list(range(len(names))), names, source, spec, workers, progress, "store images")
    pixels.flush()
    del pixels
    os.replace(folder / "pixels.npy.partial", folder / "pixels.npy")
    np.save(folder / "status.npy", status)
    np.save(folder / "stamps.npy", stamps)
    with atomic_write(folder / "names.txt") as fh:
        fh.writelines(f"{name}\n" for name in names)
    with atomic_write(folder / "index.json") as fh:  # written last: its presence means the store is complete
        json.dump({"version": STORE_VERSION, "spec": spec.__dict__, "source": source.identity, "images": len(names)}, fh)


def open_store(folder: Path, source: ImageSource, progress: bool = False, workers: int | None = None) -> StoredImages:
    """The store in ``folder`` over ``source``, its images changed since it was built re-stored first."""
    spec = StoreSpec(**json.loads((folder / "index.json").read_text())["spec"])
    names = (folder / "names.txt").read_text().splitlines()
    stamps = np.load(folder / "stamps.npy")
    now = np.asarray(source.fingerprints(names), dtype=np.int64).reshape(-1, 2)
    stale = np.flatnonzero((stamps != now).any(axis=1)).tolist()
    if stale:
        print(f"image store {folder.name}: {len(stale)} image(s) changed, restored or lost since it was built: "
              f"storing them again", file=sys.stderr, flush=True)
        pixels = np.load(folder / "pixels.npy", mmap_mode="r+")
        status = np.load(folder / "status.npy")
        # a copy of the source with counts of its own: re-storing an image is not using it
        refresh = copy.copy(source)
        refresh.missing, refresh.max_bad = "placeholder", 1.0
        refresh.seen_count = refresh.missing_count = refresh.unreadable_count = 0
        _store_rows(pixels, status, stale, [names[i] for i in stale], refresh, spec, workers, progress, "re-store images")
        pixels.flush()
        del pixels
        np.save(folder / "status.npy", status)
        np.save(folder / "stamps.npy", now)
    return StoredImages(folder, source, names, spec)


def source_for(dataset, source: ImageSource | None, preprocess, store_dir: str = "") -> ImageSource | None:
    """``source`` served from the dataset's image store for ``preprocess`` when there is one (under
    ``store_dir``, default ``<data_dir>/.image-store``; ``"none"``: never), else ``source`` itself."""
    if source is None or store_dir == "none":
        return source
    try:
        spec = StoreSpec.of(preprocess)
    except ValueError:
        return source
    folder = store_folder(store_dir or default_root(dataset.root), spec, source.identity, dataset_images(dataset))
    if not (folder / "index.json").exists():
        return source
    if folder not in _ANNOUNCED:  # said once per process: evaluation during training opens it again and again
        _ANNOUNCED.add(folder)
        print(f"images: from the image store {folder}", file=sys.stderr, flush=True)
    return open_store(folder, source)


_ANNOUNCED: set[Path] = set()


class StoredImages(ImageSource):
    """An :class:`~gclcore.data.ImageSource` reading a store: the stored (S, S) image and status of each
    stored basename; anything else from the wrapped ``source``. Counting, ``missing`` and ``max_bad`` are
    the wrapped source's policy."""

    def __init__(self, folder: Path, source: ImageSource, names: list[str], spec: StoreSpec):
        super().__init__(source.missing, source.placeholder_size, source.max_bad)
        self.folder, self.source, self.spec, self.root = Path(folder), source, spec, source.root
        self.row = {name: i for i, name in enumerate(names)}
        self.status = np.load(self.folder / "status.npy")
        self._pixels = None

    @property
    def identity(self) -> str:
        return self.source.identity  # the same images, so the same caches (the stored pixels are the eval transform's)

    def fingerprints(self, stored_paths: list[str]) -> list[tuple[int, int]]:
        return self.source.fingerprints(stored_paths)

    def where(self, stored) -> str:
        return self.source.where(stored)

    def load(self, stored) -> tuple:
        from PIL import Image

        row = self.row.get(image_basename(stored)) if isinstance(stored, str) and stored else None
        if row is None:
            return self.source.load(stored)
        if self._pixels is None:  # opened lazily: in each DataLoader worker, not pickled into it
            self._pixels = np.load(self.folder / "pixels.npy", mmap_mode="r")
        return Image.fromarray(np.asarray(self._pixels[row])), ImageStatus(int(self.status[row]))

    def __getstate__(self):
        return {**self.__dict__, "_pixels": None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gclcore.image_store", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="store every image of a dataset resized for a model")
    build_cmd.add_argument("--data-dir", required=True)
    build_cmd.add_argument("--image-root", default=None, help="default: <data-dir>/images")
    build_cmd.add_argument("--model", default="default", help="the model whose eval transform sizes the images")
    build_cmd.add_argument("--out", default=None, help="stores' folder (default: <data-dir>/.image-store)")
    build_cmd.add_argument("--workers", type=int, default=None, help="decoding processes (default: one per spare core)")
    args = parser.parse_args(argv)
    from gclcore.data import open_dataset
    from gclcore.models import load_encoder

    preprocess = load_encoder(args.model, pretrained="none", device="cpu").preprocess
    folder = build(open_dataset(args.data_dir, args.image_root), preprocess, args.out, args.workers)
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())

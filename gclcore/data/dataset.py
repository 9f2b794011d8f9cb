"""One object per dataset: :func:`open_dataset` gives evaluation, training, the feature cache, exploration
and the book the split rows, corpora, companion files and images of a dataset, whatever its layout.

Each file is read once per process: :class:`Dataset` objects are shared per (folder, image root), and
each keeps what it has read, keyed by the file's size and modification time (a file rewritten in place
is read again). Frames handed out are shared: callers that change one take a copy first.

Layouts: the CSV + JSON layout of ``marqo-gs-dataset.tar`` (split CSVs, ``corpus_{1,2}.json``, companion
JSON files; images under a separate image root). A new layout is a new way to fill the same methods,
here and nowhere else.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from gclcore.data.csv_reader import read_split_csv
from gclcore.data.errors import DataFormatError
from gclcore.data.images import ImageResolver
from gclcore.data.json_files import Companion, read_companion, read_corpus
from gclcore.data.layout import SPLIT_STEMS, SplitFiles, canonical_stem, split_files, split_halves


class Dataset:
    """A CSV-layout dataset folder and (optionally) its image root.

    Args:
        root: the folder holding ``query_*_product_id_*.csv`` and ``corpus_{1,2}.json``.
        image_root: the folder the images were unpacked to (stored paths are resolved by basename);
            ``None`` uses ``<root>/images`` when it exists (the embedded synthetic shop), else no images.
    """

    def __init__(self, root: str | os.PathLike, image_root: str | os.PathLike | None = None):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise DataFormatError(self.root, "dataset folder not found",
                                  fix="point data_dir at the folder holding the split CSVs (e.g. marqo_gs_full_10m/)")
        default_images = self.root / "images"
        chosen = image_root if image_root else (default_images if default_images.is_dir() else None)
        self.image_root = Path(chosen).resolve() if chosen else None
        self._cache: dict[tuple, tuple[tuple, object]] = {}

    def __repr__(self) -> str:
        return f"Dataset({str(self.root)!r}, image_root={str(self.image_root) if self.image_root else None!r})"

    @property
    def splits(self) -> list[str]:
        """The split stems present, in the reference order."""
        return [s for s in SPLIT_STEMS if (self.root / f"{s}.csv").exists()]

    def files(self, split: str) -> SplitFiles:
        """Paths of a split (stem or HF name): CSV, corpus, companions."""
        return split_files(self.root, split)

    def rows(self, split: str, columns: Iterable[str] | None = None) -> pd.DataFrame:
        """The split's rows (:func:`gclcore.data.read_split_csv` conventions). ``columns`` reads only
        those (a column subset of a 10M-row file is much smaller), unless the whole file is already read."""
        path = self.files(split).csv
        whole = self._cached(("rows", path, None), path, None)
        if whole is not None:
            return whole if columns is None else whole[list(columns)]
        key = None if columns is None else tuple(columns)
        return self._read(("rows", path, key), path, lambda: read_split_csv(path, columns=key))

    def corpus(self, split: str) -> pd.DataFrame:
        """The corpus a split is evaluated against (``product_id`` first, file key order)."""
        path = self.root / split_halves(split)[2]
        return self._read(("corpus", path), path, lambda: read_corpus(path))

    def companion(self, split: str, kind: str) -> Companion:
        """A split's companion file: ``kind`` is ``"queries"``, ``"gt_dev"`` or ``"gt_test"``."""
        files = self.files(split)
        path = {"queries": files.queries, "gt_dev": files.gt_dev, "gt_test": files.gt_test}[kind]
        if path is None:
            raise DataFormatError(files.csv, f"no {files.stem}_{kind}.json next to this split",
                                  fix=f"the download ships {files.stem}_{kind}.json beside the CSV; copy it there")
        return self._read(("companion", path), path, lambda: read_companion(path))

    def digest(self, path: str | os.PathLike) -> str:
        """SHA-256 prefix of a file's bytes (for cache keys), computed once per version of the file."""
        path = Path(path)
        return self._read(("digest", path), path, lambda: _file_digest(path))

    def image_resolver(self, missing: str = "placeholder") -> ImageResolver | None:
        """A fresh resolver (its counts are the caller's) under the image root; None without one."""
        return ImageResolver(self.image_root, missing=missing) if self.image_root is not None else None

    def _cached(self, key: tuple, path: Path, default):
        hit = self._cache.get(key)
        return hit[1] if hit is not None and hit[0] == _stamp(path) else default

    def _read(self, key: tuple, path: Path, read):
        value = self._cached(key, path, None)
        if value is None:
            value = read()
            self._cache[key] = (_stamp(path), value)
        return value


def _file_digest(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()[:16]


def _stamp(path: Path) -> tuple:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


_OPEN: dict[tuple[Path, Path | None], Dataset] = {}


def open_dataset(source: str | os.PathLike | Dataset, image_root: str | os.PathLike | None = None) -> Dataset:
    """The process's :class:`Dataset` for a folder (and image root); a Dataset is returned as is."""
    if isinstance(source, Dataset):
        return source
    dataset = Dataset(source, image_root)
    key = (dataset.root, dataset.image_root)
    return _OPEN.setdefault(key, dataset)


def split_stems(splits: str | Iterable[str]) -> list[str]:
    """``"all"`` -> the four stems; a stem or HF name, or a list of them -> stems."""
    if splits == "all":
        return list(SPLIT_STEMS)
    return [canonical_stem(s) for s in ([splits] if isinstance(splits, str) else splits)]

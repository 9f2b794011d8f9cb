"""One object per dataset: :func:`open_dataset` gives evaluation, training, the feature cache, exploration
and the book the split rows, corpora, companion files and images of a dataset, whatever its layout.

Each file is read once per process: :class:`Dataset` objects are shared per (folder, image root), and
each keeps what it has read, keyed by the files' size and modification time (a file rewritten in place
is read again). Frames handed out are shared: callers that change one take a copy first.

Layouts (a new layout is a new way to fill the same :class:`Dataset` methods, here and nowhere else;
callers never ask which layout they have):

- :class:`CsvDataset`: the CSV + JSON layout of ``marqo-gs-dataset.tar`` (split CSVs ``query_*_product_id_*.csv``,
  ``corpus_{1,2}.json``, companion JSON files; images under a separate image root, found by basename).
- :class:`ParquetDataset`: the Hugging Face layout (``Marqo/marqo-GS-10M``; any subset of the splits
  ``in_domain``, ``novel_query``, ``novel_document``, ``zero_shot``), images embedded. It ships no corpus
  JSON and no companion files: the corpus of a product half is **derived from the rows** (every product of
  that half's splits present, first occurrence first, splits in reference order), and images are
  references (:func:`~gclcore.data.parquet.image_ref`) decoded from their row group on demand.
- :class:`FilesDataset` (:func:`files_dataset`): one split CSV and one corpus JSON with any names (the
  publisher's tiny test: ``query_tiny.csv`` + ``corpus_tiny.json``); its one split is named by the CSV's stem.

Split ids: the CSV stem (``query_1_product_id_0``) in the CSV and parquet layouts, which also accept the
HF name (``novel_query``); the CSV's stem in the explicit-files layout.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from gclcore.data.csv_reader import read_split_csv
from gclcore.data.errors import DataFormatError, warn_once
from gclcore.data.images import DEFAULT_MAX_BAD, ImageResolver, ImageSource
from gclcore.data.json_files import EXPECTED_QRELS, Companion, read_companion, read_corpus
from gclcore.data.layout import (
    COMPANION_SUFFIXES,
    SPLIT_NAMES,
    SPLIT_STEMS,
    SplitFiles,
    canonical_stem,
    split_files,
    split_halves,
)
from gclcore.data.parquet import ParquetImages, ParquetSplit, image_ref, parquet_split_files

COMPANION_KINDS = {"queries": "_queries.json", "gt_dev": "_gt_dev.json", "gt_test": "_gt_test.json"}


class Dataset:
    """A dataset of any layout (:func:`open_dataset` picks the subclass); every caller uses only these methods.

    Attributes:
        root: the dataset folder (the CSV's folder for :class:`FilesDataset`); the default feature-cache
            location is ``root / ".feature-cache"``.
        image_root: the folder stored image paths are resolved under (None: no image files, or images
            embedded in the data as in the parquet layout; :meth:`image_resolver` is what reads images).
        layout: ``"csv"``, ``"parquet"`` or ``"files"``.
    """

    layout = ""

    def __init__(self, root: str | os.PathLike, image_root: str | os.PathLike | None = None):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise DataFormatError(self.root, "dataset folder not found",
                                  fix="point data_dir at the folder holding the split CSVs (e.g. marqo_gs_full_10m/) "
                                      "or the Hugging Face parquet shards")
        self.image_root = Path(image_root).resolve() if image_root else None
        self._cache: dict[tuple, tuple[tuple, object]] = {}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({str(self.root)!r}, image_root="
                f"{str(self.image_root) if self.image_root else None!r})")

    # ---- splits ---------------------------------------------------------------------------------

    @property
    def splits(self) -> list[str]:
        """The split ids present, in the reference order (in-domain, novel query, novel document, zero-shot)."""
        raise NotImplementedError

    def split_id(self, split: str) -> str:
        """The canonical id of a split name (CSV stem or HF name -> stem); ValueError for an unknown name.
        Does not check the split is present (:meth:`rows` does)."""
        return canonical_stem(split)

    def split_name(self, split: str) -> str:
        """The human name of a split: the HF name (``novel_query``), or the stem where there is none."""
        stem = self.split_id(split)
        return SPLIT_NAMES.get(stem, stem)

    def resolve_splits(self, splits: str | Iterable[str] = "all") -> list[str]:
        """``"all"`` -> every split this dataset ships (reference order; a note on stderr when that is not
        the four reference splits); a name or list of names -> their ids. Raises DataFormatError if a
        named split is absent, naming the splits present."""
        if isinstance(splits, str) and splits == "all":
            present = self.splits
            if not present:
                raise DataFormatError(self.root, "no splits found", fix=self._layout_hint())
            if self.layout != "files" and present != list(SPLIT_STEMS):
                warn_once(f"{self.root}: 'all' splits means the {len(present)} this dataset ships: "
                          f"{', '.join(self.split_name(s) for s in present)}")
            return present
        ids = [self.split_id(s) for s in ([splits] if isinstance(splits, str) else splits)]
        for split in ids:
            self._require(split)
        return ids

    def source(self, split: str) -> str:
        """What messages about a split's rows name: its CSV file, or its parquet shards."""
        raise NotImplementedError

    # ---- data -----------------------------------------------------------------------------------

    def rows(self, split: str, columns: Iterable[str] | None = None) -> pd.DataFrame:
        """The split's rows (:func:`gclcore.data.read_split_csv` conventions: string ids, text NaN for
        missing values, ``image_local`` a reference :meth:`image_resolver` loads). ``columns`` reads only
        those (a column subset of a 10M-row split is much smaller), unless the whole split is already read."""
        raise NotImplementedError

    def corpus(self, split: str) -> pd.DataFrame:
        """The corpus a split is evaluated against: ``product_id`` first, then product fields (at least
        ``title`` and ``image_local``); its row order fixes the order of tied scores."""
        raise NotImplementedError

    def corpus_label(self, split: str) -> str:
        """Where a split's corpus comes from, for output provenance (``corpus_1.json``, or a statement
        that it was derived from parquet rows)."""
        raise NotImplementedError

    def corpus_digest(self, split: str) -> str:
        """A cache key of a split's corpus and the images behind it (changes when either may have)."""
        raise NotImplementedError

    def companion(self, split: str, kind: str) -> Companion:
        """A split's companion file: ``kind`` is ``"queries"``, ``"gt_dev"`` or ``"gt_test"``.
        Raises DataFormatError when the layout or the folder has none, or its structure is not recognised."""
        raise DataFormatError(self.root, f"the {self.layout} layout ships no companion ({kind}) files")

    def ground_truth(self, split: str, kind: str) -> Companion | None:
        """A split's shipped ground truth (``kind`` ``"gt_dev"`` / ``"gt_test"``) as qrels, or None after
        one warning (per file and problem, per process) that names the file and the expected schemas --
        when it is absent, of an unknown structure, or holds query texts instead of judgements. Callers
        then fall back to the ground truth sampled from the split's rows; nothing aborts."""
        fallback = f"falling back to the ground truth sampled from {self.source(split)} (the published protocol)"
        try:
            found = self.companion(split, kind)
        except DataFormatError as err:
            warn_once(f"no usable {kind} ground truth for {self.split_name(split)}: {err}; expected "
                      f"{EXPECTED_QRELS}; {fallback}")
            return None
        if found.kind == "queries":
            warn_once(f"{found.path}: holds query texts ({found.shape}), not ground truth; expected "
                      f"{EXPECTED_QRELS}; {fallback}")
            return None
        return found

    def image_resolver(self, missing: str = "placeholder", max_bad: float = DEFAULT_MAX_BAD) -> ImageSource | None:
        """A fresh image resolver (its counts are the caller's): ``load(ref) -> (image, status)``,
        ``record``, ``warn_placeholders``; picklable. None when the dataset has no images. ``max_bad``:
        see :class:`~gclcore.data.images.ImageSource`."""
        return ImageResolver(self.image_root, missing=missing, max_bad=max_bad) if self.image_root is not None else None

    def digest(self, path: str | os.PathLike) -> str:
        """SHA-256 prefix of a file's bytes (for cache keys), computed once per version of the file."""
        path = Path(path)
        return self._read(("digest", path), path, lambda: _file_digest(path))

    # ---- helpers --------------------------------------------------------------------------------

    def _require(self, split: str) -> str:
        split = self.split_id(split)
        if split not in self.splits:
            present = ", ".join(self.split_name(s) for s in self.splits) or "none"
            raise DataFormatError(self.root, f"split {self.split_name(split)!r} ({split}) is not in this "
                                             f"{self.layout} dataset (splits present: {present})",
                                  fix="choose a split the dataset ships (e.g. --split / train_split / eval_split)")
        return split

    def _layout_hint(self) -> str:
        return _layout_hint()

    def _cached(self, key: tuple, paths, default):
        hit = self._cache.get(key)
        return hit[1] if hit is not None and hit[0] == _stamp(paths) else default

    def _read(self, key: tuple, paths, read):
        value = self._cached(key, paths, None)
        if value is None:
            value = read()
            self._cache[key] = (_stamp(paths), value)
        return value


class CsvDataset(Dataset):
    """A CSV-layout dataset folder and (optionally) its image root.

    Args:
        root: the folder holding ``query_*_product_id_*.csv`` and ``corpus_{1,2}.json``.
        image_root: the folder the images were unpacked to (stored paths are resolved by basename);
            ``None`` uses ``<root>/images`` when it exists (the embedded synthetic shop), else no images.
    """

    layout = "csv"

    def __init__(self, root: str | os.PathLike, image_root: str | os.PathLike | None = None):
        super().__init__(root)
        default_images = self.root / "images"
        chosen = image_root if image_root else (default_images if default_images.is_dir() else None)
        self.image_root = Path(chosen).resolve() if chosen else None

    @property
    def splits(self) -> list[str]:
        return [s for s in SPLIT_STEMS if (self.root / f"{s}.csv").exists()]

    def files(self, split: str) -> SplitFiles:
        """Paths of a split (stem or HF name): CSV, corpus, companions (CSV layout only)."""
        return split_files(self.root, split)

    def source(self, split: str) -> str:
        return str(self._csv_path(split))

    def rows(self, split: str, columns: Iterable[str] | None = None) -> pd.DataFrame:
        path = self._csv_path(split)
        if not path.exists():
            self._require(split)  # names the splits present
        whole = self._cached(("rows", path, None), path, None)
        if whole is not None:
            return whole if columns is None else whole[list(columns)]
        key = None if columns is None else tuple(columns)
        return self._read(("rows", path, key), path, lambda: read_split_csv(path, columns=key))

    def corpus(self, split: str) -> pd.DataFrame:
        path = self._corpus_path(split)
        return self._read(("corpus", path), path, lambda: read_corpus(path))

    def corpus_label(self, split: str) -> str:
        return self._corpus_path(split).name

    def corpus_digest(self, split: str) -> str:
        tag = self.digest(self._corpus_path(split))
        if self.image_root is not None:
            tag += "-" + hashlib.sha256(str(self.image_root).encode()).hexdigest()[:8]
        return tag

    def companion(self, split: str, kind: str) -> Companion:
        path, stem = self._companion_path(split, kind), self.split_id(split)
        if not path.exists():
            raise DataFormatError(self.source(split), f"no {path.name} next to this split",
                                  fix=f"the download ships {stem}_{kind}.json beside the CSV; copy it there")
        return self._read(("companion", path), path, lambda: read_companion(path))

    def _csv_path(self, split: str) -> Path:
        return self.root / f"{self.split_id(split)}.csv"

    def _corpus_path(self, split: str) -> Path:
        return self.root / split_halves(split)[2]

    def _companion_path(self, split: str, kind: str) -> Path:
        if kind not in COMPANION_KINDS:
            raise ValueError(f"companion kind must be one of {', '.join(COMPANION_KINDS)}, not {kind!r}")
        return self.root / f"{self.split_id(split)}{COMPANION_KINDS[kind]}"


class FilesDataset(CsvDataset):
    """One split CSV and one corpus JSON with arbitrary names (e.g. the publisher's ``query_tiny.csv`` +
    ``corpus_tiny.json``), read with the CSV layout's conventions.

    Args:
        csv: the split CSV; the split's id and name are its stem (``query_tiny``).
        corpus: the corpus JSON the split is evaluated against.
        image_root: where stored image paths (e.g. ``/input/images/<file>``) are resolved by basename;
            None uses ``images/`` next to the CSV when it exists.

    Companion files are looked for next to the CSV as ``<stem>_queries.json``, ``<stem>_gt_dev.json``,
    ``<stem>_gt_test.json``.
    """

    layout = "files"

    def __init__(self, csv: str | os.PathLike, corpus: str | os.PathLike, image_root: str | os.PathLike | None = None):
        self.csv, self.corpus_file = Path(csv).resolve(), Path(corpus).resolve()
        for path, what in ((self.csv, "split CSV"), (self.corpus_file, "corpus JSON")):
            if not path.is_file():
                raise DataFormatError(path, f"{what} not found", fix="give the path of an existing file")
        super().__init__(self.csv.parent, image_root)
        self.stem = self.csv.stem

    def __repr__(self) -> str:
        return (f"FilesDataset({str(self.csv)!r}, {str(self.corpus_file)!r}, image_root="
                f"{str(self.image_root) if self.image_root else None!r})")

    @property
    def splits(self) -> list[str]:
        return [self.stem]

    def split_id(self, split: str) -> str:
        if split in (self.stem, self.csv.name):
            return self.stem
        raise ValueError(f"unknown split {split!r}: this dataset has one split, {self.stem!r} ({self.csv})")

    def split_name(self, split: str) -> str:
        return self.split_id(split)

    def files(self, split: str) -> SplitFiles:
        def companion(suffix: str) -> Path | None:
            path = self.csv.with_name(f"{self.stem}{suffix}")
            return path if path.exists() else None

        return SplitFiles(self.split_id(split), self.csv, self.corpus_file,
                          *(companion(suffix) for suffix in COMPANION_SUFFIXES))

    def _csv_path(self, split: str) -> Path:
        self.split_id(split)
        return self.csv

    def _corpus_path(self, split: str) -> Path:
        self.split_id(split)
        return self.corpus_file

    def _companion_path(self, split: str, kind: str) -> Path:
        if kind not in COMPANION_KINDS:
            raise ValueError(f"companion kind must be one of {', '.join(COMPANION_KINDS)}, not {kind!r}")
        return self.csv.with_name(f"{self.split_id(split)}{COMPANION_KINDS[kind]}")


class ParquetDataset(Dataset):
    """A Hugging Face parquet download (``Marqo/marqo-GS-10M``), all four splits or any subset of them.

    Args:
        root: the folder holding ``data/<split>-*.parquet`` (or ``<split>/*.parquet``,
            ``default/<split>/*.parquet``; see :func:`~gclcore.data.parquet_split_files`).
        image_root: unused (images are embedded); a value given is ignored with a warning.

    Rows are the shards' non-image columns plus ``image_local``: a reference to the embedded image of the
    product's first row in its product half (one image per product, as in the corpus JSON), which
    :meth:`image_resolver` decodes from that row's group on demand. Sorted references follow file order.

    The corpus of a split is derived from rows (the layout has no corpus JSON): every product of the
    split's product half present here (half 0: ``in_domain`` + ``novel_query``; half 1:
    ``novel_document`` + ``zero_shot``), first occurrence first, splits in reference order; ``title`` and
    the image of that first row. :meth:`corpus_label` says so, and a warning says it once; it equals the
    published corpus only if that holds no product absent from the rows.
    """

    layout = "parquet"

    def __init__(self, root: str | os.PathLike, image_root: str | os.PathLike | None = None):
        super().__init__(root)
        if image_root:
            warn_once(f"{self.root}: the Hugging Face parquet layout embeds its images; image_root {image_root} "
                      f"is ignored")
        self._shards: dict[str, list[Path]] = {}
        for stem in SPLIT_STEMS:
            try:
                self._shards[stem] = parquet_split_files(self.root, stem)
            except DataFormatError:
                pass

    @property
    def splits(self) -> list[str]:
        return list(self._shards)

    def source(self, split: str) -> str:
        stem = self.split_id(split)
        files = self._shards.get(stem)
        if not files:
            return f"{self.root} ({self.split_name(stem)}: no shards)"
        return str(files[0]) if len(files) == 1 else f"{files[0]} (+{len(files) - 1} shards)"

    def rows(self, split: str, columns: Iterable[str] | None = None) -> pd.DataFrame:
        stem = self._require(split)
        files = self._shards[stem]
        whole = self._cached(("rows", stem, None), files, None)
        if whole is not None:
            return whole if columns is None else whole[list(columns)]
        key = None if columns is None else tuple(columns)
        return self._read(("rows", stem, key), files, lambda: self._read_rows(stem, key))

    def corpus(self, split: str) -> pd.DataFrame:
        half = split_halves(split)[1]
        stems = self._half_splits(half)
        if not stems:
            self._require(split)
        corpus = self._half_corpus(half)
        absent = [SPLIT_NAMES[s] for s in SPLIT_STEMS if split_halves(s)[1] == half and s not in stems]
        warn_once(f"{self.root}: the corpus of product half {half} ({len(corpus):,} products) is derived from the "
                  f"parquet rows of {' + '.join(self.split_name(s) for s in stems)} (the Hugging Face layout ships no "
                  f"corpus JSON)" + (f"; {' and '.join(absent)} is not in this dataset, so its products are missing "
                                     "from the corpus: a smaller, easier candidate set" if absent else "")
                  + f"; results are comparable with corpus_{half + 1}.json ones only if that corpus holds no other products")
        return corpus

    def corpus_label(self, split: str) -> str:
        half = split_halves(split)[1]
        stems = self._half_splits(half)
        absent = [SPLIT_NAMES[s] for s in SPLIT_STEMS if split_halves(s)[1] == half and s not in stems]
        names = " + ".join(self.split_name(s) for s in stems)
        return f"derived from parquet rows of {names} (not corpus_{half + 1}.json" + (
            f"; without {' and '.join(absent)})" if absent else ")")

    def corpus_digest(self, split: str) -> str:
        half = split_halves(split)[1]
        stems = self._half_splits(half)
        files = [f for s in stems for f in self._shards[s]]
        def digest() -> str:
            rows = pd.util.hash_pandas_object(self._half_corpus(half), index=False).to_numpy()
            return hashlib.sha256(repr(_stamp(files)).encode() + rows.tobytes()).hexdigest()[:16]

        return self._read(("corpus_digest", half), files, digest)

    def companion(self, split: str, kind: str) -> Companion:
        raise DataFormatError(self.root, f"the Hugging Face parquet layout ships no companion files "
                                         f"({self.split_id(split)}_{kind}.json)")

    def image_resolver(self, missing: str = "placeholder", max_bad: float = DEFAULT_MAX_BAD) -> ParquetImages:
        return ParquetImages(self.root, {SPLIT_NAMES[s]: files for s, files in self._shards.items()}, missing=missing,
                             max_bad=max_bad)

    def parquet_split(self, split: str) -> ParquetSplit:
        """The :class:`ParquetSplit` of a split present (its shards, row groups, image bytes)."""
        stem = self._require(split)
        return self._read(("split", stem), self._shards[stem],
                          lambda: ParquetSplit(self.root, stem, files=self._shards[stem]))

    def _half_splits(self, half: int) -> list[str]:
        return [s for s in self.splits if split_halves(s)[1] == half]

    def _read_rows(self, stem: str, columns: tuple[str, ...] | None) -> pd.DataFrame:
        split = self.parquet_split(stem)
        names = [("image_local" if c == "image" else c) for c in split.columns]
        wanted = names if columns is None else list(columns)
        for name in wanted:
            if name not in names:
                raise DataFormatError(split.files[0], f"missing column {name!r} (columns present: {', '.join(names)})",
                                      column=name, fix="check the folder is a Marqo-GS parquet download")
        frame = split.frame([c for c in wanted if c != "image_local"])
        if "image_local" in wanted:
            ids = frame["product_id"] if "product_id" in frame.columns else split.frame(["product_id"])["product_id"]
            corpus = self._half_corpus(split_halves(stem)[1])
            where = pd.Index(corpus["product_id"]).get_indexer(ids)
            frame["image_local"] = _text(corpus["image_local"].to_numpy(dtype=object)[where], frame.index)
        return frame[wanted]

    def _half_corpus(self, half: int) -> pd.DataFrame:
        stems = self._half_splits(half)
        files = [f for s in stems for f in self._shards[s]]
        return self._read(("corpus", half), files, lambda: self._derive_corpus(stems))

    def _derive_corpus(self, stems: list[str]) -> pd.DataFrame:
        parts = []
        for stem in stems:
            split = self.parquet_split(stem)
            wanted = [c for c in ("product_id", "title") if c in split.columns]
            frame = split.frame(wanted)
            frame["image_local"] = [image_ref(SPLIT_NAMES[stem], i) for i in range(len(frame))]
            parts.append(frame)
        joined = pd.concat(parts, ignore_index=True).drop_duplicates("product_id", keep="first").reset_index(drop=True)
        if "title" not in joined.columns:
            joined["title"] = pd.Series([float("nan")] * len(joined), dtype=object)
        joined["image_local"] = _text(joined["image_local"].to_numpy(dtype=object), joined.index)
        return joined[["product_id", "title", "image_local"]]


def _layout_hint() -> str:
    return (f"a CSV-layout folder holds {', '.join(s + '.csv' for s in SPLIT_STEMS)} and corpus_{{1,2}}.json; "
            f"a Hugging Face parquet folder holds data/<split>-*.parquet, <split>/*.parquet or "
            f"default/<split>/*.parquet for split in {', '.join(SPLIT_NAMES.values())}")


def _text(values, index) -> pd.Series:
    """Strings as pandas' Arrow-backed string dtype (what the readers give), missing values NaN."""
    return pd.Series(values, index=index, dtype=pd.StringDtype("pyarrow", na_value=float("nan")))


def _file_digest(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()[:16]


def _stamp(paths) -> tuple:
    if isinstance(paths, (list, tuple)):
        return tuple(_stamp(p) for p in paths)
    stat = Path(paths).stat()
    return stat.st_size, stat.st_mtime_ns


def detect_layout(root: str | os.PathLike) -> str:
    """``"csv"`` if the folder holds a split CSV, ``"parquet"`` if it holds parquet shards of a split;
    else DataFormatError naming the folder and both expected layouts."""
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError(root, "dataset folder not found",
                              fix="point data_dir at the folder holding the split CSVs (e.g. marqo_gs_full_10m/) "
                                  "or the Hugging Face parquet shards")
    if any((root / f"{s}.csv").exists() for s in SPLIT_STEMS):
        return "csv"
    for stem in SPLIT_STEMS:
        try:
            parquet_split_files(root, stem)
            return "parquet"
        except DataFormatError:
            continue
    raise DataFormatError(root, "neither a CSV-layout nor a Hugging Face parquet dataset folder",
                          fix=_layout_hint())


_OPEN: dict[tuple, Dataset] = {}


def open_dataset(source: str | os.PathLike | Dataset, image_root: str | os.PathLike | None = None) -> Dataset:
    """The process's :class:`Dataset` for a folder (and image root), its layout detected
    (:func:`detect_layout`); a Dataset is returned as is."""
    if isinstance(source, Dataset):
        return source
    root = Path(source).resolve()
    layout = detect_layout(root)
    dataset = CsvDataset(root, image_root) if layout == "csv" else ParquetDataset(root, image_root)
    key = (layout, dataset.root, dataset.image_root)
    return _OPEN.setdefault(key, dataset)


def files_dataset(test_csv: str | os.PathLike, corpus: str | os.PathLike,
                  image_root: str | os.PathLike | None = None) -> FilesDataset:
    """The process's :class:`FilesDataset` of one split CSV and one corpus JSON (any file names); its one
    split is named by the CSV's stem and is what ``resolve_splits("all")`` gives."""
    dataset = FilesDataset(test_csv, corpus, image_root)
    key = ("files", dataset.csv, dataset.corpus_file, dataset.image_root)
    return _OPEN.setdefault(key, dataset)


def split_stems(splits: str | Iterable[str]) -> list[str]:
    """``"all"`` -> the four stems; a stem or HF name, or a list of them -> stems (layout-free; prefer
    :meth:`Dataset.resolve_splits`, which knows the splits a dataset ships)."""
    if splits == "all":
        return list(SPLIT_STEMS)
    return [canonical_stem(s) for s in ([splits] if isinstance(splits, str) else splits)]

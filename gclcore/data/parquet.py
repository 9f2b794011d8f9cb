"""The Hugging Face parquet layout (``Marqo/marqo-GS-10M``): splits with the encoded images embedded,
decoded lazily one row group at a time.

- :class:`ParquetSplit`: one split's shards; the non-image columns as a frame, one row's image on demand.
- :class:`ParquetImages`: the image resolver of a parquet dataset (the :class:`~gclcore.data.images.ImageSource`
  contract, picklable for DataLoader workers). Its references are strings :func:`image_ref` makes,
  ``"<split name>#<row, 10 digits>"``; the zero-padded row keeps sorted references in file order, so a
  sorted pass (the feature cache) reads each row group once.
- :func:`write_parquet_split`: the CSV layout's rows with their image files embedded, written one row
  group at a time (at most ``row_group_size`` images in memory).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from gclcore.data.csv_reader import FLOAT_COLUMNS, ID_COLUMNS, INT_COLUMNS, to_text
from gclcore.data.errors import DataFormatError
from gclcore.data.files import atomic_write
from gclcore.data.images import (
    DEFAULT_MAX_BAD,
    ImageResolver,
    ImageSource,
    ImageStatus,
    decode_image,
    decode_image_bytes,
    placeholder,
)
from gclcore.data.layout import SPLIT_NAMES


def parquet_split_files(root: str | os.PathLike, split: str) -> list[Path]:
    """Shards of one split in a Hugging Face download: ``data/<split>-*.parquet``, ``<split>/*.parquet``
    or ``default/<split>/*.parquet``. ``split`` is a HF split name or a CSV stem. Hyphenated folder
    names of earlier revisions (``novel-query/``) are accepted too."""
    root = Path(root)
    name = SPLIT_NAMES.get(split, split)
    if name not in SPLIT_NAMES.values():
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLIT_NAMES.values())}")
    patterns = [f"data/{name}-*.parquet", f"{name}/*.parquet", f"default/{name}/*.parquet",
                f"{name.replace('_', '-')}/*.parquet", f"{name}-*.parquet"]
    for pattern in patterns:
        found = sorted(root.glob(pattern))
        if found:
            return found
    raise DataFormatError(root, f"no parquet shards for split {name!r} (looked for {', '.join(patterns)})")


class ParquetSplit:
    """One split of the Hugging Face parquet layout, with images decoded lazily.

    :meth:`frame` loads the non-image columns as a DataFrame (same conventions as
    :func:`read_split_csv`); :meth:`image` decodes the image of one row, reading only the row group that
    holds it (the last row group read is cached, so sequential access reads each group once).
    """

    def __init__(self, root: str | os.PathLike, split: str, files: list[Path] | None = None):
        self.files = list(files) if files is not None else parquet_split_files(root, split)
        self._parquet = [pq.ParquetFile(f) for f in self.files]
        # global row offset of every (file, row group)
        self._groups: list[tuple[int, int]] = []
        starts = []
        offset = 0
        for fi, pf in enumerate(self._parquet):
            for gi in range(pf.metadata.num_row_groups):
                self._groups.append((fi, gi))
                starts.append(offset)
                offset += pf.metadata.row_group(gi).num_rows
        self._starts = np.asarray(starts, dtype=np.int64)
        self.num_rows = offset
        self._cached: tuple[int, pa.Array] | None = None

    @property
    def columns(self) -> list[str]:
        return self._parquet[0].schema_arrow.names

    def __len__(self) -> int:
        return self.num_rows

    def frame(self, columns: Iterable[str] | None = None) -> pd.DataFrame:
        """Non-image columns as a DataFrame (ids as strings, text missing values as NaN)."""
        wanted = [c for c in (columns or self.columns) if c != "image"]
        for name in wanted:
            if name not in self.columns:
                raise DataFormatError(self.files[0], f"missing column {name!r}", column=name)
        parts = [pf.read(columns=wanted) for pf in self._parquet]
        table = pa.concat_tables(parts)
        out = {}
        for name in wanted:
            column = table.column(name)
            if name in ID_COLUMNS:
                out[name] = to_text(column.cast(pa.string()))
            elif name in INT_COLUMNS:
                out[name] = pd.Series(column.cast(pa.int64()).to_numpy(zero_copy_only=False))
            elif name in FLOAT_COLUMNS:
                out[name] = pd.Series(column.cast(pa.float64()).to_numpy(zero_copy_only=False))
            else:
                out[name] = to_text(column)
        return pd.DataFrame(out, columns=wanted)

    def image_bytes(self, row: int) -> bytes:
        """Encoded bytes of row ``row``'s image."""
        if not 0 <= row < self.num_rows:
            raise IndexError(f"row {row} out of range for {self.num_rows} rows")
        g = int(np.searchsorted(self._starts, row, side="right") - 1)
        if self._cached is None or self._cached[0] != g:
            fi, gi = self._groups[g]
            images = self._parquet[fi].read_row_group(gi, columns=["image"]).column("image").combine_chunks()
            self._cached = (g, images)
        value = self._cached[1][row - int(self._starts[g])].as_py()
        if value is None or value.get("bytes") is None:
            raise DataFormatError(self.files[self._groups[g][0]], "image has no bytes", row=row + 1, column="image")
        return value["bytes"]

    def image(self, row: int):
        """RGB PIL image of row ``row``."""
        return decode_image_bytes(self.image_bytes(row))


REF_SEPARATOR = "#"


def image_ref(split_name: str, row: int) -> str:
    """The reference of row ``row``'s image in split ``split_name`` (``"zero_shot#0000000042"``)."""
    return f"{split_name}{REF_SEPARATOR}{row:010d}"


def parse_image_ref(ref) -> tuple[str, int]:
    """``image_ref``'s inverse; raises ValueError for anything else (e.g. a stored file path)."""
    if not isinstance(ref, str) or REF_SEPARATOR not in ref:
        raise ValueError(f"not a parquet image reference: {ref!r}")
    name, _, row = ref.rpartition(REF_SEPARATOR)
    if name not in SPLIT_NAMES.values() or not row.isdigit():
        raise ValueError(f"not a parquet image reference: {ref!r}")
    return name, int(row)


class ParquetImages(ImageSource):
    """Decodes the embedded image of a reference (:func:`image_ref`) from its parquet row group, on demand.

    Args:
        root: the dataset folder (named in messages and part of :attr:`identity`).
        shards: HF split name -> its parquet files, in order.
        missing: the policy of :meth:`record` (``"placeholder"`` or ``"error"``).

    Only the row group holding the requested row is read (and the last one is kept, per split), so
    memory holds one row group's images per split, never a whole split's. Pickling drops the open files:
    each DataLoader worker opens its own.
    """

    def __init__(self, root: str | os.PathLike, shards: dict[str, list[Path]],
                 missing: str = "placeholder", placeholder_size: int = 224, max_bad: float = DEFAULT_MAX_BAD):
        super().__init__(missing, placeholder_size, max_bad)
        self.root = Path(root)
        self.shards = {name: [Path(f) for f in files] for name, files in shards.items()}
        self._splits: dict[str, ParquetSplit] = {}

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_splits"] = {}
        return state

    @property
    def identity(self) -> str:
        stamps = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns)
                  for name in sorted(self.shards) for f in self.shards[name]]
        return f"parquet:{self.root.resolve()}:{stamps}"

    def split(self, name: str) -> ParquetSplit:
        """The (lazily opened) :class:`ParquetSplit` of HF split ``name``."""
        if name not in self._splits:
            if name not in self.shards:
                raise KeyError(name)
            self._splits[name] = ParquetSplit(self.root, name, files=self.shards[name])
        return self._splits[name]

    def where(self, stored) -> str:
        try:
            name, row = parse_image_ref(stored)
        except ValueError:
            return f"{self.root} (image reference {stored!r})"
        return f"{self.root} ({name} row {row + 1})"

    def load(self, stored) -> tuple:
        """``(RGB image, status)`` of a reference: OK, MISSING (not a reference, no such split or row, no
        bytes) or UNREADABLE (bytes that do not decode). Counts nothing and never raises."""
        try:
            name, row = parse_image_ref(stored)
            data = self.split(name).image_bytes(row)
        except (ValueError, KeyError, IndexError):  # DataFormatError is a ValueError
            return placeholder(self.placeholder_size), ImageStatus.MISSING
        image, status = decode_image(data)
        return (image, status) if image is not None else (placeholder(self.placeholder_size), status)


IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
"""The Hugging Face ``Image`` feature as stored in parquet."""


def write_parquet_split(frame: pd.DataFrame, resolver: ImageResolver, out_path: str | os.PathLike,
                        row_group_size: int = 1000) -> None:
    """Write a split in the Hugging Face layout: the CSV columns with ``image_local`` replaced by an
    ``image`` struct ``{bytes, path}`` (first column) holding the encoded file as is (no re-encoding).

    Streams: each row group's images are read, written and released before the next group's, so memory
    holds at most ``row_group_size`` images whatever the split's size. A missing image raises
    :class:`DataFormatError` naming the row (``resolver.missing == "placeholder"``: a null image instead,
    counted on the resolver). The file is replaced atomically.
    """
    columns = [c for c in frame.columns if c != "image_local"]
    schema = pa.Schema.from_pandas(frame[columns], preserve_index=False).insert(0, pa.field("image", IMAGE_TYPE))
    stored = frame["image_local"].astype(object).tolist() if "image_local" in frame.columns else [None] * len(frame)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out_path, binary=True) as fh, pq.ParquetWriter(fh, schema) as writer:
        for start in range(0, max(len(frame), 1), row_group_size):
            chunk = frame.iloc[start:start + row_group_size]
            images = [_embedded_image(resolver, stored[i], out_path, i) for i in range(start, start + len(chunk))]
            table = pa.Table.from_pandas(chunk[columns], schema=schema.remove(0), preserve_index=False)
            table = table.add_column(0, schema.field("image"), pa.array(images, type=IMAGE_TYPE))
            writer.write_table(table, row_group_size=row_group_size)


def _embedded_image(resolver: ImageResolver, stored, out_path: Path, index: int) -> dict | None:
    """``{bytes, path}`` of one row's image file, or None (missing, under the placeholder policy)."""
    path = resolver.resolve(stored) if isinstance(stored, str) and stored else None
    try:
        if path is None:
            raise FileNotFoundError
        image = {"bytes": path.read_bytes(), "path": path.name}
        resolver.record(stored, ImageStatus.OK)  # counted as seen: the share of missing ones stays right
        return image
    except FileNotFoundError:
        if resolver.missing == "error":
            raise DataFormatError(resolver.where(stored) if path is not None else out_path,
                                  f"no image file for row {index + 1} (stored path {stored!r})", row=index + 1,
                                  column="image_local", fix="check --image-root (images are found by basename)") from None
        resolver.record(stored, ImageStatus.MISSING)
        return None

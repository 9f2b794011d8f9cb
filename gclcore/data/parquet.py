"""The Hugging Face parquet layout (``Marqo/marqo-GS-10M``): splits with the encoded images embedded,
decoded lazily one row group at a time.
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
from gclcore.data.images import ImageResolver, decode_image_bytes
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

    def __init__(self, root: str | os.PathLike, split: str):
        self.files = parquet_split_files(root, split)
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


def write_parquet_split(frame: pd.DataFrame, resolver: ImageResolver, out_path: str | os.PathLike,
                        row_group_size: int = 1000) -> None:
    """Write a split in the Hugging Face layout: the CSV columns with ``image_local`` replaced by an
    ``image`` struct ``{bytes, path}`` holding the encoded file as is (no re-encoding)."""
    columns = [c for c in frame.columns if c != "image_local"]
    images = []
    for stored in frame["image_local"]:
        path = resolver.resolve(stored)
        images.append({"bytes": path.read_bytes(), "path": path.name})
    table = pa.Table.from_pandas(frame[columns], preserve_index=False)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = table.add_column(0, "image", pa.array(images, type=image_type))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out_path, binary=True) as fh:
        pq.write_table(table, fh, row_group_size=row_group_size)

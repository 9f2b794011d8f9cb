"""Readers, image resolution, path remapping and validation for the Marqo-GS-10M files.

Two published layouts are supported (see ``shared/reference/gs-dataset-format.md``):

- **CSV layout** (``marqo-gs-dataset.tar``): four split CSVs ``query_{0,1}_product_id_{0,1}.csv``, the
  corpora ``corpus_1.json`` / ``corpus_2.json`` and per split ``_queries.json``, ``_gt_dev.json`` and
  ``_gt_test.json``. Image paths are the publisher's absolute paths, resolved here by basename under a
  user-given image root.
- **Hugging Face parquet layout** (``Marqo/marqo-GS-10M``): splits ``in_domain``, ``novel_query``,
  ``novel_document``, ``zero_shot`` with the encoded image bytes embedded; images are decoded lazily,
  one row group at a time.

Conventions that every reader here follows:

- ``product_id``, ``query_id`` and ``pair_id`` are strings (published ids exceed int64).
- ``query`` and ``title`` use pandas' default missing-value strings (``"NA"``, ``"null"``, ``""``, ...)
  so that numbers match the reference evaluation, which reads the CSVs with plain ``pandas.read_csv``;
  pass ``keep_default_na=False`` for the raw text instead.
- Bad input raises :class:`DataFormatError` naming the file, row and column; nothing is dropped silently.

Command line::

    python -m gclcore.data validate DATA_DIR [--image-root DIR]
    python -m gclcore.data remap-images DATA_DIR IMAGE_DIR
    python -m gclcore.data to-parquet DATA_DIR OUT_DIR --image-root DIR
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

SPLIT_STEMS = (
    "query_0_product_id_0",
    "query_1_product_id_0",
    "query_0_product_id_1",
    "query_1_product_id_1",
)
"""The four split CSV stems, in the reference order: in-domain, novel query, novel document, zero-shot."""

SPLIT_NAMES = {
    "query_0_product_id_0": "in_domain",
    "query_1_product_id_0": "novel_query",
    "query_0_product_id_1": "novel_document",
    "query_1_product_id_1": "zero_shot",
}
"""CSV stem -> Hugging Face split name."""

SPLIT_CORPUS = {stem: ("corpus_1.json" if stem.endswith("_0") else "corpus_2.json") for stem in SPLIT_STEMS}
"""CSV stem -> the corpus file it is evaluated against (``*_product_id_0`` -> ``corpus_1.json``)."""

COMPANION_SUFFIXES = ("_queries.json", "_gt_dev.json", "_gt_test.json")

CSV_COLUMNS = (
    "query", "product_id", "position", "title", "image_local",
    "pair_id", "score_linear", "score_reciprocal", "no_score", "query_id",
)
"""Column order written by :mod:`gclcore.splits` (the Hugging Face order, ``image`` -> ``image_local``)."""

ID_COLUMNS = ("product_id", "query_id", "pair_id")
TEXT_COLUMNS = ("query", "title", "image_local")
INT_COLUMNS = ("position", "score_linear", "no_score")
FLOAT_COLUMNS = ("score_reciprocal",)
REQUIRED_COLUMNS = ("query", "product_id")

PANDAS_NA_STRINGS = (
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
)
"""pandas' default ``na_values`` (``pandas.read_csv``), which the reference evaluation inherits."""


class DataFormatError(ValueError):
    """Input that does not follow the expected format; names the file, row and column at fault.

    ``row`` is the 1-based data row (header excluded); for JSON files it is the entry's key.
    """

    def __init__(self, path: str | os.PathLike, message: str, *, row: Any = None, column: str | None = None,
                 fix: str | None = None):
        self.path, self.row, self.column, self.fix = str(path), row, column, fix
        where = [self.path]
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        text = f"{': '.join([', '.join(where), message])}"
        if fix:
            text += f"\n  fix: {fix}"
        super().__init__(text)


# --------------------------------------------------------------------------------------------------
# Split CSVs
# --------------------------------------------------------------------------------------------------

@dataclass
class CsvReadReport:
    """What :func:`read_split_csv` had to do to the file: rows it skipped and why (nothing is silent)."""

    path: str
    rows: int = 0
    malformed_rows: list[tuple[int | None, str, int, int]] = field(default_factory=list)
    """(physical line if known, text excerpt, expected and actual field counts) of rows with the wrong
    number of fields."""


def read_split_csv(path: str | os.PathLike, *, columns: Iterable[str] | None = None,
                   keep_default_na: bool = True, on_malformed: Literal["error", "skip"] = "error",
                   report: CsvReadReport | None = None) -> pd.DataFrame:
    """Read one split CSV (``query_*_product_id_*.csv``, or any table with the same columns).

    Args:
        path: the CSV file. Titles may hold quoted commas, quotes and newlines.
        columns: load only these columns (saves memory on 10M-row files); all when None.
        keep_default_na: True (default) turns pandas' default NA strings in ``query`` / ``title`` into
            missing values, as the reference evaluation does; False keeps the raw text (only empty
            fields are missing).
        on_malformed: rows with the wrong number of fields raise (``"error"``) or are skipped and
            recorded in ``report`` (``"skip"``).
        report: optional :class:`CsvReadReport` filled with the row count and skipped rows.

    Returns:
        DataFrame with ids as strings, ``position`` / ``score_linear`` / ``no_score`` as int64,
        ``score_reciprocal`` as float64, text columns as strings with missing values as NaN.

    Raises:
        DataFormatError: unreadable file, missing required column, malformed row or a non-numeric value
            in a numeric column -- naming file, row and column.
    """
    path = Path(path)
    report = report if report is not None else CsvReadReport(str(path))
    header = _csv_header(path)
    wanted = list(header) if columns is None else list(columns)
    for name in wanted:
        if name not in header:
            raise DataFormatError(path, f"missing column {name!r} (columns present: {', '.join(header)})",
                                  column=name, fix="check the file is a Marqo-GS split CSV")
    if columns is None:
        for name in REQUIRED_COLUMNS:
            if name not in header:
                raise DataFormatError(path, f"missing required column {name!r}", column=name)

    def on_invalid(row: pacsv.InvalidRow) -> str:
        # Exceptions raised here are swallowed by pyarrow: record the row and let pyarrow abort.
        report.malformed_rows.append((row.number, row.text[:120], row.expected_columns, row.actual_columns))
        return "skip" if on_malformed == "skip" else "error"

    null_values = list(PANDAS_NA_STRINGS) if keep_default_na else [""]

    def read(numeric_as_text: bool) -> pa.Table:
        types = {name: pa.int64() if name in INT_COLUMNS and not numeric_as_text else
                 pa.float64() if name in FLOAT_COLUMNS and not numeric_as_text else pa.string() for name in wanted}
        return pacsv.read_csv(
            path,
            parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(include_columns=wanted, column_types=types, null_values=null_values,
                                                 strings_can_be_null=True, quoted_strings_can_be_null=True),
            read_options=pacsv.ReadOptions(block_size=64 << 20),
        )

    try:
        try:
            table = read(numeric_as_text=False)  # the fast path: numbers parsed by pyarrow
        except pa.ArrowInvalid:
            if report.malformed_rows and on_malformed == "error":
                raise
            # a value pyarrow cannot parse as a number: re-read those columns as text so that the bad
            # value is reported with its row and column (or accepted, e.g. "100.0" in an int column)
            report.malformed_rows.clear()
            table = read(numeric_as_text=True)
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as err:
        if on_malformed == "error" and report.malformed_rows:
            line, excerpt, expected, actual = report.malformed_rows[-1]
            raise DataFormatError(path, f"expected {expected} fields, found {actual}: {excerpt!r}",
                                  row=None if line is None else f"at line {line}",
                                  fix="repair the row, or read with on_malformed='skip' to count and skip it") from err
        raise DataFormatError(path, f"cannot parse as CSV: {err}",
                              fix="the file must be a comma-separated, double-quoted, UTF-8 CSV") from err
    report.rows = table.num_rows
    frame = {}
    for name in wanted:
        column = table.column(name)
        if name in INT_COLUMNS or name in FLOAT_COLUMNS:
            frame[name] = _to_number(path, name, column, integer=name in INT_COLUMNS)
        else:  # ids and text exactly as written (what pandas.read_csv(dtype=str) gives), zero-copy
            frame[name] = _to_text(column)
    return pd.DataFrame(frame, columns=wanted)


def _to_text(column: pa.ChunkedArray | pa.Array) -> pd.Series:
    # pandas' Arrow-backed string dtype: ~4x less memory than Python str objects at 10M rows.
    return pd.Series(column.to_pandas(), dtype=pd.StringDtype("pyarrow", na_value=np.nan))


def _csv_header(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            header = next(csv.reader(fh), None)
    except FileNotFoundError as err:
        raise DataFormatError(path, "file not found") from err
    except UnicodeDecodeError as err:
        raise DataFormatError(path, f"not UTF-8 text ({err})", row=0) from err
    if not header:
        raise DataFormatError(path, "empty file: no header row")
    return header


def _to_number(path: Path, name: str, column: pa.ChunkedArray, *, integer: bool) -> pd.Series:
    if column.null_count:
        first = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataFormatError(path, f"{column.null_count} missing value(s)", row=first + 1, column=name)
    if not pa.types.is_string(column.type):
        return pd.Series(column.to_numpy())
    trimmed = pc.utf8_trim_whitespace(column)
    try:
        return pd.Series(trimmed.cast(pa.int64() if integer else pa.float64()).to_numpy())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    values = pd.Series(trimmed.to_pandas(), dtype=object)
    parsed = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isnan(parsed)
    if integer:
        bad |= parsed != np.round(np.nan_to_num(parsed))
    if not bad.any():  # e.g. "100.0" in an integer column
        return pd.Series(parsed.astype(np.int64) if integer else parsed)
    first = int(np.flatnonzero(bad)[0])
    raise DataFormatError(path, f"{int(bad.sum())} value(s) are not {'integers' if integer else 'numbers'}; "
                                f"first: {values.iloc[first]!r}", row=first + 1, column=name)


# --------------------------------------------------------------------------------------------------
# Corpus and companion JSON files
# --------------------------------------------------------------------------------------------------

def read_corpus(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``corpus_{1,2}.json``: ``{product_id: {"image_local": ..., "title": ..., ...}}``.

    Returns a DataFrame with a string ``product_id`` column first, then one column per product field,
    rows in the file's **key order** (the reference evaluation indexes documents in that order, which
    fixes the order of tied scores). Missing titles are NaN.
    """
    path = Path(path)
    raw = _load_json(path)
    if not isinstance(raw, dict):
        raise DataFormatError(path, f"expected a JSON object {{product_id: {{field: value}}}}, "
                                    f"found {describe_json(raw)}")
    ids = list(raw.keys())
    records = list(raw.values())
    for key, value in zip(ids, records):
        if not isinstance(value, dict):
            raise DataFormatError(path, f"entry is {type(value).__name__}, expected an object of product "
                                        f"fields such as image_local and title", row=key)
    frame = pd.DataFrame.from_records(records) if records else pd.DataFrame()
    frame.insert(0, "product_id", pd.Series(ids, dtype=object))
    for name in frame.columns[1:]:
        frame[name] = frame[name].astype(object).where(frame[name].notna(), np.nan)
    return frame


def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError as err:
        raise DataFormatError(path, "file not found") from err
    except json.JSONDecodeError as err:
        raise DataFormatError(path, f"invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}",
                              row=f"line {err.lineno}") from err


def describe_json(obj: Any, depth: int = 2) -> str:
    """One-line shape description of a parsed JSON value: type, size, sample keys and nested types."""
    if isinstance(obj, dict):
        keys = list(obj)[:3]
        inner = describe_json(obj[keys[0]], depth - 1) if keys and depth > 1 else "..."
        return f"object of {len(obj)} entries (keys e.g. {keys!r}; values: {inner})"
    if isinstance(obj, list):
        inner = describe_json(obj[0], depth - 1) if obj and depth > 1 else "..."
        return f"list of {len(obj)} items (first: {inner})"
    return type(obj).__name__


@dataclass
class Companion:
    """A sniffed ``*_queries.json`` / ``*_gt_dev.json`` / ``*_gt_test.json`` file.

    ``kind`` is one of:

    - ``"queries"``: ``data`` is ``{query_id: query_text}``;
    - ``"qrels"``: ``data`` is ``{query_id: {product_id: grade}}`` (grades as float);
    - ``"binary_qrels"``: the file listed relevant ids only; ``data`` is qrels with every grade 1.

    Records (a list of objects with query / product / score fields) are converted to qrels or queries.
    ``shape`` records what was detected, for the run's provenance.
    """

    path: str
    kind: Literal["queries", "qrels", "binary_qrels"]
    data: dict
    shape: str


_QUERY_KEYS = ("query_id", "qid", "query-id", "query")
_DOC_KEYS = ("product_id", "doc_id", "docid", "corpus-id", "corpus_id", "pid")
_GRADE_KEYS = ("score", "grade", "relevance", "score_linear", "label")
_TEXT_KEYS = ("query", "text", "query_text")


def read_companion(path: str | os.PathLike) -> Companion:
    """Load a companion JSON file by sniffing its structure (its schema is not published).

    Recognised shapes: ``{id: text}`` (queries), ``{qid: {docid: grade}}`` (qrels),
    ``{qid: [docid, ...]}`` (binary qrels), and lists of records carrying a query id plus either a
    product id (and optionally a grade) or a query text. Ids are returned as strings.

    Raises:
        DataFormatError: any other structure, with a description of what was found.
    """
    path = Path(path)
    obj = _load_json(path)
    shape = describe_json(obj)
    if isinstance(obj, dict) and obj:
        values = list(obj.values())
        if all(isinstance(v, str) for v in values):
            return Companion(str(path), "queries", {str(k): v for k, v in obj.items()}, shape)
        if all(isinstance(v, dict) for v in values) and all(
                _is_number(g) for v in values for g in v.values()):
            qrels = {str(q): {str(d): float(g) for d, g in docs.items()} for q, docs in obj.items()}
            return Companion(str(path), "qrels", qrels, shape)
        if all(isinstance(v, list) for v in values) and all(
                isinstance(d, (str, int)) and not isinstance(d, bool) for v in values for d in v):
            qrels = {str(q): {str(d): 1.0 for d in docs} for q, docs in obj.items()}
            return Companion(str(path), "binary_qrels", qrels, shape)
    if isinstance(obj, list) and obj and all(isinstance(r, dict) for r in obj):
        return _companion_from_records(path, obj, shape)
    raise DataFormatError(path, f"unrecognised structure: {shape}",
                          fix="expected {query_id: text}, {query_id: {product_id: grade}}, "
                              "{query_id: [product_id, ...]} or a list of such records")


def _companion_from_records(path: Path, records: list[dict], shape: str) -> Companion:
    first = records[0]
    qkey = next((k for k in _QUERY_KEYS if k in first and k != "query"), None)
    dkey = next((k for k in _DOC_KEYS if k in first), None)
    if qkey is not None and dkey is not None:
        gkey = next((k for k in _GRADE_KEYS if k in first), None)
        qrels: dict[str, dict[str, float]] = {}
        for i, rec in enumerate(records):
            try:
                grade = float(rec[gkey]) if gkey else 1.0
                qrels.setdefault(str(rec[qkey]), {})[str(rec[dkey])] = grade
            except (KeyError, TypeError, ValueError) as err:
                raise DataFormatError(path, f"record lacks a usable {err}", row=i + 1) from err
        return Companion(str(path), "qrels" if gkey else "binary_qrels", qrels, shape)
    tkey = next((k for k in _TEXT_KEYS if k in first), None)
    if qkey is not None and tkey is not None:
        return Companion(str(path), "queries", {str(r[qkey]): r[tkey] for r in records}, shape)
    raise DataFormatError(path, f"records without recognisable query/product fields: {shape}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------------------
# Dataset directory
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SplitFiles:
    """Paths of one split in the CSV layout (companions are None when absent)."""

    stem: str
    csv: Path
    corpus: Path
    queries: Path | None
    gt_dev: Path | None
    gt_test: Path | None

    @property
    def name(self) -> str:
        return SPLIT_NAMES[self.stem]


def split_files(data_dir: str | os.PathLike, stem: str) -> SplitFiles:
    """Locate one split of a CSV-layout dataset directory and its paired corpus file."""
    data_dir = Path(data_dir)
    if stem not in SPLIT_NAMES:
        names = {v: k for k, v in SPLIT_NAMES.items()}
        if stem not in names:
            raise ValueError(f"unknown split {stem!r}; use one of {', '.join(SPLIT_STEMS)} "
                             f"or {', '.join(SPLIT_NAMES.values())}")
        stem = names[stem]
    csv_path = data_dir / f"{stem}.csv"
    if not csv_path.exists():
        raise DataFormatError(csv_path, "split CSV not found",
                              fix=f"point data_dir at the folder holding {stem}.csv (e.g. marqo_gs_full_10m/)")

    def companion(suffix: str) -> Path | None:
        candidate = data_dir / f"{stem}{suffix}"
        return candidate if candidate.exists() else None

    return SplitFiles(stem, csv_path, data_dir / SPLIT_CORPUS[stem], companion("_queries.json"),
                      companion("_gt_dev.json"), companion("_gt_test.json"))


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------

def image_basename(stored_path: str) -> str:
    """File name of a stored (publisher, POSIX or Windows) image path: the text after the last separator."""
    return PurePosixPath(str(stored_path).replace("\\", "/")).name


class ImageResolver:
    """Resolves publisher image paths by basename under a user-given image root; never opens the stored path.

    ``missing``: what :meth:`open` does with an absent or undecodable image --
    ``"error"`` raises, ``"placeholder"`` returns a grey image. Either way :attr:`missing_count`
    and :attr:`unreadable_count` count them, so nothing is skipped silently.
    """

    def __init__(self, image_root: str | os.PathLike, missing: Literal["error", "placeholder"] = "error",
                 placeholder_size: int = 224):
        self.root = Path(image_root)
        if not self.root.is_dir():
            raise DataFormatError(self.root, "image root is not a directory",
                                  fix="pass the folder the image archive was unpacked to")
        self.missing = missing
        self.placeholder_size = placeholder_size
        self.missing_count = 0
        self.unreadable_count = 0

    def resolve(self, stored_path: str) -> Path:
        """``image_root / basename(stored_path)``."""
        return self.root / image_basename(stored_path)

    def load(self, stored_path: str):
        """Decode the image as RGB (dispatching on content, not extension) without counting or raising.

        Returns ``(image, None)``, or ``(None, problem)`` with problem ``"missing"`` or ``"unreadable: ..."``.
        """
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(self.resolve(stored_path)) as img:
                return img.convert("RGB"), None
        except FileNotFoundError:
            return None, "missing"
        except (UnidentifiedImageError, OSError) as err:
            return None, f"unreadable: {err}"

    def record(self, stored_path: str, problem: str | None):
        """Count a problem reported by :meth:`load` and apply the policy: raise, or return a placeholder."""
        from PIL import Image

        if problem is None:
            return None
        if problem == "missing":
            self.missing_count += 1
        else:
            self.unreadable_count += 1
        if self.missing == "error":
            raise DataFormatError(self.resolve(stored_path), f"image {problem} (stored path {stored_path!r})",
                                  fix="check --image-root, or use missing='placeholder' to substitute and count")
        return Image.new("RGB", (self.placeholder_size, self.placeholder_size), (128, 128, 128))

    def open(self, stored_path: str):
        """Decode the image as RGB; a missing or undecodable file is counted, then raises or gives a
        grey placeholder according to the policy."""
        image, problem = self.load(stored_path)
        return image if problem is None else self.record(stored_path, problem)


def decode_image_bytes(data: bytes):
    """Decode encoded image bytes (parquet ``image.bytes``) to an RGB PIL image."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


# --------------------------------------------------------------------------------------------------
# Hugging Face parquet layout
# --------------------------------------------------------------------------------------------------

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
                out[name] = _to_text(column.cast(pa.string()))
            elif name in INT_COLUMNS:
                out[name] = pd.Series(column.cast(pa.int64()).to_numpy(zero_copy_only=False))
            elif name in FLOAT_COLUMNS:
                out[name] = pd.Series(column.cast(pa.float64()).to_numpy(zero_copy_only=False))
            else:
                out[name] = _to_text(column)
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


# --------------------------------------------------------------------------------------------------
# Atomic rewriting of image paths (the equivalent of the publisher's change_image_paths.py)
# --------------------------------------------------------------------------------------------------

def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class atomic_write:
    """Context manager: write to a temporary file beside ``path``, fsync, then ``os.replace`` it in.

    An interrupted write leaves the original file untouched (the temporary file is removed).
    """

    def __init__(self, path: str | os.PathLike, *, binary: bool = False, newline: str | None = None):
        self.path = Path(path)
        self.binary, self.newline = binary, newline

    def __enter__(self):
        fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        mode = "wb" if self.binary else "w"
        kwargs = {} if self.binary else {"encoding": "utf-8", "newline": self.newline}
        self._fh = os.fdopen(fd, mode, **kwargs)
        return self._fh

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self._fh.flush()
                os.fsync(self._fh.fileno())
            self._fh.close()
            if exc_type is None:
                # keep an existing file's mode; new files get the usual 0666 & ~umask, not mkstemp's 0600
                os.chmod(self._tmp, self.path.stat().st_mode & 0o777 if self.path.exists() else 0o666 & ~_umask())
                os.replace(self._tmp, self.path)
        finally:
            if os.path.exists(self._tmp):
                os.unlink(self._tmp)
        return False


def write_csv(frame: pd.DataFrame, path: str | os.PathLike, chunk_rows: int = 500_000) -> None:
    """Write ``frame`` as a plain pandas CSV (minimal quoting, no index), atomically, in chunks."""
    with atomic_write(path, newline="") as fh:
        for start in range(0, max(len(frame), 1), chunk_rows):
            frame.iloc[start:start + chunk_rows].to_csv(fh, index=False, header=start == 0, lineterminator="\n")


def remap_csv_images(path: str | os.PathLike, image_dir: str | os.PathLike) -> int:
    """Rewrite ``image_local`` of one CSV to ``image_dir/basename`` atomically; returns rows rewritten.

    Streams with the csv module so every other field is written back byte-for-byte as text (no pandas
    round trip that could reformat ids). Output uses ``QUOTE_ALL`` like the publisher's script.
    Files without an ``image_local`` column are left untouched (returns 0).
    """
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as src:
        reader = csv.reader(src)
        header = next(reader, None)
        if not header or "image_local" not in header:
            return 0
        col = header.index("image_local")
        count = 0
        with atomic_write(path, newline="") as dst:
            writer = csv.writer(dst, quoting=csv.QUOTE_ALL)
            writer.writerow(header)
            for line_no, row in enumerate(reader, start=1):
                if len(row) != len(header):
                    raise DataFormatError(path, f"expected {len(header)} fields, found {len(row)}; file left "
                                                f"unchanged", row=line_no)
                if row[col]:
                    row[col] = os.path.join(str(image_dir), image_basename(row[col]))
                    count += 1
                writer.writerow(row)
    return count


def remap_corpus_images(path: str | os.PathLike, image_dir: str | os.PathLike) -> int:
    """Rewrite every ``corpus[id]["image_local"]`` to ``image_dir/basename`` atomically (key order kept)."""
    path = Path(path)
    corpus = _load_json(path)
    if not isinstance(corpus, dict):
        raise DataFormatError(path, f"expected a corpus object, found {describe_json(corpus)}")
    count = 0
    for fields in corpus.values():
        if isinstance(fields, dict) and fields.get("image_local"):
            fields["image_local"] = os.path.join(str(image_dir), image_basename(fields["image_local"]))
            count += 1
    with atomic_write(path) as fh:
        json.dump(corpus, fh, ensure_ascii=False)
    return count


def remap_images(data_dir: str | os.PathLike, image_dir: str | os.PathLike) -> dict[str, int]:
    """Rewrite image paths in every CSV (recursively) and every ``corpus*.json`` under ``data_dir``.

    Returns ``{file: rows rewritten}``. Prefer resolving at load time (:class:`ImageResolver`); this
    exists for tools that need the files themselves rewritten.
    """
    data_dir = Path(data_dir)
    image_dir = Path(image_dir).resolve()
    done = {}
    for path in sorted(data_dir.rglob("*.csv")):
        done[str(path)] = remap_csv_images(path, image_dir)
    for path in sorted(data_dir.rglob("corpus*.json")):
        done[str(path)] = remap_corpus_images(path, image_dir)
    return done


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------

@dataclass
class Finding:
    """One validation problem: how many times it occurs and where first."""

    severity: Literal["error", "warning"]
    check: str
    file: str
    count: int
    first_row: Any = None
    column: str | None = None
    example: str = ""

    def __str__(self) -> str:
        where = self.file
        if self.first_row is not None:
            where += f", first at row {self.first_row}"
        if self.column:
            where += f", column {self.column!r}"
        text = f"{self.severity.upper():7s} {self.check}: {self.count} ({where})"
        return text + (f" e.g. {self.example}" if self.example else "")


@dataclass
class ValidationReport:
    findings: list[Finding] = field(default_factory=list)
    stats: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    def add(self, severity, check, file, mask_or_count, *, first_row=None, column=None, example=""):
        """Record a finding from a count, or from a boolean mask over data rows (first row 1-based)."""
        if isinstance(mask_or_count, (int, np.integer)):
            count = int(mask_or_count)
        else:
            mask = np.asarray(mask_or_count, dtype=bool)
            count = int(mask.sum())
            if count and first_row is None:
                first_row = int(np.flatnonzero(mask)[0]) + 1
        if count:
            self.findings.append(Finding(severity, check, str(file), count, first_row, column, example))

    def render(self) -> str:
        lines = []
        for name, stat in self.stats.items():
            lines.append(f"{name}: " + ", ".join(f"{k} {v:,}" for k, v in stat.items()))
        lines += [str(f) for f in self.findings] or ["no problems found"]
        lines.append("OK" if self.ok else f"FAILED: {sum(f.severity == 'error' for f in self.findings)} error(s)")
        return "\n".join(lines)


def validate(data_dir: str | os.PathLike, image_root: str | os.PathLike | None = None,
             decode_limit: int = 1000, progress: bool = True) -> ValidationReport:
    """Check a CSV-layout dataset directory; see ``python -m gclcore.data validate --help``.

    Checks per split CSV: required and expected columns, malformed and unparsable rows, empty ids,
    duplicate (query, product) pairs, positions < 1, scores outside 1..100 / (0, 1], products absent
    from the paired corpus; per corpus: entries without an image; per companion file: its structure;
    with ``image_root``: missing images (all referenced files) and undecodable images (the first
    ``decode_limit`` of them, 0 for all).
    """
    from tqdm.auto import tqdm

    data_dir = Path(data_dir)
    report = ValidationReport()
    present = [s for s in SPLIT_STEMS if (data_dir / f"{s}.csv").exists()]
    if not present:
        report.add("error", "no split CSVs found", data_dir, 1,
                   example=f"expected {', '.join(s + '.csv' for s in SPLIT_STEMS)}")
        return report
    for stem in SPLIT_STEMS:
        if stem not in present:
            report.add("warning", "split CSV absent", data_dir / f"{stem}.csv", 1)
    corpora: dict[str, pd.DataFrame | None] = {}
    for name in sorted({SPLIT_CORPUS[s] for s in present}):
        corpus_path = data_dir / name
        try:
            corpora[name] = read_corpus(corpus_path)
        except DataFormatError as err:
            report.add("error", "corpus unreadable", corpus_path, 1, first_row=err.row, example=str(err))
            corpora[name] = None
            continue
        frame = corpora[name]
        report.stats[name] = {"products": len(frame)}
        if "image_local" not in frame.columns:
            report.add("error", "corpus entries without image_local", corpus_path, len(frame))
        else:
            report.add("warning", "corpus entries without image_local", corpus_path,
                       frame["image_local"].isna().to_numpy(), column="image_local")

    images: dict[str, str] = {}
    for stem in tqdm(present, desc="validate splits", disable=not progress):
        _validate_split(data_dir, stem, corpora.get(SPLIT_CORPUS[stem]), report, images)
    for name, frame in corpora.items():
        if frame is not None and "image_local" in frame.columns:
            for stored in frame["image_local"].dropna():
                images.setdefault(image_basename(stored), str(data_dir / name))
    if image_root is not None:
        _validate_images(Path(image_root), images, decode_limit, report, progress)
    return report


def _validate_split(data_dir: Path, stem: str, corpus: pd.DataFrame | None, report: ValidationReport,
                    images: dict[str, str]) -> None:
    path = data_dir / f"{stem}.csv"
    read_report = CsvReadReport(str(path))
    try:
        header = _csv_header(path)
        missing = [c for c in ("query", "product_id", "position", "title", "image_local", "score_linear")
                   if c not in header]
        for name in missing:
            severity = "error" if name in REQUIRED_COLUMNS + ("score_linear",) else "warning"
            report.add(severity, "missing column", path, 1, column=name)
        if any(c in REQUIRED_COLUMNS for c in missing):
            return
        text_columns = [c for c in header if c not in INT_COLUMNS + FLOAT_COLUMNS]
        frame = read_split_csv(path, columns=text_columns, on_malformed="skip", report=read_report)
    except DataFormatError as err:
        report.add("error", "unreadable CSV", path, 1, first_row=err.row, column=err.column, example=str(err))
        return
    if read_report.malformed_rows:
        line, excerpt, _, _ = read_report.malformed_rows[0]
        report.add("error", "malformed rows (wrong number of fields), skipped", path,
                   len(read_report.malformed_rows), first_row=f"line {line}" if line else None,
                   example=repr(excerpt))
    report.stats[stem] = {"rows": len(frame), "queries": int(frame["query"].nunique()),
                          "products": int(frame["product_id"].nunique())}
    numeric = _read_numeric_as_text(path, [c for c in header if c in INT_COLUMNS + FLOAT_COLUMNS])
    for name, values in numeric.items():
        parsed = pd.to_numeric(values, errors="coerce")
        bad = parsed.isna().to_numpy() & values.notna().to_numpy()
        report.add("error", "unparsable numbers", path, bad, column=name,
                   example=repr(values[bad].iloc[0]) if bad.any() else "")
        report.add("error", "missing numbers", path, values.isna().to_numpy(), column=name)
        out_of_range = {"position": parsed < 1, "score_linear": (parsed < 1) | (parsed > 100),
                        "score_reciprocal": (parsed <= 0) | (parsed > 1)}.get(name)
        if out_of_range is not None:
            report.add("error", "values out of range", path, out_of_range.to_numpy(), column=name,
                       example=repr(values[out_of_range].iloc[0]) if out_of_range.any() else "")
    if {"position", "score_linear"} <= numeric.keys():
        drift = (pd.to_numeric(numeric["score_linear"], errors="coerce")
                 + pd.to_numeric(numeric["position"], errors="coerce")) != 101
        report.add("warning", "score_linear != 101 - position", path, drift.to_numpy(), column="score_linear")
    for name in ("query", "product_id"):
        report.add("error", "empty values", path, frame[name].isna().to_numpy(), column=name)
    if "title" in frame.columns:
        report.add("warning", "missing titles", path, frame["title"].isna().to_numpy(), column="title")
    dup = frame.duplicated(["query", "product_id"]).to_numpy()
    report.add("error", "duplicate (query, product) pairs", path, dup, column="product_id",
               example=f"{frame['query'][dup].iloc[0]!r} / {frame['product_id'][dup].iloc[0]}" if dup.any() else "")
    if corpus is not None:
        absent = ~frame["product_id"].isin(pd.Index(corpus["product_id"])).to_numpy()
        report.add("error", f"products absent from {SPLIT_CORPUS[stem]}", path, absent, column="product_id",
                   example=str(frame["product_id"][absent].iloc[0]) if absent.any() else "")
    if "image_local" in frame.columns:
        report.add("warning", "rows without image_local", path, frame["image_local"].isna().to_numpy(),
                   column="image_local")
        for stored in frame["image_local"].dropna().unique():
            images.setdefault(image_basename(stored), str(path))
    for suffix in COMPANION_SUFFIXES:
        companion = data_dir / f"{stem}{suffix}"
        if not companion.exists():
            report.add("warning", "companion file absent", companion, 1)
            continue
        try:
            found = read_companion(companion)
        except DataFormatError as err:
            report.add("error", "companion file not understood", companion, 1, example=str(err))
            continue
        if found.kind != "queries" and corpus is not None:
            known = set(corpus["product_id"])
            docs = [d for judged in found.data.values() for d in judged]
            report.add("error", f"judged products absent from {SPLIT_CORPUS[stem]}", companion,
                       sum(d not in known for d in docs))


def _read_numeric_as_text(path: Path, columns: list[str]) -> dict[str, pd.Series]:
    if not columns:
        return {}
    table = pacsv.read_csv(
        path, parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=lambda r: "skip"),
        convert_options=pacsv.ConvertOptions(include_columns=columns,
                                             column_types={c: pa.string() for c in columns},
                                             strings_can_be_null=True))
    return {c: _to_text(pc.utf8_trim_whitespace(table.column(c))) for c in columns}


def _validate_images(root: Path, images: dict[str, str], decode_limit: int, report: ValidationReport,
                     progress: bool) -> None:
    from PIL import Image
    from tqdm.auto import tqdm

    if not root.is_dir():
        report.add("error", "image root is not a directory", root, 1)
        return
    on_disk = {entry.name for entry in os.scandir(root) if entry.is_file()}
    names = sorted(images)
    missing = [n for n in names if n not in on_disk]
    if missing:
        report.add("error", "missing images", images[missing[0]], len(missing), column="image_local",
                   example=f"{missing[0]} not under {root}")
    present = [n for n in names if n in on_disk]
    to_decode = present if decode_limit == 0 else present[:decode_limit]
    unreadable = []
    for name in tqdm(to_decode, desc="decode images", disable=not progress):
        try:
            with Image.open(root / name) as img:
                img.verify()
        except Exception:  # noqa: BLE001 -- any decoder failure means the file is unusable
            unreadable.append(name)
    if unreadable:
        report.add("error", "unreadable images", images[unreadable[0]], len(unreadable), column="image_local",
                   example=f"{root / unreadable[0]} (decoded {len(to_decode):,} of {len(present):,})")
    report.stats["images"] = {"referenced": len(names), "missing": len(missing), "decoded": len(to_decode),
                              "unreadable": len(unreadable)}


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gclcore.data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_val = sub.add_parser("validate", help="check a dataset directory; exits 1 on errors")
    p_val.add_argument("data_dir")
    p_val.add_argument("--image-root", help="folder holding the images (resolved by basename)")
    p_val.add_argument("--decode-limit", type=int, default=1000,
                       help="decode at most this many images to check they are readable (0: all)")
    p_map = sub.add_parser("remap-images", help="rewrite image_local paths to IMAGE_DIR/basename, atomically")
    p_map.add_argument("data_dir")
    p_map.add_argument("image_dir")
    p_pq = sub.add_parser("to-parquet", help="write the Hugging Face parquet layout (images embedded)")
    p_pq.add_argument("data_dir")
    p_pq.add_argument("out_dir")
    p_pq.add_argument("--image-root", required=True)
    args = parser.parse_args(argv)

    try:
        if args.command == "validate":
            result = validate(args.data_dir, args.image_root, args.decode_limit)
            print(result.render())
            return 0 if result.ok else 1
        if args.command == "remap-images":
            for path, count in remap_images(args.data_dir, args.image_dir).items():
                print(f"{path}: {count:,} paths rewritten")
            return 0
        resolver = ImageResolver(args.image_root)
        for stem in SPLIT_STEMS:
            frame = read_split_csv(split_files(args.data_dir, stem).csv)
            out = Path(args.out_dir) / "data" / f"{SPLIT_NAMES[stem]}-00000-of-00001.parquet"
            write_parquet_split(frame, resolver, out)
            print(f"{out}: {len(frame):,} rows")
        return 0
    except DataFormatError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

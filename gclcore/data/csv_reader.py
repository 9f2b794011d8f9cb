"""The split CSV reader: ``query_*_product_id_*.csv`` (or any table with the same columns) as a DataFrame.

Ids are strings (the published ids exceed int64); ``query`` and ``title`` follow pandas' default
missing-value strings, as the published evaluation does; malformed rows raise or are counted, never
dropped silently.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from gclcore.data.errors import DataFormatError

ID_COLUMNS = ("product_id", "query_id", "pair_id")
INT_COLUMNS = ("position", "score_linear", "no_score")
FLOAT_COLUMNS = ("score_reciprocal",)
REQUIRED_COLUMNS = ("query", "product_id")

PANDAS_NA_STRINGS = (
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
)
"""pandas' default ``na_values`` (``pandas.read_csv``), which the reference evaluation inherits."""


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
    header = csv_header(path)
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
        bad_text = first_invalid_utf8(path) if "UTF8" in str(err) or isinstance(err, UnicodeDecodeError) else None
        if bad_text is not None:
            line, excerpt = bad_text
            raise DataFormatError(path, f"not UTF-8 text: invalid bytes in {excerpt!r}", row=f"at line {line}",
                                  fix="re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from err
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
            frame[name] = to_text(column)
    return pd.DataFrame(frame, columns=wanted)


def to_text(column: pa.ChunkedArray | pa.Array) -> pd.Series:
    # pandas' Arrow-backed string dtype: ~4x less memory than Python str objects at 10M rows.
    return pd.Series(column.to_pandas(), dtype=pd.StringDtype("pyarrow", na_value=np.nan))


def csv_header(path: Path) -> list[str]:
    """The header row's column names; a UTF-8 byte-order mark is not part of the first name."""
    try:
        with open(path, "rb") as fh:
            first = fh.readline()
    except FileNotFoundError as err:
        raise DataFormatError(path, "file not found") from err
    try:
        header = next(csv.reader([first.decode("utf-8-sig")]), None)
    except UnicodeDecodeError as err:
        raise DataFormatError(path, f"not UTF-8 text ({err})", row="the header",
                              fix="re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from err
    if not header:
        raise DataFormatError(path, "empty file: no header row")
    return header


def first_invalid_utf8(path: Path, chunk_bytes: int = 1 << 20) -> tuple[int, str] | None:
    """``(line number, the bytes around it as text)`` of the first byte sequence that is not UTF-8, or None."""
    line, tail = 1, b""
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            data = tail + chunk
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as err:
                if err.reason != "unexpected end of data" or err.end < len(data):
                    line += data.count(b"\n", 0, err.start)
                    return line, data[max(0, err.start - 30):err.end + 30].decode("utf-8", "replace")
                line += data.count(b"\n", 0, err.start)  # a character cut by the chunk: finish it next time
                tail = data[err.start:]
                continue
            line += data.count(b"\n")
            tail = b""
    return None


def _to_number(path: Path, name: str, column: pa.ChunkedArray, *, integer: bool) -> pd.Series:
    if column.null_count:
        first = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataFormatError(path, f"{column.null_count} missing value(s)", row=first + 1, column=name)
    if not pa.types.is_string(column.type):
        return _finite(path, name, pd.Series(column.to_numpy()))
    trimmed = pc.utf8_trim_whitespace(column)
    try:
        return _finite(path, name, pd.Series(trimmed.cast(pa.int64() if integer else pa.float64()).to_numpy()))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    values = pd.Series(trimmed.to_pandas(), dtype=object)
    parsed = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isnan(parsed)
    if integer:
        bad |= parsed != np.round(np.nan_to_num(parsed))
    if not bad.any():  # e.g. "100.0" in an integer column
        return _finite(path, name, pd.Series(parsed.astype(np.int64) if integer else parsed))
    first = int(np.flatnonzero(bad)[0])
    raise DataFormatError(path, f"{int(bad.sum())} value(s) are not {'integers' if integer else 'numbers'}; "
                                f"first: {values.iloc[first]!r}", row=first + 1, column=name)


def _finite(path: Path, name: str, values: pd.Series) -> pd.Series:
    """``values``, unless a score is infinite (``inf`` parses as a float): it would turn every grade of
    the split into NaN, so it is an error naming the row."""
    if values.dtype.kind == "f":
        bad = ~np.isfinite(values.to_numpy())
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise DataFormatError(path, f"{int(bad.sum())} value(s) are not finite; first: {float(values.iloc[first])}",
                                  row=first + 1, column=name, fix="scores must be finite numbers")
    return values

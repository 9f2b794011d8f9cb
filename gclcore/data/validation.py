"""Checks of a dataset directory (``python -m gclcore.data validate``), CSV layout or Hugging Face parquet
layout, with counts and the first file, row and column of each problem.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from gclcore.data.csv_reader import (
    FLOAT_COLUMNS,
    INT_COLUMNS,
    REQUIRED_COLUMNS,
    CsvReadReport,
    csv_header,
    read_split_csv,
    to_text,
)
from gclcore.data.dataset import ParquetDataset, detect_layout
from gclcore.data.errors import DataFormatError
from gclcore.data.images import image_basename
from gclcore.data.json_files import read_companion, read_corpus
from gclcore.data.layout import COMPANION_SUFFIXES, SPLIT_CORPUS, SPLIT_NAMES, SPLIT_STEMS, split_halves


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
    """Check a dataset directory (CSV or parquet layout, detected); see ``python -m gclcore.data validate --help``.

    Checks per split CSV: required and expected columns, malformed and unparsable rows, empty ids,
    duplicate (query, product) pairs, positions < 1, scores outside 1..100 / (0, 1], products absent
    from the paired corpus; per corpus: entries without an image; per companion file: its structure;
    with ``image_root``: missing images (all referenced files) and undecodable images (the first
    ``decode_limit`` of them, 0 for all). A parquet folder is checked by :func:`validate_parquet`.
    """
    from tqdm.auto import tqdm

    data_dir = Path(data_dir)
    report = ValidationReport()
    if data_dir.is_dir() and not any((data_dir / f"{s}.csv").exists() for s in SPLIT_STEMS):
        try:
            if detect_layout(data_dir) == "parquet":
                return validate_parquet(data_dir, image_root, decode_limit, progress)
        except DataFormatError as err:
            report.add("error", "no split CSVs or parquet shards found", data_dir, 1, example=str(err))
            return report
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
        header = csv_header(path)
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
    return {c: to_text(pc.utf8_trim_whitespace(table.column(c))) for c in columns}


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


_ID_TYPES_OK = (pa.types.is_string, pa.types.is_large_string, pa.types.is_integer)


def validate_parquet(data_dir: str | os.PathLike, image_root: str | os.PathLike | None = None,
                     decode_limit: int = 1000, progress: bool = True) -> ValidationReport:
    """Check a Hugging Face parquet folder (any subset of the four splits).

    Per split: shards and row counts, required and expected columns, id column types (string or integer;
    a float id has lost digits), empty ids, duplicate (query, product) pairs, positions < 1, scores outside
    1..100 / (0, 1], missing titles, rows without image bytes (from the row groups' statistics: no image
    is read); per product half: the corpus derived from the rows (its size; a warning that it is derived);
    images: the first ``decode_limit`` products' images (0: all) decoded, one row group at a time.
    """
    from tqdm.auto import tqdm

    report = ValidationReport()
    dataset = ParquetDataset(data_dir)
    if image_root:
        report.add("warning", "image root ignored (images are embedded in the parquet shards)", image_root, 1)
    for stem in SPLIT_STEMS:
        if stem not in dataset.splits:
            report.add("warning", "split absent", dataset.root, 1, example=f"no shards for {SPLIT_NAMES[stem]}")
    for stem in tqdm(dataset.splits, desc="validate splits", disable=not progress):
        _validate_parquet_split(dataset, stem, report)
    refs: list[str] = []
    for half in (0, 1):
        stems = [s for s in dataset.splits if split_halves(s)[1] == half]
        if not stems:
            continue
        try:
            corpus = dataset._half_corpus(half)
        except DataFormatError as err:
            report.add("error", "corpus cannot be derived", dataset.source(stems[0]), 1, example=str(err))
            continue
        names = " + ".join(SPLIT_NAMES[s] for s in stems)
        report.stats[f"corpus of product half {half} (derived from {names})"] = {"products": len(corpus)}
        report.add("warning", f"no corpus_{half + 1}.json in the parquet layout: corpus derived from the rows of "
                              f"{names}", dataset.root, 1)
        refs += corpus["image_local"].dropna().tolist()
    to_decode = sorted(refs) if decode_limit == 0 else sorted(refs)[:: max(1, -(-len(refs) // decode_limit))]
    resolver = dataset.image_resolver()
    bad: dict[str, list[str]] = {"missing": [], "unreadable": []}
    for ref in tqdm(to_decode, desc="decode images", disable=not progress):
        _, status = resolver.load(ref)
        if status:
            bad["missing" if status == 1 else "unreadable"].append(ref)
    for kind, found in bad.items():
        if found:
            report.add("error", f"{kind} images", resolver.where(found[0]), len(found), column="image",
                       example=f"{found[0]} (decoded {len(to_decode):,} of {len(refs):,} products' images)")
    report.stats["images"] = {"products": len(refs), "decoded": len(to_decode), "missing": len(bad["missing"]),
                              "unreadable": len(bad["unreadable"])}
    return report


def _validate_parquet_split(dataset, stem: str, report: ValidationReport) -> None:
    try:
        split = dataset.parquet_split(stem)
    except (DataFormatError, OSError, pa.ArrowInvalid) as err:
        report.add("error", "unreadable parquet shards", dataset.source(stem), 1, example=str(err))
        return
    path = dataset.source(stem)
    schema = split._parquet[0].schema_arrow
    for name in ("query", "product_id", "position", "title", "score_linear", "image"):
        if name not in schema.names:
            report.add("error" if name in REQUIRED_COLUMNS + ("score_linear",) else "warning", "missing column",
                       path, 1, column=name)
    if any(c not in schema.names for c in REQUIRED_COLUMNS):
        return
    for name in ("product_id", "query_id", "pair_id"):
        if name in schema.names and not any(ok(schema.field(name).type) for ok in _ID_TYPES_OK):
            report.add("error", "id column neither string nor integer (digits may be lost)", path, 1, column=name,
                       example=str(schema.field(name).type))
    columns = [c for c in split.columns if c != "image" and (c in REQUIRED_COLUMNS or c in INT_COLUMNS + FLOAT_COLUMNS
                                                              or c == "title")]
    frame = split.frame(columns)
    report.stats[SPLIT_NAMES[stem]] = {"rows": len(frame), "shards": len(split.files),
                                       "row groups": len(split._groups), "queries": int(frame["query"].nunique()),
                                       "products": int(frame["product_id"].nunique())}
    for name in ("query", "product_id"):
        report.add("error", "empty values", path, frame[name].isna().to_numpy(), column=name)
    for name, test in (("position", lambda v: v < 1), ("score_linear", lambda v: (v < 1) | (v > 100)),
                       ("score_reciprocal", lambda v: (v <= 0) | (v > 1))):
        if name in frame.columns:
            values = pd.to_numeric(frame[name], errors="coerce")
            report.add("error", "missing numbers", path, values.isna().to_numpy(), column=name)
            report.add("error", "values out of range", path, test(values).to_numpy(), column=name)
    if "title" in frame.columns:
        report.add("warning", "missing titles", path, frame["title"].isna().to_numpy(), column="title")
    dup = frame.duplicated(["query", "product_id"]).to_numpy()
    report.add("error", "duplicate (query, product) pairs", path, dup, column="product_id",
               example=f"{frame['query'][dup].iloc[0]!r} / {frame['product_id'][dup].iloc[0]}" if dup.any() else "")
    if "image" in schema.names:
        report.add("warning", "rows without image bytes", path, _null_image_bytes(split), column="image")


def _null_image_bytes(split) -> int:
    """Rows whose ``image.bytes`` is null, from the row groups' column statistics (no image is read)."""
    nulls = 0
    for pf in split._parquet:
        meta = pf.metadata
        leaf = next((i for i in range(meta.num_columns) if meta.schema.column(i).path == "image.bytes"), None)
        if leaf is None:
            continue
        for g in range(meta.num_row_groups):
            stats = meta.row_group(g).column(leaf).statistics
            if stats is not None and stats.has_null_count:
                nulls += stats.null_count
    return nulls

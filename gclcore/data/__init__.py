"""The data layer: readers, the split layout, images, parquet, path remapping and validation for Marqo-GS-10M.

Two published layouts are supported:

- **CSV layout** (``marqo-gs-dataset.tar``): four split CSVs ``query_{0,1}_product_id_{0,1}.csv``, the
  corpora ``corpus_1.json`` / ``corpus_2.json`` and per split ``_queries.json``, ``_gt_dev.json`` and
  ``_gt_test.json``. Image paths are the publisher's absolute paths, resolved by basename under a
  user-given image root.
- **Hugging Face parquet layout** (``Marqo/marqo-GS-10M``): splits ``in_domain``, ``novel_query``,
  ``novel_document``, ``zero_shot`` with the encoded image bytes embedded; images are decoded lazily,
  one row group at a time.

Conventions every reader follows:

- ``product_id``, ``query_id`` and ``pair_id`` are strings (published ids exceed int64).
- ``query`` and ``title`` use pandas' default missing-value strings (``"NA"``, ``"null"``, ``""``, ...)
  so that numbers match the published evaluation, which reads the CSVs with plain ``pandas.read_csv``;
  pass ``keep_default_na=False`` for the raw text instead.
- Bad input raises :class:`DataFormatError` naming the file, row and column; nothing is dropped silently.

Start from :func:`open_dataset`: one :class:`Dataset` per folder gives split rows, corpora, companion files
and images, each file read once per process. One module per concern: :mod:`~gclcore.data.dataset`,
:mod:`~gclcore.data.layout` (splits, stems, halves, corpus of a split),
:mod:`~gclcore.data.csv_reader`, :mod:`~gclcore.data.json_files` (corpora, companion files),
:mod:`~gclcore.data.images`, :mod:`~gclcore.data.parquet`, :mod:`~gclcore.data.remap`,
:mod:`~gclcore.data.validation`, :mod:`~gclcore.data.files` (atomic writes) and
:mod:`~gclcore.data.cli` (``python -m gclcore.data validate | remap-images | to-parquet``).
"""

from gclcore.data.cli import main
from gclcore.data.csv_reader import (
                                 FLOAT_COLUMNS,
                                 ID_COLUMNS,
                                 INT_COLUMNS,
                                 PANDAS_NA_STRINGS,
                                 REQUIRED_COLUMNS,
                                 CsvReadReport,
                                 read_split_csv,
)
from gclcore.data.dataset import (
                                 CsvDataset,
                                 Dataset,
                                 FilesDataset,
                                 ParquetDataset,
                                 detect_layout,
                                 files_dataset,
                                 open_dataset,
                                 split_stems,
)
from gclcore.data.errors import DataFormatError, DataWarning, warn_once
from gclcore.data.files import atomic_write, write_csv
from gclcore.data.images import ImageResolver, ImageSource, ImageStatus, decode_image_bytes, image_basename, placeholder
from gclcore.data.json_files import EXPECTED_QRELS, Companion, describe_json, read_companion, read_corpus
from gclcore.data.layout import (
                                 COMPANION_SUFFIXES,
                                 CORPUS_FILES,
                                 CSV_COLUMNS,
                                 SPLIT_CORPUS,
                                 SPLIT_NAMES,
                                 SPLIT_STEMS,
                                 SplitFiles,
                                 canonical_stem,
                                 split_files,
                                 split_halves,
                                 split_stem,
)
from gclcore.data.parquet import (
                                 ParquetImages,
                                 ParquetSplit,
                                 image_ref,
                                 parquet_split_files,
                                 parse_image_ref,
                                 write_parquet_split,
)
from gclcore.data.remap import remap_corpus_images, remap_csv_images, remap_images
from gclcore.data.validation import Finding, ValidationReport, validate

__all__ = [
    "COMPANION_SUFFIXES", "CORPUS_FILES", "CSV_COLUMNS", "EXPECTED_QRELS", "FLOAT_COLUMNS", "ID_COLUMNS", "INT_COLUMNS",
    "PANDAS_NA_STRINGS", "REQUIRED_COLUMNS", "SPLIT_CORPUS", "SPLIT_NAMES", "SPLIT_STEMS",
    "Companion", "CsvDataset", "CsvReadReport", "DataFormatError", "DataWarning", "Dataset", "FilesDataset", "Finding",
    "ImageResolver", "ImageSource", "ImageStatus", "ParquetDataset", "ParquetImages", "ParquetSplit",
    "SplitFiles", "ValidationReport", "atomic_write", "canonical_stem", "decode_image_bytes", "describe_json",
    "detect_layout", "files_dataset", "image_basename", "image_ref", "main", "open_dataset", "parquet_split_files",
    "parse_image_ref", "placeholder", "read_companion", "read_corpus",
    "read_split_csv", "remap_corpus_images", "remap_csv_images", "remap_images", "split_files", "split_halves",
    "split_stem", "split_stems", "validate", "warn_once", "write_csv", "write_parquet_split",
]

"""The data layer: readers, the split layout, images, parquet, path remapping and validation for Marqo-GS-10M.

Three layouts fill the same :class:`Dataset` methods (:func:`open_dataset` detects the first two from a
folder; callers never ask which one they have):

- **CSV layout** (``marqo-gs-dataset.tar``, :class:`CsvDataset`): four split CSVs
  ``query_{0,1}_product_id_{0,1}.csv``, the corpora ``corpus_1.json`` / ``corpus_2.json`` and per split
  ``_queries.json``, ``_gt_dev.json`` and ``_gt_test.json``. Image paths are the publisher's absolute
  paths, resolved by basename under a user-given image root.
- **Hugging Face parquet layout** (``Marqo/marqo-GS-10M``, :class:`ParquetDataset`): splits ``in_domain``,
  ``novel_query``, ``novel_document``, ``zero_shot`` (all, or only some, as in a zero-shot-only release)
  with the encoded image bytes embedded. There is no corpus JSON: a product half's corpus is derived from
  its splits' rows (labelled so in every output); there are no companion files. Images are references
  decoded lazily from their row group (:class:`ParquetImages`).
- **Explicit files** (:func:`files_dataset`, :class:`FilesDataset`): one split CSV and one corpus JSON
  with any names (the publisher's tiny test: ``query_tiny.csv`` + ``corpus_tiny.json``); its one split is
  named by the CSV's stem.

The :class:`Dataset` interface: ``splits``, ``split_id``, ``split_name``, ``resolve_splits``, ``source``
(for messages), ``rows``, ``corpus``, ``corpus_label`` (provenance), ``corpus_digest`` (cache keys),
``companion``, ``ground_truth`` (shipped qrels, or None after one :class:`DataWarning`: callers fall back
to the sampled ground truth) and ``image_resolver`` (an :class:`ImageSource`: ``load(ref) -> (image,
status)``, ``record``, ``warn_placeholders``; picklable for DataLoader workers).

Conventions every reader follows:

- ``product_id``, ``query_id`` and ``pair_id`` are strings (published ids exceed int64).
- ``query`` and ``title`` use pandas' default missing-value strings (``"NA"``, ``"null"``, ``""``, ...)
  so that numbers match the published evaluation, which reads the CSVs with plain ``pandas.read_csv``;
  pass ``keep_default_na=False`` for the raw text instead.
- Bad input raises :class:`DataFormatError` naming the file, row and column; nothing is dropped silently.

Start from :func:`open_dataset`: one :class:`Dataset` per folder gives split rows, corpora, companion files
and images, each file read once per process; a new layout is a new way to fill the same methods, in
:mod:`~gclcore.data.dataset` and nowhere else. One module per concern: :mod:`~gclcore.data.dataset`,
:mod:`~gclcore.data.layout` (splits, stems, halves, corpus of a split),
:mod:`~gclcore.data.csv_reader`, :mod:`~gclcore.data.json_files` (corpora, companion files),
:mod:`~gclcore.data.images`, :mod:`~gclcore.data.parquet`, :mod:`~gclcore.data.remap`,
:mod:`~gclcore.data.validation`, :mod:`~gclcore.data.files` (atomic writes) and
:mod:`~gclcore.data.cli` (``python -m gclcore.data validate | remap-images | to-parquet``).
"""

# The names below load their module on first use (PEP 562), so that a light command (``python -m
# gclcore.metrics`` reading qrels) does not import pandas, Pillow and pyarrow for readers it never calls.
import importlib

_EXPORTS = {  # module -> the names it gives the package
    "cli": "main",
    "csv_reader": "FLOAT_COLUMNS ID_COLUMNS INT_COLUMNS PANDAS_NA_STRINGS REQUIRED_COLUMNS CsvReadReport read_split_csv",
    "dataset": "CsvDataset Dataset FilesDataset ParquetDataset detect_layout files_dataset open_dataset split_stems",
    "errors": "DataFormatError DataWarning warn_once",
    "files": "atomic_write write_csv",
    "images": "ImageResolver ImageSource ImageStatus decode_image decode_image_bytes image_basename placeholder",
    "json_files": "EXPECTED_QRELS Companion describe_json read_companion read_corpus",
    "layout": ("COMPANION_SUFFIXES CORPUS_FILES CSV_COLUMNS SPLIT_CORPUS SPLIT_NAMES SPLIT_STEMS SplitFiles "
               "canonical_stem split_files split_halves split_stem"),
    "parquet": "ParquetImages ParquetSplit image_ref parquet_split_files parse_image_ref write_parquet_split",
    "remap": "remap_corpus_images remap_csv_images remap_images",
    "validation": "Finding ValidationReport validate",
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names.split()}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))

"""The JSON files of a dataset: corpora (``corpus_{1,2}.json``) and the companion files of each split
(``*_queries.json``, ``*_gt_dev.json``, ``*_gt_test.json``), whose schema is sniffed because it is not published.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from gclcore.data.errors import DataFormatError

if TYPE_CHECKING:
    import pandas as pd


def read_corpus(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``corpus_{1,2}.json``: ``{product_id: {"image_local": ..., "title": ..., ...}}``.

    Returns a DataFrame with a string ``product_id`` column first, then one column per product field,
    rows in the file's **key order** (the reference evaluation indexes documents in that order, which
    fixes the order of tied scores). Missing titles are NaN.
    """
    import pandas as pd  # here, not at the top: qrels readers (the metrics command) do without it

    path = Path(path)
    raw = load_json(path)
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


def load_json(path: Path) -> Any:
    """The parsed file: orjson (3-4x faster than the standard library on the Marqo-GS files), or the
    standard library's parser for what orjson refuses (integers beyond 64 bits, NaN / Infinity literals)
    and for its line-and-column error message."""
    import orjson

    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as err:
        raise DataFormatError(path, "file not found") from err
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise DataFormatError(path, f"not UTF-8 text (byte {err.start}): {err.reason}") from err
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


EXPECTED_QRELS = ("{query_id: {product_id: grade}}, {query_id: [product_id, ...]} or a list of records with a "
                  "query id and a product id (and optionally a grade)")
"""The ground-truth schemas :func:`read_companion` recognises (named in fallback warnings)."""

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
    obj = load_json(path)
    shape = describe_json(obj)
    if isinstance(obj, dict) and obj:
        values = list(obj.values())
        if all(isinstance(v, str) for v in values):
            return Companion(str(path), "queries", {str(k): v for k, v in obj.items()}, shape)
        if all(isinstance(v, dict) for v in values) and _NUMBER_TYPES.issuperset(
                map(type, itertools.chain.from_iterable(map(dict.values, values)))):
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


_NUMBER_TYPES = frozenset({int, float})
"""JSON numbers as parsed (bool is a subclass of int, not this type)."""


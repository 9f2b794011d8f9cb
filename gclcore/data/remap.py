"""Rewriting the stored image paths of a dataset in place (``python -m gclcore.data remap-images``).

Prefer resolving at load time (:class:`gclcore.data.images.ImageResolver`); this is for tools that need
the files themselves rewritten. Every write is atomic: an interrupted run leaves each file intact.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from gclcore.data.errors import DataFormatError
from gclcore.data.files import atomic_write
from gclcore.data.images import image_basename
from gclcore.data.json_files import describe_json, load_json


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
    corpus = load_json(path)
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

"""The dataset layout: the four splits, their names, and which query and product halves and corpus each holds.

Marqo-GS-10M splits its queries in two halves (0: training queries, 1: novel queries) and its products in
two halves (0: ``corpus_1.json``, 1: ``corpus_2.json``); a (query, product) row lands in
``query_{query half}_product_id_{product half}.csv``. :func:`split_halves` is the one place that rule
lives; everything else asks it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gclcore.data.errors import DataFormatError

CORPUS_FILES = ("corpus_1.json", "corpus_2.json")
"""The corpus of product half 0 and of product half 1."""


def split_stem(query_half: int, product_half: int) -> str:
    """``query_{query_half}_product_id_{product_half}``: the CSV stem of one (query half, product half) cell."""
    return f"query_{query_half}_product_id_{product_half}"


SPLIT_STEMS = (split_stem(0, 0), split_stem(1, 0), split_stem(0, 1), split_stem(1, 1))
"""The four split CSV stems, in the reference order: in-domain, novel query, novel document, zero-shot."""

SPLIT_NAMES = dict(zip(SPLIT_STEMS, ("in_domain", "novel_query", "novel_document", "zero_shot")))
"""CSV stem -> Hugging Face split name."""


def canonical_stem(split: str) -> str:
    """A CSV stem or a Hugging Face split name -> the CSV stem; anything else raises, listing both."""
    if split in SPLIT_NAMES:
        return split
    stems = {name: stem for stem, name in SPLIT_NAMES.items()}
    if split not in stems:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLIT_STEMS)} "
                         f"or {', '.join(SPLIT_NAMES.values())}")
    return stems[split]


def split_halves(split: str) -> tuple[int, int, str]:
    """``(query half, product half, corpus file)`` of a split (stem or HF name)."""
    stem = canonical_stem(split)
    query_half, product_half = int(stem[len("query_")]), int(stem[-1])
    return query_half, product_half, CORPUS_FILES[product_half]


SPLIT_CORPUS = {stem: split_halves(stem)[2] for stem in SPLIT_STEMS}
"""CSV stem -> the corpus file it is evaluated against (``*_product_id_0`` -> ``corpus_1.json``)."""

COMPANION_SUFFIXES = ("_queries.json", "_gt_dev.json", "_gt_test.json")

CSV_COLUMNS = (
    "query", "product_id", "position", "title", "image_local",
    "pair_id", "score_linear", "score_reciprocal", "no_score", "query_id",
)
"""Column order written by :mod:`gclcore.splits` (the Hugging Face order, ``image`` -> ``image_local``)."""


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
    stem = canonical_stem(stem)
    csv_path = data_dir / f"{stem}.csv"
    if not csv_path.exists():
        raise DataFormatError(csv_path, "split CSV not found",
                              fix=f"point data_dir at the folder holding {stem}.csv (e.g. marqo_gs_full_10m/)")

    def companion(suffix: str) -> Path | None:
        candidate = data_dir / f"{stem}{suffix}"
        return candidate if candidate.exists() else None

    return SplitFiles(stem, csv_path, data_dir / SPLIT_CORPUS[stem], companion("_queries.json"),
                      companion("_gt_dev.json"), companion("_gt_test.json"))

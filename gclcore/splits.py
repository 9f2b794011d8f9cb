"""Multi-split construction: 80/20 queries x 50/50 products -> the four Marqo-GS split files.

From any table of ranked (query, product, position-or-score) rows, :func:`build_splits` writes

- ``query_{a}_product_id_{b}.csv`` for a in {0, 1} (query half) and b in {0, 1} (product half):
  a row lands in the file of its query's half and its product's half;
- ``corpus_1.json`` (product half 0) and ``corpus_2.json`` (product half 1), ``{product_id: {image_local,
  title}}`` in product-id order;
- per split ``_queries.json`` (``{query_id: text}``), ``_gt_dev.json`` and ``_gt_test.json``
  (``{query_id: {product_id: score_linear}}``, the split's queries partitioned between the two).

Query and product halves are drawn by a seeded permutation of the sorted unique values, so the result
is deterministic for a seed and independent of row order. Derived columns follow the published values:
``score_linear = 101 - position`` (floored at 1), ``score_reciprocal = 1 / position``, ``no_score = 1``;
missing ``query_id`` / ``pair_id`` are filled with stable 64-bit hashes rendered as decimal strings.

:func:`check_splits` re-reads a directory and verifies the invariants: no query in both query halves,
no product in both product halves, each pair in exactly one split, each split product in its corpus,
fractions within tolerance.

Command line::

    python -m gclcore.splits build RANKED.csv OUT_DIR [--seed N] [--query-frac 0.8] [--product-frac 0.5]
    python -m gclcore.splits check DATA_DIR
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from gclcore.data import (
    CORPUS_FILES,
    CSV_COLUMNS,
    SPLIT_CORPUS,
    SPLIT_NAMES,
    SPLIT_STEMS,
    DataFormatError,
    atomic_write,
    open_dataset,
    read_split_csv,
    split_halves,
    split_stem,
    write_csv,
)


@dataclass
class SplitSummary:
    """Counts of a built (or checked) split directory, for reports and the 2x2 split figure."""

    rows: dict[str, int] = field(default_factory=dict)
    queries: dict[str, int] = field(default_factory=dict)
    products: dict[str, int] = field(default_factory=dict)
    corpus_size: dict[str, int] = field(default_factory=dict)
    query_fraction: float = 0.0
    product_fraction: float = 0.0
    checks: dict[str, int] = field(default_factory=dict)
    """Invariant name -> number of violations (all 0 when :func:`check_splits` returns)."""

    def to_frame(self) -> pd.DataFrame:
        """One row per split: stem, name, rows, queries, products, corpus file and size."""
        return pd.DataFrame([{
            "split": stem, "name": SPLIT_NAMES[stem], "rows": self.rows.get(stem, 0),
            "queries": self.queries.get(stem, 0), "products": self.products.get(stem, 0),
            "corpus": SPLIT_CORPUS[stem], "corpus_size": self.corpus_size.get(SPLIT_CORPUS[stem], 0),
        } for stem in SPLIT_STEMS])


def stable_id(text: str) -> str:
    """A stable 64-bit id for a string, as a decimal string (blake2b; independent of PYTHONHASHSEED)."""
    return str(int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big"))


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def assign_halves(values: pd.Series, fraction: float, seed: int) -> pd.Series:
    """Map each distinct value to half 0 (``round(fraction * n)`` of them) or half 1.

    The distinct values are sorted, then permuted by ``numpy.random.RandomState(seed)``: the split does
    not depend on row order, only on the set of values and the seed.
    """
    unique = np.sort(pd.unique(values.astype(object)).astype(str))
    order = np.random.RandomState(seed).permutation(len(unique))
    half = np.ones(len(unique), dtype=np.int8)
    half[order[: int(round(fraction * len(unique)))]] = 0
    return pd.Series(half, index=unique)


def prepare_ranked(frame: pd.DataFrame, source: str = "<frame>") -> pd.DataFrame:
    """Complete a ranked table to the split CSV columns.

    Needs ``query`` and ``product_id`` and either ``position`` or ``score_linear`` (positions are then
    derived per query by descending score, ties by row order). Adds whatever of ``score_linear``,
    ``score_reciprocal``, ``no_score``, ``query_id``, ``pair_id``, ``title``, ``image_local`` is missing.

    Raises:
        DataFormatError: missing columns, missing values, positions < 1 or duplicate (query, product) rows.
    """
    frame = frame.copy()
    for name in ("query", "product_id"):
        if name not in frame.columns:
            raise DataFormatError(source, f"missing required column {name!r}", column=name)
        missing = frame[name].isna().to_numpy()
        if missing.any():
            raise DataFormatError(source, f"{int(missing.sum())} missing value(s)", column=name,
                                  row=int(np.flatnonzero(missing)[0]) + 1)
    if "position" not in frame.columns:
        if "score_linear" not in frame.columns:
            raise DataFormatError(source, "need a 'position' or a 'score_linear' column", column="position")
        frame["position"] = (frame.groupby("query", sort=False)["score_linear"]
                             .rank(method="first", ascending=False).astype(np.int64))
    bad = (frame["position"] < 1).to_numpy()
    if bad.any():
        raise DataFormatError(source, "positions must be >= 1", column="position", row=int(np.flatnonzero(bad)[0]) + 1)
    duplicated = frame.duplicated(["query", "product_id"]).to_numpy()
    if duplicated.any():
        first = int(np.flatnonzero(duplicated)[0])
        raise DataFormatError(source, f"{int(duplicated.sum())} duplicate (query, product) row(s), e.g. "
                                      f"{frame['query'].iloc[first]!r} / {frame['product_id'].iloc[first]}",
                              row=first + 1, fix="keep one row per (query, product) pair")
    position = frame["position"].to_numpy(dtype=np.int64)
    if "score_linear" not in frame.columns:
        frame["score_linear"] = np.maximum(101 - position, 1)
    if "score_reciprocal" not in frame.columns:
        frame["score_reciprocal"] = 1.0 / position
    if "no_score" not in frame.columns:
        frame["no_score"] = np.ones(len(frame), dtype=np.int64)
    if "query_id" not in frame.columns:
        ids = {q: stable_id(q) for q in pd.unique(frame["query"])}
        frame["query_id"] = frame["query"].map(ids)
    if "pair_id" not in frame.columns:
        q_codes = pd.factorize(frame["query_id"].astype(str), sort=True)[0].astype(np.uint64)
        p_codes = pd.factorize(frame["product_id"].astype(str), sort=True)[0].astype(np.uint64)
        frame["pair_id"] = _splitmix64((q_codes << np.uint64(32)) | p_codes).astype(str)
    for name in ("title", "image_local"):
        if name not in frame.columns:
            frame[name] = np.nan
    return frame[list(CSV_COLUMNS) + [c for c in frame.columns if c not in CSV_COLUMNS]]


def build_splits(ranked: str | os.PathLike | pd.DataFrame, out_dir: str | os.PathLike, *, seed: int = 0,
                 query_fraction: float = 0.8, product_fraction: float = 0.5, dev_fraction: float = 0.5,
                 progress: bool = True) -> SplitSummary:
    """Split a ranked table (a CSV path or a DataFrame) into the four-split layout in ``out_dir``.

    Returns the :class:`SplitSummary` after :func:`check_splits` has verified the invariants.
    """
    from tqdm.auto import tqdm

    source = str(ranked) if not isinstance(ranked, pd.DataFrame) else "<frame>"
    frame = read_split_csv(ranked) if not isinstance(ranked, pd.DataFrame) else ranked
    frame = prepare_ranked(frame, source)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    query_half = frame["query"].map(assign_halves(frame["query"], query_fraction, seed)).to_numpy()
    product_halves = assign_halves(frame["product_id"], product_fraction, seed + 1)
    product_half = frame["product_id"].astype(str).map(product_halves).to_numpy()
    products = frame.drop_duplicates("product_id")[["product_id", "image_local", "title"]]
    products = products.assign(half=products["product_id"].astype(str).map(product_halves))
    for b, corpus_name in enumerate(CORPUS_FILES):
        part = products[products["half"] == b].sort_values("product_id")
        corpus = {str(pid): {"image_local": _json_value(img), "title": _json_value(title)}
                  for pid, img, title in zip(part["product_id"], part["image_local"], part["title"])}
        with atomic_write(out / corpus_name) as fh:
            json.dump(corpus, fh, ensure_ascii=False)
    for stem in tqdm(SPLIT_STEMS, desc="write splits", disable=not progress):
        a, b, _ = split_halves(stem)
        part = frame[(query_half == a) & (product_half == b)]
        write_csv(part, out / f"{stem}.csv")
        _write_companions(part, out / stem, np.random.RandomState(seed + 2 + 10 * a + b), dev_fraction)
    return check_splits(out, query_fraction=query_fraction, product_fraction=product_fraction,
                        expected_pairs=set(zip(frame["query"], frame["product_id"].astype(str))))


def _json_value(value):
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else value


def _write_companions(part: pd.DataFrame, prefix: Path, rng: np.random.RandomState, dev_fraction: float) -> None:
    queries = part.drop_duplicates("query_id").sort_values("query_id")
    with atomic_write(f"{prefix}_queries.json") as fh:
        json.dump(dict(zip(queries["query_id"], queries["query"])), fh, ensure_ascii=False)
    ids = queries["query_id"].to_numpy()
    dev = set(ids[rng.permutation(len(ids))[: int(round(dev_fraction * len(ids)))]])
    qrels: dict[str, dict[str, dict[str, int]]] = {"dev": {}, "test": {}}
    for qid, pid, score in zip(part["query_id"], part["product_id"], part["score_linear"]):
        qrels["dev" if qid in dev else "test"].setdefault(str(qid), {})[str(pid)] = int(score)
    for name, judged in qrels.items():
        with atomic_write(f"{prefix}_gt_{name}.json") as fh:
            json.dump(judged, fh)


def check_splits(data_dir: str | os.PathLike, *, query_fraction: float = 0.8, product_fraction: float = 0.5,
                 tolerance: float = 0.05, expected_pairs: set | None = None) -> SplitSummary:
    """Verify the split invariants of a four-split directory and return its counts.

    Every invariant is counted into ``summary.checks`` (for display): a query in both query halves, a
    product in both product halves, a pair in two splits, a split product absent from its corpus, a lost
    or extra pair (when ``expected_pairs`` is given), a query / product fraction further than
    ``tolerance`` from its target.

    Raises:
        DataFormatError: on any violation, naming the first violated invariant and an offending id.
    """
    data_dir = Path(data_dir)
    summary = SplitSummary()
    dataset = open_dataset(data_dir)
    frames = {stem: dataset.rows(stem, ["query", "product_id"]) for stem in SPLIT_STEMS}
    corpora = {name: set(dataset.corpus(split_stem(0, half))["product_id"]) for half, name in enumerate(CORPUS_FILES)}
    for name, ids in corpora.items():
        summary.corpus_size[name] = len(ids)
    queries = {a: set() for a in (0, 1)}
    products = {b: set() for b in (0, 1)}
    pairs: set = set()
    violations: list[tuple[str, Path, str]] = []  # (check, file, example) in order of discovery

    def record(check: str, found: set, file: Path, describe) -> None:
        summary.checks[check] = summary.checks.get(check, 0) + len(found)
        if found:
            violations.append((check, file, describe(sorted(found)[0])))

    for stem, frame in frames.items():
        a, b, _ = split_halves(stem)
        path = Path(dataset.source(stem))
        queries[a].update(frame["query"])
        products[b].update(frame["product_id"])
        summary.rows[stem] = len(frame)
        summary.queries[stem] = int(frame["query"].nunique())
        summary.products[stem] = int(frame["product_id"].nunique())
        record("split products absent from their corpus", set(frame["product_id"]) - corpora[SPLIT_CORPUS[stem]],
               path, lambda pid, corpus=SPLIT_CORPUS[stem]: f"{pid} not in {corpus}")
        split_pairs = set(zip(frame["query"], frame["product_id"]))
        record("pairs in more than one split", pairs & split_pairs, path, repr)
        pairs |= split_pairs
    record("queries in both query halves", queries[0] & queries[1], data_dir, repr)
    record("products in both product halves", products[0] & products[1], data_dir, str)
    if expected_pairs is not None:
        record("input pairs in no split", expected_pairs - pairs, data_dir, repr)
        record("unexpected pairs", pairs - expected_pairs, data_dir, repr)
    n_queries = len(queries[0]) + len(queries[1])
    n_products = sum(len(corpora[name]) for name in CORPUS_FILES)
    summary.query_fraction = len(queries[0]) / max(n_queries, 1)
    summary.product_fraction = len(corpora[CORPUS_FILES[0]]) / max(n_products, 1)
    for label, got, want in (("query", summary.query_fraction, query_fraction),
                             ("product", summary.product_fraction, product_fraction)):
        off = abs(got - want) > tolerance
        summary.checks[f"{label} fraction off target by > {tolerance}"] = int(off)
        if off:
            violations.append((f"{label} half-0 fraction", data_dir, f"{got:.3f} vs target {want:.3f}"))
    if violations:
        check, file, example = violations[0]
        raise DataFormatError(file, f"{check}: {summary.checks.get(check, 1)} violation(s), e.g. {example} "
                                    f"(all checks: {summary.checks})")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gclcore.splits", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_build = sub.add_parser("build", help="build the four-split layout from a ranked table")
    p_build.add_argument("ranked")
    p_build.add_argument("out_dir")
    p_build.add_argument("--seed", type=int, default=0)
    p_build.add_argument("--query-frac", type=float, default=0.8)
    p_build.add_argument("--product-frac", type=float, default=0.5)
    p_check = sub.add_parser("check", help="verify the split invariants of a directory")
    p_check.add_argument("data_dir")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            summary = build_splits(args.ranked, args.out_dir, seed=args.seed, query_fraction=args.query_frac,
                                   product_fraction=args.product_frac)
        else:
            summary = check_splits(args.data_dir)
    except DataFormatError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary.to_frame().to_string(index=False))
    print(json.dumps({k: v for k, v in asdict(summary).items() if k.endswith("fraction")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

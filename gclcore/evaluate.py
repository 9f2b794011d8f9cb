"""The Marqo-GS evaluation protocol (marqo-ai/GCL ``evals/eval_gs_v1.py``), reproduced and made fast.

Per split (the book's methods page, "Evaluation"):

1. read the split CSV; query key = ``query + "_{!@#~}_"`` (queries are identified by their text);
2. grades: ``trunc((s - min s) / (max s - min s) * 99 + 1)`` over the whole CSV in float64, same
   operation order (so 28, 55, 60 map to 27, 54, 59 when s spans 1..100); all 1 if s is constant;
3. test queries: ``top_q`` keys drawn without replacement with probability proportional to their summed
   grade, by ``numpy.random.RandomState(1).choice`` over the keys in sorted order (bit-identical to the
   reference's ``DataFrame.sample(weights=..., random_state=1)``); reused from ``gt_results.json`` if the
   output folder already has one, so every model sees the same queries;
4. qrels: each sampled query's rows of this split, best grade first, at most ``top_k``;
5. embeddings with multi-field fusion (:mod:`gclcore.fusion`): the query side from the query's first
   CSV row, the document side from every entry of the paired corpus JSON in key order;
6. exact cosine top-``top_k`` retrieval over the whole corpus (:mod:`gclcore.retrieval`);
7. all metrics (:mod:`gclcore.metrics`) and the reference's outputs: ``gt_results.json``,
   ``retrieval.json``, ``output.json``, ``output.csv``, plus ``per_query.csv`` for the book.

``query_set="dev"`` / ``"test"`` use the split's shipped ``_gt_dev.json`` / ``_gt_test.json`` instead of
the sampled queries (grades as shipped); when the file is absent (always, in the parquet layout), not
understood or keyed by unknown query ids, the sampled queries are used after one warning naming it.
``output.json``'s ``ground_truth`` records which was used.

Command line (no ``--model``: the embedded default model)::

    python -m gclcore.evaluate --data-dir DIR [--image-root DIR] [--split all] [--model ViT-B-32
        --pretrained TAG_OR_PATH] [--precision fp16] [--batch-size 1024] [--context-length 77]
        [--lhs-fields query=1] [--rhs-fields image_local=1] [--top-q 2000] [--top-k 1000]
        [--output-dir results/]
    python -m gclcore.evaluate --test-csv query_tiny.csv --corpus corpus_tiny.json --image-root images ...

The second form evaluates one split CSV against one corpus JSON, of any names, and writes straight into
``--output-dir``. The published script's flags are accepted under their own spellings too, so its shell
scripts run unchanged with ``python -m gclcore.evaluate`` in its place (``--help`` lists them).
"""

from __future__ import annotations

import argparse
import ast
import functools
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd
import torch

from gclcore import image_store, metrics
from gclcore.data import DataFormatError, Dataset, ImageResolver, atomic_write, open_dataset, warn_once
from gclcore.data.images import DEFAULT_MAX_BAD, ImageStatus
from gclcore.fusion import Field, Side, format_fields, parse_fields
from gclcore.models import PRECISIONS
from gclcore.retrieval import exact_topk

QUERY_SUFFIX = "_{!@#~}_"
MAX_SAMPLED_QUERIES = 20_000


class TextImageEncoder(Protocol):
    """What the evaluator needs from a model (implemented by :class:`gclcore.models.Encoder` and by the
    trainer's cached-feature encoder)."""

    def encode_text(self, texts: list[str]) -> torch.Tensor: ...

    def encode_image_files(self, paths: list[str], resolver: ImageResolver) -> torch.Tensor: ...

    def checksum(self) -> str: ...


# --------------------------------------------------------------------------------------------------
# Steps 1-4: keys, grades, sampling, qrels
# --------------------------------------------------------------------------------------------------

def query_keys(frame: pd.DataFrame, left_keys: tuple[str, ...] = ("query",)) -> pd.Series:
    """``concat_c (str(row[c]) + "_{!@#~}_")`` over the left keys (the reference's query identity)."""
    key = pd.Series("", index=frame.index, dtype=object)
    for column in left_keys:
        key = key + frame[column].astype(object).map(str) + QUERY_SUFFIX
    return key


def reference_grades(scores: pd.Series | np.ndarray) -> np.ndarray:
    """The reference's grade transform, literally: float64 ``(s - min) / (max - min) * 99 + 1``,
    truncated toward zero; all ones when the column is constant."""
    s = np.asarray(scores, dtype=np.float64)
    lo, hi = s.min(), s.max()
    if hi == lo:
        return np.ones(len(s), dtype=np.int64)
    grades = ((s - lo) / (hi - lo) * 99 + 1).astype(np.int64)
    if grades.min() < 1:
        raise AssertionError("grade transform produced a grade below 1")
    return grades


def sample_queries(keys: pd.Series, grades: np.ndarray, top_q: int = 2000, seed: int = 1) -> list[str]:
    """Weighted sampling of test queries without replacement (see the module docstring, step 3).

    Returns the sampled keys ordered by summed grade, descending (ties by key, for determinism).
    ``top_q = -1`` takes every query.
    """
    sums = pd.Series(grades, index=keys.to_numpy()).groupby(level=0, sort=True).sum()
    n = len(sums) if top_q == -1 else min(top_q, len(sums))
    if n > MAX_SAMPLED_QUERIES:
        raise ValueError(f"top_q {n} exceeds the reference's limit of {MAX_SAMPLED_QUERIES} queries")
    weights = sums.to_numpy(dtype=np.float64)
    chosen = np.random.RandomState(seed).choice(len(sums), size=n, replace=False, p=weights / weights.sum())
    picked = sums.iloc[chosen]
    return picked.sort_index().sort_values(ascending=False, kind="stable").index.tolist()


def build_qrels(frame: pd.DataFrame, keys: pd.Series, grades: np.ndarray, sampled: list[str],
                top_k: int = 1000) -> dict[str, dict[str, int]]:
    """``{query_key: {product_id: grade}}``: each sampled query's rows, best grade first, at most top_k."""
    rows = pd.DataFrame({"key": keys.to_numpy(), "product_id": frame["product_id"].astype(str).to_numpy(),
                         "grade": grades})
    rows = rows[rows["key"].isin(set(sampled))].sort_values("grade", ascending=False, kind="stable")
    rows = rows.groupby("key", sort=False).head(top_k)
    qrels: dict[str, dict[str, int]] = {key: {} for key in sampled}
    for key, pid, grade in zip(rows["key"], rows["product_id"], rows["grade"]):
        qrels[key][pid] = int(round(grade))
    return qrels


# --------------------------------------------------------------------------------------------------
# Steps 5-7
# --------------------------------------------------------------------------------------------------

def embed_items(encoder: TextImageEncoder, table: pd.DataFrame, fields: tuple[Field, ...],
                resolver: ImageResolver | None, first_field_always: bool = True, cached=None,
                source: str = "<items>", side: str = "document") -> torch.Tensor:
    """Fused embeddings of a table's items (rows) over ``fields`` (step 5).

    Texts get the encoder's prefix for ``side`` (``"query"`` or ``"document"``; its ``text_prefixes``, e.g.
    E5's ``query: `` / ``passage: ``), missing ones included, as the model was trained to see them.

    ``cached(field_name, compute)`` may memoise one field's (unfused) embeddings, so configurations that
    share a field (image only; image 0.9 + title 0.1) embed it once. An image field's name then carries a
    digest of its images' fingerprints (size and modification time of each file), so images restored or
    replaced since are embedded again; embeddings reused from the cache count the image files still absent
    on ``resolver``, as embedding them would (unreadable ones are counted when they are embedded).
    """
    caching = cached is not None
    cached = cached or (lambda name, compute: compute())
    embeddings, present = {}, {}
    for f in fields:
        if f.name not in table.columns:
            raise DataFormatError(source, f"field {f.name!r} not available (have {', '.join(table.columns)})",
                                  column=f.name)
        values = table[f.name]
        present[f.name] = torch.tensor(values.notna().to_numpy())
        if f.is_image:
            if resolver is None:
                raise ValueError(f"field {f.name!r} is an image field: pass an image root (--image-root)")
            # a missing value becomes "", which the resolver loads as MISSING (the placeholder)
            stored = values.fillna("").astype(str).tolist()
            embeddings[f.name] = (_cached_images(encoder, f.name, stored, resolver, cached) if caching
                                  else encoder.encode_image_files(stored, resolver))
        else:
            prefix = getattr(encoder, "text_prefixes", {}).get(side, "")
            texts = [prefix + text for text in values.astype(object).map(str).tolist()]
            embeddings[f.name] = cached(f.name, functools.partial(encoder.encode_text, texts))
    if first_field_always:  # the published evaluation never zeroes the first field
        present[fields[0].name] = torch.ones(len(table), dtype=torch.bool)
    return Side(tuple(fields), embeddings, present).fused()


def _cached_images(encoder: TextImageEncoder, name: str, stored: list[str], resolver, cached) -> torch.Tensor:
    """One image field's embeddings through ``cached``, keyed by the images' fingerprints (see
    :func:`embed_items`)."""
    stamps = np.asarray(resolver.fingerprints(stored), dtype=np.int64).reshape(-1, 2)
    embedded = []

    def compute():
        embedded.append(True)
        return encoder.encode_image_files(stored, resolver)

    value = cached(f"{name}-{hashlib.sha256(stamps.tobytes()).hexdigest()[:12]}", compute)
    if not embedded:  # reused from the cache: count the absent files as embedding them would
        resolver.record_batch(stored, np.where(stamps[:, 0] < 0, ImageStatus.MISSING, ImageStatus.OK))
        resolver.check_bad_fraction()
    return value


@runtime_checkable
class LexicalRetriever(Protocol):
    """A model that ranks texts itself (BM25, :mod:`gclcore.bm25`) instead of embedding them."""

    def search(self, queries: list[str], documents: list[str], k: int, progress: bool = False): ...

    def checksum(self) -> str: ...


def lexical_texts(table: pd.DataFrame, fields: tuple[Field, ...]) -> list[str]:
    """The one text field a lexical retriever ranks by (missing values are empty texts)."""
    if len(fields) != 1 or fields[0].is_image or fields[0].name not in table.columns:
        raise ValueError(f"a lexical model ranks one text field per side, e.g. --rhs-fields title; got "
                         f"{format_fields(fields)!r}")
    return table[fields[0].name].fillna("").astype(str).tolist()


def _cached(path: Path | None, compute):
    if path is None:
        return compute()
    if path.exists():
        return torch.load(path, map_location="cpu", weights_only=True)
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, binary=True) as fh:
        torch.save(value, fh)
    return value


@dataclass
class SplitResult:
    """One evaluated split: the summary row, all metrics, per-query values and where files went."""

    split: str
    summary: dict[str, float]
    metrics: dict[str, float]
    per_query: pd.DataFrame
    output_dir: Path
    timings: dict[str, float] = field(default_factory=dict)


def evaluate_split(encoder: TextImageEncoder, data: str | os.PathLike | Dataset, split: str,
                   output_dir: str | os.PathLike, *, image_root: str | os.PathLike | None = None,
                   lhs_fields: tuple[Field, ...] = (Field("query"),),
                   rhs_fields: tuple[Field, ...] = (Field("image_local"),), weight_key: str = "score_linear",
                   top_q: int = 2000, top_k: int = 1000, query_set: str = "sampled",
                   ks: tuple[int, ...] | None = None, cache_dir: str | os.PathLike | None | bool = None,
                   progress: bool = True, corpus_subset: np.ndarray | None = None,
                   search_device: str | None = None, max_bad_images: float = DEFAULT_MAX_BAD,
                   save_rankings: bool = True, image_store_dir: str = "") -> SplitResult:
    """Evaluate one split (a CSV stem or HF split name) and write the reference outputs to ``output_dir``.

    ``data`` is a dataset folder or a :class:`gclcore.data.Dataset`; ``image_root`` (with a folder) is
    where its images are. Each field's embeddings are cached under ``cache_dir`` (default
    ``output_dir/cache``), keyed by the model checksum, the field and the data (the sampled queries, or
    the corpus file and image root), so another fusion of the same fields embeds nothing again;
    ``cache_dir=False`` turns caching off (weights that keep changing).
    ``search_device`` runs the exact retrieval there (default: CUDA when available). ``corpus_subset`` (row
    indices into the split's corpus, e.g. :func:`dev_subcorpus`) searches only those
    products, as if the corpus held just them: not the published protocol, a bounded in-training check.
    Missing or unreadable images are embedded as grey placeholders, counted in ``output.json`` and warned
    about; more than ``max_bad_images`` of them (a fraction) stops the evaluation with an error instead.
    Images come from the dataset's image store for the encoder's transform when there is one
    (:mod:`gclcore.image_store`; ``image_store_dir``: where stores are, ``"none"``: decode the originals):
    the same pixels, without decoding.
    ``save_rankings=False`` leaves out ``retrieval.json`` (every query's top ``top_k`` products with their
    scores: the largest file, ~40 MB per 1,000 queries, needed only to recompute the metrics with
    ``--metric-only`` or to show ranked examples); the metrics are the same.
    """
    if top_k < 1 or (top_q < 1 and top_q != -1):
        raise ValueError(f"top_k must be >= 1 and top_q >= 1 (or -1: every query), not top_k={top_k}, top_q={top_q}")
    dataset = open_dataset(data, image_root)
    split = dataset.split_id(split)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    frame = dataset.rows(split)
    keys = query_keys(frame, tuple(f.name for f in lhs_fields))
    qrels, truth = _load_or_build_qrels(frame, keys, dataset, split, out, weight_key, top_q, top_k, query_set,
                                        tuple(f.name for f in lhs_fields))
    sampled = list(qrels)
    timings["qrels_s"] = time.perf_counter() - t0

    resolver = _image_source(dataset, lhs_fields + rhs_fields, max_bad_images)
    if resolver is not None and any(f.is_image for f in rhs_fields + lhs_fields):
        resolver = image_store.source_for(dataset, resolver, getattr(encoder, "preprocess", None), image_store_dir)
    cache = None if cache_dir is False else Path(cache_dir) if cache_dir is not None else out / "cache"

    checksum = encoder.checksum()

    def field_cache(kind: str, tag: str):
        """Memoise each field's embeddings as ``<cache>/<kind>-<model>-<field>-<data tag>.pt``."""
        def cached(name, compute):
            return _cached(None if cache is None else cache / f"{kind}-{checksum}-{name}-{tag}.pt", compute)
        return cached

    t1 = time.perf_counter()
    first_rows = frame.assign(_key=keys.to_numpy()).drop_duplicates("_key").set_index("_key")
    query_table = first_rows.loc[[k for k in sampled if k in first_rows.index]]
    if len(query_table) != len(sampled):  # dev/test ground truth may name queries absent from the CSV
        missing = [k for k in sampled if k not in first_rows.index]
        raise DataFormatError(dataset.source(split), f"{len(missing)} ground-truth queries not in the split, e.g. {missing[0]!r}")
    corpus = dataset.corpus(split)
    if corpus_subset is not None:  # a sub-corpus (dev_subcorpus): those rows, in corpus order, cached apart
        rows = np.unique(np.asarray(corpus_subset, dtype=np.int64))
        corpus = corpus.iloc[rows].reset_index(drop=True)
        cache = None if cache is None else cache / f"subset-{hashlib.sha256(rows.tobytes()).hexdigest()[:16]}"
    if isinstance(encoder, LexicalRetriever):  # BM25: the ranking straight from the texts
        t2 = time.perf_counter()
        scores, index = encoder.search(lexical_texts(query_table, lhs_fields), lexical_texts(corpus, rhs_fields),
                                       top_k, progress=progress)
    else:
        query_tag = hashlib.sha256("\n".join(sampled).encode()).hexdigest()[:16]
        query_emb = embed_items(encoder, query_table, lhs_fields, resolver, cached=field_cache("queries", query_tag),
                                source=str(dataset.source(split)), side="query")
        corpus_emb = embed_items(encoder, corpus, rhs_fields, resolver,
                                 cached=field_cache("corpus", dataset.corpus_digest(split)),
                                 source=dataset.corpus_label(split))
        timings["embed_s"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        scores, index = exact_topk(query_emb, corpus_emb, top_k, progress=progress, device=search_device)
    timings["search_s"] = time.perf_counter() - t2
    doc_ids = corpus["product_id"].astype(str).to_numpy()
    if save_rankings:
        _write_json(out / "retrieval.json", {key: dict(zip(doc_ids[index[i]].tolist(), scores[i].astype(np.float64).tolist()))
                                             for i, key in enumerate(sampled)})

    t3 = time.perf_counter()
    position = pd.Series(np.arange(len(doc_ids)), index=doc_ids)
    triples = [(qi, pid, g) for qi, key in enumerate(sampled) for pid, g in qrels[key].items()]
    judged_query = np.fromiter((t[0] for t in triples), dtype=np.int64, count=len(triples))
    judged_doc = position.reindex([t[1] for t in triples]).fillna(-1).to_numpy(dtype=np.int64)
    judged_grade = np.fromiter((t[2] for t in triples), dtype=np.float64, count=len(triples))
    id_rank = np.empty(len(doc_ids), dtype=np.int64)
    id_rank[np.argsort(doc_ids, kind="stable")] = np.arange(len(doc_ids))
    integrity = {"duplicate_pairs": _duplicate_pairs(frame, keys, dataset.source(split)),
                 "judged_not_in_corpus": int((judged_doc < 0).sum())}
    if integrity["judged_not_in_corpus"]:
        warn_once(f"{dataset.source(split)}: {integrity['judged_not_in_corpus']:,} judged (query, product) pairs of "
                  f"the {len(sampled):,} evaluated queries name products absent from the searched corpus "
                  f"({dataset.corpus_label(split)}{', a sub-corpus' if corpus_subset is not None else ''}): they "
                  f"count in the ideal ranking (nDCG's IDCG, recall) but can never be retrieved, as in the "
                  f"reference evaluation")
    ranked = metrics.ranked_grades_from_topk(index, scores, judged_query, judged_doc, judged_grade, id_rank, sampled)
    ks = ks or metrics.published_ks(top_k)
    means = metrics.mean_metrics(ranked, ks)
    summary = metrics.summary_row(means, ks)
    per_query = metrics.per_query_frame(ranked, ks)
    timings["metrics_s"] = time.perf_counter() - t3
    # the published output.json (its aggregation script reads every top-level entry as a dict of
    # metrics), with this evaluation's provenance as one more such dict
    provenance = {"split": split, "queries": len(sampled), "corpus": dataset.corpus_label(split), "ground_truth": truth,
                  **integrity,
                  "corpus_size": len(corpus), "sub_corpus": corpus_subset is not None,
                  "images_substituted": {"missing": getattr(resolver, "missing_count", 0),
                                         "unreadable": getattr(resolver, "unreadable_count", 0)},
                  "lhs_fields": format_fields(lhs_fields), "rhs_fields": format_fields(rhs_fields),
                  "query_set": query_set, "top_q": top_q, "top_k": top_k, "model_checksum": checksum,
                  "timings_s": {k: round(v, 3) for k, v in timings.items()}}
    _write_json(out / "output.json", {**metrics.reference_output(means, ks), "gclcore": provenance})
    pd.DataFrame([summary]).to_csv(out / "output.csv", index=False)
    per_query.to_csv(out / "per_query.csv")
    if resolver is not None:
        resolver.warn_placeholders("embedded")
    return SplitResult(split, summary, means, per_query, out, timings)


def judged_products(dataset: Dataset, split: str, *, query_set: str = "dev",
                    lhs_fields: tuple[Field, ...] = (Field("query"),), weight_key: str = "score_linear",
                    top_q: int = 2000, top_k: int = 1000) -> set[str]:
    """Every product id the qrels of :func:`evaluate_split` (same arguments) judge for ``split``."""
    import tempfile

    split, frame = dataset.split_id(split), dataset.rows(split)
    keys = query_keys(frame, tuple(f.name for f in lhs_fields))
    with tempfile.TemporaryDirectory() as scratch:  # the qrels' own files go nowhere
        qrels, _ = _load_or_build_qrels(frame, keys, dataset, split, Path(scratch), weight_key, top_q, top_k,
                                        query_set, tuple(f.name for f in lhs_fields))
    return {pid for judged in qrels.values() for pid in judged}


def dev_subcorpus(dataset: Dataset, split: str, size: int, *, seed: int = 0, **qrels_options) -> np.ndarray:
    """A fixed sub-corpus of ``split`` for bounded evaluation during training: sorted row indices into
    ``dataset.corpus(split)``.

    It holds every product the evaluation's qrels judge (:func:`judged_products`; ``qrels_options`` are
    its keyword arguments) plus distractors drawn without replacement from the rest of the corpus by
    ``numpy.random.default_rng(seed)``, up to ``size`` products in all; the same arguments give the same
    rows. ``size <= 0`` or at least the corpus size: every row (the full corpus). When more than ``size``
    products are judged, all of them are kept (and no distractor).
    """
    corpus = dataset.corpus(split)
    if size <= 0 or size >= len(corpus):
        return np.arange(len(corpus))
    judged = corpus["product_id"].astype(str).isin(judged_products(dataset, split, **qrels_options)).to_numpy()
    rest = np.flatnonzero(~judged)
    distractors = np.random.default_rng(seed).choice(rest, size=min(len(rest), max(0, size - int(judged.sum()))),
                                                      replace=False)
    return np.sort(np.concatenate([np.flatnonzero(judged), distractors]))


def _duplicate_pairs(frame: pd.DataFrame, keys: pd.Series, source) -> int:
    """How many rows repeat an earlier row's (query, product) pair; one warning naming the first repeat.

    Kept as the reference evaluation keeps them: every listing adds its grade to the query's sampling
    weight, and the pair's qrels grade is the lowest of its listings (the qrels are built best grade first,
    a later listing overwriting an earlier one)."""
    pairs = pd.DataFrame({"key": keys.to_numpy(), "product_id": frame["product_id"].astype(str).to_numpy()})
    repeated = pairs.duplicated(keep="first").to_numpy()
    if repeated.any():
        at = int(np.flatnonzero(repeated)[0])
        first = int(np.flatnonzero((pairs["key"] == pairs["key"].iat[at]).to_numpy()
                                   & (pairs["product_id"] == pairs["product_id"].iat[at]).to_numpy())[0])
        warn_once(f"{source}: {int(repeated.sum()):,} rows repeat an earlier row's (query, product) pair (first: "
                  f"data row {at + 1} repeats row {first + 1}, product {pairs['product_id'].iat[at]}); kept as the "
                  f"reference evaluation keeps them: each pair takes the lowest of its grades and every row counts "
                  f"in the query sampling weights")
    return int(repeated.sum())


def _image_source(dataset: Dataset, fields: tuple[Field, ...], max_bad: float = DEFAULT_MAX_BAD):
    """The dataset's image source; with an image field but no images, an error before anything is encoded."""
    resolver = dataset.image_resolver(max_bad=max_bad)
    image_fields = [f.name for f in fields if f.is_image]
    if image_fields and resolver is None:
        raise ValueError(f"{', '.join(image_fields)} is an image field but {dataset.root} has no images: pass "
                         "--image-root (the folder the image archive was unpacked to), or text fields only")
    return resolver


def _write_json(path: Path, value) -> None:
    # json.dumps runs the C encoder over the whole value; json.dump iterates in Python (~5x slower)
    with atomic_write(path) as fh:
        fh.write(json.dumps(value, ensure_ascii=False))


def _load_or_build_qrels(frame, keys, dataset: Dataset, split: str, out: Path, weight_key, top_q, top_k,
                         query_set, query_fields: tuple[str, ...]) -> tuple[dict, dict]:
    """The split's qrels and a record of which ground truth they are (also ``out/ground_truth.json``).

    ``query_set="dev"`` / ``"test"`` use the shipped ``_gt_dev.json`` / ``_gt_test.json``; when that file is
    absent, of an unknown schema, or keyed by ids matching neither the rows' ``query_id`` nor their query
    text, the sampled ground truth is used instead, after one warning naming the file (never an abort).
    An existing ``gt_results.json`` is reused (every model then sees the same queries) when it was made
    from the same data and settings (recorded in ``ground_truth.json``), else made again with a warning;
    one without that record (the published script's) is reused with a warning.
    """
    gt_path, truth_path = out / "gt_results.json", out / "ground_truth.json"
    source = Path(dataset.source(split))
    stat = source.stat()
    settings = {"query_set": query_set, "source": str(source), "source_bytes": stat.st_size,
                "source_mtime_ns": stat.st_mtime_ns, "query_fields": list(query_fields),
                "weight_key": weight_key, "top_q": top_q, "top_k": top_k}
    if gt_path.exists():
        recorded = json.loads(truth_path.read_text()) if truth_path.exists() else None
        if recorded is None:  # e.g. the published script's own output folder: its query sample, as it does
            warn_once(f"{gt_path}: reusing its queries and qrels (no record of the data and settings they were "
                      f"made with); delete it to sample them for {source}")
            with open(gt_path, encoding="utf-8") as fh:
                return json.load(fh), {"used": "reused gt_results.json"}
        if recorded.get("settings") == settings:
            with open(gt_path, encoding="utf-8") as fh:
                return json.load(fh), recorded
        changed = {k: (recorded.get("settings", {}).get(k), v) for k, v in settings.items()
                   if recorded.get("settings", {}).get(k) != v}
        warn_once(f"{gt_path} was made from other data or settings "
                  f"({', '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in changed.items())}); made again")
    if query_set not in ("sampled", "dev", "test"):
        raise ValueError(f"query_set must be sampled, dev or test, not {query_set!r}")
    qrels = None
    if query_set in ("dev", "test"):
        judged = dataset.ground_truth(split, f"gt_{query_set}")  # None (after one warning) when unusable
        qrels = None if judged is None else _shipped_qrels(judged, frame, keys, top_k, dataset.source(split))
        truth = {"query_set": query_set, "used": query_set, "source": judged.path if judged else "",
                 "schema": judged.kind if judged else ""}
    if qrels is None:
        if weight_key and weight_key not in frame.columns:
            raise DataFormatError(source, f"no column {weight_key!r} to grade with (have {', '.join(frame.columns)})",
                                  column=weight_key, fix="name a score column, or --weight-key '' for binary grades")
        grades = reference_grades(frame[weight_key]) if weight_key else np.ones(len(frame), dtype=np.int64)
        qrels = build_qrels(frame, keys, grades, sample_queries(keys, grades, top_q), top_k)
        truth = {"query_set": query_set, "used": "sampled", "source": dataset.source(split), "top_q": top_q,
                 "weight_key": weight_key, "fallback": query_set != "sampled"}
    truth["settings"] = settings
    _write_json(gt_path, qrels)
    _write_json(truth_path, truth)
    return qrels, truth


def _shipped_qrels(judged, frame, keys, top_k, source) -> dict | None:
    """A shipped qrels file keyed by the rows' query keys; None (after one warning) when none of its query
    ids is a ``query_id`` or query text of the split; unmatched ids are dropped with one warning."""
    text_of = dict(zip(frame["query_id"].astype(str), keys)) if "query_id" in frame.columns else {}
    known = set(keys)
    qrels, unmatched = {}, []
    for qid, docs in judged.data.items():
        key = text_of.get(qid, qid if qid.endswith(QUERY_SUFFIX) else qid + QUERY_SUFFIX)
        if key not in known:
            unmatched.append(qid)
            continue
        ranked_docs = sorted(docs.items(), key=lambda item: -item[1])[:top_k]
        qrels[key] = {pid: int(round(g)) for pid, g in ranked_docs}
    if unmatched:
        sample = ", ".join(repr(q) for q in unmatched[:3])
        if qrels:
            warn_once(f"{judged.path}: {len(unmatched)} of its {len(judged.data)} query ids match no query_id or "
                      f"query text of {source} (e.g. {sample}); those queries are left out")
        else:
            warn_once(f"{judged.path}: none of its {len(judged.data)} query ids matches a query_id or query text of "
                      f"{source} (e.g. {sample}); falling back to the ground truth sampled from {source}")
    return qrels or None


def evaluate(encoder: TextImageEncoder, data: str | os.PathLike | Dataset, output_dir: str | os.PathLike,
             splits: str | list[str] = "all", *, image_root: str | os.PathLike | None = None, **kwargs) -> pd.DataFrame:
    """Evaluate several splits (``"all"``: the four in reference order) into ``output_dir/<stem>/`` and
    write the aggregated table ``output_dir/results.csv`` (one summary row per split)."""
    dataset = open_dataset(data, image_root)
    rows = []
    for stem in dataset.resolve_splits(splits):
        result = evaluate_split(encoder, dataset, stem, Path(output_dir) / stem, **kwargs)
        rows.append({"split": result.split, "name": dataset.split_name(result.split), **result.summary})
    table = pd.DataFrame(rows)
    table.to_csv(Path(output_dir) / "results.csv", index=False)
    return table


def context_length_arg(text: str) -> int:
    """``--context-length``: an integer, or the published script's per-field lists (``"[[77], [0]]"``),
    whose maximum is used for every text field (0: the model's own)."""
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError) as err:
        raise argparse.ArgumentTypeError(f"expected an integer or [[77], [0]], got {text!r}") from err
    flat = [value] if isinstance(value, int) else [v for side in value for v in side] if isinstance(value, list) else []
    if not flat or not all(isinstance(v, int) and not isinstance(v, bool) for v in flat):
        raise argparse.ArgumentTypeError(f"expected an integer or [[77], [0]], got {text!r}")
    return max(flat)


def published_fields(keys: str, weights: str, modalities: list[str], side: str) -> tuple[Field, ...]:
    """Fields from the published script's list syntax: ``--left-keys "['query']" --left-weights "[1]"``
    (``--img-or-txt`` gives each key's modality, which must agree with the column: image columns are
    ``image_local`` / ``image``)."""
    try:
        names, values = ast.literal_eval(keys), ast.literal_eval(weights)
    except (ValueError, SyntaxError) as err:
        raise ValueError(f"--{side}-keys / --{side}-weights must be Python lists, e.g. \"['query']\" \"[1]\"") from err
    if len(names) != len(values) or len(names) != len(modalities):
        raise ValueError(f"--{side}-keys {names}, --{side}-weights {values} and --img-or-txt {modalities} "
                         "differ in length")
    fields = tuple(Field(str(n), float(w)) for n, w in zip(names, values))
    for f, kind in zip(fields, modalities):
        if (kind == "img") != f.is_image:
            raise ValueError(f"--img-or-txt says {kind!r} for {f.name!r}, but {f.name!r} is "
                             f"{'an image' if f.is_image else 'a text'} column")
    return fields


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gclcore.evaluate", description=__doc__.split("\n\n")[0],
        epilog="The published script's flag spellings are accepted too (--test_csv, --doc-meta, --model_name, "
               "--weight_key, --num_workers, --left-keys/--right-keys/--left-weights/--right-weights/--img-or-txt "
               "as Python lists), so its shell scripts run with `python -m gclcore.evaluate` in its place.")
    data = parser.add_argument_group("data (a dataset folder, or one split CSV and its corpus JSON)")
    data.add_argument("--data-dir", help="dataset folder (CSV or Hugging Face parquet layout)")
    data.add_argument("--test-csv", "--test_csv", help="one split CSV, any name (with --corpus); outputs go "
                      "straight into --output-dir, as the published script's do")
    data.add_argument("--corpus", "--doc-meta", help="the corpus JSON that --test-csv is evaluated against")
    data.add_argument("--image-root", help="image folder (resolved by basename); needed for image fields")
    data.add_argument("--split", default="all", help="with --data-dir: a split stem, HF name, or all")
    data.add_argument("--image-store-dir", default="", help="where image stores are (python -m gclcore.image_store "
                      "build; default <data-dir>/.image-store, used when one matches the model); none: decode the files")
    model = parser.add_argument_group("model")
    model.add_argument("--model", "--model_name", default="default",
                       help="open_clip model name, default (embedded), hf:DIR (a Hugging Face text model "
                       "directory, text only), or bm25 (lexical, on titles)")
    model.add_argument("--pretrained", default=None, help="open_clip pretrained tag or checkpoint path")
    model.add_argument("--model-config", help="an open_clip custom config (*.json, e.g. the publisher's evals/cfg/) "
                       "as the model; its Hugging Face text model from --hf-dir or the local cache")
    model.add_argument("--hf-dir", help="the local Hugging Face model directory a --model-config names")
    model.add_argument("--pooling", choices=("mean", "cls"), default="mean", help="with --model hf:DIR")
    model.add_argument("--query-prefix", default="", help="prepended to query texts (E5: 'query: ')")
    model.add_argument("--document-prefix", default="", help="prepended to document texts (E5: 'passage: ')")
    model.add_argument("--precision", choices=PRECISIONS, default="auto",
                       help="encoding precision (auto: bf16 on CUDA, fp32 on CPU; the published script: fp16)")
    model.add_argument("--batch-size", type=int, default=256, help="encoding batch size")
    model.add_argument("--context-length", type=context_length_arg, default=0,
                       help="text tokens: an integer or the published [[77], [0]] (0: the model's own)")
    model.add_argument("--num-workers", "--num_workers", type=int, default=None, help="image decoding workers")
    model.add_argument("--device", default=None)
    protocol = parser.add_argument_group("protocol")
    protocol.add_argument("--lhs-fields", default="query=1", help="query-side fields and weights")
    protocol.add_argument("--rhs-fields", default=None,
                          help="document fields, e.g. image_local=0.9,title=0.1 (default: image_local=1; bm25: title)")
    protocol.add_argument("--left-keys", help="published syntax, e.g. \"['query']\" (with --left-weights)")
    protocol.add_argument("--left-weights", default=None)
    protocol.add_argument("--right-keys", help="published syntax, e.g. \"['image_local', 'title']\"")
    protocol.add_argument("--right-weights", default=None)
    protocol.add_argument("--img-or-txt", default=None, help="published syntax, e.g. \"[['txt'], ['img']]\"")
    protocol.add_argument("--weight-key", "--weight_key", default="score_linear")
    protocol.add_argument("--top-q", type=int, default=2000)
    protocol.add_argument("--top-k", type=int, default=1000)
    protocol.add_argument("--query-set", choices=("sampled", "dev", "test"), default="sampled")
    protocol.add_argument("--max-bad-images", type=float, default=DEFAULT_MAX_BAD,
                          help="stop when more than this fraction of images is missing or unreadable (1: never); "
                               "below it they are embedded as grey placeholders, counted in output.json")
    protocol.add_argument("--output-dir", default="results")
    protocol.add_argument("--cache-dir", help="embedding cache (default: <output dir of the split>/cache)")
    published = parser.add_argument_group("the published script's other flags")
    flag = {"type": _flag_value, "nargs": "?", "const": True, "default": False}  # --x, --x True, --x false
    published.add_argument("--overwrite-feature", **flag, help="re-embed instead of using the cache")
    published.add_argument("--overwrite-retrieval", **flag, help="accepted: the retrieval is never reused")
    published.add_argument("--run-queries-cpu", **flag, help="run the exact retrieval on the CPU")
    published.add_argument("--metric-only", **flag, help="only the metrics, from gt_results.json + retrieval.json "
                           "already in --output-dir (with --test-csv)")
    published.add_argument("--gt_results_path", "--gt-results-path", help="with --test-csv: the queries and qrels "
                           "file to reuse (written there when absent)")
    published.add_argument("--doc-id-key", default="product_id", help="must be product_id")
    for name in ("--query-id-key", "--features-path", "--preprocess", "--query_ids_dict_path"):
        published.add_argument(name, help="not supported (an error says why)")
    args = parser.parse_args(argv)
    unsupported = _unsupported(args)
    if unsupported:
        parser.error(unsupported)
    if (args.test_csv is None) == (args.data_dir is None) or (args.test_csv is None) != (args.corpus is None):
        parser.error("give either --data-dir DIR, or --test-csv FILE with --corpus FILE")
    if (args.metric_only or args.gt_results_path) and not args.test_csv:
        parser.error("--metric-only and --gt_results_path go with --test-csv (one split, one output folder)")
    from gclcore.models import load_encoder

    try:
        if args.metric_only:
            print(metrics_only(args.output_dir, args.top_k).to_string(index=False))
            return 0
        lhs, rhs = _fields_from_args(args)
        if args.data_dir:
            dataset = open_dataset(args.data_dir, args.image_root)
        else:
            from gclcore.data import files_dataset

            dataset = files_dataset(args.test_csv, args.corpus, args.image_root)
        _image_source(dataset, lhs + rhs)  # before the model is loaded
        if args.model == "bm25":
            from gclcore.bm25 import BM25Retriever

            encoder = BM25Retriever()
        else:
            encoder = load_encoder(args.model_config or args.model, args.pretrained, device=args.device,
                                   batch_size=args.batch_size, precision=args.precision,
                                   context_length=args.context_length, workers=args.num_workers, progress=True,
                                   query_prefix=args.query_prefix, document_prefix=args.document_prefix,
                                   pooling=args.pooling, hf_dir=args.hf_dir)
        options = dict(lhs_fields=lhs, rhs_fields=rhs, weight_key=args.weight_key, top_q=args.top_q, top_k=args.top_k,
                       query_set=args.query_set, cache_dir=False if args.overwrite_feature else args.cache_dir,
                       max_bad_images=args.max_bad_images, image_store_dir=args.image_store_dir,
                       search_device="cpu" if args.run_queries_cpu else None)
        if args.test_csv:
            [split] = dataset.resolve_splits("all")
            shared = Path(args.gt_results_path) if args.gt_results_path else None
            if shared is not None and shared.exists():
                Path(args.output_dir).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(shared, Path(args.output_dir) / "gt_results.json")
            table = pd.DataFrame([evaluate_split(encoder, dataset, split, args.output_dir, **options).summary])
            if shared is not None and not shared.exists():
                shutil.copyfile(Path(args.output_dir) / "gt_results.json", shared)
        else:
            table = evaluate(encoder, dataset, args.output_dir, args.split, **options)
    except (DataFormatError, ValueError, FileNotFoundError) as err:  # PretrainedUnavailable is a FileNotFoundError
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(table.to_string(index=False))
    return 0


def _flag_value(text: str) -> bool:
    """The published script's flags take an optional boolean: ``--x``, ``--x True``, ``--x no``."""
    value = {"yes": True, "true": True, "t": True, "y": True, "1": True,
             "no": False, "false": False, "f": False, "n": False, "0": False}.get(str(text).lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {text!r}")
    return value


def _unsupported(args) -> str:
    """Why a published flag that has no counterpart here cannot be honoured ("" when none is given)."""
    if args.doc_id_key != "product_id":
        return "--doc-id-key: documents are identified by product_id, the corpus JSON's keys"
    reasons = {"query_id_key": "--query-id-key: queries are identified by the text of the left keys, as the "
                               "published script does without it",
               "features_path": "--features-path: embeddings are cached per field under --cache-dir instead",
               "preprocess": "--preprocess: the model's own image transforms are used",
               "query_ids_dict_path": "--query_ids_dict_path: the published script reads it nowhere either"}
    return "; ".join(why for name, why in reasons.items() if getattr(args, name) is not None)


def metrics_only(output_dir: str | os.PathLike, top_k: int = 1000) -> pd.DataFrame:
    """The published ``--metric-only``: every measure from ``gt_results.json`` and ``retrieval.json`` already in
    ``output_dir``, written to its ``output.json`` / ``output.csv``; returns the summary row."""
    out = Path(output_dir)
    try:
        qrels = json.loads((out / "gt_results.json").read_text())
        run = json.loads((out / "retrieval.json").read_text())
    except FileNotFoundError as err:
        raise FileNotFoundError(f"--metric-only needs {err.filename} (from an earlier evaluation into {out})") from err
    ks = metrics.published_ks(top_k)
    means = metrics.evaluate_run(qrels, run, ks)
    _write_json(out / "output.json", {**metrics.reference_output(means, ks),
                                      "gclcore": {"queries": len(qrels), "metric_only": True}})
    summary = pd.DataFrame([metrics.summary_row(means, ks)])
    summary.to_csv(out / "output.csv", index=False)
    return summary


def _fields_from_args(args) -> tuple[tuple[Field, ...], tuple[Field, ...]]:
    """The query and document fields: ``--lhs-fields`` / ``--rhs-fields``, or the published list flags."""
    if args.left_keys is None and args.right_keys is None:
        text_model = args.model == "bm25" or args.model.startswith("hf:") or args.model_config
        rhs = args.rhs_fields or ("title" if text_model else "image_local=1")
        return parse_fields(args.lhs_fields), parse_fields(rhs)
    if None in (args.left_keys, args.right_keys, args.left_weights, args.right_weights, args.img_or_txt):
        raise ValueError("the published field flags go together: --left-keys, --left-weights, --right-keys, "
                         "--right-weights and --img-or-txt")
    modalities = ast.literal_eval(args.img_or_txt)
    return (published_fields(args.left_keys, args.left_weights, modalities[0], "left"),
            published_fields(args.right_keys, args.right_weights, modalities[1], "right"))


if __name__ == "__main__":
    sys.exit(main())

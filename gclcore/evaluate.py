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
        --pretrained TAG_OR_PATH] [--lhs-fields query=1] [--rhs-fields image_local=1]
        [--top-q 2000] [--top-k 1000] [--output-dir results/]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import torch

from gclcore import metrics
from gclcore.data import DataFormatError, Dataset, ImageResolver, atomic_write, open_dataset, warn_once
from gclcore.fusion import Field, Side, format_fields, parse_fields
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
                resolver: ImageResolver | None, first_field_always: bool = True) -> torch.Tensor:
    """Fused embeddings of a table's items (rows) over ``fields`` (step 5)."""
    embeddings, present = {}, {}
    for f in fields:
        if f.name not in table.columns:
            raise DataFormatError("<items>", f"field {f.name!r} not available (have {', '.join(table.columns)})",
                                  column=f.name)
        values = table[f.name]
        present[f.name] = torch.tensor(values.notna().to_numpy())
        if f.is_image:
            if resolver is None:
                raise ValueError(f"field {f.name!r} is an image field: pass an image root")
            # a missing value becomes "", which the resolver loads as MISSING (the placeholder)
            embeddings[f.name] = encoder.encode_image_files(values.fillna("").astype(str).tolist(), resolver)
        else:
            embeddings[f.name] = encoder.encode_text(values.astype(object).map(str).tolist())
    if first_field_always:  # the published evaluation never zeroes the first field
        present[fields[0].name] = torch.ones(len(table), dtype=torch.bool)
    return Side(tuple(fields), embeddings, present).fused()


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
                   progress: bool = True) -> SplitResult:
    """Evaluate one split (a CSV stem or HF split name) and write the reference outputs to ``output_dir``.

    ``data`` is a dataset folder or a :class:`gclcore.data.Dataset`; ``image_root`` (with a folder) is
    where its images are. Embeddings are cached under ``cache_dir`` (default ``output_dir/cache``), keyed by the model checksum,
    fields, field weights and data; ``cache_dir=False`` turns caching off (weights that keep changing).
    """
    dataset = open_dataset(data, image_root)
    split = dataset.split_id(split)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    frame = dataset.rows(split)
    keys = query_keys(frame, tuple(f.name for f in lhs_fields))
    qrels, truth = _load_or_build_qrels(frame, keys, dataset, split, out, weight_key, top_q, top_k, query_set)
    sampled = list(qrels)
    timings["qrels_s"] = time.perf_counter() - t0

    resolver = dataset.image_resolver()
    cache = None if cache_dir is False else Path(cache_dir) if cache_dir is not None else out / "cache"

    def cache_file(name: str) -> Path | None:
        return None if cache is None else cache / name

    t1 = time.perf_counter()
    first_rows = frame.assign(_key=keys.to_numpy()).drop_duplicates("_key").set_index("_key")
    query_table = first_rows.loc[[k for k in sampled if k in first_rows.index]]
    if len(query_table) != len(sampled):  # dev/test ground truth may name queries absent from the CSV
        missing = [k for k in sampled if k not in first_rows.index]
        raise DataFormatError(dataset.source(split), f"{len(missing)} ground-truth queries not in the split, e.g. {missing[0]!r}")
    query_tag = hashlib.sha256("\n".join(sampled).encode()).hexdigest()[:16]
    query_emb = _cached(cache_file(f"queries-{encoder.checksum()}-{_fields_tag(lhs_fields)}-{query_tag}.pt"),
                        lambda: embed_items(encoder, query_table, lhs_fields, resolver))
    corpus = dataset.corpus(split)
    corpus_tag = dataset.corpus_digest(split)
    corpus_emb = _cached(cache_file(f"corpus-{encoder.checksum()}-{_fields_tag(rhs_fields)}-{corpus_tag}.pt"),
                         lambda: embed_items(encoder, corpus, rhs_fields, resolver))
    timings["embed_s"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    scores, index = exact_topk(query_emb, corpus_emb, top_k, progress=progress)
    timings["search_s"] = time.perf_counter() - t2
    doc_ids = corpus["product_id"].astype(str).to_numpy()
    run = {key: dict(zip(doc_ids[index[i]].tolist(), scores[i].astype(np.float64).tolist()))
           for i, key in enumerate(sampled)}
    _write_json(out / "retrieval.json", run)

    t3 = time.perf_counter()
    position = pd.Series(np.arange(len(doc_ids)), index=doc_ids)
    triples = [(qi, pid, g) for qi, key in enumerate(sampled) for pid, g in qrels[key].items()]
    judged_query = np.fromiter((t[0] for t in triples), dtype=np.int64, count=len(triples))
    judged_doc = position.reindex([t[1] for t in triples]).fillna(-1).to_numpy(dtype=np.int64)
    judged_grade = np.fromiter((t[2] for t in triples), dtype=np.float64, count=len(triples))
    id_rank = np.empty(len(doc_ids), dtype=np.int64)
    id_rank[np.argsort(doc_ids, kind="stable")] = np.arange(len(doc_ids))
    ranked = metrics.ranked_grades_from_topk(index, scores, judged_query, judged_doc, judged_grade, id_rank, sampled)
    ks = ks or tuple(sorted({k for k in metrics.DEFAULT_KS if k <= top_k} | {10, top_k}))
    means = metrics.mean_metrics(ranked, ks)
    summary = metrics.summary_row(means, ks)
    per_query = metrics.per_query_frame(ranked, ks)
    timings["metrics_s"] = time.perf_counter() - t3
    _write_json(out / "output.json", {"metrics": means, "summary": summary, "split": split,
                                      "queries": len(sampled), "corpus": dataset.corpus_label(split), "ground_truth": truth,
                                      "lhs_fields": format_fields(lhs_fields), "rhs_fields": format_fields(rhs_fields),
                                      "query_set": query_set, "model_checksum": encoder.checksum(),
                                      "timings_s": {k: round(v, 3) for k, v in timings.items()}})
    pd.DataFrame([summary]).to_csv(out / "output.csv", index=False)
    per_query.to_csv(out / "per_query.csv")
    if resolver is not None:
        resolver.warn_placeholders("embedded")
    return SplitResult(split, summary, means, per_query, out, timings)


def _fields_tag(fields: tuple[Field, ...]) -> str:
    return hashlib.sha256(format_fields(fields).encode()).hexdigest()[:8]


def _write_json(path: Path, value) -> None:
    # json.dumps runs the C encoder over the whole value; json.dump iterates in Python (~5x slower)
    with atomic_write(path) as fh:
        fh.write(json.dumps(value, ensure_ascii=False))


def _load_or_build_qrels(frame, keys, dataset: Dataset, split: str, out: Path, weight_key, top_q, top_k,
                         query_set) -> tuple[dict, dict]:
    """The split's qrels and a record of which ground truth they are (also ``out/ground_truth.json``).

    ``query_set="dev"`` / ``"test"`` use the shipped ``_gt_dev.json`` / ``_gt_test.json``; when that file is
    absent, of an unknown schema, or keyed by ids matching neither the rows' ``query_id`` nor their query
    text, the sampled ground truth is used instead, after one warning naming the file (never an abort).
    """
    gt_path, truth_path = out / "gt_results.json", out / "ground_truth.json"
    if gt_path.exists():
        with open(gt_path, encoding="utf-8") as fh:
            qrels = json.load(fh)
        truth = json.loads(truth_path.read_text()) if truth_path.exists() else {"used": "reused gt_results.json"}
        return qrels, truth
    if query_set not in ("sampled", "dev", "test"):
        raise ValueError(f"query_set must be sampled, dev or test, not {query_set!r}")
    qrels = None
    if query_set in ("dev", "test"):
        judged = dataset.ground_truth(split, f"gt_{query_set}")  # None (after one warning) when unusable
        qrels = None if judged is None else _shipped_qrels(judged, frame, keys, top_k, dataset.source(split))
        truth = {"query_set": query_set, "used": query_set, "source": judged.path if judged else "",
                 "schema": judged.kind if judged else ""}
    if qrels is None:
        grades = reference_grades(frame[weight_key]) if weight_key in frame.columns else np.ones(len(frame), dtype=np.int64)
        qrels = build_qrels(frame, keys, grades, sample_queries(keys, grades, top_q), top_k)
        truth = {"query_set": query_set, "used": "sampled", "source": dataset.source(split), "top_q": top_q,
                 "weight_key": weight_key if weight_key in frame.columns else "", "fallback": query_set != "sampled"}
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gclcore.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--image-root", help="image folder (resolved by basename); needed for image fields")
    parser.add_argument("--split", default="all", help="a split stem (query_0_product_id_0), HF name, or all")
    parser.add_argument("--model", default="default", help="open_clip model name, or default (embedded)")
    parser.add_argument("--pretrained", default=None, help="open_clip pretrained tag or checkpoint path")
    parser.add_argument("--lhs-fields", default="query=1", help="query-side fields and weights")
    parser.add_argument("--rhs-fields", default="image_local=1", help="document fields, e.g. image_local=0.9,title=0.1")
    parser.add_argument("--weight-key", default="score_linear")
    parser.add_argument("--top-q", type=int, default=2000)
    parser.add_argument("--top-k", type=int, default=1000)
    parser.add_argument("--query-set", choices=("sampled", "dev", "test"), default="sampled")
    parser.add_argument("--output-dir", default="results")
    parser.add_argument("--cache-dir", help="embedding cache (default: <output-dir>/<split>/cache)")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    from gclcore.models import load_encoder

    try:
        lhs, rhs = parse_fields(args.lhs_fields), parse_fields(args.rhs_fields)
        encoder = load_encoder(args.model, args.pretrained, device=args.device)
        table = evaluate(encoder, args.data_dir, args.output_dir, args.split, image_root=args.image_root,
                         lhs_fields=lhs, rhs_fields=rhs, weight_key=args.weight_key, top_q=args.top_q,
                         top_k=args.top_k, query_set=args.query_set, cache_dir=args.cache_dir)
    except (DataFormatError, ValueError, FileNotFoundError) as err:  # PretrainedUnavailable is a FileNotFoundError
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())

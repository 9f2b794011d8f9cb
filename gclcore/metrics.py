"""Ranking metrics with the semantics of the published GCL evaluation, vectorised over queries.

Notation (the book's methods page, "Evaluation"): for query q, ``g_r`` is the grade of the
document at rank r (0 if unjudged or not retrieved), ``J_q`` the judged documents, ``R_q`` the relevant
ones (grade >= 1), ``m_q`` the query's maximum judged grade.

trec_eval family (pytrec_eval / BEIR; documents ordered by score descending, ties by document id
descending, byte-wise):

- ``NDCG@k = sum_{r<=k} g_r / log2(r+1)  /  sum_{i<=k} g*_i / log2(i+1)`` (linear gain; the ideal g* sorts
  the grades of *all* judged documents);
- ``MAP@k = (1/|R_q|) sum_{r<=k, g_r>=1} Prec@r``;  ``P@k = |{r<=k: g_r>=1}| / k``;
  ``Recall@k = |{r<=k: g_r>=1}| / |R_q|``; means over queries present in both qrels and run.

Python family (the run's own order, stable by score descending, as BEIR's MRR and GCL's ERR/RBP):

- ``MRR@k = 1 / (first rank <= k with g_r > 0)``, 0 if none; mean over **qrels** queries;
- ``Accuracy@k = 1`` if some document of the top k has ``g_r > 0``, else 0; mean over qrels queries;
- ``Hole@k = |{r <= k: d_r judged for no query at all}| / k`` (unjudged by every query's qrels, not just
  this one's; divided by k even when fewer were retrieved); mean over qrels queries;
- ``ERR = sum_r (1/r) R_r prod_{i<r} (1 - R_i)``, ``R_r = (2^{g_r} - 1) / 2^{m_q}``, all ranks, no cutoff;
- ``RBP_p = (1-p) sum_r (g_r / m_q) p^{r-1}``, all ranks, for p = 0.7, 0.8, 0.9 (``mRBP7/8/9``).

Reference rounding: BEIR rounds NDCG / MAP / Recall / P / MRR / Accuracy / Hole means to 5 decimals;
mERR and mRBP are not rounded. :func:`mean_metrics` does the same unless ``rounding=False``.

Two entry points share one implementation (:func:`per_query_arrays`):

- trec-style dicts ``{qid: {docid: grade}}`` / ``{qid: {docid: score}}`` (:func:`evaluate_run`);
- the fast array path used by the evaluator: grade matrices of the ranked lists (:class:`RankedGrades`).

Command line::

    python -m gclcore.metrics QRELS.json RUN.json [--k 1,3,5,10,100,1000]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

PUBLISHED_KS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 20, 30, 40, 50, 60, 70, 80, 90, 100, 200, 500, 1000)
"""The cut-offs the published evaluation reports (those up to its retrieval depth)."""
RBP_PS = {"mRBP7": 0.7, "mRBP8": 0.8, "mRBP9": 0.9}


@dataclass
class RankedGrades:
    """Everything the metrics need, as zero-padded arrays over Q queries.

    - ``trec``: (Q, K) grades of the ranked documents in trec_eval order (score desc, doc id desc);
    - ``python``: (Q, K) the same documents in the run's own order (stable sort by score desc);
    - ``ideal``: (Q, J) grades of all judged documents, sorted descending;
    - ``in_run``: (Q,) whether the query has a run (trec_eval means only count those);
    - ``hole``: (Q, K) in the Python order, 1 where the document is judged for no query of the qrels
      (Hole@k), 0 elsewhere and on padding.

    Padding with grade 0 is exact: an empty rank adds no gain, no relevant document and no stop
    probability, and P@k always divides by k.
    """

    trec: np.ndarray
    python: np.ndarray
    ideal: np.ndarray
    in_run: np.ndarray
    query_ids: list[str]
    hole: np.ndarray


def _pad(rows: list[np.ndarray], width: int | None = None) -> np.ndarray:
    width = max([len(r) for r in rows] + [width or 0, 1])
    out = np.zeros((len(rows), width), dtype=np.float64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def ranked_grades(qrels: dict[str, dict[str, float]], run: dict[str, dict[str, float]]) -> RankedGrades:
    """Convert trec-style dicts into :class:`RankedGrades` for every query in ``qrels``.

    The run's entries are read once in Python (ids, scores, each looked up in its own query's qrels);
    the rest is array work over all queries at once: each query's ranking is one row of a (Q, K) stable
    sort, and trec_eval's doc-id tie-break is applied only where scores tie."""
    qids = list(qrels)
    chain = itertools.chain.from_iterable
    judged_query = np.repeat(np.arange(len(qids)), list(map(len, qrels.values())))
    judged_grade = np.fromiter(chain(map(dict.values, qrels.values())), np.float64, len(judged_query))
    rankings = [run.get(qid, {}) for qid in qids]
    counts = np.fromiter(map(len, rankings), dtype=np.int64, count=len(qids))
    n, width = int(counts.sum()), max(int(counts.max(initial=0)), 1)
    docs = list(chain(rankings))
    scores = np.fromiter(chain(map(dict.values, rankings)), dtype=np.float64, count=n)
    # each entry's grade in its own query's qrels (small dicts: fast lookups); NaN where not judged there
    own = np.fromiter(chain(map(judged.get, ranking, itertools.repeat(np.nan)) for ranking, judged in
                            zip(rankings, qrels.values())), dtype=np.float64, count=n)
    judged_here = ~np.isnan(own)
    grades = np.where(judged_here, own, 0.0)
    judged_anywhere = _members(docs, set(chain(qrels.values())), known=judged_here)
    rows, column = np.repeat(np.arange(len(qids)), counts), np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)

    def padded(values, fill=0.0) -> np.ndarray:
        out = np.full((len(qids), width), fill)
        out[rows, column] = values
        return out

    # the run's own order: stable by score descending (padding, +inf, last)
    negated = padded(-scores, np.inf)
    if (negated[:, 1:] >= negated[:, :-1]).all():  # already ranked, as run files are written: no sort
        python_order = np.broadcast_to(np.arange(width), negated.shape).copy()
    else:
        python_order = np.argsort(negated, axis=1, kind="stable")
    # trec_eval's: score descending, then doc id descending (byte-wise == code-point order), among ties only
    trec_order = python_order.copy()
    ranked_scores = np.take_along_axis(negated, python_order, axis=1)
    valid = np.arange(width)[None, :] < counts[:, None]
    same = (ranked_scores[:, 1:] == ranked_scores[:, :-1]) & valid[:, 1:]
    tied_row, tied_column = np.nonzero(np.pad(same, ((0, 0), (0, 1))) | np.pad(same, ((0, 0), (1, 0))))
    if len(tied_row):
        entry = (np.cumsum(counts) - counts)[tied_row] + python_order[tied_row, tied_column]
        tied_docs = [docs[i] for i in entry.tolist()]
        name_rank = {d: r for r, d in enumerate(sorted(set(tied_docs)))}
        id_rank = np.fromiter(map(name_rank.get, tied_docs), dtype=np.int64, count=len(tied_docs))
        within = np.lexsort((-id_rank, ranked_scores[tied_row, tied_column], tied_row))
        trec_order[tied_row, tied_column] = python_order[tied_row, tied_column][within]
    grade_matrix, unjudged = padded(grades), padded(~judged_anywhere)
    return RankedGrades(np.take_along_axis(grade_matrix, trec_order, axis=1),
                        np.take_along_axis(grade_matrix, python_order, axis=1),
                        _ideal_grades(judged_query, judged_grade, len(qids)),
                        np.fromiter((qid in run for qid in qids), dtype=bool, count=len(qids)), qids,
                        np.take_along_axis(unjudged, python_order, axis=1))


def _members(items: list[str], members: set[str], known: np.ndarray) -> np.ndarray:
    """Whether each of ``items`` is in ``members``, where ``known`` does not already say so.

    A 2^24-bit filter of the members' hashes is checked first, as one array lookup for all items; only
    the items it lets through are looked up in the set, which is what costs on millions of entries
    (a string's hash is computed once and cached, so the set lookups do not hash again)."""
    bits = np.zeros(1 << 24, dtype=bool)
    bits[np.fromiter(map(hash, members), dtype=np.int64, count=len(members)) & 0xFFFFFF] = True
    hashes = np.fromiter(map(hash, items), dtype=np.int64, count=len(items))
    out = known.copy()
    ask = np.flatnonzero(bits[hashes & 0xFFFFFF] & ~known)
    out[ask] = np.fromiter(map(members.__contains__, map(items.__getitem__, ask.tolist())), dtype=bool, count=len(ask))
    return out


def _ideal_grades(judged_query: np.ndarray, judged_grade: np.ndarray, n_queries: int) -> np.ndarray:
    """(Q, J) every judged grade of each query, descending, zero-padded to the most judged."""
    counts = np.bincount(judged_query, minlength=n_queries)
    by_query = np.lexsort((-judged_grade, judged_query))
    column = np.arange(len(by_query)) - np.repeat(np.cumsum(counts) - counts, counts)
    ideal = np.zeros((n_queries, max(int(counts.max(initial=0)), 1)))
    ideal[judged_query[by_query], column] = judged_grade[by_query]
    return ideal


def ranked_grades_from_topk(topk_index: np.ndarray, topk_scores: np.ndarray, judged_query: np.ndarray,
                            judged_doc: np.ndarray, judged_grade: np.ndarray, doc_id_rank: np.ndarray,
                            query_ids: list[str]) -> RankedGrades:
    """The evaluator's fast path: :class:`RankedGrades` straight from a top-k search, without dicts.

    Args:
        topk_index, topk_scores: (Q, K) corpus indices and scores in the run's order (the order the run
            file is written in, hence the Python order).
        judged_query, judged_doc, judged_grade: the qrels as parallel arrays: query row (0..Q-1), corpus
            index (-1 for a judged document absent from the corpus: it still counts in IDCG and |R_q|)
            and grade.
        doc_id_rank: (N,) rank of each corpus document id in string order (trec_eval's tie-break).
        query_ids: the Q query keys.
    """
    n_queries, depth = topk_index.shape
    n_docs = max(len(doc_id_rank), 1)
    inside = judged_doc >= 0
    keys = judged_query[inside].astype(np.int64) * n_docs + judged_doc[inside]
    order = np.argsort(keys, kind="stable")
    keys, grades = keys[order], judged_grade[inside][order].astype(np.float64)
    wanted = np.arange(n_queries, dtype=np.int64)[:, None] * n_docs + topk_index
    position = np.clip(np.searchsorted(keys, wanted), 0, max(len(keys) - 1, 0))
    found = (keys[position] == wanted) if len(keys) else np.zeros_like(wanted, dtype=bool)
    python = np.where(found, grades[position] if len(keys) else 0.0, 0.0)
    trec_order = np.lexsort((-doc_id_rank[topk_index], -topk_scores.astype(np.float64)), axis=-1)
    trec = np.take_along_axis(python, trec_order, axis=1)
    ideal = _ideal_grades(judged_query, judged_grade, n_queries)
    hole = (~np.isin(topk_index, judged_doc[inside])).astype(np.float64)
    return RankedGrades(trec, python, ideal, np.ones(n_queries, dtype=bool), list(query_ids), hole)


def _at(cumulative: np.ndarray, k: int) -> np.ndarray:
    """``cumulative[:, k-1]`` where the ranked list may be shorter than k (then the last column)."""
    return cumulative[:, min(k, cumulative.shape[1]) - 1]


def per_query_arrays(g: RankedGrades, ks=PUBLISHED_KS, rbp_ps: dict[str, float] = RBP_PS) -> dict[str, np.ndarray]:
    """Per-query metric values, one (Q,) array per metric name (``NDCG@k``, ``MAP@k``, ``Recall@k``,
    ``P@k``, ``MRR@k``, ``Accuracy@k``, ``Hole@k``, ``ERR``, ``RBP7``...). See the module docstring for
    the formulas."""
    out: dict[str, np.ndarray] = {}
    K = g.trec.shape[1]
    ranks = np.arange(1, K + 1, dtype=np.float64)
    discount = 1.0 / np.log2(ranks + 1.0)
    dcg = np.cumsum(g.trec * discount, axis=1)
    J = g.ideal.shape[1]
    idcg = np.cumsum(g.ideal / np.log2(np.arange(2, J + 2, dtype=np.float64)), axis=1)
    relevant = (g.trec >= 1).astype(np.float64)
    hits = np.cumsum(relevant, axis=1)
    n_relevant = (g.ideal >= 1).sum(axis=1).astype(np.float64)
    ap = np.cumsum(relevant * hits / ranks, axis=1)
    safe_rel = np.where(n_relevant > 0, n_relevant, 1.0)
    first_hit = np.where((g.python > 0).any(axis=1), (g.python > 0).argmax(axis=1) + 1, np.inf)
    holes = np.cumsum(g.hole, axis=1)
    for k in ks:
        ideal_k = _at(idcg, k)
        out[f"NDCG@{k}"] = np.where(ideal_k > 0, _at(dcg, k) / np.where(ideal_k > 0, ideal_k, 1.0), 0.0)
        out[f"MAP@{k}"] = np.where(n_relevant > 0, _at(ap, k) / safe_rel, 0.0)
        out[f"Recall@{k}"] = np.where(n_relevant > 0, _at(hits, k) / safe_rel, 0.0)
        out[f"P@{k}"] = _at(hits, k) / k
        out[f"MRR@{k}"] = np.where(first_hit <= k, 1.0 / first_hit, 0.0)
        out[f"Accuracy@{k}"] = (first_hit <= k).astype(np.float64)
        out[f"Hole@{k}"] = _at(holes, k) / k
    max_grade = g.ideal[:, :1]
    # (2^g - 1) / 2^m computed as 2^(g-m) - 2^-m: both powers of two are exact, so the result is the
    # correctly rounded float64 of the exact ratio (what Python's int / int gives the reference).
    stop = np.exp2(g.python - max_grade) - np.exp2(-max_grade)
    stop = np.where(g.python > 0, stop, 0.0)
    reach = np.cumprod(np.concatenate([np.ones((len(stop), 1)), 1.0 - stop[:, :-1]], axis=1), axis=1)
    out["ERR"] = np.sum(stop * reach / ranks, axis=1)
    normalised = g.python / np.where(max_grade > 0, max_grade, 1.0)
    for name, p in rbp_ps.items():
        out[name[1:]] = (1.0 - p) * np.sum(normalised * p ** (ranks - 1.0), axis=1)
    return out


MISSING_QUERY_RULES = ("skip", "zero")
"""How trec_eval's measures average a qrels query that has no ranking in the run: ``skip`` leaves it out
(trec_eval's default, pytrec_eval's, and the reference's), ``zero`` counts it as 0 (``trec_eval -c``)."""


def mean_metrics(g: RankedGrades, ks=PUBLISHED_KS, rounding: bool = True, missing_queries: str = "skip") -> dict[str, float]:
    """Mean metrics with the reference's averaging and key names (``NDCG@10``, ``mERR``, ``mRBP7``, ...).

    trec_eval measures (NDCG, MAP, P, Recall) average over the queries that have a run
    (``missing_queries="skip"``, the reference's rule) or over all qrels queries with 0 for the others
    (``"zero"``, trec_eval ``-c``); MRR, Accuracy, Hole, ERR and RBP always over all qrels queries. Sums run
    left to right in query order, as the reference's ``+=`` loops do (numpy's pairwise sum can differ in
    the last bit, which flips a mean rounded to 5 decimals now and then).
    """
    if missing_queries not in MISSING_QUERY_RULES:
        raise ValueError(f"missing_queries={missing_queries!r}: choose from {', '.join(MISSING_QUERY_RULES)}")
    values = per_query_arrays(g, ks)
    out: dict[str, float] = {}
    counted = g.in_run if missing_queries == "skip" else np.ones_like(g.in_run)
    n_queries, trec_queries = max(len(g.query_ids), 1), max(int(counted.sum()), 1)
    for name, array in values.items():
        if name == "ERR" or name.startswith("RBP"):
            out[f"m{name}"] = sum(array.tolist()) / n_queries if len(array) else 0.0
            continue
        if name.startswith(("MRR", "Accuracy", "Hole")):
            mean = sum(array.tolist()) / n_queries
        else:
            mean = sum(array[counted].tolist()) / trec_queries
        out[name] = round(mean, 5) if rounding else mean
    return out


def per_query_frame(g: RankedGrades, ks=PUBLISHED_KS) -> pd.DataFrame:
    """Per-query metrics as a DataFrame indexed by query id (for distributions and win/loss plots)."""
    import pandas as pd  # here, not at the top: the command line does without it

    return pd.DataFrame(per_query_arrays(g, ks), index=pd.Index(g.query_ids, name="query"))


def evaluate_run(qrels: dict, run: dict, ks=PUBLISHED_KS, rounding: bool = True,
                 missing_queries: str = "skip") -> dict[str, float]:
    """Mean metrics of a trec-style run against trec-style qrels (see :func:`mean_metrics`)."""
    return mean_metrics(ranked_grades(qrels, run), ks, rounding, missing_queries)


def summary_row(metrics: dict[str, float], ks=PUBLISHED_KS) -> dict[str, float]:
    """The reference's ``output.csv`` row, ``mAP@K, mrr@K, NDCG@10, mERR, mRBP7, mRBP8, mRBP9`` with K the
    largest cutoff, then ``P@10, Recall@10`` (two more columns the published aggregation reports)."""
    K = max(ks)
    return {f"mAP@{K}": metrics[f"MAP@{K}"], f"mrr@{K}": metrics[f"MRR@{K}"], "NDCG@10": metrics["NDCG@10"],
            "mERR": metrics["mERR"], "mRBP7": metrics["mRBP7"], "mRBP8": metrics["mRBP8"], "mRBP9": metrics["mRBP9"],
            "P@10": metrics["P@10"], "Recall@10": metrics["Recall@10"]}


_GROUPS = {"mAP": "MAP@", "ndcg": "NDCG@", "precision": "P@", "recall": "Recall@", "mrr": "MRR@",
           "hole": "Hole@", "acc": "Accuracy@"}


def reference_output(metrics: dict[str, float], ks=PUBLISHED_KS) -> dict:
    """The published evaluation's ``output.json`` object: one dict per metric family (``mAP``, ``ndcg``,
    ``precision``, ``recall``, ``mrr``, ``hole``, ``acc``; keys ``MAP@k``...) and ``summary``, whose
    ``mAP@K`` / ``mrr@K`` / ``NDCG@10`` values are one-element lists, as the publisher writes them
    (its aggregation script reads this shape)."""
    out = {group: {f"{prefix}{k}": metrics[f"{prefix}{k}"] for k in ks} for group, prefix in _GROUPS.items()}
    K = max(ks)
    out["summary"] = {f"mAP@{K}": [metrics[f"MAP@{K}"]], f"mrr@{K}": [metrics[f"MRR@{K}"]],
                      "NDCG@10": [metrics["NDCG@10"]], "mERR": metrics["mERR"], "mRBP7": metrics["mRBP7"],
                      "mRBP8": metrics["mRBP8"], "mRBP9": metrics["mRBP9"]}
    return out


def published_ks(top_k: int) -> tuple[int, ...]:
    """The published cut-offs up to ``top_k`` (as the publisher does), plus 10 if ``top_k < 10`` (every
    summary has NDCG@10; the published script fails there instead)."""
    return tuple(sorted({k for k in PUBLISHED_KS if k <= top_k} | {10}))


def parse_ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(sorted({int(k) for k in text.split(",") if k.strip()}))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--k expects comma-separated integers, got {text!r}") from err
    if not ks or ks[0] < 1:
        raise argparse.ArgumentTypeError("--k values must be >= 1")
    if 10 not in ks:  # NDCG@10 is part of every summary
        ks = tuple(sorted(ks + (10,)))
    return ks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gclcore.metrics", description=__doc__.split("\n\n")[0])
    parser.add_argument("qrels", help="JSON {query_id: {doc_id: grade}}")
    parser.add_argument("run", help="JSON {query_id: {doc_id: score}}")
    parser.add_argument("--k", type=parse_ks, default=PUBLISHED_KS, help="cutoffs, e.g. 1,5,10 (default: the published ones)")
    parser.add_argument("--no-rounding", action="store_true", help="do not round like BEIR (5 decimals)")
    parser.add_argument("--missing-queries", choices=MISSING_QUERY_RULES, default="skip",
                        help="a qrels query with no ranking in the run: skip it in NDCG/MAP/P/Recall (trec_eval's "
                             "default and the reference's) or count it as 0 (trec_eval -c); MRR, ERR and RBP "
                             "always count it as 0")
    args = parser.parse_args(argv)
    from gclcore.data.errors import DataFormatError
    from gclcore.data.json_files import load_json, read_companion

    try:
        qrels = read_companion(args.qrels)
        if qrels.kind == "queries":
            raise DataFormatError(args.qrels, "this is a query-text file, not qrels")
        run = load_json(args.run)
        if not isinstance(run, dict) or not all(isinstance(v, dict) for v in run.values()):
            raise DataFormatError(args.run, "expected a run object {query_id: {doc_id: score}}")
        if not any(run.get(qid) for qid in qrels.data):
            raise DataFormatError(args.run, f"ranks no document for any of the {len(qrels.data):,} queries of "
                                  f"{args.qrels}", fix="check the two files belong together (same query ids)")
    except (DataFormatError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    unranked, unjudged = len(set(qrels.data) - set(run)), len(set(run) - set(qrels.data))
    if unranked:
        rule = ("left out of NDCG/MAP/P/Recall" if args.missing_queries == "skip" else "counted as 0 everywhere")
        print(f"note: {unranked:,} of {len(qrels.data):,} qrels queries are not in {args.run}: "
              f"{rule}, 0 in MRR/ERR/RBP (--missing-queries)", file=sys.stderr)
    if unjudged:
        print(f"note: {unjudged:,} queries of {args.run} have no qrels and are ignored", file=sys.stderr)
    print(json.dumps(evaluate_run(qrels.data, run, args.k, rounding=not args.no_rounding,
                                  missing_queries=args.missing_queries), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

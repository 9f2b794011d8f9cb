"""Benchmark: our retrieval + metrics against a straightforward port of the reference procedure.

    python bench/eval_speed.py [--queries 2000] [--docs 100000] [--dim 512] [--device cpu]

Same embeddings and qrels for both (random unit vectors with planted relevant documents; ~100 graded
documents per query, grades 1..100). The reference port follows marqo-ai/GCL ``eval_gs_v1.py``: one
query at a time, ``CosineSimilarity(eps=1e-6)`` against every document, ``torch.topk(1000)``, a run
dict, BEIR-style pytrec_eval call (ndcg_cut / map_cut / recall / P at every k) plus BEIR's MRR, and
GCL's ERR / RBP as Python loops. Ours: :func:`gclcore.retrieval.exact_topk` + the array metric path.
Prints timings, the speed-up, and the largest difference between the two sets of metric values.
"""

import argparse
import json
import time

import numpy as np
import pytrec_eval
import torch

from gclcore import metrics
from gclcore.retrieval import exact_topk

KS = (1, 3, 5, 10, 100, 1000)


def make_data(n_queries, n_docs, dim, judged=100, seed=0):
    rng = np.random.default_rng(seed)
    docs = rng.normal(size=(n_docs, dim)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    judged_docs = np.stack([rng.choice(n_docs, judged, replace=False) for _ in range(n_queries)])
    grades = rng.integers(1, 101, size=(n_queries, judged))
    # queries lean toward their better-graded documents, so rankings are informative
    queries = (docs[judged_docs] * (grades[..., None] / 100.0) ** 4).sum(1) + rng.normal(size=(n_queries, dim)) * 0.5
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    return queries, docs, judged_docs, grades


def reference_port(queries, docs, qrels, doc_ids, k):
    cos = torch.nn.CosineSimilarity(dim=1, eps=1e-6)
    docs_t = torch.from_numpy(docs)
    run = {}
    for i, qid in enumerate(qrels):  # one query at a time, as the published GPU path
        sims = cos(torch.from_numpy(queries[i:i + 1]), docs_t)
        scores, index = torch.topk(sims, k)
        run[qid] = {doc_ids[j]: float(s) for j, s in zip(index.tolist(), scores.tolist())}
    measures = {f"{m}.{','.join(map(str, KS))}" for m in ("ndcg_cut", "map_cut", "recall", "P")}
    scores = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    out = {}
    for name, key in (("NDCG", "ndcg_cut"), ("MAP", "map_cut"), ("Recall", "recall"), ("P", "P")):
        for kk in KS:
            out[f"{name}@{kk}"] = round(sum(s[f"{key}_{kk}"] for s in scores.values()) / len(scores), 5)
    for kk in KS:  # BEIR mrr: python sort, first relevant
        total = 0.0
        for qid, ranking in run.items():
            top = sorted(ranking.items(), key=lambda item: item[1], reverse=True)[:kk]
            total += next((1 / r for r, (d, _) in enumerate(top, 1) if qrels[qid].get(d, 0) > 0), 0.0)
        out[f"MRR@{kk}"] = round(total / len(qrels), 5)
    errs, rbps = [], {p: [] for p in (0.7, 0.8, 0.9)}
    for qid, ranking in run.items():  # GCL ERR / RBP loops
        ranked = sorted(ranking.items(), key=lambda item: item[1], reverse=True)
        m = max(qrels[qid].values())
        reach, err = 1.0, 0.0
        for r, (d, _) in enumerate(ranked, 1):
            rel = qrels[qid].get(d, 0)
            stop = (2**rel - 1) / 2**m
            err += reach * stop / r
            reach *= 1 - stop
        errs.append(err)
        for p in rbps:
            rbps[p].append((1 - p) * sum(qrels[qid].get(d, 0) / m * p ** (r - 1) for r, (d, _) in enumerate(ranked, 1)))
    out["mERR"] = float(np.mean(errs))
    for p, values in rbps.items():
        out[f"mRBP{int(p * 10)}"] = float(np.mean(values))
    return out


def ours(queries, docs, judged_docs, grades, doc_ids, k, device):
    scores, index = exact_topk(queries, docs, k, device=device)
    jq = np.repeat(np.arange(len(queries)), judged_docs.shape[1])
    id_rank = np.empty(len(doc_ids), dtype=np.int64)
    id_rank[np.argsort(np.asarray(doc_ids), kind="stable")] = np.arange(len(doc_ids))
    ranked = metrics.ranked_grades_from_topk(index, scores, jq, judged_docs.ravel(), grades.ravel().astype(float),
                                             id_rank, [f"q{i}" for i in range(len(queries))])
    return metrics.mean_metrics(ranked, KS)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-reference", action="store_true")
    args = parser.parse_args()
    queries, docs, judged_docs, grades = make_data(args.queries, args.docs, args.dim)
    doc_ids = [str(10**19 + i) for i in range(args.docs)]
    qrels = {f"q{i}": {doc_ids[d]: int(g) for d, g in zip(judged_docs[i], grades[i])} for i in range(args.queries)}
    t = time.perf_counter()
    fast = ours(queries, docs, judged_docs, grades, doc_ids, 1000, args.device)
    ours_s = time.perf_counter() - t
    result = {"queries": args.queries, "docs": args.docs, "dim": args.dim, "device": args.device,
              "torch_threads": torch.get_num_threads(), "ours_s": round(ours_s, 2)}
    if not args.skip_reference:
        t = time.perf_counter()
        slow = reference_port(queries, docs, qrels, doc_ids, 1000)
        result["reference_s"] = round(time.perf_counter() - t, 2)
        result["speedup"] = round(result["reference_s"] / ours_s, 1)
        result["max_abs_metric_diff"] = max(abs(fast[key] - slow[key]) for key in slow)
        result["metrics_compared"] = len(slow)
        result["metrics_differing"] = {key: [fast[key], slow[key]] for key in slow if fast[key] != slow[key]}
    result["NDCG@10"], result["mERR"] = fast["NDCG@10"], fast["mERR"]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

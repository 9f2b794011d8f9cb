"""Benchmark: our retrieval + metrics against a straightforward port of the reference procedure.

    python bench/eval_speed.py [--queries 2000] [--docs 100000] [--dim 512] [--device cpu]
    python bench/eval_speed.py --device cuda --dtype float16 --docs 1000000 --retrieval-only \
        [--query-chunk 256 1024 --corpus-chunk 262144 1048576]

Same embeddings and qrels for both (random unit vectors with planted relevant documents; ~100 graded
documents per query, grades 1..100). The reference port follows marqo-ai/GCL ``eval_gs_v1.py``: one
query at a time, ``CosineSimilarity(eps=1e-6)`` against every document, ``torch.topk(1000)``, a run
dict, BEIR's evaluate (pytrec_eval: ndcg_cut / map_cut / recall / P) and evaluate_custom (MRR, Hole, Accuracy), and
GCL's ERR / RBP as Python loops. Ours: :func:`gclcore.retrieval.exact_topk` + the array metric path.
Prints timings, the speed-up, and the largest difference between the two sets of metric values; and the
search alone (``retrieval_s``, :func:`gclcore.retrieval.exact_topk`) beside its floor measured in the
same run (``floor_s``: matrix product + ``torch.topk`` and nothing else, on the same device-resident
embeddings), as ``retrieval_vs_floor``. ``--retrieval-only`` draws the embeddings on the device (a 10M x 512 corpus
is 20 GB of fp32, too slow to draw in NumPy), and times :func:`exact_topk` at every pair of the
``--query-chunk`` x ``--corpus-chunk`` block sizes given (``retrieval_s`` is the best of them).
"""

import argparse
import functools
import json
import time

import numpy as np
import torch
from reference_metrics import reference_metrics

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


def device_embeddings(n_queries: int, n_docs: int, dim: int, device: str, seed: int = 0):
    """Unit-vector queries and documents drawn on ``device``; each query is near eight documents, so its
    top of the list is not a tie among noise."""
    gen = torch.Generator(device=device).manual_seed(seed)
    docs = torch.nn.functional.normalize(torch.randn(n_docs, dim, device=device, generator=gen), dim=1)
    near = torch.randint(n_docs, (n_queries, 8), device=device, generator=gen)
    noise = torch.randn(n_queries, dim, device=device, generator=gen)
    return torch.nn.functional.normalize(docs[near].sum(1) + 0.5 * noise, dim=1), docs


def reference_port(queries, docs, qrels, doc_ids, k):
    cos = torch.nn.CosineSimilarity(dim=1, eps=1e-6)
    docs_t = torch.from_numpy(docs)
    run = {}
    for i, qid in enumerate(qrels):  # one query at a time, as the published GPU path
        sims = cos(torch.from_numpy(queries[i:i + 1]), docs_t)
        scores, index = torch.topk(sims, k)
        run[qid] = {doc_ids[j]: float(s) for j, s in zip(index.tolist(), scores.tolist())}
    return reference_metrics(qrels, run, KS)


def ours(queries, docs, judged_docs, grades, doc_ids, k, device):
    scores, index = exact_topk(queries, docs, k, device=device)
    jq = np.repeat(np.arange(len(queries)), judged_docs.shape[1])
    id_rank = np.empty(len(doc_ids), dtype=np.int64)
    id_rank[np.argsort(np.asarray(doc_ids), kind="stable")] = np.arange(len(doc_ids))
    ranked = metrics.ranked_grades_from_topk(index, scores, jq, judged_docs.ravel(), grades.ravel().astype(float),
                                             id_rank, [f"q{i}" for i in range(len(queries))])
    return metrics.mean_metrics(ranked, KS)


def floor_topk(queries: torch.Tensor, docs: torch.Tensor, k: int, query_chunk: int = 256) -> None:
    """The least an exact search does: per chunk of queries, one matrix product against the whole corpus
    and ``torch.topk`` (no merging across corpus blocks, no fp32 re-scoring, no deterministic tie order)."""
    for start in range(0, len(queries), query_chunk):
        torch.topk(queries[start:start + query_chunk] @ docs.T, k, dim=1)
    if queries.is_cuda:
        torch.cuda.synchronize()


def best_of_three(run) -> float:
    """Seconds of ``run()``: the best of three after a warm-up."""
    run()
    times = []
    for _ in range(3):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return min(times)


def retrieval_against_floor(queries, docs, k: int, device: str, dtype: torch.dtype | None,
                            query_chunks=(256,), corpus_chunks=(0,)) -> dict:
    """Seconds of :func:`exact_topk` (at each block size given; ``retrieval_s`` the best) and of
    :func:`floor_topk` on the same device-resident embeddings (scored in ``dtype``)."""
    q, d = torch.as_tensor(queries, device=device), torch.as_tensor(docs, device=device)
    qd, dd = (q, d) if dtype is None else (q.to(dtype), d.to(dtype))
    by_chunks = {}
    for qc in query_chunks:
        for cc in corpus_chunks:
            search = functools.partial(exact_topk, q, d, k, device=device, dtype=dtype, query_chunk=qc, corpus_chunk=cc or None)
            by_chunks[f"{qc}x{cc or 'default'}"] = round(best_of_three(search), 4)
    best = min(by_chunks, key=by_chunks.get)
    out = {"retrieval_s": by_chunks[best], "best_chunks": best, "retrieval_s_by_chunks": by_chunks,
           "floor_s": round(best_of_three(lambda: floor_topk(qd, dd, k)), 4)}
    out["retrieval_vs_floor"] = round(out["retrieval_s"] / out["floor_s"], 2)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                        help="scoring precision of the search (fp32 re-scoring of the candidates either way)")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--retrieval-only", action="store_true",
                        help="only the search against its floor (no metrics, no reference)")
    parser.add_argument("--query-chunk", type=int, nargs="+", default=[256], help="exact_topk query block sizes")
    parser.add_argument("--corpus-chunk", type=int, nargs="+", default=[0],
                        help="exact_topk corpus block sizes (0: its default for the device)")
    args = parser.parse_args()
    dtype = None if args.dtype == "float32" else getattr(torch, args.dtype)
    result = {"queries": args.queries, "docs": args.docs, "dim": args.dim, "device": args.device, "dtype": args.dtype,
              "torch_threads": torch.get_num_threads()}
    if args.device.startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name()
    chunks = dict(query_chunks=args.query_chunk, corpus_chunks=args.corpus_chunk)
    if args.retrieval_only:
        queries, docs = device_embeddings(args.queries, args.docs, args.dim, args.device)
        result |= retrieval_against_floor(queries, docs, 1000, args.device, dtype, **chunks)
        print(json.dumps(result, indent=1))
        return
    queries, docs, judged_docs, grades = make_data(args.queries, args.docs, args.dim)
    result |= retrieval_against_floor(queries, docs, 1000, args.device, dtype, **chunks)
    doc_ids = [str(10**19 + i) for i in range(args.docs)]
    qrels = {f"q{i}": {doc_ids[d]: int(g) for d, g in zip(judged_docs[i], grades[i])} for i in range(args.queries)}
    t = time.perf_counter()
    fast = ours(queries, docs, judged_docs, grades, doc_ids, 1000, args.device)
    ours_s = time.perf_counter() - t
    result["ours_s"] = round(ours_s, 2)
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

"""Benchmark: BM25 indexing and retrieval at corpus scale, as the evaluation runs it.

    python bench/bm25_speed.py DATA_DIR [--split in_domain] [--queries 2000] [--k 1000]

Reads the split's corpus titles and its first ``--queries`` distinct query texts, then times
:class:`gclcore.bm25.BM25Retriever`'s two phases separately: tokenising + indexing the corpus, and
scoring + exact top-k for every query. Prints one JSON object.
"""

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir")
    parser.add_argument("--split", default="in_domain")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--k", type=int, default=1000)
    args = parser.parse_args()
    from gclcore.bm25 import BM25Retriever, top_k_stable
    from gclcore.data import open_dataset

    dataset = open_dataset(args.data_dir)
    documents = dataset.corpus(args.split)["title"].fillna("").astype(str).tolist()
    queries = dataset.rows(args.split, columns=["query"])["query"].drop_duplicates().head(args.queries).tolist()
    retriever = BM25Retriever()
    start = time.perf_counter()
    index = retriever.build_index(documents)
    indexed = time.perf_counter() - start
    start = time.perf_counter()
    for scores in retriever.query_scores(index, queries):
        top_k_stable(scores, args.k)
    searched = time.perf_counter() - start
    print(json.dumps({"documents": len(documents), "queries": len(queries), "index_s": round(indexed, 1),
                      "search_s": round(searched, 1), "ms_per_query": round(1000 * searched / len(queries), 1)},
                     indent=1))


if __name__ == "__main__":
    main()

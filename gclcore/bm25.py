"""BM25, the lexical baseline of the text-only table, evaluated by the same protocol as every model.

A :class:`BM25Retriever` takes the place of an encoder in :func:`gclcore.evaluate.evaluate_split`: the
split's sampled queries, qrels, top-k depth, outputs and metrics are the same; only the ranking comes
from BM25 scores of the query text against one document text field (``title``) instead of embeddings.

Scoring (``bm25s``, method ``lucene``; Kamphuis et al., ECIR 2020) of document d for query q::

    score(d, q) = sum_{t in q} ln(1 + (N - df_t + 0.5) / (df_t + 0.5)) * tf_{t,d} / (tf_{t,d} + k1 (1 - b + b |d| / avgdl))

with N documents, df_t the documents holding term t, tf_{t,d} its count in d, |d| the document's length
in terms and avgdl their mean; k1 = 1.5, b = 0.75 by default. Tokenisation: lower case, tokens of two or
more word characters (``(?u)\\b\\w\\w+\\b``), English stop words removed, no stemming; a query term
absent from the corpus adds nothing, and a missing title is an empty document.

Order contract (as :func:`gclcore.retrieval.exact_topk`): scores descending, equal scores by corpus
index ascending; the top k is exact.

Command line: ``python -m gclcore.evaluate --model bm25 --data-dir DIR`` (document field ``title``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BM25Retriever:
    """BM25 over one text field; ``search`` ranks documents for queries (see the module docstring)."""

    k1: float = 1.5
    b: float = 0.75
    method: str = "lucene"
    stopwords: str = "english"

    name = "bm25"

    def checksum(self) -> str:
        return f"bm25-{self.method}-k1={self.k1}-b={self.b}-stopwords={self.stopwords}"

    def build_index(self, documents: list[str]):
        """The ``bm25s`` index of ``documents`` (tokenised as the module docstring says)."""
        import bm25s

        index = bm25s.BM25(k1=self.k1, b=self.b, method=self.method)
        index.index(bm25s.tokenize(list(documents), stopwords=self.stopwords, show_progress=False),
                    show_progress=False)
        return index

    def query_scores(self, index, queries: list[str]):
        """Each query's (N,) scores against ``index``, one query at a time (a generator)."""
        import bm25s

        n = int(index.scores["num_docs"])
        for query in bm25s.tokenize(list(queries), stopwords=self.stopwords, return_ids=False, show_progress=False):
            # all zero for a query with no indexed term (bm25s needs at least one token)
            yield index.get_scores(query) if query else np.zeros(n, dtype=np.float32)

    def search(self, queries: list[str], documents: list[str], k: int,
               progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` documents per query: ``(scores (Q, k) float32, indices (Q, k) int64)``, k clipped to
        the number of documents."""
        from tqdm.auto import tqdm

        index = self.build_index(documents)
        k = min(k, len(documents))
        scores = np.empty((len(queries), k), dtype=np.float32)
        rows = np.empty((len(queries), k), dtype=np.int64)
        for i, values in enumerate(tqdm(self.query_scores(index, queries), desc="bm25", total=len(queries),
                                        disable=not progress)):
            rows[i] = top_k_stable(values, k)
            scores[i] = values[rows[i]]
        return scores, rows


def top_k_stable(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest ``scores``, descending, equal scores by index ascending (exact)."""
    n = len(scores)
    if k >= n:
        return np.lexsort((np.arange(n), -scores))
    threshold = np.partition(scores, n - k)[n - k]  # the k-th largest value
    above = np.flatnonzero(scores > threshold)
    at = np.flatnonzero(scores == threshold)[: k - len(above)]  # lowest indices first
    chosen = np.concatenate([above, at])
    return chosen[np.lexsort((chosen, -scores[chosen]))]

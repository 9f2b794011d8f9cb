"""Exact (brute-force) cosine top-k retrieval over a corpus of embeddings.

:func:`exact_topk` scores queries in chunks against the corpus in chunks and merges a running top-k, so
memory is bounded by ``query_chunk x corpus_chunk`` scores: queries x corpus is never materialised.
On GPU the scores can be computed in fp16/bf16 with ``k + rescore_margin`` candidates kept. The final
candidates are always re-scored in fp32 from the fp32 embeddings by a position-independent computation,
so neither low-precision rounding nor the chunking decides the order.

Ordering contract: scores descending; equal scores ordered by corpus index ascending (deterministic,
unlike a bare ``torch.topk``). The score set is the exact top-k; only when several documents tie
exactly at the k-th score is it unspecified which of them is kept. The evaluator writes its run in
this order, which is therefore the "Python order" of the reference metrics.

``backend="faiss"`` uses ``faiss.IndexFlatIP`` (the reference's CPU path; ``pip install faiss-cpu``) for
corpora where a FAISS index is already at hand; results are returned in the same order contract.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch


def _merge_topk(best_scores, best_index, scores, index, k):
    """Merge a candidate block into the running top-k, keeping (score desc, index asc) order."""
    scores = torch.cat([best_scores, scores], dim=1)
    index = torch.cat([best_index, index], dim=1)
    return _sorted_topk(scores, index, k)


def _sorted_topk(scores: torch.Tensor, index: torch.Tensor, k: int):
    # sort by index first, then a stable sort by score: ties end up by ascending corpus index
    by_index = torch.argsort(index, dim=1)
    scores, index = scores.gather(1, by_index), index.gather(1, by_index)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return scores.gather(1, order), index.gather(1, order)


@torch.no_grad()
def exact_topk(queries, corpus, k: int, *, query_chunk: int = 256, corpus_chunk: int | None = None,
               device: str | torch.device | None = None, dtype: torch.dtype | None = None,
               rescore_margin: int = 32, normalize: bool = False, progress: bool = False,
               backend: Literal["torch", "faiss"] = "torch") -> tuple[np.ndarray, np.ndarray]:
    """Top-k corpus rows by inner product (cosine for unit vectors) for every query.

    Args:
        queries: (Q, d) array or tensor.
        corpus: (N, d) array or tensor.
        k: results per query (clipped to N).
        query_chunk, corpus_chunk: block sizes; peak score memory is ``query_chunk * corpus_chunk``.
            ``corpus_chunk`` defaults to 262,144 on the CPU and 1,048,576 on a GPU (15% faster there
            than 262,144 for 2,000 queries over 1M documents on an H200; bench/RESULTS.md).
        device: where to compute (default: CUDA if available, else CPU).
        dtype: scoring precision, e.g. ``torch.float16`` / ``torch.bfloat16`` on GPU (default fp32).
        rescore_margin: with a low-precision ``dtype``, the top ``k + margin`` candidates are kept for
            the fp32 re-scoring that picks the final top-k.
        normalize: L2-normalise both sides first.
        progress: show a tqdm bar over query chunks.
        backend: ``"torch"`` or ``"faiss"``.

    Returns:
        (scores (Q, k) float32, indices (Q, k) int64), numpy arrays, in the order contract above.
    """
    queries = torch.as_tensor(np.asarray(queries) if not torch.is_tensor(queries) else queries).float()
    corpus = torch.as_tensor(np.asarray(corpus) if not torch.is_tensor(corpus) else corpus).float()
    if queries.ndim != 2 or corpus.ndim != 2 or queries.shape[1] != corpus.shape[1]:
        raise ValueError(f"need (Q, d) queries and (N, d) corpus, got {tuple(queries.shape)} and {tuple(corpus.shape)}")
    if normalize:
        queries = torch.nn.functional.normalize(queries, dim=1)
        corpus = torch.nn.functional.normalize(corpus, dim=1)
    k = min(k, corpus.shape[0])
    if backend == "faiss":
        return _faiss_topk(queries.numpy(), corpus.numpy(), k)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    corpus_chunk = corpus_chunk or (1_048_576 if device.type == "cuda" else 262_144)
    low_precision = dtype is not None and dtype != torch.float32
    kk = min(k + (rescore_margin if low_precision else 0), corpus.shape[0])
    corpus_f32 = corpus.to(device)
    corpus_scoring = corpus_f32.to(dtype) if low_precision else corpus_f32
    out_scores = np.empty((queries.shape[0], k), dtype=np.float32)
    out_index = np.empty((queries.shape[0], k), dtype=np.int64)
    from tqdm.auto import tqdm

    for start in tqdm(range(0, queries.shape[0], query_chunk), desc="search", unit="chunk", disable=not progress):
        q32 = queries[start:start + query_chunk].to(device)
        q = q32.to(dtype) if low_precision else q32
        best_s = torch.empty((q.shape[0], 0), device=device, dtype=torch.float32)
        best_i = torch.empty((q.shape[0], 0), device=device, dtype=torch.int64)
        for c0 in range(0, corpus.shape[0], corpus_chunk):
            block = q @ corpus_scoring[c0:c0 + corpus_chunk].T
            # selected in the scoring dtype (widening to fp32 is exact and keeps the order), so a
            # low-precision block is read once at its own width, not first copied to fp32
            s, i = torch.topk(block, min(kk, block.shape[1]), dim=1)
            best_s, best_i = _merge_topk(best_s, best_i, s.float(), i + c0, kk)
        best_s = _rescore(q32, corpus_f32, best_i)
        best_s, best_i = _sorted_topk(best_s, best_i, k)
        out_scores[start:start + len(q)] = best_s.cpu().numpy()
        out_index[start:start + len(q)] = best_i.cpu().numpy()
    return out_scores, out_index


def _rescore(queries: torch.Tensor, corpus: torch.Tensor, index: torch.Tensor, slice_rows: int | None = None):
    """fp32 scores of the candidates by an elementwise product and sum: unlike a blocked matmul, the
    value of a (query, document) pair does not depend on where the document sits in the corpus, so
    identical documents tie exactly and the result does not depend on the chunk sizes. A few queries at
    a time: their gathered candidates (4 x 1,000 x 512 floats, 8 MB) stay in cache for the product and
    the sum (32 at a time took 3.5x as long on CPU, bench/RESULTS.md); on a GPU, 256 at a time (fewer
    kernel launches)."""
    slice_rows = slice_rows or (256 if index.is_cuda else 4)
    out = torch.empty(index.shape, dtype=torch.float32, device=index.device)
    for r in range(0, index.shape[0], slice_rows):
        rows = slice(r, r + slice_rows)
        out[rows] = (queries[rows].unsqueeze(1) * corpus[index[rows]]).sum(-1)
    return out


def _faiss_topk(queries: np.ndarray, corpus: np.ndarray, k: int):
    try:
        import faiss
    except ImportError as err:
        raise ImportError("backend='faiss' needs faiss: pip install faiss-cpu (or faiss-gpu)") from err
    index = faiss.IndexFlatIP(corpus.shape[1])
    index.add(np.ascontiguousarray(corpus, dtype=np.float32))
    scores, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    s, i = _sorted_topk(torch.from_numpy(scores), torch.from_numpy(ids.astype(np.int64)), k)
    return s.numpy(), i.numpy()

"""Exact top-k retrieval against a brute-force numpy reference."""
import numpy as np
import pytest
import torch

from gclcore.retrieval import exact_topk


def brute_force(queries, corpus, k):
    scores = queries.astype(np.float64) @ corpus.astype(np.float64).T
    order = np.lexsort((np.broadcast_to(np.arange(corpus.shape[0]), scores.shape), -scores), axis=-1)[:, :k]
    return np.take_along_axis(scores, order, 1), order


def unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("query_chunk, corpus_chunk", [(256, 1 << 20), (7, 50), (1, 13)])
def test_matches_brute_force_with_any_chunking(query_chunk, corpus_chunk):
    rng = np.random.default_rng(0)
    queries, corpus = unit(rng, 37, 16), unit(rng, 500, 16)
    ref_scores, ref_index = brute_force(queries, corpus, 20)
    scores, index = exact_topk(queries, corpus, 20, query_chunk=query_chunk, corpus_chunk=corpus_chunk)
    assert np.array_equal(index, ref_index)
    assert np.allclose(scores, ref_scores, atol=1e-6)


def test_ties_are_ordered_by_corpus_index():
    rng = np.random.default_rng(1)
    base = unit(rng, 4, 8)
    corpus = np.concatenate([base, base, base])           # every document three times
    scores, index = exact_topk(base[:1], corpus, 6, corpus_chunk=5)
    assert index[0, :3].tolist() == [0, 4, 8]             # the exact match, by ascending index
    assert scores[0, 0] == scores[0, 1] == scores[0, 2]


def test_low_precision_scoring_is_rescored_in_fp32():
    rng = np.random.default_rng(2)
    queries, corpus = unit(rng, 16, 64), unit(rng, 3000, 64)
    ref_scores, ref_index = brute_force(queries, corpus, 10)
    scores, index = exact_topk(queries, corpus, 10, dtype=torch.bfloat16, corpus_chunk=700)
    assert np.array_equal(index, ref_index)
    assert np.allclose(scores, ref_scores, atol=1e-6)     # fp32 values, not bf16 ones


def test_k_larger_than_corpus_and_normalize():
    rng = np.random.default_rng(3)
    queries, corpus = rng.normal(size=(3, 5)), rng.normal(size=(4, 5)) * 10
    scores, index = exact_topk(queries, corpus, 10, normalize=True)
    assert index.shape == (3, 4) and np.all(np.abs(scores) <= 1 + 1e-6)
    with pytest.raises(ValueError, match="need"):
        exact_topk(queries, corpus[:, :3], 2)


def test_faiss_backend_agrees():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(4)
    queries, corpus = unit(rng, 20, 32), unit(rng, 400, 32)
    a_scores, a_index = exact_topk(queries, corpus, 15)
    b_scores, b_index = exact_topk(queries, corpus, 15, backend="faiss")
    assert np.array_equal(a_index, b_index) and np.allclose(a_scores, b_scores, atol=1e-5)

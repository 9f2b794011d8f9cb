"""BM25 against a hand computation and the bm25s library directly; its exact, stable top-k; and the
evaluation protocol with BM25 in place of an encoder."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml

from gclcore import evaluate, metrics
from gclcore.bm25 import BM25Retriever, top_k_stable
from gclcore.fusion import Field

DOCS = ["red running shoes", "blue shoes", "red dress for women", ""]


def bm25_by_hand(query_terms, docs_terms, k1=1.5, b=0.75):
    n, avgdl = len(docs_terms), sum(map(len, docs_terms)) / len(docs_terms)
    scores = []
    for terms in docs_terms:
        total = 0.0
        for t in query_terms:
            df = sum(t in d for d in docs_terms)
            if df == 0:
                continue
            tf = terms.count(t)
            total += math.log(1 + (n - df + 0.5) / (df + 0.5)) * tf / (tf + k1 * (1 - b + b * len(terms) / avgdl))
        scores.append(total)
    return scores


def test_scores_equal_the_formula_computed_by_hand():
    # tokens as BM25Retriever makes them: lower case, 2+ word characters, English stop words ("for") removed
    terms = [["red", "running", "shoes"], ["blue", "shoes"], ["red", "dress", "women"], []]
    scores, index = BM25Retriever().search(["Red SHOES zzz"], DOCS, k=4)
    expected = bm25_by_hand(["red", "shoes"], terms)
    assert index[0].tolist() == [0, 1, 2, 3]
    assert np.allclose(scores[0], [expected[i] for i in index[0]], atol=1e-6)
    # N = 4, df(red) = df(shoes) = 2, avgdl = 8 / 4: idf ln 2 each, document 0 has 3 terms
    assert scores[0][0] == pytest.approx(2 * math.log(2) / (1 + 1.5 * (0.25 + 0.75 * 3 / 2)), abs=1e-6)


def test_scores_equal_the_library_called_directly():
    import bm25s

    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(40)]
    docs = [" ".join(rng.choice(words, rng.integers(1, 12))) for _ in range(200)]
    queries = [" ".join(rng.choice(words, 3)) for _ in range(20)]
    index = bm25s.BM25(k1=1.2, b=0.6)
    index.index(bm25s.tokenize(docs, show_progress=False), show_progress=False)
    scores, rows = BM25Retriever(k1=1.2, b=0.6).search(queries, docs, k=50)
    for q, query in enumerate(bm25s.tokenize(queries, return_ids=False, show_progress=False)):
        direct = index.get_scores(query)
        assert np.allclose(scores[q], direct[rows[q]])
        assert np.allclose(np.sort(direct)[::-1][:50], scores[q])  # exactly the top 50


def test_top_k_is_exact_and_ties_go_by_index():
    values = np.array([0.5, 1.0, 0.5, 0.2, 1.0, 0.5])
    assert top_k_stable(values, 4).tolist() == [1, 4, 0, 2]   # the 0.5 tie: lowest indices kept, in order
    assert top_k_stable(values, 10).tolist() == [1, 4, 0, 2, 5, 3]
    rng = np.random.default_rng(1)
    for _ in range(50):
        v = rng.integers(0, 5, 30).astype(float)
        k = int(rng.integers(1, 30))
        assert top_k_stable(v, k).tolist() == np.lexsort((np.arange(30), -v))[:k].tolist()


def test_evaluation_protocol_with_bm25(tiny_shop, tmp_path):
    result = evaluate.evaluate_split(BM25Retriever(), tiny_shop, "in_domain", tmp_path, rhs_fields=(Field("title"),),
                                     top_k=50, progress=False)
    qrels = json.loads((tmp_path / "gt_results.json").read_text())
    run = json.loads((tmp_path / "retrieval.json").read_text())
    assert metrics.evaluate_run(qrels, run, ks=metrics.published_ks(50)) == pytest.approx(result.metrics)
    assert result.metrics["NDCG@10"] > 0.1                     # titles share words with their queries
    with pytest.raises(ValueError, match="one text field per side"):
        evaluate.evaluate_split(BM25Retriever(), tiny_shop, "in_domain", tmp_path / "x", progress=False)


def test_cli(tiny_shop, tmp_path, capsys):
    assert evaluate.main(["--model", "bm25", "--data-dir", str(tiny_shop), "--split", "zero_shot",
                          "--output-dir", str(tmp_path)]) == 0
    output = json.loads((tmp_path / "query_1_product_id_1" / "output.json").read_text())
    assert output["gclcore"]["rhs_fields"] == "title=1" and output["gclcore"]["model_checksum"].startswith("bm25-lucene")


def test_an_experiments_run_of_bm25_is_tested_not_trained(tiny_shop, tmp_path):
    """The book's `text-bm25` run: ``experiments run`` writes the same test table as evaluating BM25 directly."""
    from gclcore import experiments

    spec = {"base": {"data_dir": str(tiny_shop), "epochs": 3, "test_splits": "all", "eval_top_k": 50},
            "runs": {"bm25": {"model": "bm25", "rhs_fields": "title=1", "epochs": 0}, "bm25-trained": {"model": "bm25"}}}
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert experiments.main(["run", str(path), "bm25", "--out", str(tmp_path / "runs")]) == 0
    table = pd.read_csv(tmp_path / "runs" / "bm25" / "test" / "results.csv")
    direct = evaluate.evaluate(BM25Retriever(), tiny_shop, tmp_path / "direct", "all",
                               rhs_fields=(Field("title"),), top_k=50, cache_dir=False, progress=False)
    pd.testing.assert_frame_equal(table, direct, check_exact=False, rtol=1e-9)
    assert table["NDCG@10"].gt(0.1).all() and not (tmp_path / "runs" / "bm25" / "model.pt").exists()
    with pytest.raises(ValueError, match="bm25 has nothing to train"):
        experiments.execute(experiments.run_config(spec, "bm25-trained", tmp_path / "runs"))
    with pytest.raises(ValueError, match="only tested"):
        experiments.execute(experiments.run_config(spec, "bm25", tmp_path / "runs", {"test_splits": ""}))

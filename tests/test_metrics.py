"""Metrics against independent references: pytrec_eval (trec_eval), literal per-query ERR/RBP/MRR
loops written here from the published formulas, and the hand-computed example of the protocol."""
import json

import numpy as np
import pytest
import pytrec_eval
from hypothesis import given, settings
from hypothesis import strategies as st

from gclcore import metrics

KS = (1, 2, 3, 5, 10)


def err_literal(judged, ranking):
    ranked = sorted(ranking.items(), key=lambda item: item[1], reverse=True)  # stable: ties keep run order
    m = max(judged.values())
    reach, total = 1.0, 0.0
    for rank, (doc, _) in enumerate(ranked, start=1):
        rel = judged.get(doc, 0)
        stop = (2**rel - 1) / 2**m
        total += reach * stop / rank
        reach *= 1 - stop
    return total


def rbp_literal(judged, ranking, p):
    ranked = sorted(ranking.items(), key=lambda item: item[1], reverse=True)
    m = max(judged.values())
    return (1 - p) * sum(judged.get(doc, 0) / m * p ** (rank - 1) for rank, (doc, _) in enumerate(ranked, 1))


def mrr_literal(judged, ranking, k):
    ranked = sorted(ranking.items(), key=lambda item: item[1], reverse=True)[:k]
    return next((1 / rank for rank, (doc, _) in enumerate(ranked, 1) if judged.get(doc, 0) > 0), 0.0)


def accuracy_literal(judged, ranking, k):
    ranked = [doc for doc, _ in sorted(ranking.items(), key=lambda item: item[1], reverse=True)[:k]]
    return float(any(doc in ranked for doc, grade in judged.items() if grade > 0))


def hole_literal(qrels, ranking, k):
    """Share of the top k judged by no query at all, over k (the published definition)."""
    annotated = {doc for judged in qrels.values() for doc in judged}
    ranked = sorted(ranking.items(), key=lambda item: item[1], reverse=True)[:k]
    return sum(doc not in annotated for doc, _ in ranked) / k


doc_ids = st.sampled_from(["1", "2", "9", "10", "11", "99", "100", "a", "b", "B", "é", "d-1"])


@st.composite
def graded_runs(draw):
    """Random graded qrels and runs with many ties (scores from a 4-value set) and id orders where
    numeric and byte-wise order disagree ("9" > "10"); half of the runs list each query's documents in
    rank order, as run files are written (ranked_grades then skips its sort)."""
    qrels, run = {}, {}
    for q in range(draw(st.integers(1, 5))):
        judged = draw(st.dictionaries(doc_ids, st.integers(0, 6), min_size=1, max_size=8))
        if max(judged.values()) == 0:
            judged[next(iter(judged))] = 1
        qrels[f"q{q}"] = judged
        if draw(st.booleans()) or q == 0:
            run[f"q{q}"] = draw(st.dictionaries(doc_ids, st.sampled_from([0.25, 0.5, 0.75, 1.0]), max_size=12))
    if draw(st.booleans()):
        run = {qid: dict(sorted(ranking.items(), key=lambda item: -item[1])) for qid, ranking in run.items()}
    return qrels, run


@settings(max_examples=300, deadline=None)
@given(graded_runs())
def test_trec_family_equals_pytrec_eval(case):
    qrels, run = case
    measures = {f"ndcg_cut.{','.join(map(str, KS))}", f"map_cut.{','.join(map(str, KS))}",
                f"P.{','.join(map(str, KS))}", f"recall.{','.join(map(str, KS))}"}
    reference = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    frame = metrics.per_query_frame(metrics.ranked_grades(qrels, run), KS)
    for qid, values in reference.items():
        for k in KS:
            for ours, theirs in (("NDCG", "ndcg_cut"), ("MAP", "map_cut"), ("P", "P"), ("Recall", "recall")):
                assert frame.loc[qid, f"{ours}@{k}"] == pytest.approx(values[f"{theirs}_{k}"], abs=1e-9), (qid, ours, k)
    means = metrics.evaluate_run(qrels, run, KS, rounding=False)
    for k in KS:
        expected = np.mean([v[f"ndcg_cut_{k}"] for v in reference.values()]) if reference else 0.0
        assert means[f"NDCG@{k}"] == pytest.approx(expected, abs=1e-9)


@settings(max_examples=300, deadline=None)
@given(graded_runs())
def test_python_family_equals_literal_reference(case):
    qrels, run = case
    frame = metrics.per_query_frame(metrics.ranked_grades(qrels, run), KS)
    for qid, judged in qrels.items():
        ranking = run.get(qid, {})
        assert frame.loc[qid, "ERR"] == pytest.approx(err_literal(judged, ranking), abs=1e-12)
        for p in (0.7, 0.8, 0.9):
            assert frame.loc[qid, f"RBP{int(p * 10)}"] == pytest.approx(rbp_literal(judged, ranking, p), abs=1e-12)
        for k in KS:
            assert frame.loc[qid, f"MRR@{k}"] == pytest.approx(mrr_literal(judged, ranking, k), abs=1e-12)
            assert frame.loc[qid, f"Accuracy@{k}"] == accuracy_literal(judged, ranking, k)
            assert frame.loc[qid, f"Hole@{k}"] == pytest.approx(hole_literal(qrels, ranking, k), abs=1e-12)
    means = metrics.evaluate_run(qrels, run, KS, rounding=False)
    assert means["mERR"] == pytest.approx(np.mean([err_literal(j, run.get(q, {})) for q, j in qrels.items()]))
    assert means["MRR@10"] == pytest.approx(np.mean([mrr_literal(j, run.get(q, {}), 10) for q, j in qrels.items()]))


def test_worked_example_from_the_protocol():
    qrels = {"q": {"d1": 3, "d2": 2, "d3": 1}}
    run = {"q": {"d2": 0.9, "d9": 0.8, "d1": 0.7, "d3": 0.6}}
    m = metrics.evaluate_run(qrels, run, ks=(2, 4), rounding=False)
    assert m["mERR"] == pytest.approx(0.55973307, abs=1e-8)
    assert m["mRBP7"] == pytest.approx(0.3 * (2 / 3 + 0.49 + 0.343 / 3), abs=1e-12)
    assert round(m["mRBP7"], 5) == 0.38130 and round(m["mRBP8"], 5) == 0.29547 and round(m["mRBP9"], 5) == 0.17197
    assert m["NDCG@4"] == pytest.approx(0.8254499, abs=1e-7) and m["NDCG@2"] == pytest.approx(0.4692787, abs=1e-7)
    assert m["MAP@4"] == pytest.approx(0.8055556, abs=1e-7)
    assert m["P@2"] == 0.5 and m["Recall@2"] == pytest.approx(1 / 3) and m["MRR@4"] == 1.0


def test_tie_rules_differ_between_families():
    qrels, run = {"q": {"a": 1}}, {"q": {"a": 0.5, "b": 0.5}}
    m = metrics.evaluate_run(qrels, run, ks=(1, 2), rounding=False)
    assert m["P@1"] == 0.0        # trec_eval puts "b" first (doc id descending)
    assert m["MRR@1"] == 1.0      # the Python family keeps the run's insertion order


def test_err_with_hundred_grades_is_exact():
    qrels = {"q": {"top": 100, "second": 99}}
    assert metrics.evaluate_run(qrels, {"q": {"second": 2.0, "top": 1.0}})["mERR"] == pytest.approx(0.75)
    assert metrics.evaluate_run(qrels, {"q": {"x": 2.0, "top": 1.0}})["mERR"] == pytest.approx(0.5)
    assert metrics.evaluate_run(qrels, {"q": {"top": 1.0}})["mERR"] == 1.0  # 1 - 2^-100 rounds to 1


def test_averaging_sets_and_rounding():
    qrels = {"q1": {"a": 2}, "q2": {"b": 1}}
    run = {"q1": {"a": 1.0, "z": 0.5}}  # q2 has no run
    m = metrics.evaluate_run(qrels, run, ks=(1, 3))
    assert m["NDCG@1"] == 1.0                      # trec family: only queries with a run (pytrec_eval)
    assert m["MRR@3"] == 0.5 and m["mERR"] == pytest.approx(0.375)  # qrels queries
    assert metrics.evaluate_run({"q": {"a": 1, "b": 1, "c": 1}}, {"q": {"a": 1.0, "x": 0.9}}, ks=(3,))["MAP@3"] == 0.33333


def test_summary_row_and_cli(tmp_path, capsys):
    qrels = {"q": {"d1": 3, "d2": 2, "d3": 1}}
    run = {"q": {"d2": 0.9, "d9": 0.8, "d1": 0.7, "d3": 0.6}}
    (tmp_path / "qrels.json").write_text(json.dumps(qrels))
    (tmp_path / "run.json").write_text(json.dumps(run))
    assert metrics.main([str(tmp_path / "qrels.json"), str(tmp_path / "run.json"), "--k", "1,5,1000"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert {"NDCG@10", "MAP@1000", "Recall@10", "P@10", "MRR@1000", "mERR", "mRBP7", "mRBP8", "mRBP9"} <= set(printed)
    row = metrics.summary_row(printed, ks=(1, 5, 10, 1000))
    assert list(row) == ["mAP@1000", "mrr@1000", "NDCG@10", "mERR", "mRBP7", "mRBP8", "mRBP9", "P@10", "Recall@10"]
    assert metrics.main([str(tmp_path / "qrels.json"), str(tmp_path / "run.json")]) == 0
    assert {f"Hole@{k}" for k in metrics.PUBLISHED_KS} <= set(json.loads(capsys.readouterr().out))
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert metrics.main([str(tmp_path / "qrels.json"), str(tmp_path / "bad.json")]) == 2


@settings(max_examples=150, deadline=None)
@given(graded_runs())
def test_fast_topk_path_equals_dict_path(case):
    """The evaluator's array path gives the same per-query values as the dict path."""
    qrels, run = case
    queries = [q for q in qrels if q in run and run[q]]
    corpus = sorted({d for q in queries for d in run[q]} | {"unjudged-extra"})
    position = {d: i for i, d in enumerate(corpus)}
    depth = max((len(run[q]) for q in queries), default=0)
    if not queries or depth == 0:
        return
    # pad short runs with the extra unjudged document at a score below every real one
    index = np.array([[position[d] for d in run[q]] + [position["unjudged-extra"]] * (depth - len(run[q]))
                      for q in queries])
    scores = np.array([list(run[q].values()) + [-1.0] * (depth - len(run[q])) for q in queries])
    python_order = np.argsort(-scores, axis=1, kind="stable")
    index, scores = np.take_along_axis(index, python_order, 1), np.take_along_axis(scores, python_order, 1)
    triples = [(qi, position.get(d, -1), g) for qi, q in enumerate(queries) for d, g in qrels[q].items()]
    jq, jd, jg = (np.array(t) for t in zip(*triples))
    id_rank = np.argsort(np.argsort(np.asarray(corpus)))
    fast = metrics.per_query_arrays(metrics.ranked_grades_from_topk(index, scores, jq, jd, jg.astype(float),
                                                                    id_rank, queries), KS)
    slow = metrics.per_query_arrays(metrics.ranked_grades({q: qrels[q] for q in queries},
                                                          {q: run[q] for q in queries}), KS)
    full = np.array([len(run[q]) == depth for q in queries])  # padding is a retrieved (hole) document
    for name in slow:
        rows = full if name.startswith("Hole") else slice(None)
        assert np.allclose(fast[name][rows], slow[name][rows], atol=1e-12), name


def test_hole_and_accuracy_by_hand():
    # q1 judges a, b; q2 judges c. q1's run: x (judged by nobody), c (judged, but by q2), a.
    qrels = {"q1": {"a": 2, "b": 1}, "q2": {"c": 1}}
    run = {"q1": {"x": 0.9, "c": 0.8, "a": 0.7}, "q2": {"y": 0.5}}
    m = metrics.evaluate_run(qrels, run, ks=(1, 2, 3, 10))
    assert m["Hole@1"] == 1.0                            # x and y: (1/1 + 1/1) / 2 queries
    assert m["Hole@3"] == round((1 / 3 + 1 / 3) / 2, 5)  # c is no hole for q1: q2 judged it; y over k=3
    assert m["Hole@10"] == 0.1                           # divided by k, not by the 3 (1) retrieved
    assert m["Accuracy@2"] == 0.0 and m["Accuracy@3"] == 0.5  # q1's first relevant (a) at rank 3


def test_published_cutoffs_and_output_json_read_by_the_published_aggregation(tmp_path):
    assert metrics.published_ks(1000) == metrics.PUBLISHED_KS
    assert metrics.published_ks(15) == (1, 2, 3, 4, 5, 6, 8, 10, 12)
    assert metrics.published_ks(5) == (1, 2, 3, 4, 5, 10)
    qrels = {"q": {"d1": 3, "d2": 2, "d3": 1}}
    run = {"q": {"d2": 0.9, "d9": 0.8, "d1": 0.7, "d3": 0.6}}
    means = metrics.evaluate_run(qrels, run)
    output = metrics.reference_output(means)
    assert output["summary"]["NDCG@10"] == [means["NDCG@10"]] and output["summary"]["mERR"] == means["mERR"]
    # the published aggregation's reading of output.json, step by step (exp_dirs -> results_sum.csv)
    wanted = ["MAP@1000", "P@10", "Recall@10", "MRR@1000", "NDCG@10", "mERR"]
    results = json.loads(json.dumps({**output, "gclcore": {"split": "in_domain"}}))
    summary = results.pop("summary")
    flat = {k: v for d in results.values() for k, v in d.items() if k in wanted}
    flat.update({k: v for k, v in summary.items() if k not in flat and k in wanted})
    assert flat == {"MAP@1000": means["MAP@1000"], "P@10": means["P@10"], "Recall@10": means["Recall@10"],
                    "MRR@1000": means["MRR@1000"], "NDCG@10": means["NDCG@10"], "mERR": means["mERR"]}
    assert set(output) == {"mAP", "ndcg", "precision", "recall", "mrr", "hole", "acc", "summary"}
    assert list(output["hole"]) == [f"Hole@{k}" for k in metrics.PUBLISHED_KS]


def test_means_are_summed_in_query_order_like_the_reference():
    """BEIR and GCL add per-query values one by one (``+=``) and then round. Here 16 queries whose Hole@12
    values sum to 0.453125 exactly in that order, rounded to 0.45313; numpy's pairwise sum lands a bit
    below, 0.45312."""
    holes = np.random.default_rng(115).integers(0, 13, size=16)
    qrels, run = {}, {}
    for i, h in enumerate(holes):
        judged = [f"j{i}_{m}" for m in range(12 - h)] or [f"j{i}_unretrieved"]
        qrels[f"q{i}"] = dict.fromkeys(judged, 1)
        ranked = [f"u{i}_{m}" for m in range(h)] + judged[: 12 - h]
        run[f"q{i}"] = {doc: 1.0 - r / 100 for r, doc in enumerate(ranked)}
    total = 0.0
    for q in qrels:
        total += hole_literal(qrels, run[q], 12)
    assert metrics.evaluate_run(qrels, run, ks=(12,))["Hole@12"] == round(total / 16, 5) == 0.45313


def test_a_query_missing_from_the_run_is_skipped_or_zero_as_trec_eval_is_told(tmp_path, capsys):
    """The averaging rule is explicit: ``skip`` equals pytrec_eval (trec_eval's default) over the queries the
    run has; ``zero`` equals its per-query values summed over all qrels queries (trec_eval -c)."""
    qrels = {"a": {"d1": 1, "d2": 2}, "b": {"d3": 1}, "c": {"d1": 3}}
    run = {"a": {"d1": 0.5, "d2": 0.9}, "b": {"d3": 0.1, "d1": 0.7}, "x": {"d1": 1.0}}  # c missing, x unjudged
    trec = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "P.10"}).evaluate(run)
    assert sorted(trec) == ["a", "b"]
    skip = metrics.evaluate_run(qrels, run, rounding=False)
    zero = metrics.evaluate_run(qrels, run, rounding=False, missing_queries="zero")
    assert skip["NDCG@10"] == pytest.approx(sum(q["ndcg_cut_10"] for q in trec.values()) / 2)
    assert zero["NDCG@10"] == pytest.approx(sum(q["ndcg_cut_10"] for q in trec.values()) / 3)
    assert zero["P@10"] == pytest.approx(sum(q["P_10"] for q in trec.values()) / 3)
    assert skip["MRR@10"] == zero["MRR@10"] == pytest.approx((1 + 0.5 + 0) / 3)  # always over qrels queries
    with pytest.raises(ValueError, match="missing_queries='drop': choose from skip, zero"):
        metrics.evaluate_run(qrels, run, missing_queries="drop")
    # the command line says what it did with them
    (tmp_path / "qrels.json").write_text(json.dumps(qrels))
    (tmp_path / "run.json").write_text(json.dumps(run))
    assert metrics.main([str(tmp_path / "qrels.json"), str(tmp_path / "run.json"), "--missing-queries", "zero"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["NDCG@10"] == round(zero["NDCG@10"], 5)
    assert "1 of 3 qrels queries are not in" in captured.err and "counted as 0 everywhere" in captured.err
    assert "1 queries of" in captured.err and "have no qrels and are ignored" in captured.err


@pytest.mark.parametrize("run", [{}, {"a": {}, "zz": {"d1": 1.0}}])
def test_an_empty_run_is_an_error_not_zeros(tmp_path, capsys, run):
    (tmp_path / "qrels.json").write_text(json.dumps({"a": {"d1": 1}}))
    (tmp_path / "run.json").write_text(json.dumps(run))
    assert metrics.main([str(tmp_path / "qrels.json"), str(tmp_path / "run.json")]) == 2
    assert "ranks no document for any of the 1 queries" in capsys.readouterr().err

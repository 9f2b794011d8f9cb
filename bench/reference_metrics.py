"""The published evaluation's metric procedure, ported straight: the anchor of ``bench/metrics_cli.py``
and ``bench/eval_speed.py``.

    python bench/reference_metrics.py QRELS.json RUN.json

From a run dict, as the published evaluation computes its ``output.json``: BEIR's ``evaluate`` (drop
documents whose id is the query id, one pytrec_eval call for ndcg_cut / map_cut / recall / P at every
cut-off, means rounded to 5 decimals), BEIR's ``evaluate_custom`` for MRR, Hole and Accuracy (each a
Python sort of every query's run), GCL's ERR and its RBP at p = 0.7, 0.8, 0.9 (one Python loop per
query each). The cut-offs are the published 21 (1 ... 1000), so it reports what ``python -m
gclcore.metrics`` reports. It imports only what that needs (json, numpy, pytrec_eval), so its
whole-process time is a fair anchor.
"""

import json
import sys

import pytrec_eval

PUBLISHED_KS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 20, 30, 40, 50, 60, 70, 80, 90, 100, 200, 500, 1000)


def beir_evaluate(qrels: dict, results: dict, ks) -> dict[str, float]:
    for qid, ranking in results.items():  # ignore_identical_ids=True
        for pid in list(ranking):
            if qid == pid:
                ranking.pop(pid)
    cutoffs = ",".join(map(str, ks))
    measures = {f"map_cut.{cutoffs}", f"ndcg_cut.{cutoffs}", f"recall.{cutoffs}", f"P.{cutoffs}"}
    scores = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(results)
    out = {}
    for name, key in (("NDCG", "ndcg_cut"), ("MAP", "map_cut"), ("Recall", "recall"), ("P", "P")):
        for k in ks:
            out[f"{name}@{k}"] = round(sum(s[f"{key}_{k}"] for s in scores.values()) / len(scores), 5)
    return out


def beir_mrr(qrels: dict, results: dict, ks) -> dict[str, float]:
    mrr = {f"MRR@{k}": 0.0 for k in ks}
    top_hits = {qid: sorted(scores.items(), key=lambda item: item[1], reverse=True)[0:max(ks)]
                for qid, scores in results.items()}
    for qid, hits in top_hits.items():
        relevant = {doc for doc in qrels[qid] if qrels[qid][doc] > 0}
        for k in ks:
            for rank, hit in enumerate(hits[0:k]):
                if hit[0] in relevant:
                    mrr[f"MRR@{k}"] += 1.0 / (rank + 1)
                    break
    return {key: round(value / len(qrels), 5) for key, value in mrr.items()}


def beir_hole(qrels: dict, results: dict, ks) -> dict[str, float]:
    hole = {f"Hole@{k}": 0.0 for k in ks}
    annotated = {doc for docs in qrels.values() for doc in docs}
    for scores in results.values():
        hits = sorted(scores.items(), key=lambda item: item[1], reverse=True)[0:max(ks)]
        for k in ks:
            hole[f"Hole@{k}"] += len([row[0] for row in hits[0:k] if row[0] not in annotated]) / k
    return {key: round(value / len(qrels), 5) for key, value in hole.items()}


def beir_accuracy(qrels: dict, results: dict, ks) -> dict[str, float]:
    accuracy = {f"Accuracy@{k}": 0.0 for k in ks}
    top_hits = {qid: [item[0] for item in sorted(scores.items(), key=lambda item: item[1], reverse=True)[0:max(ks)]]
                for qid, scores in results.items()}
    for qid, hits in top_hits.items():
        relevant = {doc for doc in qrels[qid] if qrels[qid][doc] > 0}
        for k in ks:
            for doc in relevant:
                if doc in hits[0:k]:
                    accuracy[f"Accuracy@{k}"] += 1.0
                    break
    return {key: round(value / len(qrels), 5) for key, value in accuracy.items()}


def individual_err(qrels: dict, ranking: dict) -> float:
    err, p_stop = 0.0, 1.0
    max_rel = max(qrels.values())
    for rank, (doc, _) in enumerate(sorted(ranking.items(), key=lambda x: x[1], reverse=True), start=1):
        rel_prob = (2 ** qrels.get(doc, 0) - 1) / (2 ** max_rel)
        err += p_stop * rel_prob / rank
        p_stop *= 1 - rel_prob
    return err


def individual_rbp(qrels: dict, ranking: dict, p: float) -> float:
    rbp = 0.0
    max_rel = max(qrels.values())
    for rank, (doc, _) in enumerate(sorted(ranking.items(), key=lambda x: x[1], reverse=True), start=1):
        rbp += qrels.get(doc, 0) / max_rel * p ** (rank - 1)
    return rbp * (1 - p)


def reference_metrics(qrels: dict, run: dict, ks=PUBLISHED_KS) -> dict[str, float]:
    """NDCG / MAP / Recall / P / MRR / Hole / Accuracy at each of ``ks``, mERR and mRBP7/8/9."""
    out = beir_evaluate(qrels, run, ks) | beir_mrr(qrels, run, ks) | beir_hole(qrels, run, ks)
    out |= beir_accuracy(qrels, run, ks)
    out["mERR"] = sum(individual_err(judged, run.get(qid, {})) for qid, judged in qrels.items()) / len(qrels)
    for p in (0.7, 0.8, 0.9):
        out[f"mRBP{int(p * 10)}"] = sum(individual_rbp(judged, run.get(qid, {}), p) for qid, judged in qrels.items()) / len(qrels)
    return out


if __name__ == "__main__":
    with open(sys.argv[1]) as fh:
        qrels = json.load(fh)
    with open(sys.argv[2]) as fh:
        run = json.load(fh)
    print(json.dumps(reference_metrics(qrels, run), indent=1))

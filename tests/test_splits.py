"""Multi-split construction: invariants, determinism, derived columns and ground truth."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gclcore import splits
from gclcore.data import SPLIT_STEMS, DataFormatError, read_companion, read_corpus, read_split_csv


def _ranked(n_queries=30, per_query=10, n_products=120, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for q in range(n_queries):
        for pos, p in enumerate(rng.choice(n_products, per_query, replace=False), start=1):
            rows.append({"query": f"query {q}", "product_id": str(10**19 + int(p)), "position": pos,
                         "title": f"title {p}", "image_local": f"/foreign/{p}.webp"})
    return pd.DataFrame(rows)


def test_invariants_on_the_synth_shop(tiny_shop):
    summary = splits.check_splits(tiny_shop)
    frames = {s: read_split_csv(tiny_shop / f"{s}.csv") for s in SPLIT_STEMS}
    q0 = set(frames["query_0_product_id_0"]["query"]) | set(frames["query_0_product_id_1"]["query"])
    q1 = set(frames["query_1_product_id_0"]["query"]) | set(frames["query_1_product_id_1"]["query"])
    p0 = set(frames["query_0_product_id_0"]["product_id"]) | set(frames["query_1_product_id_0"]["product_id"])
    p1 = set(frames["query_0_product_id_1"]["product_id"]) | set(frames["query_1_product_id_1"]["product_id"])
    assert not q0 & q1 and not p0 & p1
    assert abs(len(q0) / (len(q0) + len(q1)) - 0.8) < 0.02
    ranked = pd.read_csv(tiny_shop / "ranked.csv", dtype={"product_id": str})
    assert sum(summary.rows.values()) == len(ranked)
    pairs = set()
    for frame in frames.values():
        pairs |= set(zip(frame["query"], frame["product_id"]))
    assert pairs == set(zip(ranked["query"], ranked["product_id"]))
    assert set(read_corpus(tiny_shop / "corpus_1.json")["product_id"]) >= p0


def test_row_order_does_not_change_the_split(tmp_path):
    ranked = _ranked()
    a = splits.build_splits(ranked, tmp_path / "a", seed=3, progress=False)
    b = splits.build_splits(ranked.sample(frac=1, random_state=1), tmp_path / "b", seed=3, progress=False)
    for stem in SPLIT_STEMS:
        ka = read_split_csv(tmp_path / "a" / f"{stem}.csv").sort_values(["query", "product_id"]).reset_index(drop=True)
        kb = read_split_csv(tmp_path / "b" / f"{stem}.csv").sort_values(["query", "product_id"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(ka, kb)
    assert a.rows == b.rows
    c = splits.build_splits(ranked, tmp_path / "c", seed=4, progress=False)
    assert c.rows != a.rows or c.queries != a.queries


def test_derived_columns_and_positions_from_scores(tmp_path):
    ranked = pd.DataFrame({"query": ["q", "q", "q", "r"], "product_id": ["1", "2", "3", "1"],
                           "score_linear": [50, 99, 70, 100]})
    prepared = splits.prepare_ranked(ranked)
    assert prepared["position"].tolist() == [3, 1, 2, 1]
    ranked = pd.DataFrame({"query": ["q"] * 3, "product_id": ["1", "2", "3"], "position": [1, 2, 150]})
    prepared = splits.prepare_ranked(ranked)
    assert prepared["score_linear"].tolist() == [100, 99, 1]
    assert prepared["score_reciprocal"].tolist() == [1.0, 0.5, 1 / 150]
    assert prepared["query_id"].nunique() == 1 and prepared["query_id"].iloc[0] == splits.stable_id("q")
    assert prepared["pair_id"].nunique() == 3


@pytest.mark.parametrize("frame, message, row", [
    (pd.DataFrame({"query": ["q", "q"], "product_id": ["1", "1"], "position": [1, 2]}), "duplicate", 2),
    (pd.DataFrame({"query": ["q", None], "product_id": ["1", "2"], "position": [1, 2]}), "missing value", 2),
    (pd.DataFrame({"query": ["q", "q"], "product_id": ["1", "2"], "position": [1, 0]}), ">= 1", 2),
    (pd.DataFrame({"query": ["q"], "product_id": ["1"]}), "'position' or a 'score_linear'", None),
])
def test_bad_ranked_tables(frame, message, row):
    with pytest.raises(DataFormatError, match=message) as err:
        splits.prepare_ranked(frame)
    assert err.value.row == row


def test_check_detects_leaks(tmp_path):
    splits.build_splits(_ranked(), tmp_path, seed=0, progress=False)
    path = tmp_path / "query_1_product_id_0.csv"
    frame = read_split_csv(path)
    leaked = read_split_csv(tmp_path / "query_0_product_id_0.csv").iloc[[0]].copy()
    leaked["product_id"] = frame["product_id"].iloc[0]  # a query-0 query in the query-1 file
    pd.concat([frame, leaked]).to_csv(path, index=False)
    with pytest.raises(DataFormatError, match="in both query halves"):
        splits.check_splits(tmp_path)


def test_companion_ground_truth(tiny_shop):
    for stem in SPLIT_STEMS:
        rows = read_split_csv(tiny_shop / f"{stem}.csv")
        queries = read_companion(tiny_shop / f"{stem}_queries.json")
        dev = read_companion(tiny_shop / f"{stem}_gt_dev.json")
        test = read_companion(tiny_shop / f"{stem}_gt_test.json")
        assert queries.kind == "queries" and dev.kind == test.kind == "qrels"
        assert set(queries.data) == set(rows["query_id"])
        assert not set(dev.data) & set(test.data) and set(dev.data) | set(test.data) == set(queries.data)
        lookup = {(q, p): s for q, p, s in zip(rows["query_id"], rows["product_id"], rows["score_linear"])}
        for judged in (dev.data, test.data):
            for qid, docs in judged.items():
                for pid, grade in docs.items():
                    assert lookup[(qid, pid)] == grade


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 500), fraction=st.floats(0.05, 0.95), seed=st.integers(0, 2**31 - 1))
def test_assign_halves_fraction(n, fraction, seed):
    values = pd.Series([f"v{i}" for i in range(n)] * 2)
    halves = splits.assign_halves(values, fraction, seed)
    assert len(halves) == n and (halves == 0).sum() == int(round(fraction * n))


def test_cli_build_and_check(tmp_path, capsys):
    _ranked().to_csv(tmp_path / "ranked.csv", index=False)
    assert splits.main(["build", str(tmp_path / "ranked.csv"), str(tmp_path / "out")]) == 0
    assert splits.main(["check", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "in_domain" in out and "query_fraction" in out
    (tmp_path / "dup.csv").write_text("query,product_id,position\nq,1,1\nq,1,2\n")
    assert splits.main(["build", str(tmp_path / "dup.csv"), str(tmp_path / "o2")]) == 2

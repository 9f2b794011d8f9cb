"""The evaluation protocol: grade transform, weighted query sampling and qrels against literal ports of
the published procedure; outputs, caching and CLI end to end on the synth shop."""
import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import torch

from gclcore import evaluate, metrics
from gclcore.fusion import Field, parse_fields


def test_grade_transform_float_quirk():
    s = np.arange(1, 101)
    grades = evaluate.reference_grades(s)
    differs = {int(a): int(b) for a, b in zip(s, grades) if a != b}
    assert differs == {28: 27, 55: 54, 60: 59}
    assert evaluate.reference_grades(np.array([7, 7, 7])).tolist() == [1, 1, 1]
    assert evaluate.reference_grades(np.arange(2, 101))[:3].tolist() == [1, 2, 3]  # spans 2..100: shifted


def reference_sampling(frame: pd.DataFrame, top_q: int) -> list:
    """Literal port of the published steps with pandas: groupby-sum, DataFrame.sample, sort_values."""
    sums = frame[["qkey", "grade"]].groupby("qkey").sum()
    n = min(top_q, len(sums))
    sampled = sums.sample(n=n, weights=sums["grade"], random_state=1, replace=False)
    return sampled.sort_values("grade", ascending=False).index.tolist()


@pytest.mark.parametrize("seed", range(5))
def test_sampling_equals_pandas_sample(seed):
    rng = np.random.default_rng(seed)
    n_rows = 3000
    frame = pd.DataFrame({"qkey": [f"q{int(i)}_{{!@#~}}_" for i in rng.integers(0, 400, n_rows)],
                          "grade": rng.integers(1, 101, n_rows)})
    ours = evaluate.sample_queries(frame["qkey"], frame["grade"].to_numpy(), top_q=50)
    theirs = reference_sampling(frame, 50)
    assert set(ours) == set(theirs)
    sums = frame.groupby("qkey")["grade"].sum()
    assert sums[ours].is_monotonic_decreasing
    assert evaluate.sample_queries(frame["qkey"], frame["grade"].to_numpy(), top_q=-1) != []


def test_qrels_equal_literal_reference(tiny_shop):
    from gclcore.data import read_split_csv

    frame = read_split_csv(tiny_shop / "query_0_product_id_0.csv")
    keys = evaluate.query_keys(frame)
    grades = evaluate.reference_grades(frame["score_linear"])
    sampled = evaluate.sample_queries(keys, grades, top_q=10)
    ours = evaluate.build_qrels(frame, keys, grades, sampled, top_k=5)
    literal = {}
    for key in sampled:
        rows = frame[keys == key].assign(grade=grades[(keys == key).to_numpy()])
        rows = rows.sort_values("grade", ascending=False, kind="stable").head(5)
        literal[key] = {str(p): int(round(g)) for p, g in zip(rows["product_id"], rows["grade"])}
    assert ours == literal and all(k.endswith("_{!@#~}_") for k in ours)


class HashEncoder:
    """Deterministic fake encoder: an embedding per string/path from its hash; counts calls."""

    def __init__(self, tag="a"):
        self.tag, self.calls = tag, 0

    def _embed(self, items):
        self.calls += 1
        rows = [np.random.default_rng(int(hashlib.sha256((self.tag + s).encode()).hexdigest()[:8], 16)).normal(size=16)
                for s in items]
        return torch.nn.functional.normalize(torch.tensor(np.array(rows), dtype=torch.float32), dim=1)

    def encode_text(self, texts):
        return self._embed(texts)

    def encode_image_files(self, paths, resolver):
        return self._embed([str(resolver.resolve(p)) for p in paths])

    def checksum(self):
        return self.tag


def test_outputs_match_an_independent_metric_pass(tiny_shop, tmp_path):
    enc = HashEncoder()
    result = evaluate.evaluate_split(enc, tiny_shop, "in_domain", tmp_path, image_root=tiny_shop / "images",
                                     rhs_fields=(Field("image_local", 0.9), Field("title", 0.1)), top_k=50,
                                     progress=False)
    qrels = json.loads((tmp_path / "gt_results.json").read_text())
    run = json.loads((tmp_path / "retrieval.json").read_text())
    assert list(qrels) == list(run) and all(len(v) == 50 for v in run.values())
    assert metrics.evaluate_run(qrels, run, ks=metrics.published_ks(50)) == pytest.approx(result.metrics)
    assert {"Hole@50", "Accuracy@12", "P@8"} <= set(result.metrics)
    summary = pd.read_csv(tmp_path / "output.csv")
    assert list(summary.columns) == ["mAP@50", "mrr@50", "NDCG@10", "mERR", "mRBP7", "mRBP8", "mRBP9", "P@10", "Recall@10"]
    output = json.loads((tmp_path / "output.json").read_text())
    assert output["summary"]["mAP@50"] == [result.metrics["MAP@50"]] and output["gclcore"]["top_k"] == 50
    assert len(pd.read_csv(tmp_path / "per_query.csv")) == len(qrels)

    lean = evaluate.evaluate_split(enc, tiny_shop, "in_domain", tmp_path / "lean", image_root=tiny_shop / "images",
                                   rhs_fields=(Field("image_local", 0.9), Field("title", 0.1)), top_k=50,
                                   progress=False, save_rankings=False)
    assert not (tmp_path / "lean" / "retrieval.json").exists() and lean.metrics == result.metrics


def test_query_sample_and_caches_are_reused_but_never_stale(tiny_shop, tmp_path):
    enc = HashEncoder()
    kwargs = dict(image_root=tiny_shop / "images", top_k=20, top_q=5, progress=False)
    first = evaluate.evaluate_split(enc, tiny_shop, "novel_query", tmp_path, **kwargs)
    calls = enc.calls
    again = evaluate.evaluate_split(enc, tiny_shop, "novel_query", tmp_path, **kwargs)
    assert enc.calls == calls                              # both embeddings from the cache
    assert list(again.per_query.index) == list(first.per_query.index)  # gt_results.json fixes the queries
    evaluate.evaluate_split(enc, tiny_shop, "novel_query", tmp_path, rhs_fields=(Field("title"),), **kwargs)
    assert enc.calls == calls + 1                          # a new field: titles embedded, queries cached
    fused = evaluate.evaluate_split(enc, tiny_shop, "novel_query", tmp_path,
                                    rhs_fields=(Field("image_local", 0.9), Field("title", 0.1)), **kwargs)
    assert enc.calls == calls + 1                          # both fields cached: only the fusion is new
    assert fused.metrics != first.metrics
    other = HashEncoder("b")
    evaluate.evaluate_split(other, tiny_shop, "novel_query", tmp_path, **kwargs)
    assert other.calls == 2                                # other weights: nothing reused


def test_shipped_dev_ground_truth_as_query_set(tiny_shop, tmp_path):
    result = evaluate.evaluate_split(HashEncoder(), tiny_shop, "query_0_product_id_0", tmp_path,
                                     image_root=tiny_shop / "images", query_set="dev", top_k=20, progress=False)
    dev = json.loads((tiny_shop / "query_0_product_id_0_gt_dev.json").read_text())
    assert len(result.per_query) == len(dev)


def test_field_parsing():
    assert parse_fields("image_local=0.9, title=0.1") == (Field("image_local", 0.9), Field("title", 0.1))
    assert parse_fields("query") == (Field("query", 1.0),)
    with pytest.raises(ValueError, match="name=weight"):
        parse_fields("title=heavy")
    with pytest.raises(ValueError, match="positive weight"):
        parse_fields("title=0")


@pytest.mark.slow
def test_cli_end_to_end_with_the_default_model(tiny_shop, tmp_path, capsys):
    assert evaluate.main(["--data-dir", str(tiny_shop), "--image-root", str(tiny_shop / "images"),
                          "--output-dir", str(tmp_path), "--rhs-fields", "image_local=0.9,title=0.1",
                          "--device", "cpu"]) == 0
    table = pd.read_csv(tmp_path / "results.csv")
    assert table["name"].tolist() == ["in_domain", "novel_query", "novel_document", "zero_shot"]
    assert table["NDCG@10"].between(0, 1).all() and table["mERR"].gt(0).all()
    assert "zero_shot" in capsys.readouterr().out


def test_published_flag_syntax():
    assert evaluate.context_length_arg("[[77], [0]]") == 77 and evaluate.context_length_arg("64") == 64
    with pytest.raises(Exception, match="integer"):
        evaluate.context_length_arg("[[77], ['x']]")
    assert evaluate.published_fields("['image_local', 'title']", "[0.9, 0.1]", ["img", "txt"], "right") == (
        Field("image_local", 0.9), Field("title", 0.1))
    with pytest.raises(ValueError, match="'title' is a text column"):
        evaluate.published_fields("['title']", "[1]", ["img"], "right")
    with pytest.raises(ValueError, match="differ in length"):
        evaluate.published_fields("['query']", "[1, 2]", ["txt"], "left")


def test_encoder_options_reach_the_tokenizer_and_autocast():
    from gclcore.models import load_encoder

    enc = load_encoder("default", device="cpu", context_length=8, precision="bf16", batch_size=3)
    short, full = enc.encode_text(["a long query about red running shoes for women"] * 4), None
    full = load_encoder("default", device="cpu").encode_text(["a long query about red running shoes for women"])
    assert short.shape == (4, full.shape[1]) and not torch.allclose(short[0], full[0], atol=1e-3)
    with pytest.raises(ValueError, match="precision"):
        load_encoder("default", device="cpu", precision="int8")
    with pytest.raises(ValueError, match="context_length 999"):
        load_encoder("ViT-B-32", "none", device="cpu", context_length=999)


@pytest.mark.slow
def test_cli_takes_the_published_scripts_flags(tiny_shop, tmp_path, capsys):
    """The flags of the publisher's shipped eval shell scripts, as written there."""
    argv = ["--data-dir", str(tiny_shop), "--split", "novel_query", "--image-root", str(tiny_shop / "images"),
            "--weight_key", "score_linear", "--output-dir", str(tmp_path), "--batch-size", "64", "--num_workers", "0",
            "--left-keys", "['query']", "--right-keys", "['image_local']", "--img-or-txt", "[['txt'], ['img']]",
            "--left-weights", "[1]", "--right-weights", "[1]", "--context-length", "[[77], [0]]", "--top-q", "5",
            "--device", "cpu"]
    assert evaluate.main(argv) == 0
    ours = json.loads((tmp_path / "query_1_product_id_0" / "output.json").read_text())
    assert ours["gclcore"]["rhs_fields"] == "image_local=1" and ours["gclcore"]["queries"] == 5
    assert evaluate.main(argv[:-2] + ["--right-keys", "['title']", "--device", "cpu"]) == 2
    assert "go together" not in capsys.readouterr().err


def test_a_query_sample_is_reused_only_for_the_same_data_and_settings(tiny_shop, tmp_path, recwarn):
    kwargs = dict(image_root=tiny_shop / "images", top_k=20, progress=False, cache_dir=False)
    first = evaluate.evaluate_split(HashEncoder(), tiny_shop, "novel_query", tmp_path, top_q=5, **kwargs)
    again = evaluate.evaluate_split(HashEncoder("b"), tiny_shop, "novel_query", tmp_path, top_q=5, **kwargs)
    assert list(again.per_query.index) == list(first.per_query.index) and not recwarn.list  # same queries, quietly
    other = evaluate.evaluate_split(HashEncoder(), tiny_shop, "novel_query", tmp_path, top_q=3, **kwargs)
    assert len(other.per_query) == 3                                  # other settings: sampled again, with a warning
    assert any("made again" in str(w.message) and "top_q: 5 -> 3" in str(w.message) for w in recwarn.list)
    truth = json.loads((tmp_path / "ground_truth.json").read_text())
    assert truth["settings"]["top_q"] == 3 and truth["settings"]["source"].endswith("query_1_product_id_0.csv")
    (tmp_path / "ground_truth.json").unlink()                          # a bare gt_results.json (the publisher's)
    reused = evaluate.evaluate_split(HashEncoder(), tiny_shop, "novel_query", tmp_path, top_q=5, **kwargs)
    assert len(reused.per_query) == 3 and any("no record" in str(w.message) for w in recwarn.list)


def test_a_missing_weight_column_is_an_error_and_binary_grades_are_asked_for(tiny_shop, tmp_path):
    kwargs = dict(image_root=tiny_shop / "images", top_k=20, progress=False, cache_dir=False)
    with pytest.raises(evaluate.DataFormatError, match="no column 'nope'"):
        evaluate.evaluate_split(HashEncoder(), tiny_shop, "novel_query", tmp_path / "a", weight_key="nope", **kwargs)
    binary = evaluate.evaluate_split(HashEncoder(), tiny_shop, "novel_query", tmp_path / "b", weight_key="", **kwargs)
    qrels = json.loads((tmp_path / "b" / "gt_results.json").read_text())
    assert {g for judged in qrels.values() for g in judged.values()} == {1} and binary.metrics["mERR"] > 0
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        evaluate.evaluate_split(HashEncoder(), tiny_shop, "novel_query", tmp_path / "c", **{**kwargs, "top_k": 0})


def _shop_copy(tiny_shop, tmp_path):
    import shutil

    shop = tmp_path / "shop"
    shutil.copytree(tiny_shop, shop, ignore=shutil.ignore_patterns("images"))
    return shop


def test_a_pair_listed_twice_is_counted_and_keeps_the_reference_grade(tiny_shop, tmp_path, recwarn):
    """Reference parity, made visible: the repeat counts in the sampling weights and the pair keeps the
    lowest of its grades; output.json and one warning say how many rows repeat a pair."""
    shop = _shop_copy(tiny_shop, tmp_path)
    csv = shop / "query_1_product_id_0.csv"
    rows = pd.read_csv(csv, dtype=str, keep_default_na=False)
    repeat = rows.iloc[[0]].assign(score_linear="1", position="100")  # the top pair again, with the lowest score
    pd.concat([rows, repeat]).to_csv(csv, index=False)
    kwargs = dict(rhs_fields=(Field("title"),), top_q=-1, top_k=20, progress=False, cache_dir=False)
    evaluate.evaluate_split(HashEncoder(), shop, "novel_query", tmp_path / "out", **kwargs)
    output = json.loads((tmp_path / "out" / "output.json").read_text())["gclcore"]
    assert output["duplicate_pairs"] == 1 and output["judged_not_in_corpus"] == 0
    message = next(str(w.message) for w in recwarn.list if "repeat an earlier row" in str(w.message))
    assert f"data row {len(rows) + 1} repeats row 1, product {rows['product_id'][0]}" in message
    qrels = json.loads((tmp_path / "out" / "gt_results.json").read_text())
    key = evaluate.query_keys(rows.iloc[[0]]).iloc[0]
    assert qrels[key][rows["product_id"][0]] == 1                     # the lower grade of the two listings


def test_judged_products_missing_from_the_corpus_are_counted_and_stay_in_the_ideal(tiny_shop, tmp_path, recwarn):
    shop = _shop_copy(tiny_shop, tmp_path)
    kwargs = dict(rhs_fields=(Field("title"),), top_q=-1, top_k=20, progress=False, cache_dir=False)
    full = evaluate.evaluate_split(HashEncoder(), shop, "novel_query", tmp_path / "full", **kwargs)
    qrels = json.loads((tmp_path / "full" / "gt_results.json").read_text())
    gone = {pid for judged in qrels.values() for pid in list(judged)[:1]}  # each query's best product
    corpus = json.loads((shop / "corpus_1.json").read_text())
    (shop / "corpus_1.json").write_text(json.dumps({pid: p for pid, p in corpus.items() if pid not in gone}))
    cut = evaluate.evaluate_split(HashEncoder(), shop, "novel_query", tmp_path / "cut", **kwargs)
    output = json.loads((tmp_path / "cut" / "output.json").read_text())["gclcore"]
    expected = sum(pid in gone for judged in qrels.values() for pid in judged)
    assert output["judged_not_in_corpus"] == expected > 0
    assert any(f"{expected} judged (query, product) pairs" in str(w.message) and "can never be retrieved"
               in str(w.message) for w in recwarn.list)
    run = json.loads((tmp_path / "cut" / "retrieval.json").read_text())
    assert cut.metrics["NDCG@10"] == pytest.approx(metrics.evaluate_run(qrels, run)["NDCG@10"])  # IDCG keeps them
    dropped = {q: {p: g for p, g in judged.items() if p not in gone} for q, judged in qrels.items()}
    assert metrics.evaluate_run(dropped, run)["NDCG@10"] > cut.metrics["NDCG@10"] > 0  # not silently dropped
    assert full.metrics["NDCG@10"] > 0

"""Experiments files and the book's result helpers, on hand-made results."""
import numpy as np
import pandas as pd
import pytest
import yaml

from gclcore import experiments, report


def _results(tmp_path, run, values):
    path = tmp_path / run / "test"
    path.mkdir(parents=True)
    rows = [{"split": s, "name": n, "NDCG@10": v, "mERR": v / 2, "mRBP9": v / 3, "mAP@1000": v, "mrr@1000": v}
            for (s, n), v in zip([("query_0_product_id_0", "in_domain"), ("query_1_product_id_1", "zero_shot")], values)]
    pd.DataFrame(rows).to_csv(path / "results.csv", index=False)


def test_paper_table_and_gains(tmp_path):
    _results(tmp_path, "clip", [0.2, 0.1])
    _results(tmp_path, "gcl", [0.3, 0.15])
    long = report.results(tmp_path, ["clip", "gcl"])
    table = report.paper_table(long)
    assert list(table.index) == ["clip", "gcl"]
    assert table.loc["gcl", ("in_domain", "nDCG@10")] == 0.3
    gains = report.relative_gains(long, "gcl", "clip")
    assert gains.loc["in_domain", "nDCG@10"] == pytest.approx(50.0)
    assert gains.loc["zero_shot", "ERR"] == pytest.approx(50.0)
    with pytest.raises(FileNotFoundError, match="run 'absent' has no test results"):
        report.results(tmp_path, ["absent"])


def test_published_rows_join_the_measured_tables(tmp_path):
    _results(tmp_path, "gcl", [0.3, 0.15])
    published = report.published_results(
        [{"method": "BM25", "model": "-", "nDCG": 0.071, "ERR": 0.028, "RBP": 0.052},
         {"method": "GCL", "model": "e5-large-v2", "nDCG": 0.431, "ERR": 0.4, "RBP": 0.347},
         {"method": "E5", "model": "e5-large-v2", "nDCG": 0.335, "ERR": 0.095, "RBP": 0.289}],
        {"nDCG": "NDCG@10", "ERR": "mERR", "RBP": "mRBP9"})
    table = report.paper_table(pd.concat([report.results(tmp_path, ["gcl"]), published], ignore_index=True))
    assert list(table.index) == ["gcl", "BM25 (published)", "GCL e5-large-v2 (published)", "E5 e5-large-v2 (published)"]
    assert table.loc["BM25 (published)", ("in_domain", "ERR")] == 0.028
    assert pd.isna(table.loc["BM25 (published)", ("zero_shot", "nDCG@10")])  # published: in-domain only
    shown = report.formatted(table)
    assert shown.loc["BM25 (published)", ("in_domain", "nDCG@10")] == "0.0710"
    assert shown.loc["BM25 (published)", ("zero_shot", "nDCG@10")] == "–" and shown.loc["gcl", ("zero_shot", "ERR")] == "0.0750"
    gains = report.relative_gains(published, "GCL e5-large-v2 (published)", "E5 e5-large-v2 (published)")
    assert gains.loc["in_domain", "nDCG@10"] == pytest.approx(round(100 * (0.431 - 0.335) / 0.335, 1))
    assert report.best_run(published) == "GCL e5-large-v2 (published)"
    assert report.best_run(report.results(tmp_path, ["gcl"]), "zero_shot", "mERR") == "gcl"
    with pytest.raises(ValueError, match="no run has results on split 'novel_query'"):
        report.best_run(published, "novel_query")


def test_expected_value_checks(tmp_path):
    _results(tmp_path, "gcl", [0.3, 0.15])
    long = report.results(tmp_path, ["gcl"])
    checks = report.check_expected(long, {"gcl": {"in_domain": {"NDCG@10": [0.31, 0.02], "mERR": [0.2, 0.01]},
                                                  "novel_query": {"NDCG@10": [0.1, 0.1]}}})
    assert checks["status"].tolist() == ["OK", "FAIL", "MISSING"]


def test_wins_losses():
    frame = pd.DataFrame({"query": ["a", "b", "c"] * 2, "run": ["x"] * 3 + ["y"] * 3,
                          "NDCG@10": [0.5, 0.2, 0.1, 0.4, 0.2, 0.3]})
    assert report.wins_losses(frame, "x", "y").to_dict() == {"wins": 1, "ties": 1, "losses": 1}


def test_experiment_configs(tmp_path):
    spec_path = tmp_path / "e.yaml"
    spec_path.write_text(yaml.safe_dump({"base": {"epochs": 5, "stw": "linear"},
                                         "runs": {"zero": {"epochs": 0}, "clip": {"stw": "constant"}},
                                         "tables": {"main": ["zero", "clip"]}}))
    spec = experiments.load(spec_path)
    cfg = experiments.run_config(spec, "zero", tmp_path / "runs", {"epochs": 3, "batch_size": 16})
    assert cfg.epochs == 0 and cfg.batch_size == 16 and cfg.output_dir == str(tmp_path / "runs" / "zero")
    assert experiments.run_config(spec, "clip", tmp_path, {"epochs": 3}).epochs == 3
    with pytest.raises(ValueError, match="unknown run"):
        experiments.run_config(spec, "nope", tmp_path)
    spec_path.write_text(yaml.safe_dump({"base": {}, "runs": {"a": {}}, "tables": {"t": ["b"]}}))
    with pytest.raises(ValueError, match="unknown runs"):
        experiments.load(spec_path)


def test_book_experiments_file_is_valid():
    from pathlib import Path

    spec = experiments.load(Path(__file__).parents[1] / "book" / "experiments.yaml")
    for name in spec["runs"]:
        experiments.run_config(spec, name, "runs")  # every run is a valid TrainConfig
    assert {"main", "stw", "fields", "duplicates", "text"} <= set(spec["tables"])
    text = [experiments.run_config(spec, name, "runs") for name in spec["tables"]["text"]]
    assert all(cfg.rhs_fields == "title=1" for cfg in text)  # the text-only table: query -> title
    assert [cfg.model for cfg in text].count("bm25") == 1 and {cfg.stw for cfg in text} >= {"constant", "linear"}


def test_paired_significance_over_shared_queries():
    import scipy.stats

    rng = np.random.default_rng(3)
    base = rng.random(30)
    frame = pd.concat([pd.DataFrame({"query": [f"q{i}" for i in range(30)], "NDCG@10": values, "run": run})
                       for run, values in (("gcl", base + 0.05 + rng.normal(0, 0.02, 30)), ("clip", base))])
    table = report.paired_significance(frame.sample(frac=1, random_state=0), "gcl", "clip", metrics=("NDCG@10",))
    row = table.loc["NDCG@10"]
    gcl, clip = (frame[frame["run"] == r].set_index("query")["NDCG@10"] for r in ("gcl", "clip"))
    assert row["queries"] == 30 and row["mean difference"] == pytest.approx((gcl - clip).mean())
    assert row["p (paired t)"] == pytest.approx(scipy.stats.ttest_rel(gcl, clip.loc[gcl.index]).pvalue)
    assert row["95% CI low"] < row["mean difference"] < row["95% CI high"] and row["p (randomisation)"] < 0.001
    with pytest.raises(ValueError, match="1 queries were evaluated by only one of 'gcl' and 'clip'"):
        report.paired_significance(frame.iloc[1:], "gcl", "clip", metrics=("NDCG@10",))


def _seeded_runs(root, values):
    """Fake run directories: ``values[run][stem]`` = per-query NDCG@10 / ERR arrays over queries q0..qn."""
    for run, splits in values.items():
        rows = []
        for stem, (ndcg, err) in splits.items():
            split_dir = root / run / "test" / stem
            split_dir.mkdir(parents=True)
            pd.DataFrame({"query": [f"q{i}" for i in range(len(ndcg))], "NDCG@10": ndcg, "ERR": err}).to_csv(
                split_dir / "per_query.csv", index=False)
            rows.append({"split": stem, "name": report.SPLIT_NAMES[stem], "NDCG@10": ndcg.mean(), "mERR": err.mean(),
                         "mRBP9": 0.5})
        pd.DataFrame(rows).to_csv(root / run / "test" / "results.csv", index=False)


def test_seed_tables_and_significance_over_seed_means(tmp_path):
    import scipy.stats

    from gclcore import stats

    rng = np.random.default_rng(5)
    stems = report.SPLIT_STEMS[:2]
    base = {stem: rng.random(40) for stem in stems}
    values = {}
    for seed in range(3):
        values[f"clip-{seed}"] = {s: (base[s] + rng.normal(0, 0.01, 40), base[s] / 2 + rng.normal(0, 0.01, 40))
                                  for s in stems}
        values[f"gcl-{seed}"] = {s: (base[s] + 0.1 + rng.normal(0, 0.01, 40), base[s] / 2 + rng.normal(0, 0.01, 40))
                                 for s in stems}
    _seeded_runs(tmp_path, values)
    groups = {"clip": [f"clip-{s}" for s in range(3)], "gcl": [f"gcl-{s}" for s in range(3)]}
    assert report.seed_groups(["gcl", "clip", "gcl-seed1", "clip-seed2", "gcl-seed12", "seed3"]) == {
        "gcl": ["gcl", "gcl-seed1", "gcl-seed12"], "clip": ["clip", "clip-seed2"], "seed3": ["seed3"]}

    table = report.seed_table(tmp_path, groups)
    split = report.SPLIT_NAMES[stems[0]]
    gcl_means = [values[f"gcl-{s}"][stems[0]][0].mean() for s in range(3)]
    assert table.loc["gcl", (split, "nDCG@10", "mean")] == pytest.approx(np.mean(gcl_means))
    assert table.loc["gcl", (split, "nDCG@10", "sd")] == pytest.approx(np.std(gcl_means, ddof=1))
    assert report.mean_sd(table).loc["gcl", (split, "nDCG@10")] == (f"{np.mean(gcl_means):.3f} ± "
                                                                     f"{np.std(gcl_means, ddof=1):.3f}")

    sig = report.significance(tmp_path, groups, [("gcl", "clip"), ("clip", "gcl")])  # Holm over both comparisons
    assert len(sig) == 8 and list(sig["split"].unique()) == [report.SPLIT_NAMES[s] for s in stems]
    ndcg = sig[(sig["split"] == split) & (sig["metric"] == "NDCG@10")].iloc[0]
    gcl = np.mean([values[f"gcl-{s}"][stems[0]][0] for s in range(3)], axis=0)
    clip = np.mean([values[f"clip-{s}"][stems[0]][0] for s in range(3)], axis=0)
    assert ndcg["mean difference"] == pytest.approx((gcl - clip).mean())
    assert ndcg["p (paired t)"] == pytest.approx(scipy.stats.ttest_rel(gcl, clip).pvalue)
    np.testing.assert_allclose(sig["p (Holm)"], stats.holm(sig["p (randomisation)"]))   # one family: all 8 rows
    # NDCG@10 is 0.1 higher everywhere; ERR differs by noise only: significant vs not
    assert sig.loc[sig["metric"] == "NDCG@10", "significant"].all()
    assert not sig.loc[sig["metric"] == "ERR", "significant"].any()
    marks = report.significance_marks(sig)
    assert marks.loc["gcl vs clip", (split, "NDCG@10")].endswith(" *")
    assert not marks.loc["gcl vs clip", (split, "ERR")].endswith("*")

    shifted = values["gcl-1"][stems[0]]
    pd.DataFrame({"query": [f"x{i}" for i in range(40)], "NDCG@10": shifted[0], "ERR": shifted[1]}).to_csv(
        tmp_path / "gcl-1" / "test" / stems[0] / "per_query.csv", index=False)
    with pytest.raises(ValueError, match="the runs of 'gcl' .* evaluated different queries"):
        report.significance(tmp_path, groups, [("gcl", "clip")])


def test_ranking_examples_of_a_run_without_saved_rankings_say_so(tmp_path):
    split_dir = tmp_path / "lean" / "test" / "query_0_product_id_0"
    split_dir.mkdir(parents=True)
    (split_dir / "gt_results.json").write_text('{"q": {"p": 1}}')
    with pytest.raises(FileNotFoundError, match="no ranking saved for lean .*save_rankings=true"):
        report.plot_ranking_examples(tmp_path, tmp_path, tmp_path, ["lean"], "query_0_product_id_0")

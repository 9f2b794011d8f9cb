"""Results for the book: run tables, relative gains in the paper's form, expected-value checks
(two-click-reproduction style), training curves, per-query distributions and ranking examples.

A *run directory* is what :func:`gclcore.train.train` writes: ``log.jsonl``, ``model.pt`` and
``test/<split>/{output.json, per_query.csv, retrieval.json, gt_results.json}`` + ``test/results.csv``.
"""

from __future__ import annotations

import json
import os
import re
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from gclcore.data import SPLIT_NAMES, SPLIT_STEMS, open_dataset
from gclcore.runlog import read_history, split_history

PAPER_METRICS = {"NDCG@10": "nDCG@10", "mERR": "ERR", "mRBP9": "RBP (p=0.9)"}
"""The paper's three columns. Its RBP ``p`` is not published; RBP9 is reported (7 and 8 are in the tables)."""


history = read_history
"""A run's ``log.jsonl`` as a DataFrame (:func:`gclcore.runlog.read_history`)."""


def results(runs_dir: str | os.PathLike, names: list[str]) -> pd.DataFrame:
    """Long table of the runs' test summaries: one row per (run, split). Missing runs raise, naming the file."""
    frames = []
    for name in names:
        path = Path(runs_dir) / name / "test" / "results.csv"
        if not path.exists():
            raise FileNotFoundError(f"run {name!r} has no test results: {path} (run `make book` or "
                                    f"`python -m gclcore.experiments run book/experiments.yaml {name} --out {runs_dir}`)")
        frames.append(pd.read_csv(path).assign(run=name))
    return pd.concat(frames, ignore_index=True)


def published_results(rows: list[dict], columns: dict[str, str], split: str = "in_domain") -> pd.DataFrame:
    """Published rows (``book/expected.yaml``: ``{method, model, nDCG, ERR, RBP}``) in the long format of
    :func:`results`, so they sit in the same tables as measured runs: ``run`` = ``"<method> <model>
    (published)"`` (a model of ``"-"``, BM25's, left out), ``name`` = ``split``, and each published column
    renamed by ``columns`` (``{"nDCG": "NDCG@10", ...}``)."""
    def label(row):
        return " ".join(part for part in (row["method"], row["model"], "(published)") if part != "-")

    return pd.DataFrame([{"run": label(row), "name": split, **{ours: row[theirs] for theirs, ours in columns.items()}}
                         for row in rows])


def formatted(table: pd.DataFrame, decimals: int = 4, missing: str = "–") -> pd.DataFrame:
    """``table`` as text with ``decimals`` digits everywhere and ``missing`` for absent values (e.g. a
    split a published row has no number for), so measured and published rows line up."""
    return table.map(lambda value: missing if pd.isna(value) else f"{value:.{decimals}f}")


def best_run(long: pd.DataFrame, split: str = "in_domain", metric: str = "NDCG@10") -> str:
    """The run with the highest ``metric`` on ``split`` (the first listed among equals)."""
    rows = long[long["name"] == split]
    if rows.empty:
        raise ValueError(f"no run has results on split {split!r}")
    return str(rows.loc[rows[metric].idxmax(), "run"])


def paper_table(long: pd.DataFrame, metrics: dict[str, str] = PAPER_METRICS) -> pd.DataFrame:
    """Rows = runs (in the given order), columns = (split, metric): the paper's table layout."""
    order = list(dict.fromkeys(long["run"]))
    table = long.pivot_table(index="run", columns="name", values=list(metrics), sort=False)
    table = table.reindex(order)
    splits = [SPLIT_NAMES[s] for s in SPLIT_STEMS if SPLIT_NAMES[s] in long["name"].values]
    table = table.reindex(columns=pd.MultiIndex.from_product([list(metrics), splits]))
    table = table.swaplevel(0, 1, axis=1).reindex(columns=splits, level=0)
    return table.rename(columns=metrics, level=1)


def relative_gains(long: pd.DataFrame, method: str, baseline: str, metrics: dict[str, str] = PAPER_METRICS) -> pd.DataFrame:
    """``100 * (method - baseline) / baseline`` per split and metric: the paper's "+94.5% nDCG@10" form."""
    a = long[long["run"] == method].set_index("name")
    b = long[long["run"] == baseline].set_index("name")
    gains = 100 * (a[list(metrics)] - b[list(metrics)]) / b[list(metrics)]
    splits = [SPLIT_NAMES[s] for s in SPLIT_STEMS if SPLIT_NAMES[s] in gains.index]
    return gains.reindex(splits).rename(columns=metrics).round(1)


def check_expected(long: pd.DataFrame, expected: dict) -> pd.DataFrame:
    """Compare measured values with ``expected`` = ``{run: {split name: {metric: [value, tolerance]}}}``.

    Returns one row per expectation with the measured value, the difference and OK / FAIL / MISSING.
    """
    rows = []
    for run, splits in expected.items():
        for split, values in splits.items():
            for metric, (value, tolerance) in values.items():
                hit = long[(long["run"] == run) & (long["name"] == split)]
                measured = float(hit[metric].iloc[0]) if len(hit) and metric in hit else np.nan
                status = "MISSING" if np.isnan(measured) else "OK" if abs(measured - value) <= tolerance else "FAIL"
                rows.append({"run": run, "split": split, "metric": metric, "expected": value, "tolerance": tolerance,
                             "measured": measured, "diff": measured - value, "status": status})
    return pd.DataFrame(rows)


def plot_training(log: pd.DataFrame):
    """Loss, learning rate and samples/s per step (with the median share of the time spent waiting for the
    data loader, when logged), plus the dev metrics at each evaluation."""
    import matplotlib.pyplot as plt

    train_rows, evals = split_history(log)
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4))
    speed = "samples / s"
    if "data_wait" in train_rows:
        speed += f"\n(median {train_rows['data_wait'].median():.0%} of the time waiting for data)"
    for ax, key, title in zip(axes[:3], ("loss", "lr", "samples_per_s"), ("GCL loss", "learning rate", speed)):
        if len(train_rows):
            ax.plot(train_rows["step"], train_rows[key])
        ax.set_title(title)
        ax.set_xlabel("step")
    metrics = [(key, label) for key, label in (("eval/NDCG@10", "nDCG@10"), ("eval/mERR", "ERR"),
                                                ("eval/mRBP9", "RBP9")) if key in evals]
    for key, label in metrics:
        axes[3].plot(evals["step"], evals[key], marker="o", label=label)
    axes[3].set_title(dev_corpus_label(evals, "dev metrics"), fontsize=10)
    axes[3].set_xlabel("step")
    if metrics:
        axes[3].legend()
    else:  # eval_split="": said on the panel rather than an empty legend's warning
        axes[3].text(0.5, 0.5, "no dev evaluation in this run", ha="center", va="center", transform=axes[3].transAxes)
    fig.tight_layout()
    return fig


def image_note(log: pd.DataFrame) -> str:
    """One line on the images a run trained on, from its log's ``images/*`` row: how many loads, and how
    many were missing or unreadable (grey placeholders, counted); empty for a run without images."""
    if "images/seen" not in log:
        return ""
    row = log.dropna(subset=["images/seen"]).iloc[-1]
    seen, missing, unreadable = (int(row[f"images/{k}"]) for k in ("seen", "missing", "unreadable"))
    if not missing and not unreadable:
        return f"Images: all {seen:,} loads decoded."
    return (f"**Images: {missing:,} missing and {unreadable:,} unreadable of {seen:,} loads** were trained on as "
            f"grey placeholders (the run stops past `max_bad_images` of them).")


def dev_corpus_label(evals: pd.DataFrame, prefix: str = "dev") -> str:
    """What the in-training evaluations searched, from their ``eval/corpus_size`` / ``eval/corpus_total``:
    ``"dev metrics: sub-corpus of 20,000 of 1,000,000 products"``, or ``"...: full corpus, N products"``."""
    if "eval/corpus_size" not in evals or not len(evals):
        return prefix  # a run logged before sub-corpora were recorded
    size, total = int(evals["eval/corpus_size"].iloc[-1]), int(evals["eval/corpus_total"].iloc[-1])
    if size < total:
        return f"{prefix}: sub-corpus of {size:,} of {total:,} products"
    return f"{prefix}: full corpus, {total:,} products"


def per_query(runs_dir: str | os.PathLike, names: list[str], split: str) -> pd.DataFrame:
    """Per-query metrics of several runs on one split (stem), long format with a ``run`` column."""
    # read_csv hands back one block per column of the ~150: consolidated (copy) before a column is added
    frames = [pd.read_csv(Path(runs_dir) / n / "test" / split / "per_query.csv").copy().assign(run=n) for n in names]
    return pd.concat(frames, ignore_index=True)


def plot_per_query(frame: pd.DataFrame, metrics=("NDCG@10", "ERR", "RBP9")):
    """Distribution of per-query values for each run (box + strip)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6))
    for ax, metric in zip(np.atleast_1d(axes), metrics):
        sns.boxplot(data=frame, x="run", y=metric, ax=ax, showfliers=False)
        sns.stripplot(data=frame, x="run", y=metric, ax=ax, size=2, alpha=0.3, color="black")
        ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    return fig


def wins_losses(frame: pd.DataFrame, method: str, baseline: str, metric: str = "NDCG@10", margin: float = 1e-9) -> pd.Series:
    """How many queries ``method`` wins, ties and loses against ``baseline`` on ``metric``."""
    wide = frame.pivot_table(index="query", columns="run", values=metric)
    diff = wide[method] - wide[baseline]
    return pd.Series({"wins": int((diff > margin).sum()), "ties": int((diff.abs() <= margin).sum()),
                      "losses": int((diff < -margin).sum())}, name=f"{method} vs {baseline} ({metric})")


def paired_significance(frame: pd.DataFrame, method: str, baseline: str, metrics=("NDCG@10", "ERR"),
                        level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Per metric, ``method`` against ``baseline`` over their shared queries (:func:`per_query` rows):
    the mean difference, its percentile bootstrap interval at ``level``, and the two-sided p of the
    paired t-test and of the sign-flip randomisation test (:mod:`gclcore.stats`). A query evaluated by
    only one of the two runs is an error, not silently dropped."""
    from gclcore import stats

    rows = []
    for metric in metrics:
        wide = frame[frame["run"].isin([method, baseline])].pivot_table(index="query", columns="run", values=metric)
        unpaired = wide[wide.isna().any(axis=1)]
        if len(unpaired):
            raise ValueError(f"{len(unpaired)} queries were evaluated by only one of {method!r} and {baseline!r} "
                             f"(e.g. {unpaired.index[0]!r}): evaluate both on the same queries")
        a, b = wide[method].to_numpy(), wide[baseline].to_numpy()
        low, high = stats.bootstrap_ci(a, b, level, seed=seed)
        rows.append({"metric": metric, "queries": len(a), "mean difference": float((a - b).mean()),
                     f"{level:.0%} CI low": low, f"{level:.0%} CI high": high, "p (paired t)": stats.paired_t(a, b)[1],
                     "p (randomisation)": stats.randomization_p(a, b, seed=seed)})
    return pd.DataFrame(rows).set_index("metric")


def seed_groups(names: list[str]) -> dict[str, list[str]]:
    """Runs grouped by configuration: ``name-seedN`` joins the group ``name`` (the run of seed 0 carries no
    suffix), in the order the groups first appear."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(re.sub(r"-seed\d+$", "", name), []).append(name)
    return groups


def seed_table(runs_dir: str | os.PathLike, groups: dict[str, list[str]],
               metrics: dict[str, str] = PAPER_METRICS) -> pd.DataFrame:
    """Mean and sample standard deviation over each group's runs (one configuration, several seeds) of the
    test summaries: rows = group labels, columns = (split, metric, ``mean`` | ``sd``)."""
    long = pd.concat([results(runs_dir, names).assign(group=label) for label, names in groups.items()],
                     ignore_index=True)
    stats = long.groupby(["group", "name"], sort=False)[list(metrics)].agg(["mean", "std"])
    stats = stats.rename(columns={"std": "sd"}).stack(level=0, future_stack=True).unstack("name")
    splits = [SPLIT_NAMES[s] for s in SPLIT_STEMS if SPLIT_NAMES[s] in long["name"].values]
    stats.index = stats.index.set_names(["group", "metric"])
    table = stats.unstack("metric").reorder_levels([1, 2, 0], axis=1)
    columns = pd.MultiIndex.from_product([splits, list(metrics), ["mean", "sd"]])
    return table.reindex(index=list(groups), columns=columns).rename(columns=metrics, level=1)


def mean_sd(table: pd.DataFrame, decimals: int = 3) -> pd.DataFrame:
    """:func:`seed_table` as text, one ``mean ± sd`` cell per (split, metric)."""
    cells = {column[:2]: table[column[:2] + ("mean",)].map(lambda v: f"{v:.{decimals}f}") + " ± "
             + table[column[:2] + ("sd",)].map(lambda v: f"{v:.{decimals}f}")
             for column in table.columns if column[2] == "mean"}
    return pd.DataFrame(cells, index=table.index)


def seed_mean_per_query(runs_dir: str | os.PathLike, groups: dict[str, list[str]], split: str,
                        metrics=("NDCG@10", "ERR")) -> pd.DataFrame:
    """Per-query metrics on ``split`` (stem) averaged over each group's runs (seeds), in :func:`per_query`'s
    long format with ``run`` = the group label. Runs of one group that evaluated different queries are an
    error (the seeds would not be paired)."""
    frames = []
    for label, names in groups.items():
        wide = per_query(runs_dir, names, split).pivot_table(index="query", columns="run", values=list(metrics))
        if wide.isna().any().any():
            raise ValueError(f"the runs of {label!r} ({', '.join(names)}) evaluated different queries on {split}")
        frames.append(wide.T.groupby(level=0).mean().T.reset_index().assign(run=label))
    return pd.concat(frames, ignore_index=True)


def significance(runs_dir: str | os.PathLike, groups: dict[str, list[str]], comparisons: list[tuple[str, str]],
                 metrics=("NDCG@10", "ERR"), level: float = 0.95, alpha: float = 0.05, seed: int = 0) -> pd.DataFrame:
    """Paired tests of each ``(method, baseline)`` group pair on every split and metric, over the queries
    (each query's metric averaged over a group's seeds, :func:`seed_mean_per_query`): the rows of
    :func:`paired_significance` plus ``p (Holm)``, the randomisation p-values adjusted together over the
    whole table (every comparison x split x metric is one family), and ``significant`` = ``p (Holm) <=
    alpha``. One row per (comparison, split, metric)."""
    from gclcore import stats

    some_run = next(iter(groups.values()))[0]
    stems = [s for s in SPLIT_STEMS if (Path(runs_dir) / some_run / "test" / s / "per_query.csv").exists()]
    rows = []
    for stem in stems:
        frame = seed_mean_per_query(runs_dir, groups, stem, metrics)
        for method, baseline in comparisons:
            table = paired_significance(frame, method, baseline, metrics, level, seed).reset_index()
            rows.append(table.assign(comparison=f"{method} vs {baseline}", split=SPLIT_NAMES[stem]))
    table = pd.concat(rows, ignore_index=True)
    table["p (Holm)"] = stats.holm(table["p (randomisation)"])
    table["significant"] = table["p (Holm)"] <= alpha
    first = ["comparison", "split", "metric"]
    return table[first + [c for c in table.columns if c not in first]]


def significance_marks(table: pd.DataFrame, decimals: int = 3) -> pd.DataFrame:
    """:func:`significance` as the book shows it: rows = comparisons, columns = (split, metric), cells
    ``+0.012 [+0.004, +0.020] *`` (mean difference, its interval, ``*`` when significant after Holm)."""
    low, high = [c for c in table.columns if c.endswith("CI low") or c.endswith("CI high")]

    def cell(row):
        mark = " *" if row["significant"] else ""
        return f"{row['mean difference']:+.{decimals}f} [{row[low]:+.{decimals}f}, {row[high]:+.{decimals}f}]{mark}"

    cells = table.assign(cell=table.apply(cell, axis=1))
    wide = cells.pivot_table(index="comparison", columns=["split", "metric"], values="cell", aggfunc="first", sort=False)
    splits = list(dict.fromkeys(table["split"]))
    metrics = list(dict.fromkeys(table["metric"]))
    return wide.reindex(index=list(dict.fromkeys(table["comparison"])),
                        columns=pd.MultiIndex.from_product([splits, metrics]))


def plot_query_scatter(runs_dir: str | os.PathLike, groups: dict[str, list[str]], method: str, baseline: str,
                       metric: str = "NDCG@10"):
    """One panel per split: each query's ``metric`` under ``baseline`` (x) and ``method`` (y), averaged over
    each group's seeds; points above the diagonal are queries the method improves."""
    import matplotlib.pyplot as plt

    some_run = groups[method][0]
    stems = [s for s in SPLIT_STEMS if (Path(runs_dir) / some_run / "test" / s / "per_query.csv").exists()]
    fig, axes = plt.subplots(1, len(stems), figsize=(3.6 * len(stems), 4.2), squeeze=False)
    for ax, stem in zip(axes[0], stems):
        frame = seed_mean_per_query(runs_dir, {method: groups[method], baseline: groups[baseline]}, stem, (metric,))
        wide = frame.pivot_table(index="query", columns="run", values=metric)
        x, y = wide[baseline], wide[method]
        colour = np.where(y > x + 1e-9, "tab:green", np.where(y < x - 1e-9, "tab:red", "grey"))
        ax.scatter(x, y, s=6, alpha=0.5, c=colour, linewidths=0)
        ax.plot([0, 1], [0, 1], color="black", lw=0.8)
        ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xlabel=baseline, ylabel=method if ax is axes[0, 0] else "",
               title=f"{SPLIT_NAMES[stem]}: {int((y > x + 1e-9).sum())} up, {int((y < x - 1e-9).sum())} down")
        ax.title.set_fontsize(10)
        ax.set_aspect("equal")
    fig.suptitle(f"per-query {metric} (each query's mean over seeds): {method} against {baseline}")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return fig


def plot_ranking_examples(data_dir: str | os.PathLike, image_root: str | os.PathLike, runs_dir: str | os.PathLike,
                          names: list[str], split: str, query: str | None = None, n: int = 6, seed: int = 0):
    """A query's top-n results under each run (rows), with each result's grade (0 = not judged)."""
    import matplotlib.pyplot as plt

    split_dir = Path(runs_dir) / names[0] / "test" / split
    qrels = json.loads((split_dir / "gt_results.json").read_text())
    if query is None:
        query = str(np.random.default_rng(seed).choice(sorted(qrels)))
    rankings = {name: Path(runs_dir) / name / "test" / split / "retrieval.json" for name in names}
    absent = [name for name, path in rankings.items() if not path.exists()]
    if absent:
        raise FileNotFoundError(f"no ranking saved for {', '.join(absent)} ({rankings[absent[0]]}): the run was "
                                f"tested with save_rankings=false; train it again with save_rankings=true to show its rankings")
    runs = {name: json.loads(path.read_text())[query] for name, path in rankings.items()}
    dataset = open_dataset(data_dir, image_root)
    corpus = dataset.corpus(split).set_index("product_id")
    resolver = dataset.image_resolver()
    if resolver is None:
        raise FileNotFoundError(f"no image root for {dataset.root}: pass image_root (the folder the images were "
                                f"unpacked to) to show the ranked products")
    fig, axes = plt.subplots(len(names), n, figsize=(2.1 * n, 2.6 * len(names)), squeeze=False)
    for r, name in enumerate(names):
        for c, pid in enumerate(list(runs[name])[:n]):
            ax = axes[r, c]
            ax.imshow(resolver.open(corpus.loc[pid, "image_local"]))
            grade = qrels[query].get(pid, 0)
            title = corpus.loc[pid, "title"] if "title" in corpus.columns else ""
            ax.set_title(f"#{c + 1} grade {grade}", fontsize=9, color="green" if grade else "grey")
            ax.set_xlabel("\n".join(textwrap.wrap(str(title).replace("\n", " "), 20)[:2]), fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(name, fontsize=10)
    fig.suptitle(f"{split}: {query.replace('_{!@#~}_', '')!r}")
    fig.tight_layout()
    return fig

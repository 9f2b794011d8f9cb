"""Dataset statistics and figures for the book (notebooks 01 and 02 call these; nothing here computes
results that are not shown).

Inputs are a dataset folder of any layout (:func:`gclcore.data.open_dataset`: the synthetic shop, the
real Marqo-GS download, its Hugging Face parquet copy) and, for thumbnails, the dataset (its image
resolver) or an image root resolved by basename.
"""

from __future__ import annotations

import os
import textwrap

import numpy as np
import pandas as pd

from gclcore.data import (
    SPLIT_CORPUS,
    SPLIT_NAMES,
    SPLIT_STEMS,
    DataFormatError,
    Dataset,
    ImageResolver,
    ImageSource,
    open_dataset,
    split_halves,
)

OVERVIEW_COLUMNS = ["query", "product_id", "position", "title", "image_local", "score_linear"]


def load_rows(data_dir: str | os.PathLike, columns: list[str] | None = None) -> pd.DataFrame:
    """Every split's rows stacked, with a ``split`` column (its name: the HF split name); a reference split
    the dataset lacks is left out with a message, never silently."""
    dataset = open_dataset(data_dir)
    present = dataset.resolve_splits("all")
    for stem in SPLIT_STEMS:
        if stem not in present and dataset.layout != "files":
            print(f"note: {dataset.root} has no {SPLIT_NAMES[stem]} split ({stem}); left out of the overview")
    frames = [dataset.rows(split, columns).assign(split=dataset.split_name(split)) for split in present]
    return pd.concat(frames, ignore_index=True)


def overview(rows: pd.DataFrame, data_dir: str | os.PathLike) -> pd.DataFrame:
    """Per split: rows, queries, products, results per query (mean / max), missing titles, corpus size."""
    dataset = open_dataset(data_dir)
    table = []
    for stem in dataset.splits:
        part = rows[rows["split"] == dataset.split_name(stem)]
        if part.empty:
            continue
        try:
            corpus_size = len(dataset.corpus(stem))
        except DataFormatError:  # an absent corpus shows as NaN
            corpus_size = np.nan
        per_query = part.groupby("query").size()
        table.append({
            "split": dataset.split_name(stem), "file": os.path.basename(dataset.source(stem)), "rows": len(part),
            "queries": part["query"].nunique(), "products": part["product_id"].nunique(),
            "results/query (mean)": round(per_query.mean(), 1), "results/query (max)": int(per_query.max()),
            "missing titles %": round(100 * part["title"].isna().mean(), 2) if "title" in part else np.nan,
            "corpus": dataset.corpus_label(stem), "corpus size": corpus_size,
        })
    return pd.DataFrame(table)


def plot_distributions(rows: pd.DataFrame):
    """2x2 figure: position histogram, score_linear by split, results per query, title length (words)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    sns.histplot(data=rows, x="position", hue="split", element="step", stat="density", common_norm=False,
                 discrete=True, ax=axes[0, 0])
    axes[0, 0].set_title("position of each ranked result")
    sns.boxplot(data=rows, x="split", y="score_linear", ax=axes[0, 1])
    axes[0, 1].set_title("score_linear (= 101 - position) per split")
    per_query = rows.groupby(["split", "query"]).size().rename("results").reset_index()
    sns.histplot(data=per_query, x="results", hue="split", element="step", discrete=True, ax=axes[1, 0])
    axes[1, 0].set_title("results per query within a split")
    words = rows["title"].dropna().str.split().str.len()
    sns.histplot(words, discrete=True, ax=axes[1, 1])
    axes[1, 1].set_title(f"title length in words ({rows['title'].isna().mean():.1%} titles missing)")
    fig.tight_layout()
    return fig


def plot_ranked_results(rows: pd.DataFrame, images: Dataset | ImageSource | str | os.PathLike | None,
                        query: str | None = None, n: int = 8, seed: int = 0):
    """The paper's dataset figure: one query's ranked results as thumbnails with position, score and title.

    ``images``: the :class:`~gclcore.data.Dataset` the rows come from (its image resolver: files or
    embedded parquet images), a resolver, or an image folder (stored paths resolved by basename).
    ``query`` defaults to a random query with at least ``n`` results in a single split.
    """
    import matplotlib.pyplot as plt

    if query is None:
        counts = rows.groupby(["split", "query"]).size()
        candidates = counts[counts >= n].index.get_level_values("query").unique()
        pool = candidates if len(candidates) else rows["query"].unique()
        query = str(np.random.default_rng(seed).choice(np.asarray(pool, dtype=object)))
    hits = rows[rows["query"] == query].sort_values("position").head(n)
    if isinstance(images, Dataset):
        resolver = images.image_resolver()
    elif isinstance(images, ImageSource):
        resolver = images
    else:
        resolver = ImageResolver(images, missing="placeholder") if images else None
    if resolver is None:
        raise FileNotFoundError(f"no images for {images}: pass image_root (the folder the images were unpacked to)")
    fig, axes = plt.subplots(1, len(hits), figsize=(2.2 * len(hits), 3.2), squeeze=False)
    for ax, (_, hit) in zip(axes[0], hits.iterrows()):
        ax.imshow(resolver.open(hit["image_local"]))
        title = "(no title)" if pd.isna(hit["title"]) else str(hit["title"]).replace("\n", " ")
        ax.set_title(f"#{hit['position']}  score {hit['score_linear']}", fontsize=9)
        ax.set_xlabel("\n".join(textwrap.wrap(title, 22)[:3]), fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"query: {query!r}", fontsize=11)
    fig.tight_layout()
    resolver.warn_placeholders("shown")
    return fig


def plot_split_grid(summary):
    """The 2x2 split figure: query halves (rows) x product halves (columns), each cell with its split
    name, row / query / product counts and paired corpus. ``summary`` is a :class:`~gclcore.splits.SplitSummary`."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 5.2))
    total = max(sum(summary.rows.values()), 1)
    colours = {"in_domain": "#4c72b0", "novel_query": "#55a868", "novel_document": "#c44e52", "zero_shot": "#8172b2"}
    for stem in SPLIT_STEMS:
        a, b, _ = split_halves(stem)
        name = SPLIT_NAMES[stem]
        ax.add_patch(plt.Rectangle((b, 1 - a), 1, 1, color=colours[name], alpha=0.25 + 0.5 * summary.rows[stem] / total))
        ax.text(b + 0.5, 1.5 - a, f"{name}\n{stem}.csv\n{summary.rows[stem]:,} rows\n{summary.queries[stem]:,} queries"
                f" / {summary.products[stem]:,} products\nvs {SPLIT_CORPUS[stem]}", ha="center", va="center", fontsize=9)
    ax.set_xlim(0, 2)
    ax.set_ylim(0, 2)
    ax.set_xticks([0.5, 1.5], [f"product half 0 ({summary.product_fraction:.0%} of products)\ncorpus_1.json",
                               f"product half 1 ({1 - summary.product_fraction:.0%})\ncorpus_2.json"])
    ax.set_yticks([1.5, 0.5], [f"query half 0\n({summary.query_fraction:.0%} of queries)",
                               f"query half 1\n({1 - summary.query_fraction:.0%})"])
    ax.set_title("Marqo-GS multi-split: 80/20 queries x 50/50 products")
    fig.tight_layout()
    return fig

# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,jupytext
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 1. The dataset at a glance
#
# Marqo-GS-10M pairs ~100k Google Shopping queries with their ~100 ranked products each (image + title),
# split four ways. This chapter describes whatever dataset the book is pointed at: by default the
# embedded **synthetic shop** (`gclcore.synth`, same files and conventions as the real download), or the
# real data with `make book DATA_DIR=... IMAGE_ROOT=...` (the CSV download, or the Hugging Face parquet copy,
# whose images are embedded and whose corpora are derived from its rows).

# %% tags=["parameters"]
data_dir = ""         # the dataset folder; "" -> the embedded synthetic shop (generated on first use)
image_root = ""       # "" -> <data_dir>/images
example_query = None  # a query text to show; None picks one at random

# %%
from IPython.display import Markdown, display

from gclcore import explore, paths
from gclcore.data import open_dataset, validate

data_dir = paths.resolve_data_dir(data_dir)
image_root = paths.resolve_image_root(image_root, data_dir)
rows = explore.load_rows(data_dir, columns=explore.OVERVIEW_COLUMNS)
display(Markdown(f"**{len(rows):,}** ranked (query, product) pairs, **{rows['query'].nunique():,}** queries, "
                 f"**{rows['product_id'].nunique():,}** products in `{data_dir.name}`."))
explore.overview(rows, data_dir)

# %% [markdown]
# ## Validation
# The same checks as `python -m gclcore.data validate DATA_DIR --image-root DIR`: columns, unparsable rows,
# duplicate pairs, products missing from their corpus, scores out of range, missing or unreadable images.

# %%
report = validate(data_dir, image_root, decode_limit=500, progress=False)
print(report.render())

# %% [markdown]
# ## Scores, positions, list lengths and titles
# `score_linear = 101 - position`: the grade every evaluation uses. Because a query's ~100 results are
# spread over the two product halves, a split holds only part of each ranking.

# %%
explore.plot_distributions(rows);

# %% [markdown]
# ## One query's ranked results
# The paper's dataset figure: thumbnails of a query's results in ranked order with their score and title.

# %%
explore.plot_ranked_results(rows, open_dataset(data_dir, image_root), query=example_query, n=8);

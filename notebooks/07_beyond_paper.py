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
# # 7. Beyond the paper: ranking inside the batch, and which gains are real
#
# GCL weights each (query, product) pair by its rank, but with pairs drawn at random a batch rarely holds
# two products of one query, so the model is never asked to put one of them above the other. This chapter
# measures what changes when it is: **query-grouped batches** (4 products of each query together, one from
# each quarter of its ranked list), **graded multi-positive targets**, and a **ranking term** over each
# query's in-batch products (ListNet or LambdaRank-weighted pairwise), plus soft targets in the CWCL
# manner as a baseline that needs no grades. Every formula is on the methods page ("Beyond the paper").
#
# All runs share the budget of the paper's reconstruction (`gcl-linear`: the same model, data, epochs, batch
# size and learning rate); only the batches and the objective change. The main comparison is repeated
# over three seeds, and every difference is tested over the queries (paired t-test and sign-flip
# randomisation test, bootstrap 95% intervals, Holm's correction over each table).

# %% tags=["parameters"]
data_dir = ""          # the dataset folder of runs trained here; "" -> the embedded synthetic shop
image_root = ""        # "" -> <data_dir>/images
model = "default"      # model and weights of runs trained here (see chapter 3)
pretrained = ""
runs_dir = ""          # "" -> build/runs
experiments_file = ""  # "" -> book/experiments.yaml
level = 0.95           # confidence level of the intervals
alpha = 0.05           # family-wise error rate of the significance marks (Holm)

# %%
import pandas as pd
from IPython.display import Markdown, display

from gclcore import experiments, paths, report

spec = experiments.load(paths.resolve_book_file(experiments_file, "experiments.yaml"))
runs_dir = paths.resolve_runs_dir(runs_dir)
ablation = spec["tables"]["beyond_random"] + spec["tables"]["beyond_grouped"]
groups = report.seed_groups(spec["tables"]["beyond_seeds"])
experiments.ensure_chapter_runs(spec, list(dict.fromkeys(ablation + spec["tables"]["beyond_seeds"])), runs_dir,
                                data_dir, image_root, model, pretrained)
baseline, paper, *new = groups  # binary weights, GCL as in the paper, the new objectives
display(Markdown(f"Seeds per configuration: {', '.join(f'`{g}` {len(r)}' for g, r in groups.items())}."))

# %% [markdown]
# ## Ablation: batches x in-batch objective (seed 0)
# What each run changes against the paper's reconstruction (`gcl-linear`: random batches, the diagonal
# targets, no ranking term):

# %%
configs = {name: experiments.run_config(spec, name, runs_dir) for name in ablation}
pd.DataFrame({name: {"batches": f"{c.batching}" + (f" ({c.products_per_query}/query, {c.within_query})"
                                                   if c.batching == "grouped" else ""),
                     "targets": c.duplicates,
                     "ranking term": "none" if c.ranking_loss == "none" else f"{c.ranking_loss} x {c.ranking_weight:g}"}
              for name, c in configs.items()}).T

# %%
report.paper_table(report.results(runs_dir, ablation)).round(4)

# %% [markdown]
# Each run against `gcl-linear`, over the same test queries: the mean per-query difference, its bootstrap
# interval, and `*` where the randomisation test stays significant after Holm's correction over this
# whole table (every run x split x metric).

# %%
single = {name: [name] for name in ablation}
ablation_tests = report.significance(runs_dir, single, [(name, "gcl-linear") for name in ablation if name != "gcl-linear"],
                                     level=level, alpha=alpha)
report.significance_marks(ablation_tests)

# %% [markdown]
# ## The main comparison over seeds
# Binary weights (the CLIP baseline), GCL as in the paper, and the two new objectives the seed-0 ablation
# singled out, each trained with seeds 0, 1 and 2: mean ± standard deviation over the seeds.

# %%
seeds = report.seed_table(runs_dir, groups)
report.mean_sd(seeds)

# %% [markdown]
# Paired tests over queries (each query's metric averaged over the three seeds), per split: mean difference,
# its 95% bootstrap interval, `*` = significant after Holm over the table. Test queries per split:

# %%
comparisons = [(paper, baseline)] + [(objective, paper) for objective in new]
main_tests = report.significance(runs_dir, groups, comparisons, level=level, alpha=alpha)
display(Markdown(", ".join(f"{split} {n:,}" for split, n in main_tests.groupby("split", sort=False)["queries"].first().items())))
report.significance_marks(main_tests)

# %% [markdown]
# Every number behind those marks (p-values before and after the correction):

# %%
main_tests.set_index(["comparison", "split", "metric"]).round(4)

# %% [markdown]
# ## Does a new objective beat the paper's reconstruction everywhere?
# Counted over the (split, metric) cells of the table above: ahead or behind on the seed means, and how
# many of those differences stay significant after Holm's correction.

# %%
for objective in new:
    rows = main_tests[main_tests["comparison"] == f"{objective} vs {paper}"]
    ahead, behind = rows["mean difference"] > 0, rows["mean difference"] < 0
    behind_splits = sorted(set(rows.loc[behind, "split"]))
    display(Markdown(
        f"**`{objective}`** is ahead of `{paper}` in {int(ahead.sum())} of {len(rows)} cells (significantly in "
        f"{int((ahead & rows['significant']).sum())}) and behind in {int(behind.sum())} (significantly in "
        f"{int((behind & rows['significant']).sum())})"
        + (f"; behind on {', '.join(behind_splits)}." if behind_splits else
           ": every split, both measures." if ahead.all() else ".")))

# %% [markdown]
# ## Where the gains come from, query by query
# Each point is a test query (nDCG@10, mean over the seeds): above the diagonal the first-named
# configuration ranks that query better. First GCL against binary weights, then the best new objective
# against GCL.

# %%
report.plot_query_scatter(runs_dir, groups, paper, baseline);

# %%
report.plot_query_scatter(runs_dir, groups, new[0], paper);

# %% [markdown]
# ## What moved ERR, and what moved nDCG
# ERR is dominated by the first relevant results (a user who finds a top-graded product at rank 1 stops
# there); nDCG@10 credits every graded product in the top ten. The relative gains of the seed means over
# the paper's reconstruction, in %:

# %%
means = seeds.xs("mean", axis=1, level=2)
gains = {objective: 100 * (means.loc[objective] - means.loc[paper]) / means.loc[paper] for objective in new}
pd.DataFrame(gains).T.round(1)

# %% [markdown]
# How to read this (the tables above are recomputed by every build; these notes say why things move, and
# were written from the synthetic shop's numbers):
#
# - **With grouped batches, the LambdaRank term moves ERR most.** Its weights put most of the pairwise
#   loss on the pairs whose swap changes nDCG most, i.e. those involving the query's best product; lifting
#   that product to rank 1 is what ERR rewards. On random batches the term sees only the few queries that
#   happen to meet twice in a batch, and at full weight it hurts (the ablation's `beyond-random-lambda`);
#   at a tenth of the weight it helps a little.
# - **Grouping alone does not help, and graded multi-positive targets cannot change much.** In the
#   query-to-product direction all rows of one query share the query embedding and hence the softmax row,
#   so the sum of their diagonal cross-entropies is already the multi-positive cross-entropy with targets
#   proportional to the weights; only the product-to-query direction differs. Without a ranking term,
#   grouped batches mainly replace random negatives by the query's own lower-ranked products.
# - **ListNet hurts here.** Its target spreads each query's probability over its in-batch products in
#   proportion to their weights (the linear weights of four products of one list are close), asking the
#   model to score them alike rather than to order them; the pairwise term only orders them.
# - **The CWCL-style soft targets collapse.** With 256 products per batch, `(1 + cos)/2` is about 1/2 for
#   unrelated pairs, so the true pair holds about 1% of a row's target: the targets are nearly uniform,
#   and since the similarities come from the embeddings being trained (CWCL proper takes them from a
#   frozen pretrained side), nothing anchors them. This is a CWCL-style baseline, not CWCL itself.
#
# What these tests do and do not say:
#
# - The two new objectives were chosen from the seed-0 ablation on these same test queries; seeds 1 and 2
#   are new draws, but the comparison is not free of that choice. A real-data study should choose on the
#   dev split.
# - Each query's metric is averaged over the seeds before the paired test, so the tests are about these
#   trained models on these queries (query sampling), not about training noise; the seed standard
#   deviations in the table above show that second source: a difference smaller than them is fragile even
#   when the test marks it.

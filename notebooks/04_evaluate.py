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
# # 4. Evaluation on the four splits
#
# The published protocol (`gclcore.evaluate`): per split, 2,000 test queries drawn with probability
# proportional to their summed grades, qrels from the split's own rows, retrieval of the top 1,000
# documents from the paired corpus, and nDCG@10, ERR, RBP, MAP, MRR. In-domain queries come from the
# training CSV itself, so that column measures fit; novel-query, novel-document and zero-shot measure
# generalisation.
#
# By default this chapter reads the runs of the experiments file's `main` table (zero-shot, CLIP baseline,
# GCL) from `runs_dir`, training any that are missing there first. Give `checkpoint` to evaluate any
# checkpoint instead (open_clip format, or a released GCL `*-states.pt` with `model`).

# %% tags=["parameters"]
data_dir = ""          # the dataset folder; "" -> the embedded synthetic shop (generated on first use)
image_root = ""        # "" -> <data_dir>/images
model = "default"
pretrained = ""        # weights for runs trained here (see chapter 3)
checkpoint = ""        # evaluate this checkpoint of `model` instead of the table's runs
runs_dir = ""          # "" -> build/runs
experiments_file = ""  # "" -> book/experiments.yaml
table = "main"         # the table of the experiments file whose runs are compared
rhs_fields = "image_local=0.9,title=0.1"
example_split = "query_1_product_id_1"

# %%
import pandas as pd
from IPython.display import display

from gclcore import experiments, paths, report
from gclcore.evaluate import evaluate
from gclcore.fusion import parse_fields
from gclcore.models import load_encoder, resolve_pretrained

spec = experiments.load(paths.resolve_book_file(experiments_file, "experiments.yaml"))
runs_dir = paths.resolve_runs_dir(runs_dir)
data_dir = paths.resolve_data_dir(data_dir)
image_root = paths.resolve_image_root(image_root, data_dir)
if checkpoint:
    checkpoint = paths.absolute(checkpoint)
    encoder = load_encoder(model, str(checkpoint))
    evaluate(encoder, data_dir, runs_dir / checkpoint.stem / "test", "all", image_root=image_root,
             rhs_fields=parse_fields(rhs_fields))
    runs = [checkpoint.stem]
else:
    runs = spec["tables"][table]
    experiments.ensure_runs(spec, runs, runs_dir, {"data_dir": data_dir, "image_root": image_root, "model": model,
                                                   "pretrained": resolve_pretrained(model, pretrained)})
long = report.results(runs_dir, runs)
report.paper_table(long).round(4)

# %% [markdown]
# ## Every metric

# %%
columns = ["run", "name", "NDCG@10", "mERR", "mRBP7", "mRBP8", "mRBP9"]
columns += [c for c in long.columns if c.startswith(("mAP", "mrr"))]
long[columns].round(4)

# %% [markdown]
# ## Per-query distributions and wins / losses
# How the per-query nDCG@10, ERR and RBP are spread on the zero-shot split, and on how many queries GCL
# beats the CLIP baseline.

# %%
frame = report.per_query(runs_dir, runs, example_split)
report.plot_per_query(frame);

# %%
if {"gcl-linear", "clip-baseline"} <= set(runs):
    display(pd.DataFrame([report.wins_losses(frame, "gcl-linear", "clip-baseline", m) for m in ("NDCG@10", "ERR", "RBP9")]))

# %% [markdown]
# ## Rankings before and after
# One zero-shot query's top results under each model; the title gives each result's grade (0: not among
# the query's ranked products in this split).

# %%
report.plot_ranking_examples(data_dir, image_root, runs_dir, runs, example_split, n=6);

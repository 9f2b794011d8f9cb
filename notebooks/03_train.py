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
# # 3. Training with GCL
#
# One training run: a run of `book/experiments.yaml` (default `gcl-linear`), with any field of
# `gclcore.train.TrainConfig` overridable as a papermill parameter, e.g.
# `papermill notebooks/03_train.ipynb out.ipynb -p model ViT-B-32 -p pretrained /weights/vitb32.pt -p stw reciprocal`.
#
# Each training row is a (query, product, weight) triplet: the weight comes from the pair's position
# through a score-to-weight function, and multiplies that pair's terms of the symmetric in-batch
# contrastive loss (see the methods chapter). With the embedded default model the pretrained trunks are
# frozen and their features cached once, and the projection heads are trained (LiT-style); other open_clip
# models are fine-tuned end to end.

# %% tags=["parameters"]
data_dir = "../../data/synth-small-seed0"
image_root = "../../data/synth-small-seed0/images"
model = "default"
pretrained = ""
experiment = "gcl-linear"
experiments_file = "../../book/experiments.yaml"
runs_dir = "runs"

# %%
import dataclasses

from IPython.display import Markdown, display

from gclcore import experiments, report
from gclcore.train import TrainConfig, train

fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"output_dir"}
overrides = {name: value for name, value in dict(globals()).items() if name in fields}
cfg = experiments.run_config(experiments.load(experiments_file), experiment, runs_dir, overrides)
display(Markdown(f"Run **{experiment}**: STW `{cfg.stw}`, query fields `{cfg.lhs_fields}`, document fields "
                 f"`{cfg.rhs_fields}` ({cfg.field_mode}), batch {cfg.batch_size}, {cfg.epochs} epochs, lr {cfg.lr}."))
result = train(cfg)

# %% [markdown]
# ## Curves
# Loss, learning rate (warm-up then cosine), throughput and the dev metrics (shipped dev ground truth of
# the novel-query split; the test half is never looked at during training).

# %%
log = report.history(result.output_dir)
report.plot_training(log);

# %%
speed = result.samples_per_s
display(Markdown(f"{result.steps} steps; median throughput **{speed:,.0f} samples/s**; checkpoint `{result.checkpoint}`."))
if len(result.evaluations):  # absent when eval_split is ""
    display(result.evaluations[["step", "eval/NDCG@10", "eval/mERR", "eval/mRBP9", "eval/MRR@10"]])

# %% [markdown]
# ## The four splits after training (reference protocol)

# %%
result.test if result.test is not None else Markdown("No test splits requested (`test_splits` is empty).")

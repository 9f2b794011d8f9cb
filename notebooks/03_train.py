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
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 3. Training with GCL
#
# One training run: a run of `book/experiments.yaml` (default `gcl-linear`), with any field of
# `gclcore.config.TrainConfig` overridable as a papermill parameter, e.g.
# `papermill notebooks/03_train.ipynb out.ipynb -p model ViT-B-32 -p pretrained /weights/vitb32.pt -p stw reciprocal`.
# An open_clip model without `pretrained` starts from its standard weights (ViT-B-32: `laion2b_s34b_b79k`),
# which must be in the local open_clip / Hugging Face cache; `-p pretrained none` asks for random weights.
#
# Each training row is a (query, product, weight) triplet: the weight comes from the pair's position
# through a score-to-weight function, and multiplies that pair's terms of the symmetric in-batch
# contrastive loss (see the methods chapter). With the embedded default model the pretrained trunks are
# frozen and their features cached once, and the projection heads are trained (LiT-style); other open_clip
# models are fine-tuned end to end. Each regime has its own learning-rate default (1e-3 heads only, 1e-5
# full fine-tuning; `-p lr ...` overrides), printed when training starts.
#
# **Long runs.** On real data the training cell runs for hours: papermill sets no cell time limit unless
# asked (`--execution-timeout`), and `make book DATA_DIR=...` sets none either (it keeps 30 minutes per
# cell for the synthetic shop only). The run saves its full state at least every `save_every_minutes`
# (30; `save_every` adds saves by steps or epochs), and with `resume="latest"` (this notebook's default)
# running the notebook again after an interruption (a dead kernel, a lost session) continues from the last
# saved state, exactly; a state saved by a different configuration is refused, naming the differences;
# `-p resume ""` starts the run over. The ended run keeps its state (`keep_state`), so running the notebook
# again trains no step again (its evaluations run again), and a run with more `epochs` continues it (`make
# book` on the synthetic shop, whose runs retrain from scratch, passes `-p keep_state False`). During training
# the dev metrics are computed on a fixed **dev sub-corpus** (the dev queries' judged products plus sampled
# distractors, `eval_corpus_size` products), so that an evaluation stays short; the four splits are
# evaluated with the full published protocol at the end.

# %% tags=["parameters"]
data_dir = ""          # the dataset folder; "" -> the embedded synthetic shop (generated on first use)
image_root = ""        # "" -> <data_dir>/images
model = "default"      # "default" (embedded, offline) or an open_clip name such as ViT-B-32
pretrained = ""        # "" -> the model's standard weights; a checkpoint file; an open_clip tag; "none": random
experiment = "gcl-linear"
experiments_file = ""  # "" -> book/experiments.yaml
runs_dir = ""          # the run is written to <runs_dir>/<experiment>; "" -> build/runs
resume = "latest"      # continue the run's saved state when there is one (a re-run after an interruption)
keep_state = True      # keep the state when the run ends: a re-run of this notebook reuses the run

# %%
from IPython.display import Markdown, display

from gclcore import experiments, paths, report
from gclcore.config import config_fields
from gclcore.models import resolve_pretrained
from gclcore.train import train

# First, before any data is read: weights that cannot be had (e.g. offline) stop the notebook here.
pretrained = resolve_pretrained(model, pretrained)
spec = experiments.load(paths.resolve_book_file(experiments_file, "experiments.yaml"))
runs_dir = paths.resolve_runs_dir(runs_dir)
data_dir = paths.resolve_data_dir(data_dir)
image_root = paths.resolve_image_root(image_root, data_dir)
# Every TrainConfig field this notebook defines (above, or papermill's `-p NAME VALUE`) overrides the run's
# base; run_config checks and types them (gclcore.config.coerce_overrides). The output folder is the run's own.
overrides = {name: value for name, value in dict(globals()).items() if name in config_fields() and name != "output_dir"}
cfg = experiments.run_config(spec, experiment, runs_dir, overrides)
display(Markdown(f"Run **{experiment}** of `{cfg.model}` ({cfg.pretrained or 'packaged weights'}): STW `{cfg.stw}`, "
                 f"query fields `{cfg.lhs_fields}`, document fields `{cfg.rhs_fields}` ({cfg.field_mode}), "
                 f"batch {cfg.batch_size}, {cfg.epochs} epochs; writing `{cfg.output_dir}`."))
result = train(cfg)

# %% [markdown]
# ## Curves
# Loss, learning rate (warm-up then cosine), throughput and the dev metrics (shipped dev ground truth of
# the novel-query split; the test half is never looked at during training). The dev metrics' title says
# which products they searched: the fixed dev sub-corpus, or the full corpus when it is no larger than
# `eval_corpus_size` (as on the synthetic shop). Sub-corpus values are typically higher than full-corpus ones
# (fewer distractors) and are comparable only with each other.

# %%
log = report.history(result.output_dir)
display(Markdown(report.image_note(log)))
report.plot_training(log);

# %%
speed, used = result.samples_per_s, result.config
display(Markdown(f"{result.steps} steps ({'heads only' if used.freeze == 'trunks' else 'full fine-tuning'}, "
                 f"lr {used.lr:g}, warm-up {used.warmup_steps} steps); median throughput **{speed:,.0f} samples/s**; "
                 f"checkpoint `{result.checkpoint}`."))
if len(result.evaluations):  # absent when eval_split is ""
    display(Markdown(f"Evaluations during training, {report.dev_corpus_label(result.evaluations, 'dev set')}:"))
    display(result.evaluations[["step", "eval/NDCG@10", "eval/mERR", "eval/mRBP9", "eval/MRR@10", "eval/corpus_size"]])

# %% [markdown]
# ## The four splits after training (reference protocol)

# %%
result.test if result.test is not None else Markdown("No test splits requested (`test_splits` is empty).")

# %% [markdown]
# ## The trained model as a folder others load
# `python -m gclcore.export RUN_DIR OUT_DIR`, here as a call: the run becomes an open_clip `local-dir:` folder
# (a sentence-transformers folder for a text-only model) with safetensors weights and a model card of the
# numbers above. `--model local-dir:OUT_DIR` evaluates or trains it again. The card as exported:

# %%
from gclcore.export import ExportError, export

try:
    exported = export(result.output_dir, result.output_dir / "export", name=result.output_dir.name,
                      overwrite=True)
except ExportError as err:  # the run stands; only its folder for others is missing
    display(Markdown(f"Not exported: {err}"))
else:
    card = (exported / "README.md").read_text()
    display(Markdown(f"`{exported}`: {', '.join(sorted(p.name for p in exported.iterdir()))}"))
    body = card.split("\n---\n", 1)[1]  # after the Hugging Face metadata (front matter)
    display(Markdown(body.replace("\n#", "\n###")))  # its headings below this chapter's

"""gclcore: Generalized Contrastive Learning for multi-modal product retrieval and ranking.

One concern per module:

- ``data``        the data layer (a package): ``open_dataset``, split layout, CSV / JSON readers, images,
                  parquet, remapping, validation
- ``synth``       the embedded synthetic shop (ranked search results, rendered product images)
- ``splits``      the 80/20 query x 50/50 product multi-split construction
- ``metrics``     nDCG / MAP / P / Recall (trec_eval), MRR (BEIR), ERR / RBP (GCL), vectorised
- ``retrieval``   exact chunked top-k search
- ``evaluate``    the published evaluation protocol
- ``fusion``      fields, sides and multi-field embedding fusion
- ``weights``     score-to-weight functions
- ``loss``        the GCL loss;  ``tiled_loss``  the same in blocks, for large batches
- ``models``      encoders (open_clip models, released checkpoints, the embedded default)
- ``features``    locked trunks with cached features
- ``loaders``     DataLoader datasets of images;  ``image_store``  images resized once, memory-mapped
- ``config``      the training configuration and its one override parser
- ``towers``      head-only and full fine-tuning towers;  ``optim``  optimiser, schedule, precision
- ``checkpoint``  train state, saves and exact resume;  ``runlog``  the run's log
- ``train``       the trainer;  ``experiments``  the book's runs
- ``distributed`` torchrun data parallelism (rank shards, cross-rank gather, gradient averaging)
- ``paths``       the notebooks' defaults: absolute paths in the repository, whatever the cwd
- ``explore``, ``report``  the book's tables and figures;  ``notebooks``  the notebook-pair check
"""

import warnings

# tqdm.auto (used here and by the libraries open_clip imports) warns in every notebook kernel without
# ipywidgets and falls back to text bars, which is what the book wants: the warning is noise.
warnings.filterwarnings("ignore", message="IProgress not found")

__version__ = "0.1.0"

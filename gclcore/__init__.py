"""gclcore: Generalized Contrastive Learning for multi-modal product retrieval and ranking.

One concern per module:

- ``data``        readers, image resolution and validation of the Marqo-GS-10M files
- ``synth``       the embedded synthetic shop (ranked search results, rendered product images)
- ``splits``      the 80/20 query x 50/50 product multi-split construction
- ``metrics``     nDCG / MAP / P / Recall (trec_eval), MRR (BEIR), ERR / RBP (GCL), vectorised
- ``retrieval``   exact chunked top-k search
- ``evaluate``    the published evaluation protocol
- ``fusion``      multi-field embedding fusion
- ``weights``     score-to-weight functions
- ``loss``        the GCL loss
- ``models``      encoders (open_clip models, released checkpoints, the embedded default)
- ``features``    locked trunks with cached features
- ``loaders``     DataLoader datasets
- ``train``       the trainer;  ``experiments``  the book's runs
- ``distributed`` torchrun data parallelism (rank shards, cross-rank gather, gradient averaging)
- ``explore``, ``report``  the book's tables and figures;  ``notebooks``  the notebook-pair check
"""

__version__ = "0.1.0"

"""gclcore: Generalized Contrastive Learning for multi-modal product retrieval and ranking.

One concern per module:

- ``gclcore.data``    readers, image resolution and validation of the Marqo-GS-10M files
- ``gclcore.synth``   the embedded synthetic shop (ranked search results, rendered product images)
- ``gclcore.splits``  the 80/20 query x 50/50 product multi-split construction
"""

__version__ = "0.1.0"

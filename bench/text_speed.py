"""Benchmark: text-only training and encoding speed of a Hugging Face text tower, padded vs trimmed.

    python bench/text_speed.py [--data data/synth-small-seed0] [--batch-size 64] [--steps 12] [--titles 4000]

The model is the packaged all-MiniLM-L6-v2 (``hf:pkg:all-MiniLM-L6-v2``), trained fully fine-tuned
query -> title on the in-domain split as the book's text runs are, and encoding the first ``--titles``
titles of the in-domain corpus. Each is timed twice in one process:

- ``padded``: every text padded to the 77-token context length (``gclcore.models.trims_padding`` switched
  off, so neither the padding cut nor the length-sorted encoding applies): the cost before either;
- ``trimmed``: as the code runs (each batch cut after its longest text; encoding sorted by length).

Training speed is the median of the per-step ``samples_per_s`` of ``log.jsonl`` after ``--warmup`` steps;
encoding speed is titles / wall seconds. Prints one JSON line per measurement.
"""

import argparse
import json
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import numpy as np

from gclcore import models
from gclcore.data import open_dataset
from gclcore.train import train

MODEL = "hf:pkg:all-MiniLM-L6-v2"


@contextmanager
def padding_kept(padded: bool):
    """``padded``: the tower treated as one whose padding cannot be cut (the code path of other towers)."""
    if padded:
        with mock.patch.object(models, "trims_padding", lambda model: False):
            yield
    else:
        yield


def training_speed(data: Path, batch_size: int, steps: int, warmup: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        result = train(data_dir=str(data), output_dir=out, model=MODEL, rhs_fields="title=1", batch_size=batch_size,
                       epochs=1, max_steps=steps, lr=1e-4, log_every=1, eval_split="", save_every=-1,
                       epoch_checkpoints=False, progress=False)
    return float(np.median(result.history["samples_per_s"].to_numpy()[warmup:]))


def encoding_speed(titles: list[str], batch_size: int) -> float:
    encoder = models.load_encoder(MODEL, device="cpu", batch_size=batch_size)
    start = time.perf_counter()
    encoder.encode_text(titles)
    return len(titles) / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="data/synth-small-seed0")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the median")
    parser.add_argument("--titles", type=int, default=4000, help="titles encoded (in-domain corpus order)")
    parser.add_argument("--encode-batch-size", type=int, default=256)
    args = parser.parse_args()
    corpus = open_dataset(args.data).corpus("in_domain")
    titles = corpus["title"].map(str).tolist()[:args.titles]
    for padded in (True, False):
        mode = "padded" if padded else "trimmed"
        with padding_kept(padded):
            train_rate = training_speed(Path(args.data), args.batch_size, args.steps, args.warmup)
            encode_rate = encoding_speed(titles, args.encode_batch_size)
        print(json.dumps({"mode": mode, "batch_size": args.batch_size, "train_samples_per_s": round(train_rate, 1),
                          "titles": len(titles), "encode_titles_per_s": round(encode_rate, 1)}), flush=True)


if __name__ == "__main__":
    main()

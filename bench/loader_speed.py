"""Benchmark: the training data loader alone (no model), ours against open_clip_train's, same rows and workers.

    python bench/loader_speed.py --data DATA [--model ViT-B-32] [--batch-size 256] [--batches 12] [--workers 1]

Both loaders serve training rows of the same split (the in-domain one: query text -> product image; each
its own random draw of them) in batches of ``--batch-size`` with ``--workers`` DataLoader workers, and
nothing consumes them but a clock: the samples/s a loader can feed a trainer whose model were infinitely
fast. The workers start together, so their first batches arrive almost at once: the clock runs from the
last of that first round to the last batch (``--batches`` must exceed ``--workers``), best of ``--rounds``.

- ``open_clip_train``: its ``CsvDataset`` + ``DataLoader`` as ``get_csv_dataset`` builds them (decode the
  original file, the model's training transform, float32 normalised pixels);
- ``ours, files``: :class:`gclcore.towers.FullTowers`'s loader with the image store off (decode the original);
- ``ours, image store``: the same with the dataset's store (``python -m gclcore.image_store build``; built
  here first when absent): a memory-mapped row, the training crop, uint8 pixels.

Ours includes what the trainer's main process does as each batch arrives (image counting, padding cut;
the model here is on the CPU, so no device copy). On a machine with CUDA both loaders pin their batches'
memory, as in training. Our normalisation runs on the device in training, so it is left out here;
open_clip's runs in its workers and is counted. Prints JSON.
"""

import argparse
import json
import tempfile
import time
from argparse import Namespace
from pathlib import Path

from train_speed import open_clip_csv  # bench/, the script's own folder

from gclcore import image_store
from gclcore.batching import epoch_batches
from gclcore.config import TrainConfig
from gclcore.data import open_dataset
from gclcore.fusion import parse_fields
from gclcore.models import load_encoder
from gclcore.towers import build_towers
from gclcore.train import training_rows


def arrival_rate(batches, batch_size: int, workers: int) -> float:
    """Samples/s from the arrival of the workers' first round of batches to the last batch's."""
    arrivals = [time.perf_counter() for _ in batches]
    first = max(workers, 1) - 1
    return batch_size * (len(arrivals) - 1 - first) / (arrivals[-1] - arrivals[first])


def open_clip_rate(data: Path, encoder, batch_size: int, batches: int, workers: int, work: Path) -> float:
    from open_clip_train.data import get_csv_dataset

    csv_path = open_clip_csv(data, batch_size * batches, work / "train.csv")
    args = Namespace(train_data=str(csv_path), csv_img_key="filepath", csv_caption_key="query",
                     csv_separator=",", distributed=False, batch_size=batch_size, workers=workers)
    loader = get_csv_dataset(args, encoder.preprocess_train, is_train=True, tokenizer=encoder.tokenizer).dataloader
    return arrival_rate(iter(loader), batch_size, workers)


def ours_rate(data: Path, encoder, batch_size: int, batches: int, workers: int, store: bool) -> float:
    cfg = TrainConfig(data_dir=str(data), rhs_fields="image_local=1")
    fields = parse_fields(cfg.lhs_fields) + parse_fields(cfg.rhs_fields)
    dataset = open_dataset(data)
    rows = training_rows(cfg, fields, dataset)
    towers = build_towers("none", encoder, rows, fields, dataset, cache_dir="", seed=0, workers=workers,
                          progress=False, image_store_dir="" if store else "none")
    return arrival_rate(towers.loader(epoch_batches(len(rows), batch_size, 0, 0)[:batches], 0), batch_size, workers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a dataset folder with images (e.g. python -m gclcore.synth)")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.batches <= max(args.workers, 1):
        parser.error(f"--batches ({args.batches}) must exceed --workers ({args.workers}): the workers' first round "
                     f"of batches is not timed")
    data = Path(args.data)
    encoder = load_encoder(args.model, pretrained="none", device="cpu")
    image_store.build(open_dataset(data), encoder.preprocess, workers=args.workers, progress=False)
    loaders = {
        "open_clip_train": lambda work: open_clip_rate(data, encoder, args.batch_size, args.batches, args.workers, work),
        "ours_files": lambda work: ours_rate(data, encoder, args.batch_size, args.batches, args.workers, store=False),
        "ours_image_store": lambda work: ours_rate(data, encoder, args.batch_size, args.batches, args.workers, store=True),
    }
    rates = {name: [] for name in loaders}
    for _ in range(args.rounds):  # interleaved: a noisy box slows all three alike
        for name, rate in loaders.items():
            with tempfile.TemporaryDirectory() as work:
                rates[name].append(round(rate(Path(work)), 1))
    best = {name: max(r) for name, r in rates.items()}
    print(json.dumps({"model": args.model, "batch_size": args.batch_size, "batches": args.batches,
                      "workers": args.workers, "samples_per_s": best, "per_round": rates,
                      "store_vs_open_clip": round(best["ours_image_store"] / best["open_clip_train"], 2)}, indent=1))


if __name__ == "__main__":
    main()

"""Benchmark: training throughput of our trainer against open_clip's own trainer (open_clip_train).

    pip install -e '.[bench]'   # open_clip_train's own needs
    python bench/train_speed.py [--data data/synth-small-seed0] [--batch-size 32] [--steps 12] [--device cpu]

Same model config (the embedded default dual encoder, full fine-tuning: freeze="none"), same training
rows (the in-domain split: query text -> product image), same batch size, same number of DataLoader
workers, on the same machine. Ours runs three ways so the cost of each GCL ingredient is visible:

- ``binary``: query -> image, constant weights (exactly CLIP's loss: the like-for-like comparison);
- ``weighted``: query -> image with linear score-to-weight weights (the cost of GCL weighting);
- ``multi-field``: query -> image 0.9 + title 0.1 fused, linear weights (GCL as the book trains it; it
  encodes a second document field, so it does more work per sample by design).

Throughput is the median of the logged samples/s after the first logging window (warm-up excluded).
"""

import argparse
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from gclcore.data import ImageResolver, read_split_csv
from gclcore.models import DEFAULT_MODEL, _register_default_config
from gclcore.train import train


def open_clip_speed(data_dir: Path, batch_size: int, steps: int, workers: int, device: str, work: Path) -> float:
    from open_clip_train.main import main as open_clip_main

    rows = read_split_csv(data_dir / "query_0_product_id_0.csv", columns=["query", "image_local"])
    resolver = ImageResolver(data_dir / "images")
    rows = rows.assign(filepath=[str(resolver.resolve(p)) for p in rows["image_local"]])
    rows = rows.sample(n=min(len(rows), batch_size * steps), random_state=0)
    csv_path = work / "train.csv"
    rows[["filepath", "query"]].to_csv(csv_path, index=False)
    norm = _register_default_config(DEFAULT_MODEL)
    args = ["--model", DEFAULT_MODEL, "--train-data", str(csv_path), "--dataset-type", "csv", "--csv-separator", ",",
            "--csv-img-key", "filepath", "--csv-caption-key", "query", "--batch-size", str(batch_size),
            "--epochs", "1", "--workers", str(workers), "--device", device, "--lr", "1e-4", "--warmup", "2",
            "--logs", str(work / "logs"), "--name", "bench", "--log-every-n-steps", "2", "--save-frequency", "0",
            "--precision", "fp32", "--image-mean", *map(str, norm["mean"]), "--image-std", *map(str, norm["std"])]
    open_clip_main(args)
    log = (work / "logs" / "bench" / "out.log").read_text()
    speeds = [float(m) for m in re.findall(r"([0-9.]+)/s/gpu", log)]
    return float(np.median(speeds[1:] if len(speeds) > 1 else speeds))


def ours_speed(data_dir: Path, batch_size: int, steps: int, workers: int, device: str, work: Path, **cfg) -> float:
    result = train(data_dir=str(data_dir), output_dir=str(work / "ours"), freeze="none", batch_size=batch_size,
                   epochs=1, max_steps=steps, workers=workers, device=device, log_every=2, eval_split="",
                   precision="fp32", progress=False, **cfg)
    speeds = result.history["samples_per_s"].to_numpy()
    shutil.rmtree(work / "ours")
    return float(np.median(speeds[1:] if len(speeds) > 1 else speeds))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="data/synth-small-seed0")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    data = Path(args.data)
    common = dict(batch_size=args.batch_size, steps=args.steps, workers=args.workers, device=args.device)
    out = {"batch_size": args.batch_size, "steps": args.steps, "workers": args.workers, "device": args.device}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        out["open_clip_train"] = open_clip_speed(data, work=work, **common)
        out["ours_binary"] = ours_speed(data, work=work, stw="constant", rhs_fields="image_local=1", **common)
        out["ours_weighted"] = ours_speed(data, work=work, stw="linear", rhs_fields="image_local=1", **common)
        out["ours_multi_field"] = ours_speed(data, work=work, stw="linear", rhs_fields="image_local=0.9,title=0.1",
                                             **common)
    out["ratio_binary_vs_open_clip"] = round(out["ours_binary"] / out["open_clip_train"], 3)
    out["weighting_cost_pct"] = round(100 * (out["ours_binary"] / out["ours_weighted"] - 1), 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: the largest global batch one device trains, with GradCache accumulation + the tiled loss +
gradient checkpointing of the towers (issue #15, item 2).

    python bench/large_batch.py --make-shop DATA --queries 6000 --products 30000   # a shop with enough rows
    python bench/large_batch.py --data DATA --model ViT-B-32 --precision bf16 \
        --micro-batch 2048 --global-batch 16384 65536 131072 [--steps 2] [--workers 12]

Each global batch is one run of :func:`gclcore.train.train` (full fine-tuning, ``accum_freq`` = global /
micro, the loss tiled automatically above 8,192, ``grad_checkpointing=true``), the same code path as
``python -m gclcore.train``. Per run it prints the peak device memory
(``torch.cuda.max_memory_allocated``), the seconds and samples/s of the last optimiser step, and the final
loss; a run that runs out of memory is reported as such and ends the sweep (larger batches need more).
The shop must hold at least ``global batch`` training rows: ``--make-shop`` writes a synthetic one
(``gclcore.synth`` with a custom size; 96 px images).
"""

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from gclcore.synth import Preset, generate
from gclcore.train import train


def run(data: str, global_batch: int, micro_batch: int, steps: int, work: Path, **cfg) -> dict:
    """One training run at ``global_batch``; its peak device memory, last step's time and samples/s."""
    if global_batch % micro_batch:
        raise SystemExit(f"--global-batch {global_batch} is not a multiple of --micro-batch {micro_batch}")
    cuda = torch.cuda.is_available() and cfg.get("device", "cuda") != "cpu"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    step_ends = []
    out = {"global_batch": global_batch, "micro_batch": micro_batch, "accum_freq": global_batch // micro_batch}
    try:
        result = train(data_dir=data, output_dir=str(work / f"b{global_batch}"), freeze="none",
                       batch_size=micro_batch, accum_freq=global_batch // micro_batch, grad_checkpointing=True,
                       max_steps=steps, epochs=steps, eval_split="", save_every=-1, epoch_checkpoints=False,
                       progress=False, log_every=1, grad_clip=0.0,
                       on_step=lambda step: step_ends.append(time.perf_counter()), **cfg)
    except torch.OutOfMemoryError as err:
        return out | {"result": "out of memory", "error": str(err).splitlines()[0]}
    finally:
        shutil.rmtree(work / f"b{global_batch}", ignore_errors=True)
    last_step_s = step_ends[-1] - step_ends[-2] if len(step_ends) > 1 else float("nan")
    out |= {"result": "trained", "steps": len(step_ends), "last_step_s": round(last_step_s, 2),
            "samples_per_s_last_step": round(global_batch / last_step_s, 1),
            "final_loss": round(float(result.history["loss"].dropna().iloc[-1]), 4)}
    if cuda:
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        out["device_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="a shop with at least the largest global batch of training rows")
    parser.add_argument("--make-shop", metavar="DIR", help="write a synthetic shop of --queries x 30 rows here")
    parser.add_argument("--queries", type=int, default=6000)
    parser.add_argument("--products", type=int, default=30_000)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none", help="tag or local checkpoint (default none: random weights)")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--micro-batch", type=int, default=4096)
    parser.add_argument("--global-batch", type=int, nargs="+", default=[16_384, 65_536])
    parser.add_argument("--steps", type=int, default=2, help="optimiser steps per run (the last one is timed)")
    parser.add_argument("--workers", type=int, default=-1)
    parser.add_argument("--device", default="", help="default: cuda when available")
    args = parser.parse_args()
    if args.make_shop:
        generate(args.make_shop, Preset(queries=args.queries, products=args.products, results=30, pool=300,
                                        brands=200))
        return
    if not args.data:
        parser.error("give --data (or --make-shop to write one)")
    cfg = dict(model=args.model, pretrained=args.pretrained, precision=args.precision, workers=args.workers,
               device=args.device)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for global_batch in sorted(args.global_batch):
            results.append(run(args.data, global_batch, args.micro_batch, args.steps, Path(tmp), **cfg))
            print(json.dumps(results[-1]), flush=True)
            if results[-1]["result"] != "trained":
                break
    trained = [r["global_batch"] for r in results if r["result"] == "trained"]
    print(json.dumps({"model": args.model, "precision": args.precision,
                      "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
                      "largest_global_batch_trained": max(trained, default=0), "runs": results}, indent=1))


if __name__ == "__main__":
    sys.exit(main())

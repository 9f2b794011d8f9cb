"""Benchmark: data-parallel scaling on CPU, 2 ranks against 1 with the same per-rank batch.

    python bench/ddp_scaling.py [--data data/synth-small-seed0] [--batch-size 16] [--steps 24] [--rounds 2]

Full fine-tuning of the embedded default dual encoder (freeze="none": EfficientNet-Lite0 + MiniLM, 27M
trainable parameters, ~105 MB of fp32 gradients all-reduced per step), query -> image 0.9 + title 0.1,
one thread per rank (``OMP_NUM_THREADS=1``), images decoded in each rank's own process (``workers=0``),
so 2 ranks use 2 cores. Three configurations, run as a user would (``python -m gclcore.train`` and
``torchrun --nproc-per-node 2 -m gclcore.train``), interleaved over ``--rounds``:

- ``one_rank``: a single process, ``batch_size`` rows per step;
- ``two_ranks_overlap``: 2 gloo ranks, ``batch_size`` rows each, DistributedDataParallel's bucketed
  all-reduce during backward (``grad_sync=overlap``, the default);
- ``two_ranks_after_backward``: the same, one flat all-reduce after backward (``grad_sync=after_backward``).

Throughput is the trainer's own logged global samples/s (every step logged), median over the steps after
``--warmup``. Scaling efficiency = two-rank samples/s / (2 x one-rank samples/s): 1.0 is perfect.
Prints the numbers as JSON and draws ``bench/ddp_scaling.png``.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent


def run(work: Path, nproc: int, data: str, batch_size: int, steps: int, grad_sync: str) -> list[float]:
    """The per-step global samples/s of one training run."""
    out = work / f"run-{nproc}-{grad_sync}"
    cfg = dict(data_dir=data, output_dir=str(out), freeze="none", batch_size=batch_size, epochs=1, max_steps=steps,
               lr=1e-5, warmup_steps=0, eval_split="", workers=0, log_every=1, save_every=-1, save_every_minutes=0,
               epoch_checkpoints=False, progress=False, grad_sync=grad_sync, feature_cache_dir=str(work / "features"))
    (work / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
                if nproc > 1 else [sys.executable])
    subprocess.run(launcher + ["-m", "gclcore.train", "--config", str(work / "cfg.yaml")], check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [row["samples_per_s"] for row in rows if "samples_per_s" in row]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="data/synth-small-seed0")
    parser.add_argument("--batch-size", type=int, default=16, help="rows per rank per step")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--warmup", type=int, default=4, help="first steps left out of the median")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    configs = {"one_rank": (1, "overlap"), "two_ranks_overlap": (2, "overlap"),
               "two_ranks_after_backward": (2, "after_backward")}
    speeds = {name: [] for name in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):  # interleaved: a slow spell of the machine hits every configuration
            for name, (nproc, grad_sync) in configs.items():
                speeds[name] += run(Path(tmp), nproc, args.data, args.batch_size, args.steps, grad_sync)[args.warmup:]
    out = {"batch_size_per_rank": args.batch_size, "steps": args.steps, "rounds": args.rounds, "threads_per_rank": 1,
           "cores": os.cpu_count()}
    out |= {f"{name}_samples_per_s": round(float(np.median(s)), 2) for name, s in speeds.items()}
    for name in ("two_ranks_overlap", "two_ranks_after_backward"):
        out[f"{name}_efficiency"] = round(out[f"{name}_samples_per_s"] / (2 * out["one_rank_samples_per_s"]), 3)
    print(json.dumps(out, indent=1))
    plot(out, HERE / "ddp_scaling.png")


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["one_rank", "two_ranks_after_backward", "two_ranks_overlap"]
    labels = ["1 rank", "2 ranks,\nall-reduce after backward", "2 ranks,\nDDP overlapped (default)"]
    speeds = [out[f"{name}_samples_per_s"] for name in names]
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    bars = ax.bar(labels, speeds, color=["#999999", "#8fb3d9", "#2b6cb0"])
    ax.axhline(2 * speeds[0], color="black", linestyle="--", linewidth=1, label="2 x one rank (perfect scaling)")
    for bar, name in zip(bars[1:], names[1:]):
        ax.annotate(f"{out[f'{name}_efficiency']:.0%} efficient", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=9)
    ax.set(ylabel="global samples / s", ylim=(0, 2.25 * speeds[0]),
           title=f"Full fine-tuning on CPU, {out['batch_size_per_rank']} rows per rank, 1 thread per rank")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())

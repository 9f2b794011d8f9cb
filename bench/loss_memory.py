"""Peak memory of one forward + backward of the GCL loss, dense vs tiled, as the batch grows (CPU).

Each (form, batch size) runs in a fresh process, which reports its peak resident memory (``ru_maxrss``)
after the loss and its gradients, minus the peak it had before the loss (inputs allocated): the memory the
loss itself needed. Inputs: B x d unit embeddings, graded weights, ``duplicates="positives"`` (the
heaviest targets: ids compared block by block). Writes ``bench/loss_memory.csv`` and ``bench/loss_memory.png``.

    python bench/loss_memory.py                           # the table in bench/RESULTS.md
    python bench/loss_memory.py --sizes 1024 4096 --dim 512
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def measure(form: str, batch: int, dim: int, tile: int) -> dict:
    """In this process: the loss's extra peak memory (MiB) and time (s) for one forward + backward."""
    import torch
    import torch.nn.functional as F

    from gclcore.loss import GCLLoss

    g = torch.Generator().manual_seed(0)
    query = F.normalize(torch.randn(batch, dim, generator=g), dim=1).requires_grad_(True)
    doc = F.normalize(torch.randn(batch, dim, generator=g), dim=1).requires_grad_(True)
    weights = torch.rand(batch, generator=g) + 0.1
    qids, dids = torch.randint(0, batch // 4, (batch,), generator=g), torch.arange(batch)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    loss = GCLLoss(duplicates="positives", tile=0 if form == "dense" else tile)
    loss(query, doc, torch.tensor(20.0), weights, qids, dids).backward()
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"form": form, "batch": batch, "dim": dim, "tile": tile if form == "tiled" else "",
            "peak_mib": round((after - before) / 1024, 1), "seconds": round(seconds, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768])
    parser.add_argument("--dense-max", type=int, default=16384, help="largest batch for the dense loss")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--tile", type=int, default=2048)
    parser.add_argument("--one", nargs=2, metavar=("FORM", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.dim, args.tile)))
        return 0
    rows = []
    for batch in args.sizes:
        for form in ("dense", "tiled"):
            if form == "dense" and batch > args.dense_max:
                continue
            done = subprocess.run([sys.executable, __file__, "--one", form, str(batch), "--dim", str(args.dim),
                                   "--tile", str(args.tile)], capture_output=True, text=True, check=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    with open(HERE / "loss_memory.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, HERE / "loss_memory.png")
    return 0


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for form, style in (("dense", "o-"), ("tiled", "s-")):
        mine = [r for r in rows if r["form"] == form]
        label = form if form == "dense" else f"tiled ({mine[0]['tile']} x {mine[0]['tile']} blocks)"
        axes[0].plot([r["batch"] for r in mine], [max(r["peak_mib"], 1) for r in mine], style, label=label)
        axes[1].plot([r["batch"] for r in mine], [r["seconds"] for r in mine], style, label=label)
    for ax, ylabel in zip(axes, ("extra peak memory (MiB)", "forward + backward (s)")):
        ax.set(xscale="log", yscale="log", xlabel="global batch B", ylabel=ylabel)
        ax.set_xticks([r["batch"] for r in rows if r["form"] == "tiled"])
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.StrMethodFormatter("{x:,.0f}"))
        ax.tick_params(axis="x", rotation=30)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"GCL loss (graded multi-positive targets, d = {rows[0]['dim']}) on CPU, fp32")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())

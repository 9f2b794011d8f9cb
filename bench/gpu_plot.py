"""The GPU measurements of issue #15 as one figure for the performance chapter (bench/RESULTS.md).

    python bench/gpu_plot.py [--results bench/gpu_h200] [--out bench/gpu_issue15.png]

Reads the JSON that ``bench/gpu_issue15.sh`` writes (retrieval_1m, retrieval_10m, train_speed and,
where present, train_speed_gcl, large_batch) and draws: the search against its floor and target, training
samples/s of both trainers against the target (each with its median share of a step spent waiting for data,
where recorded), and peak device memory against the global batch.
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default="bench/gpu_h200")
    parser.add_argument("--out", default="bench/gpu_issue15.png")
    args = parser.parse_args()
    results = Path(args.results)
    load = lambda name: json.loads((results / f"{name}.json").read_text())  # noqa: E731
    search = {"1M docs": load("retrieval_1m"), "10M docs": load("retrieval_10m")}
    speed, batches = load("train_speed"), load("large_batch")
    if (results / "train_speed_gcl.json").exists():  # GCL's variants, timed last since the second GPU run
        gcl = load("train_speed_gcl")
        speed.update({k: v for k, v in gcl.items() if k.startswith("ours_")})
        speed.setdefault("data_wait", {}).update(gcl.get("data_wait", {}))
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(14, 4.2))

    names = list(search)
    x = range(len(names))
    left.bar([i - 0.2 for i in x], [search[n]["retrieval_s"] for n in names], 0.4, label="exact_topk")
    left.bar([i + 0.2 for i in x], [search[n]["floor_s"] for n in names], 0.4, label="floor: matmul + topk")
    for i, target in zip(x, (0.1, 1.0)):
        left.hlines(target, i - 0.45, i + 0.45, colors="k", linestyles="--")
    left.set(xticks=list(x), xticklabels=names, yscale="log", ylabel="seconds (log)", ylim=(0.01, 3),
             title="top-1000 for 2,000 queries, 512-d fp16\n(dashed: target)")
    left.legend(loc="upper left")

    labels = {"open_clip_train": "open_clip_train", "ours_binary_padded": "ours: binary, texts padded",
              "ours_binary": "ours: binary", "ours_weighted": "ours: GCL weights", "ours_multi_field": "ours: multi-field"}
    keys = [k for k in labels if k in speed]  # the padded run was added after the first GPU run
    middle.barh([labels[k] for k in keys], [speed[k] for k in keys],
                color=["grey" if k == "open_clip_train" else "C0" for k in keys])
    waits = speed.get("data_wait", {})  # recorded since the first GPU run
    for row, key in enumerate(keys):
        if key in waits:
            middle.text(60, row, f"{waits[key]:.0%} of a step waiting for data", va="center", color="white", fontsize=8)
    middle.axvline(4000, color="k", linestyle="--")
    middle.invert_yaxis()
    middle.set(xlabel="samples/s (median step)",
               title=f"ViT-B-32 {speed['precision']} full fine-tuning, batch {speed['batch_size']:,}\n"
                     f"{speed['workers']} loader workers (dashed: target)")

    runs = [r for r in batches["runs"] if r["result"] == "trained"]
    right.plot([r["global_batch"] for r in runs], [r["peak_memory_gib"] for r in runs], "o-")
    right.axhline(runs[0]["device_memory_gib"], color="k", linestyle="--")
    right.set(xlabel="global batch", ylabel="peak GiB", ylim=(0, None),
              xticks=[r["global_batch"] for r in runs], xticklabels=[f"{r['global_batch']:,}" for r in runs],
              title="GradCache + tiled loss + checkpointing\n(dashed: the device's memory)")
    fig.suptitle(f"{batches['gpu']}: issue #15's GPU measurements")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()

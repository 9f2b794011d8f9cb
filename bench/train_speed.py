"""Benchmark: training throughput of our trainer against open_clip's own trainer (open_clip_train).

    pip install -e '.[bench]'   # open_clip_train's own needs
    python bench/train_speed.py [--data data/synth-small-seed0] [--batch-size 32] [--steps 12] [--rounds 1]
    python bench/train_speed.py --device cuda --model ViT-B-32 --pretrained /weights/vitb32.pt \
        --precision bf16 --batch-size 256 --workers 8 --data DATA_DIR     # the GPU target
    python bench/train_speed.py ... --runs open_clip_train ours_binary [--profile]

Same model config (default: the embedded default dual encoder; full fine-tuning: freeze="none"), same training
rows (the in-domain split: query text -> product image), same batch size, same number of DataLoader
workers, on the same machine. Ours runs four ways so the cost of each GCL ingredient is visible:

- ``binary``: query -> image, constant weights (exactly CLIP's loss: the like-for-like comparison);
- ``weighted``: query -> image with linear score-to-weight weights (the cost of GCL weighting);
- ``multi-field``: query -> image 0.9 + title 0.1 fused, linear weights (GCL as the book trains it; it
  encodes a second document field, so it does more work per sample by design);
- ``binary_padded``: ``binary`` with every text padded to the tower's context length, as ``open_clip_train``
  feeds it (the trainer's padding cuts switched off: :func:`gclcore.causal_text.cut_after_pooled`,
  :func:`gclcore.models.trim_padding`), so the cut's share of the difference is measured, not inferred.

Both trainers are timed the same way: every step is logged (open_clip's ``--log-every-n-steps 1``, our
``log_every=1``), each log line's samples/s is ``batch_size / (time from the end of the previous step to
the end of this one)`` (data wait included), and throughput is the median over the steps after
``--warmup`` steps. Ours runs with ``grad_clip=0`` here because ``open_clip_train`` does not clip by
default. ``data_wait`` is each trainer's median share of a step spent waiting for its data loader (open_clip's
``Data (t)`` / ``Batch (t)``, our log's ``data_wait``): near 1, the loader sets the pace, not the model.
open_clip's is an upper bound on a GPU: its step does not wait for the device before its clock stops, so
the rest of a step's device work is waited for in the next step's ``Data (t)`` (at its logging's
``.item()``); ours waits inside the step (the finite-gradient check), outside the timed wait.
Each timed run is a Python process of its own, so that no trainer runs with another's process-wide
settings (``open_clip_train`` switches on TF32 matrix products and cuDNN's benchmark mode for the whole
process) or its cached device memory.

``--profile`` runs each trainer under ``torch.profiler`` and reports, instead of a comparable speed, where its
steady steps' time goes on the device (:func:`device_profile`): whether a trainer is slower because its
device works longer per step or because the device waits for it.

The loss-side cost of GCL is also timed in isolation (``loss_ms``): forward + backward of open_clip's
``ClipLoss`` against our loss as each configuration calls it (weights, presence masks, fusion), on
random (batch, 256) embeddings; ``loss_pct_of_step`` relates it to the measured step time.
"""

import argparse
import contextlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from gclcore.data import ImageResolver, read_split_csv
from gclcore.models import DEFAULT_MODEL, _register_default_config
from gclcore.train import train

RUNS = {"open_clip_train": None,
        "ours_binary": dict(stw="constant", rhs_fields="image_local=1"),
        "ours_binary_padded": dict(stw="constant", rhs_fields="image_local=1", padded=True),
        "ours_weighted": dict(stw="linear", rhs_fields="image_local=1"),
        "ours_multi_field": dict(stw="linear", rhs_fields="image_local=0.9,title=0.1")}
"""Each timed trainer: ``open_clip_train`` (None), or our trainer's options."""


def steady(steps: list[tuple[float, float]], warmup: int) -> list[tuple[float, float]]:
    """Per-step (samples/s, data-wait share) once the first ``warmup`` steps (worker start, allocator) are dropped."""
    return steps[warmup:] if len(steps) > warmup else steps


def open_clip_csv(data_dir: Path, n_rows: int, csv_path: Path) -> Path:
    """``n_rows`` random in-domain training rows (query, resolved image file) as open_clip_train's CSV dataset."""
    rows = read_split_csv(data_dir / "query_0_product_id_0.csv", columns=["query", "image_local"])
    resolver = ImageResolver(data_dir / "images")
    rows = rows.assign(filepath=[str(resolver.resolve(p)) for p in rows["image_local"]])
    rows.sample(n=min(len(rows), n_rows), random_state=0)[["filepath", "query"]].to_csv(csv_path, index=False)
    return csv_path


def open_clip_speed(data_dir: Path, batch_size: int, steps: int, workers: int, device: str, work: Path,
                    warmup: int, model: str, pretrained: str, precision: str) -> list[tuple[float, float]]:
    from open_clip_train.main import main as open_clip_main

    csv_path, name = open_clip_csv(data_dir, batch_size * steps, work / "train.csv"), f"bench-{time.time_ns()}"
    if model == "default":
        norm = _register_default_config(DEFAULT_MODEL)
        model_args = ["--model", DEFAULT_MODEL, "--image-mean", *map(str, norm["mean"]),
                      "--image-std", *map(str, norm["std"])]
    else:
        # open_clip_train initialises randomly when no --pretrained is given (our pretrained=none)
        model_args = ["--model", model] + (["--pretrained", pretrained] if pretrained not in ("", "none") else [])
    open_clip_precision = {"fp32": "fp32", "bf16": "amp_bf16", "fp16": "amp"}[precision]
    args = [*model_args, "--train-data", str(csv_path), "--dataset-type", "csv", "--csv-separator", ",",
            "--csv-img-key", "filepath", "--csv-caption-key", "query", "--batch-size", str(batch_size),
            "--epochs", "1", "--workers", str(workers), "--device", device, "--lr", "1e-4", "--warmup", "2",
            "--logs", str(work / "logs"), "--name", name, "--log-every-n-steps", "1", "--save-frequency", "0",
            "--precision", open_clip_precision]
    open_clip_main(args)
    log = (work / "logs" / name / "out.log").read_text()
    steps = re.findall(r"Data \(t\): ([0-9.]+) Batch \(t\): ([0-9.]+), [0-9.]+/s, ([0-9.]+)/s/gpu", log)
    return steady([(float(speed), float(data) / float(batch)) for data, batch, speed in steps], warmup)


def ours_speed(data_dir: Path, batch_size: int, steps: int, workers: int, device: str, work: Path, warmup: int,
               model: str, pretrained: str, precision: str, padded: bool = False, **cfg) -> list[tuple[float, float]]:
    with padded_texts() if padded else contextlib.nullcontext() as uncut_batches:
        result = train(data_dir=str(data_dir), output_dir=str(work / "ours"), freeze="none", batch_size=batch_size,
                       epochs=1, max_steps=steps, workers=workers, device=device, log_every=1, eval_split="",
                       model=model, pretrained=pretrained, precision=precision, grad_clip=0.0, save_every=-1,
                       epoch_checkpoints=False, progress=False, **cfg)
    if padded and not uncut_batches:
        raise RuntimeError("the padded run cut its texts: the trainer no longer calls gclcore.towers.cut_after_pooled")
    shutil.rmtree(work / "ours")
    return steady(list(zip(result.history["samples_per_s"], result.history["data_wait"])), warmup)


@contextlib.contextmanager
def padded_texts():
    """The trainer's padding cuts switched off: its micro-batches keep every text at the context length.
    Yields the list of token batches left uncut, so a run can show that it went through the switch."""
    uncut_batches = []

    def cut_after_pooled(model, tokens):
        uncut_batches.append(tokens.shape)
        return tokens

    with (mock.patch("gclcore.towers.cut_after_pooled", cut_after_pooled),
          mock.patch("gclcore.towers.trim_padding", lambda model, tokens: tokens)):
        yield uncut_batches


DEVICE_WORK = {"kernel", "gpu_memcpy", "gpu_memset"}
"""The profiler's activity types of a device's own work."""


@contextlib.contextmanager
def device_profile(warmup: int):
    """Profiles what runs inside (a whole training run, ``torch.profiler``) and fills the yielded dict, once
    left, with the device's work per step over the steady steps: from the end of the ``warmup``-th optimiser
    step to the end of the last, on the host's clock (each trainer's ``Optimizer.step`` marks its steps).

    - ``device_ms``: the time kernels and copies kept the device busy (overlapping ones counted once);
    - ``busy_share``: that time over the window's wall time; below 1 the device waited for the host or
      the loader. The profiler's own host work lowers it a little; as the device runs behind the host by
      less than a step (both trainers wait for it every step), the window is exact to that lag;
    - ``kernels``: device operations launched; ``top``: the 12 taking most device time, with their calls.

    Without a GPU only ``steps`` and ``window_ms`` are filled (a check of the script itself)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    stats = {}
    with profile(activities=activities) as prof:
        yield stats
    stats.update(device_work(prof.events(), warmup))


def device_work(events, warmup: int) -> dict:
    """:func:`device_profile`'s figures from a profile's events (``torch.autograd.profiler_util.FunctionEvent``)."""
    step_ends = sorted(e.time_range.end for e in events  # the host's calls, not their spans on the device
                       if e.name.startswith("Optimizer.step#") and e.device_type == torch.autograd.DeviceType.CPU)
    if len(step_ends) <= warmup:
        raise RuntimeError(f"the profile has {len(step_ends)} optimiser steps, not more than --warmup {warmup}")
    start, end = step_ends[warmup - 1] if warmup else 0, step_ends[-1]
    steps = len(step_ends) - warmup
    stats = {"steps": steps, "window_ms": round((end - start) / 1000 / steps, 2)}
    # the device's work: kernels, copies and fills; not its other rows (the spans of record_function ranges,
    # which enclose kernels; waits for syncs and events)
    on_gpu = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    on_device = [e for e in on_gpu if e.activity_type in DEVICE_WORK and start <= e.time_range.start < end]
    if not on_device:
        if on_gpu:  # a profiler that names its device rows otherwise would be read as an idle device
            raise RuntimeError(f"no {sorted(DEVICE_WORK)} among the profile's device events "
                               f"({sorted({str(e.activity_type) for e in on_gpu})}) between the steady steps")
        return stats
    busy, reach = 0.0, start
    for begin, finish in sorted((e.time_range.start, min(e.time_range.end, end)) for e in on_device):
        busy += max(0.0, finish - max(begin, reach))
        reach = max(reach, finish)
    per_name = {}
    for e in on_device:
        total, calls = per_name.get(e.name, (0.0, 0))
        per_name[e.name] = (total + e.time_range.elapsed_us(), calls + 1)
    top = sorted(per_name.items(), key=lambda item: -item[1][0])[:12]
    return stats | {"device_ms": round(busy / 1000 / steps, 2), "busy_share": round(busy / (end - start), 3),
                    "kernels": round(len(on_device) / steps),
                    "top": [{"name": name[:120], "ms": round(total / 1000 / steps, 2), "calls": round(calls / steps, 1)}
                            for name, (total, calls) in top]}


def in_own_process(name: str, result: Path) -> dict:
    """One trainer's timed ``steps`` (and its ``profile`` with ``--profile``), from a fresh Python process
    running this script for ``name`` alone. ``open_clip_train`` sets torch's process-wide switches (TF32
    matrix products, cuDNN's benchmark mode), and a process's caching allocator keeps what a run reserved: a
    trainer timed after another in the same process would run with the other's settings and memory, not as
    it runs on its own."""
    # the trainers' own printing goes to stderr: this script's output is its JSON alone
    subprocess.run([sys.executable, __file__, *sys.argv[1:], "--runs", name, "--child-result", str(result)],
                   check=True, stdout=sys.stderr)
    return json.loads(result.read_text())


def loss_costs(batch_size: int, device: str, dim: int = 256, repeats: int = 200) -> dict[str, float]:
    """Milliseconds per forward + backward of each loss as the trainer calls it, on random embeddings."""
    from open_clip.loss import ClipLoss

    from gclcore.fusion import Field, Side
    from gclcore.loss import GCLLoss, multi_field_loss

    gen = torch.Generator().manual_seed(0)
    query, image, title = (torch.nn.functional.normalize(torch.randn(batch_size, dim, generator=gen), dim=-1).to(device)
                           for _ in range(3))
    scale = torch.tensor(100.0, device=device)
    weights = torch.rand(batch_size, generator=gen).to(device)
    present = torch.ones(batch_size, dtype=torch.bool, device=device)
    gcl = GCLLoss()

    def gcl_call(stw_weights, rhs_weights):
        def call(q, r):  # r: the image embeddings (with gradients); the title's are fixed
            rhs = {"image": r, "title": title}
            query_side = Side((Field("query"),), {"query": q}, {"query": present})
            doc_side = Side(tuple(Field(name, w) for name, w in rhs_weights.items()),
                            {name: rhs[name] for name in rhs_weights}, {name: present for name in rhs_weights})
            return multi_field_loss(gcl, query_side, doc_side, scale, stw_weights)
        return call

    variants = {"open_clip_ClipLoss": lambda q, r: ClipLoss()(r, q, scale),
                "binary": gcl_call(torch.ones_like(weights), {"image": 1.0}),
                "weighted": gcl_call(weights, {"image": 1.0}),
                "multi_field": gcl_call(weights, {"image": 0.9, "title": 0.1})}
    costs = {}
    for name, fn in variants.items():
        q, r = query.clone().requires_grad_(), image.clone().requires_grad_()
        for _ in range(10):
            fn(q, r).backward()
        start = time.perf_counter()
        for _ in range(repeats):
            fn(q, r).backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        costs[name] = 1000 * (time.perf_counter() - start) / repeats
    return costs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="data/synth-small-seed0")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="default", help="any open_clip model name (e.g. ViT-B-32)")
    parser.add_argument("--pretrained", default="", help="tag or local checkpoint for --model (none: random weights)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="fp32, or autocast (open_clip_train's amp_bf16 / amp)")
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of the median")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the runs, interleaved, this many times")
    parser.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS),
                        help="which trainers to time, in this order (default: all five)")
    parser.add_argument("--profile", action="store_true",
                        help="profile each run and report its device time per step (device_profile); the "
                             "profiler's host work slows the runs, so their samples/s are not comparable figures")
    parser.add_argument("--child-result", help=argparse.SUPPRESS)  # a run's own process writes its steps here
    args = parser.parse_args()
    data = Path(args.data)
    common = dict(batch_size=args.batch_size, steps=args.steps, workers=args.workers, device=args.device,
                  model=args.model, pretrained=args.pretrained, precision=args.precision,
                  warmup=args.warmup)
    out = {"model": args.model, "precision": args.precision, "batch_size": args.batch_size, "steps": args.steps,
           "workers": args.workers, "device": args.device, "rounds": args.rounds, "warmup": args.warmup,
           "profiled": args.profile}  # profiled runs' samples/s are slowed by the profiler

    def run(name: str, work: Path) -> list[tuple[float, float]]:
        if RUNS[name] is None:
            return open_clip_speed(data, work=work, **common)
        return ours_speed(data, work=work, **RUNS[name], **common)

    if args.child_result:
        with (tempfile.TemporaryDirectory() as tmp,
              device_profile(args.warmup) if args.profile else contextlib.nullcontext() as profiled):
            steps = run(args.runs[0], Path(tmp))
        Path(args.child_result).write_text(json.dumps({"steps": steps, "profile": profiled}))
        return
    runs = list(dict.fromkeys(args.runs))
    speeds, waits = {name: [] for name in runs}, {name: [] for name in runs}
    round_medians = {name: [] for name in runs}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):  # interleaved, so a slow spell of the machine hits every trainer
            for name in runs:
                result = in_own_process(name, Path(tmp) / f"{name}-{round_}.json")
                steps = result["steps"]
                if args.profile:
                    out.setdefault("device_profile", {})[name] = result["profile"]
                speeds[name] += [speed for speed, _ in steps]
                waits[name] += [wait for _, wait in steps]
                round_medians[name].append(round(float(np.median([speed for speed, _ in steps])), 2))
                # one line per finished run, so a run cut short by a time limit keeps what it measured
                print(f"# run {json.dumps({'run': name, 'round': round_, 'samples_per_s': round_medians[name][-1]})}",
                      file=sys.stderr, flush=True)
    for name in runs:
        out[name] = round(float(np.median(speeds[name])), 2)
    out["per_round_medians"] = round_medians
    out["data_wait"] = {name: round(float(np.median(w)), 3) for name, w in waits.items()}
    ratios = {"ratio_binary_vs_open_clip": ("ours_binary", "open_clip_train"),
              "ratio_binary_padded_vs_open_clip": ("ours_binary_padded", "open_clip_train"),
              "text_cut_gain": ("ours_binary", "ours_binary_padded")}
    out.update({key: round(out[a] / out[b], 3) for key, (a, b) in ratios.items() if a in out and b in out})
    if "ours_weighted" in out and "ours_binary" in out:
        out["weighting_cost_pct"] = round(100 * (out["ours_binary"] / out["ours_weighted"] - 1), 1)
    out["loss_ms"] = {k: round(v, 3) for k, v in loss_costs(args.batch_size, args.device).items()}
    ours = out.get("ours_binary") or next((out[name] for name in runs if name.startswith("ours")), None)
    if ours:  # the loss's share of our step
        out["loss_pct_of_step"] = {k: round(100 * v * ours / (1000 * args.batch_size), 3)
                                   for k, v in out["loss_ms"].items()}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    sys.exit(main())

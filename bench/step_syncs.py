"""Diagnostic: where a GPU training step makes the host wait for the device.

    python bench/step_syncs.py --data DATA [--model ViT-B-32] [--batch-size 256] [--steps 4] [--accum-freq 1]

Runs the trainer (full fine-tuning, random weights) for ``--steps`` steps and, from the end of the first
step to the end of the last, turns on CUDA's sync debug mode (``torch.cuda.set_sync_debug_mode("warn")``):
the operations it covers that make the host wait for the device (a copy from pageable host memory,
``.item()``, the truth value of a device tensor; not every one, e.g. not torch.distributed's) then warn
from the line that called them. Prints those lines with their count per step, as JSON; waits inside the
backward pass are replayed by autograd at its ``run_backward`` call (``autograd/graph.py``). By design a
step waits once (``train_step``'s finite-gradient check) and a logged step (here every one) twice more
(the loss and the logit scale of its log row); a wait in the middle of a step (after the forward pass is
queued) leaves the device idle while the host catches up. The trainer's own lines go to stderr. Exits 1
when the audit caught no wait at all (it would not be working).
``--device cpu`` runs the same steps without the audit (a check of the script itself on a machine without
a GPU). Needs a dataset with images (``python bench/large_batch.py --make-shop DIR``).
"""

import argparse
import contextlib
import json
import sys
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import torch

from gclcore.train import train

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--accum-freq", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--workers", type=int, default=-1)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2: the first step is not audited")
    audit = args.device.startswith("cuda")
    if audit and not torch.cuda.is_available():
        parser.error("no CUDA device here: the audit needs one (--device cpu checks the script alone)")

    def on_step(step: int) -> None:  # audit from the end of the first step to the end of the last
        if audit and step in (1, args.steps):
            torch.cuda.set_sync_debug_mode("warn" if step == 1 else "default")

    with (tempfile.TemporaryDirectory() as out, warnings.catch_warnings(record=True) as caught,
          contextlib.redirect_stdout(sys.stderr)):
        warnings.simplefilter("always")  # every occurrence, not once per line
        try:
            result = train(data_dir=args.data, output_dir=out, model=args.model, pretrained="none", freeze="none",
                           batch_size=args.batch_size, accum_freq=args.accum_freq, max_steps=args.steps, epochs=1,
                           precision=args.precision, device=args.device, workers=args.workers, eval_split="",
                           test_splits="", log_every=1, save_every=-1, epoch_checkpoints=False, grad_clip=0.0,
                           progress=False, rhs_fields="image_local=1", on_step=on_step)
        finally:
            if audit:
                torch.cuda.set_sync_debug_mode("default")
    if result.steps != args.steps:
        sys.exit(f"the data gave {result.steps} steps of {args.steps}: give a larger shop or fewer --steps")
    syncs = Counter()
    for w in caught:
        if "synchronizing CUDA operation" in str(w.message):
            path = Path(w.filename).resolve()
            where = path.relative_to(REPO) if path.is_relative_to(REPO) else Path(*path.parts[-2:])
            syncs[f"{where}:{w.lineno}"] += 1
    audited = args.steps - 1
    print(json.dumps({"model": args.model, "batch_size": args.batch_size, "accum_freq": args.accum_freq,
                      "precision": args.precision, "device": args.device, "audited_steps": audited if audit else 0,
                      "syncs_per_step": round(sum(syncs.values()) / audited, 2) if audit else None,
                      "by_line": {line: round(n / audited, 2) for line, n in syncs.most_common()}}, indent=1))
    if audit and not syncs:
        sys.exit("the audit caught no wait at all: CUDA's sync debug mode did not report (a step waits at least once)")


if __name__ == "__main__":
    main()

"""Benchmark: the reproduce / evaluate path at real scale on one device.

    python bench/reproduce_speed.py [--device cuda] [--images 8192] [--docs 1000000] [--queries 2000]

1. Corpus encoding: a ViT-B-32 (random weights: speed does not depend on them) encodes ``--images``
   JPEG files (synthetic 256 x 256 photos-like noise written to a scratch folder) through
   ``Encoder.encode_image_files`` (decode + preprocess in DataLoader workers, fp16 autocast, batch
   1024): images/s end to end, and the model alone on preprocessed tensors (the floor).
2. Exact retrieval: ``gclcore.retrieval.exact_topk`` top-1000 for ``--queries`` over ``--docs`` x 512
   fp16 unit vectors (fp16 scoring, fp32 re-scoring of the candidates), beside the floor measured in the
   same run: one fp16 matmul of all queries against all documents plus ``torch.topk``.
Each timing is the median of 5 runs after a warm-up, synchronised. Prints one JSON object.
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def timed(fn, device, repeats=5):
    fn()  # warm-up (kernels, caches, workers)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def write_images(folder: Path, n: int, size: int = 256) -> list[str]:
    from PIL import Image

    rng = np.random.default_rng(0)
    names = []
    for i in range(n):
        pixels = (rng.random((size // 8, size // 8, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).resize((size, size)).save(folder / f"{i:06d}.jpg", quality=90)
        names.append(f"/publisher/images/{i:06d}.jpg")  # stored paths are resolved by basename
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=8192)
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    from gclcore.data import ImageResolver
    from gclcore.models import load_encoder
    from gclcore.retrieval import exact_topk

    device = torch.device(args.device)
    precision = "fp16" if device.type == "cuda" else "fp32"
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "precision": precision}

    encoder = load_encoder("ViT-B-32", "none", device=device, precision=precision, batch_size=args.batch_size,
                           workers=args.workers)
    with tempfile.TemporaryDirectory() as scratch:
        stored = write_images(Path(scratch), args.images)
        resolver = ImageResolver(scratch)
        seconds = timed(lambda: encoder.encode_image_files(stored, resolver), device, repeats=3)
        result["encode_images_per_s"] = round(args.images / seconds, 1)
    pixels = torch.randn(args.batch_size, 3, 224, 224, device=device)

    def model_only():
        with torch.no_grad(), encoder._autocast():
            encoder.model.encode_image(pixels, normalize=True)

    result["model_only_images_per_s"] = round(args.batch_size / timed(model_only, device), 1)

    generator = torch.Generator(device="cpu").manual_seed(0)
    docs = torch.nn.functional.normalize(torch.randn(args.docs, args.dim, generator=generator), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(args.queries, args.dim, generator=generator), dim=1)
    docs_dev, queries_dev = docs.to(device), queries.to(device)
    low = torch.float16 if device.type == "cuda" else torch.float32
    result["exact_topk_s"] = round(timed(lambda: exact_topk(queries_dev, docs_dev, 1000, device=device, dtype=low,
                                                            query_chunk=args.queries), device), 4)
    docs_low, queries_low = docs_dev.to(low), queries_dev.to(low)
    result["floor_matmul_topk_s"] = round(timed(lambda: torch.topk(queries_low @ docs_low.T, 1000, dim=1), device), 4)
    result["shape"] = f"{args.queries} queries x {args.docs} docs x {args.dim}, top-1000"
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""Benchmark: DataLoader images/s per core, decoding the original files vs reading the image store.

    python bench/image_store_speed.py [--images 2000] [--photo-size 800] [--model ViT-B-32] [--workers 1]

Writes ``--images`` product-photo-like JPEGs (``--photo-size`` px square, quality 90: smooth gradients and
shapes; their size is printed) to a temporary folder, stores them for the model's eval
transform (``gclcore.image_store.write_store``), then times a DataLoader over all of them (batches of 64,
``--workers`` worker processes, so images/s per worker = per core) twice per source, as training and
evaluation read them: with the model's training transform (``RandomResizedCrop`` ...), the part of it the
trainer's workers run (``train_uint8``: ``ToTensor`` + ``Normalize`` left to the device, ``gclcore.pixels``)
and its eval transform, whole and as the evaluator's workers run it (``eval_uint8``), from the files
(``ImageResolver``: decode + resize) and from the store (``StoredImages``: a memory-mapped row). The
store's build time (decode + resize once) is printed too. Best of ``--rounds``.
Prints JSON and draws ``bench/image_store_speed.png``.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent


def write_photos(folder: Path, count: int, size: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    names = []
    for i in range(count):
        base = rng.uniform(60, 255, size=3)
        pixels = (base[None, None, :] * (0.6 + 0.4 * ramp[:, None, None] * ramp[None, :, None])).astype(np.uint8)
        image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            corner = rng.integers(0, size // 2, 2)
            box = [*corner.tolist(), *(corner + rng.integers(size // 8, size // 2, 2)).tolist()]
            draw.ellipse(box, fill=tuple(rng.integers(0, 255, 3).tolist()))
        name = f"photo-{i:06d}.jpg"
        image.save(folder / name, quality=90)
        names.append(name)
    return names


def images_per_second(names, source, transform, workers: int, rounds: int) -> float:
    from gclcore.loaders import image_batches

    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        count = sum(len(status) for _, status in image_batches(names, source, transform, batch_size=64, workers=workers))
        best = max(best, count / (time.perf_counter() - start))
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--photo-size", type=int, default=800)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    from gclcore import image_store
    from gclcore.data import ImageResolver
    from gclcore.models import load_encoder
    from gclcore.pixels import split_transform

    encoder = load_encoder(args.model, pretrained="none", device="cpu")
    spec = image_store.StoreSpec.of(encoder.preprocess)
    out = {"images": args.images, "photo_size": args.photo_size, "model": args.model, "stored_size": spec.size,
           "workers": args.workers}
    with tempfile.TemporaryDirectory() as tmp:
        photos, stores = Path(tmp) / "photos", Path(tmp) / "store"
        photos.mkdir()
        names = write_photos(photos, args.images, args.photo_size)
        out["mean_file_kb"] = round(sum((photos / n).stat().st_size for n in names) / len(names) / 1024, 1)
        files = ImageResolver(photos)
        start = time.perf_counter()
        image_store.write_store(stores, names, files, spec, workers=args.workers, progress=False)
        out["store_build_images_per_s"] = round(args.images / (time.perf_counter() - start), 1)
        stored = image_store.open_store(stores, ImageResolver(photos))
        for kind, transform in (("train", encoder.preprocess_train),
                                ("train_uint8", split_transform(encoder.preprocess_train)[0]),
                                ("eval", encoder.preprocess),
                                ("eval_uint8", split_transform(encoder.preprocess)[0])):
            for label, source in (("files", ImageResolver(photos)), ("store", stored)):
                out[f"{kind}_{label}_images_per_s"] = round(images_per_second(names, source, transform, args.workers,
                                                                              args.rounds), 1)
            out[f"{kind}_speedup"] = round(out[f"{kind}_store_images_per_s"] / out[f"{kind}_files_images_per_s"], 2)
    print(json.dumps(out, indent=1))
    plot(out, HERE / "image_store_speed.png")


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    kinds = ["train", "train_uint8", "eval", "eval_uint8"]
    y = np.arange(len(kinds))
    for offset, label, name, color in ((0.2, "original files (decode + resize)", "files", "#999999"),
                                       (-0.2, "image store (memory-mapped rows)", "store", "#2b6cb0")):
        speeds = [out[f"{kind}_{name}_images_per_s"] for kind in kinds]
        ax.barh(y + offset, speeds, height=0.38, label=label, color=color)
        if name == "store":
            for i, kind in enumerate(kinds):
                ax.annotate(f"{out[f'{kind}_speedup']:.1f}x", (speeds[i], y[i] + offset), xytext=(4, 0),
                            textcoords="offset points", va="center", fontsize=9)
    ax.set_yticks(y, ["training transform", "training, uint8 out\n(normalised on the device)", "eval transform",
                      "eval, uint8 out\n(normalised on the device)"])
    ax.invert_yaxis()
    ax.set(xlabel=f"images / s, {out['workers']} DataLoader worker",
           title=f"{out['photo_size']} px JPEGs -> {out['model']} ({out['stored_size']} px)")
    ax.set_xlim(0, 1.15 * max(out[f"{kind}_store_images_per_s"] for kind in kinds))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())

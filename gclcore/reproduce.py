"""Reproduce the published rows from the released checkpoints, in one command, with a verdict per value.

Each checkpoint is evaluated with the published protocol's settings (``book/expected.yaml``,
``reproduce:``): ``score_linear`` grades, 2,000 sampled queries, top-1000 retrieval, every split the
dataset has, fp16 encoding on CUDA (the published script's autocast; fp32 on a CPU), in two document
configurations: query -> image (the publisher's shipped scripts) and image 0.9 + title 0.1 (the
published script's default fields, and this book's). Which of the two the published tables used is not
published, so both are shown.

Our numbers are then set beside the published row of the same checkpoint (matched by file name:
``gcl-vitb32-117-gs-full-states.pt`` is the "GCL ViT-B-32" row): nDCG = NDCG@10, ERR = mERR and
RBP = mRBP9 (the published RBP's p is not given), each PASS when within the stated tolerance. The
published rows are in-domain, so the other splits show our numbers only. The architecture comes from
the file name (``vitb32`` -> ViT-B-32, ``vitl14`` -> ViT-L-14) unless ``--model`` names it.

The publisher's tiny test (``query_tiny.csv`` + ``corpus_tiny.json``, 15 queries) runs the same way with
``--test-csv`` / ``--corpus`` and is compared with the row the publisher gives for it.

Command line (``make reproduce`` passes the same)::

    python -m gclcore.reproduce --data-dir DIR --image-root DIR CHECKPOINT [CHECKPOINT ...]
        [--model ViT-B-32] [--splits all] [--out build/reproduce]
    python -m gclcore.reproduce --test-csv query_tiny.csv --corpus corpus_tiny.json --image-root images \\
        marqo-gcl-vitl14-124-gs-full_states.pt

Without checkpoints it prints what to download and where to put it. Exit status: 0 when every
checkpoint with a published row passes all its values in at least one document configuration, 1 when
one does not, 2 for unusable input.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from gclcore.data import SPLIT_STEMS, DataFormatError, Dataset, open_dataset
from gclcore.evaluate import evaluate_split
from gclcore.fusion import parse_fields

ARCHITECTURES = {"vitb32": "ViT-B-32", "vitb16": "ViT-B-16", "vitl14": "ViT-L-14", "vith14": "ViT-H-14"}
"""File-name fragments of the released multi-modal checkpoints -> open_clip architectures."""
TEXT_ONLY_FRAGMENTS = ("e5l", "robbxlm")
"""File-name fragments of the released text-only checkpoints (not multi-modal rows)."""
PUBLISHED_SPLIT = SPLIT_STEMS[0]
"""The split of the published tables: in-domain."""


@dataclass(frozen=True)
class Release:
    """One published row: the checkpoint file it was measured with, and its values."""

    checkpoint: str
    method: str
    model: str
    published: dict[str, float]    # nDCG / ERR / RBP


@dataclass(frozen=True)
class Protocol:
    """What ``book/expected.yaml`` says about reproducing: measures, tolerances, fields, settings."""

    metrics: dict[str, str]         # published column -> our measure
    tolerance: dict[str, float]
    fields: dict[str, str]          # label -> document fields
    top_q: int
    top_k: int
    weight_key: str
    releases: list[Release]         # the published Marqo-GS-10M rows
    tiny_releases: list[Release]    # the publisher's tiny test rows
    tiny_top_q: int
    downloads: dict[str, str]
    published_min_rows: int         # in-domain rows of data the published rows apply to


def checkpoint_key(path: str | os.PathLike) -> str:
    """A checkpoint's identity: its file name without ``.pt`` and without a ``-states`` / ``_states``
    suffix (the releases were published under both spellings)."""
    return re.sub(r"[-_]states$", "", Path(path).name.lower().removesuffix(".pt"))


def load_protocol(expected_file: str | os.PathLike) -> Protocol:
    """The ``published`` and ``reproduce`` blocks of ``book/expected.yaml``."""
    spec = yaml.safe_load(Path(expected_file).read_text())
    published, settings = spec["published"], spec["reproduce"]

    def releases(rows) -> list[Release]:
        return [Release(row["checkpoint"], row["method"], row["model"],
                        {name: float(row[name]) for name in settings["metrics"]}) for row in rows if "checkpoint" in row]

    url = published["release_url"]
    downloads = {"csv": published["downloads"]["csv"], "images": published["downloads"]["images"],
                 **{r["checkpoint"]: url + r["checkpoint"] for r in published["in_domain_multimodal"]},
                 "tiny": published["tiny_test"]["url"]}
    return Protocol(dict(settings["metrics"]), {k: float(v) for k, v in settings["tolerance"].items()},
                    dict(settings["fields"]), int(settings["top_q"]), int(settings["top_k"]), settings["weight_key"],
                    releases(published["in_domain_multimodal"]), releases(published["tiny_test"]["rows"]),
                    int(published["tiny_test"]["top_q"]), downloads, int(settings["published_min_rows"]))


def infer_architecture(path: str | os.PathLike) -> str:
    """The open_clip architecture a released checkpoint's file name names (``vitb32`` -> ``ViT-B-32``)."""
    name = Path(path).name.lower()
    if any(fragment in name for fragment in TEXT_ONLY_FRAGMENTS):
        raise ValueError(f"{Path(path).name} is a text-only checkpoint; reproduce covers the multi-modal rows. "
                         f"Evaluate it query -> title with its text model's open_clip config and a local copy of "
                         f"that model: python -m gclcore.evaluate --model-config CONFIG.json --hf-dir DIR "
                         f"--pretrained {path} --rhs-fields title=1 --data-dir DATA (CONFIG: e5-large-v2.json for "
                         f"e5l, open_clip's xlm-roberta-base-ViT-B-32.json for robbxlm)")
    found = [arch for fragment, arch in ARCHITECTURES.items() if fragment in name.replace("-", "")]
    if len(found) != 1:
        raise ValueError(f"cannot tell the architecture of {Path(path).name} from its name (known: "
                         f"{', '.join(ARCHITECTURES)}); pass --model, e.g. --model ViT-B-32")
    return found[0]


def evaluate_checkpoint(checkpoint: str | os.PathLike, dataset: Dataset, splits: list[str], out: Path,
                        protocol: Protocol, *, model: str | None = None, top_q: int | None = None,
                        precision: str | None = None, batch_size: int | None = None,
                        device: str | None = None) -> pd.DataFrame:
    """Our numbers for one checkpoint: one row per (document fields, split) with every measure, written
    under ``out/<checkpoint>/<fields>/<split>/`` (the published evaluation's files)."""
    import torch

    from gclcore.models import load_encoder

    cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    encoder = load_encoder(model or infer_architecture(checkpoint), str(Path(checkpoint).resolve()), device=device,
                           precision=precision or ("fp16" if cuda else "fp32"), batch_size=batch_size or (1024 if cuda else 64),
                           progress=True)
    key = checkpoint_key(checkpoint)
    rows = []
    for label, fields in protocol.fields.items():
        slug = re.sub(r"[^a-z0-9.]+", "-", label.lower()).strip("-")
        for split in splits:
            result = evaluate_split(encoder, dataset, split, out / key / slug / split, rhs_fields=parse_fields(fields),
                                    weight_key=protocol.weight_key, top_q=top_q or protocol.top_q, top_k=protocol.top_k,
                                    cache_dir=out / key / "cache")
            rows.append({"checkpoint": key, "fields": label, "split": split, **result.metrics})
    return pd.DataFrame(rows)


def compare(measured: pd.DataFrame, protocol: Protocol, releases: list[Release], published_split: str,
            comparable: bool = True) -> pd.DataFrame:
    """One row per (checkpoint, fields, split): our three paper measures, and on ``published_split`` the
    published values with a PASS / FAIL each (``-`` where nothing is published; ``n/a`` when the data is
    not what the published rows were measured on, ``comparable=False``)."""
    by_key = {checkpoint_key(r.checkpoint): r for r in releases}
    rows = []
    for record in measured.to_dict("records"):
        release = by_key.get(record["checkpoint"])
        compared = release is not None and record["split"] == published_split
        row = {"checkpoint": record["checkpoint"], "fields": record["fields"], "split": record["split"]}
        for column, measure in protocol.metrics.items():
            ours = record[measure]
            row[column] = round(ours, 4)
            row[f"{column} published"] = release.published[column] if compared else None
            within = compared and abs(ours - release.published[column]) <= protocol.tolerance[column]
            row[f"{column} verdict"] = ("-" if not compared else "n/a" if not comparable
                                        else "PASS" if within else "FAIL")
        rows.append(row)
    return pd.DataFrame(rows)


def verdicts_withheld(table: pd.DataFrame, protocol: Protocol) -> bool:
    """Whether :func:`compare` withheld its verdicts (``n/a``: the data is not the published data)."""
    return bool((table[[f"{c} verdict" for c in protocol.metrics]] == "n/a").any(axis=None))


def passed(table: pd.DataFrame, protocol: Protocol) -> dict[str, bool]:
    """Per checkpoint with a published row: does some document configuration pass every value?"""
    verdicts = table[[f"{c} verdict" for c in protocol.metrics]]
    compared = table[verdicts.isin(["PASS", "FAIL"]).all(axis=1)]
    return {key: bool((group[verdicts.columns] == "PASS").all(axis=1).any())
            for key, group in compared.groupby("checkpoint")}


def run(checkpoints: list[str], protocol: Protocol, *, data_dir: str | None = None, test_csv: str | None = None,
        corpus: str | None = None, image_root: str | None = None, out: str | os.PathLike = "build/reproduce",
        model: str | None = None, splits: str = "all", compare_any_data: bool = False,
        **encoder_options) -> pd.DataFrame:
    """Evaluate ``checkpoints`` on a dataset folder (``data_dir``) or one split (``test_csv`` + ``corpus``:
    compared with the tiny-test row) and compare them with the published rows (:func:`compare`); writes
    ``out/measured.csv`` (every measure) and ``out/comparison.csv`` (the returned table).

    A folder whose in-domain split is smaller than the published data (``published_min_rows``) gets
    ``n/a`` verdicts, unless ``compare_any_data``: the published values are then only shown.
    """
    if test_csv:
        from gclcore.data import files_dataset

        dataset = files_dataset(test_csv, corpus, image_root)
        releases, top_q, published_split = protocol.tiny_releases, protocol.tiny_top_q, dataset.resolve_splits("all")[0]
    else:
        dataset = open_dataset(data_dir, image_root)
        releases, top_q, published_split = protocol.releases, protocol.top_q, PUBLISHED_SPLIT
    out = Path(out)
    measured = pd.concat([evaluate_checkpoint(c, dataset, dataset.resolve_splits(splits), out, protocol, model=model,
                                              top_q=top_q, **encoder_options) for c in checkpoints], ignore_index=True)
    comparable = compare_any_data or bool(test_csv) or (
        published_split in dataset.splits and len(dataset.rows(published_split)) >= protocol.published_min_rows)
    table = compare(measured, protocol, releases, published_split, comparable)
    out.mkdir(parents=True, exist_ok=True)
    measured.to_csv(out / "measured.csv", index=False)
    table.to_csv(out / "comparison.csv", index=False)
    return table


def published_table(protocol: Protocol) -> pd.DataFrame:
    """The published rows that have a released checkpoint (what :func:`run` compares with)."""
    return pd.DataFrame([{"method": r.method, "model": r.model, **r.published, "checkpoint": r.checkpoint}
                         for r in protocol.releases]).set_index(["method", "model"])


def styled(table: pd.DataFrame, protocol: Protocol):
    """:func:`compare`'s table for a notebook: PASS green, FAIL red, nothing published blank."""
    colours = {"PASS": "background-color: #d7f0d2", "FAIL": "background-color: #f7d4d4"}
    verdicts = [f"{c} verdict" for c in protocol.metrics]
    return (table.style.format(precision=4, na_rep="")
            .map(lambda v: colours.get(v, ""), subset=verdicts).hide(axis="index"))


def plot(table: pd.DataFrame, protocol: Protocol):
    """Bars of our values beside the published ones (dashed), per checkpoint and measure, on the
    published split; returns the figure (None when nothing was compared)."""
    import matplotlib.pyplot as plt

    compared = table[table[f"{next(iter(protocol.metrics))} published"].notna()]
    if compared.empty:
        return None
    checkpoints = list(dict.fromkeys(compared["checkpoint"]))
    fig, axes = plt.subplots(1, len(checkpoints), figsize=(4.5 * len(checkpoints), 3.2), squeeze=False, sharey=True)
    for ax, key in zip(axes[0], checkpoints):
        rows = compared[compared["checkpoint"] == key]
        width = 0.8 / len(rows)
        for i, row in enumerate(rows.to_dict("records")):
            xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(protocol.metrics))]
            ax.bar(xs, [row[c] for c in protocol.metrics], width, label=f"ours, {row['fields']}")
        for j, column in enumerate(protocol.metrics):
            ax.hlines(rows.iloc[0][f"{column} published"], j - 0.45, j + 0.45, colors="black", linestyles="dashed",
                      label="published" if j == 0 else None)
        ax.set_xticks(range(len(protocol.metrics)), list(protocol.metrics))
        ax.set_title(key, fontsize=9)
    axes[0][0].set_ylabel(table["split"].iloc[0] if len(set(compared["split"])) == 1 else "value")
    axes[0][-1].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig


def download_instructions(protocol: Protocol) -> str:
    """What to download, and the commands that then reproduce each published row."""
    lines = ["To reproduce the published rows:",
             "  1. the data (Marqo-GS-10M): unpack both archives anywhere, e.g. under ~/gs/",
             f"       {protocol.downloads['csv']}",
             f"       {protocol.downloads['images']}",
             "     DATA_DIR is then ~/gs/marqo-gs-dataset/marqo_gs_full_10m and IMAGE_ROOT the unpacked image folder",
             "     (stored image paths are resolved by file name under it; nothing is rewritten).",
             "  2. the released checkpoints, into any folder:"]
    for release in protocol.releases:
        values = " / ".join(f"{release.published[c]:.3f}" for c in protocol.metrics)
        lines.append(f"       {release.method} {release.model} ({' / '.join(protocol.metrics)} {values}):")
        lines.append(f"         {protocol.downloads[release.checkpoint]}")
    lines += ["  3. make reproduce DATA_DIR=~/gs/marqo-gs-dataset/marqo_gs_full_10m IMAGE_ROOT=~/gs/images \\",
              "       CHECKPOINTS=\"~/ckpt/gcl-vitb32-117-gs-full-states.pt ~/ckpt/gcl-vitl14-120-gs-full-states.pt\"",
              "The publisher's tiny test (15 queries; minutes on a CPU): download query_tiny.csv, corpus_tiny.json,",
              f"images.tar and {protocol.tiny_releases[0].checkpoint} from {protocol.downloads['tiny']}, unpack",
              "images.tar, then",
              "  make reproduce TEST_CSV=query_tiny.csv CORPUS=corpus_tiny.json IMAGE_ROOT=images \\",
              f"       CHECKPOINTS={protocol.tiny_releases[0].checkpoint}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gclcore.reproduce", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="*", help="released checkpoint files (*-states.pt)")
    parser.add_argument("--data-dir", help="the dataset folder (e.g. marqo_gs_full_10m/)")
    parser.add_argument("--test-csv", help="one split CSV (the publisher's tiny test: query_tiny.csv), with --corpus")
    parser.add_argument("--corpus", help="the corpus JSON of --test-csv")
    parser.add_argument("--image-root", help="the folder the images were unpacked to")
    parser.add_argument("--model", help="open_clip architecture of every checkpoint (default: from each file name)")
    parser.add_argument("--splits", default="all", help="splits to evaluate (default: every split present)")
    parser.add_argument("--out", default="build/reproduce", help="output folder")
    parser.add_argument("--expected", default=str(Path(__file__).resolve().parents[1] / "book" / "expected.yaml"))
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), help="default: fp16 on CUDA, else fp32")
    parser.add_argument("--batch-size", type=int, help="default: 1024 on CUDA, else 64")
    parser.add_argument("--device", default=None)
    parser.add_argument("--compare-any-data", action="store_true",
                        help="PASS/FAIL even on data smaller than the published (e.g. to check the wiring)")
    args = parser.parse_args(argv)
    for name in ("data_dir", "test_csv", "corpus", "image_root", "out"):
        if getattr(args, name):
            setattr(args, name, os.path.expanduser(getattr(args, name)))
    args.checkpoints = [os.path.expanduser(c) for c in args.checkpoints]
    protocol = load_protocol(args.expected)
    if not args.checkpoints:
        print("No checkpoints given. " + download_instructions(protocol))
        return 2
    if (args.test_csv is None) == (args.data_dir is None) or (args.test_csv is None) != (args.corpus is None):
        parser.error("give either --data-dir DIR, or --test-csv FILE with --corpus FILE")
    missing = [c for c in args.checkpoints if not Path(c).is_file()]
    if missing:
        urls = {checkpoint_key(k): v for k, v in protocol.downloads.items()}
        for path in missing:
            where = urls.get(checkpoint_key(path))
            print(f"error: checkpoint {path} not found" + (f"; download it from {where}" if where else ""),
                  file=sys.stderr)
        return 2
    try:
        table = run(args.checkpoints, protocol, data_dir=args.data_dir, test_csv=args.test_csv, corpus=args.corpus,
                    image_root=args.image_root, out=args.out, model=args.model, splits=args.splits,
                    precision=args.precision, batch_size=args.batch_size, device=args.device,
                    compare_any_data=args.compare_any_data)
    except (DataFormatError, ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    tolerance = ", ".join(f"{c} ±{t}" for c, t in protocol.tolerance.items())
    print(f"Published rows vs ours; {', '.join(f'{c} = {m}' for c, m in protocol.metrics.items())}; "
          f"PASS within {tolerance}:")
    print(table.astype(object).where(table.notna(), "-").to_string(index=False))
    if verdicts_withheld(table, protocol):
        print(f"verdicts n/a: this in-domain split is smaller than the published data's "
              f"({protocol.published_min_rows:,} rows or more); --compare-any-data gives them anyway")
    verdicts = passed(table, protocol)
    for key, ok in verdicts.items():
        print(f"{key}: " + ("reproduced (in at least one document configuration)" if ok
                            else "NOT reproduced (in no document configuration)"))
    print(f"tables: {Path(args.out) / 'comparison.csv'}, every measure: {Path(args.out) / 'measured.csv'}")
    return 0 if all(verdicts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

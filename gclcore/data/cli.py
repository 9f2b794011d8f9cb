"""The data layer's command line (``python -m gclcore.data``)::

    python -m gclcore.data validate DATA_DIR [--image-root DIR]     # a CSV-layout or HF parquet folder
    python -m gclcore.data remap-images DATA_DIR IMAGE_DIR
    python -m gclcore.data to-parquet DATA_DIR OUT_DIR --image-root DIR [--row-group-size N]

``to-parquet`` converts the split CSVs present (streaming: one row group of images in memory at a time).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gclcore.data.csv_reader import read_split_csv
from gclcore.data.errors import DataFormatError
from gclcore.data.images import ImageResolver
from gclcore.data.layout import SPLIT_NAMES, SPLIT_STEMS, split_files
from gclcore.data.parquet import write_parquet_split
from gclcore.data.remap import remap_images
from gclcore.data.validation import validate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gclcore.data",
                                     description="Validate, remap or convert a Marqo-GS dataset directory.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_val = sub.add_parser("validate", help="check a dataset directory; exits 1 on errors")
    p_val.add_argument("data_dir")
    p_val.add_argument("--image-root", help="folder holding the images (resolved by basename)")
    p_val.add_argument("--decode-limit", type=int, default=1000,
                       help="decode at most this many images to check they are readable (0: all)")
    p_map = sub.add_parser("remap-images", help="rewrite image_local paths to IMAGE_DIR/basename, atomically")
    p_map.add_argument("data_dir")
    p_map.add_argument("image_dir")
    p_pq = sub.add_parser("to-parquet", help="write the Hugging Face parquet layout (images embedded)")
    p_pq.add_argument("data_dir")
    p_pq.add_argument("out_dir")
    p_pq.add_argument("--image-root", required=True)
    p_pq.add_argument("--row-group-size", type=int, default=1000,
                      help="rows per parquet row group: at most this many images are held in memory at once")
    args = parser.parse_args(argv)

    try:
        if args.command == "validate":
            result = validate(args.data_dir, args.image_root, args.decode_limit)
            print(result.render())
            return 0 if result.ok else 1
        if args.command == "remap-images":
            for path, count in remap_images(args.data_dir, args.image_dir).items():
                print(f"{path}: {count:,} paths rewritten")
            return 0
        resolver = ImageResolver(args.image_root)
        present = [s for s in SPLIT_STEMS if (Path(args.data_dir) / f"{s}.csv").exists()]
        if not present:
            raise DataFormatError(args.data_dir, "no split CSVs to convert",
                                  fix=f"point DATA_DIR at the folder holding {', '.join(s + '.csv' for s in SPLIT_STEMS)}")
        for stem in present:
            frame = read_split_csv(split_files(args.data_dir, stem).csv)
            out = Path(args.out_dir) / "data" / f"{SPLIT_NAMES[stem]}-00000-of-00001.parquet"
            write_parquet_split(frame, resolver, out, row_group_size=args.row_group_size)
            print(f"{out}: {len(frame):,} rows")
        return 0
    except DataFormatError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

"""Benchmark: load time and peak memory of a 10M-row split CSV (issue target: < 60 s, < 4 GiB RSS on
the 2-core CPU box).

    python bench/load_split_csv.py [--work data/bench-large]

Steps (each skipped when its output exists): generate the `large` synthetic shop without images
(10M ranked rows), rebuild it as one split with query and product fractions 1.0 so that
`query_0_product_id_0.csv` holds all 10M rows in the published column layout, then load that file with
`gclcore.data.read_split_csv` in a fresh subprocess and report wall time and peak RSS.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

LOAD = """
import time, resource, json, sys
t = time.perf_counter()
from gclcore.data import read_split_csv
frame = read_split_csv(sys.argv[1])
seconds = time.perf_counter() - t
print(json.dumps({"rows": len(frame), "columns": list(frame.columns), "seconds": round(seconds, 2),
                  "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}))
"""


def run(cmd):
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="data/bench-large")
    args = parser.parse_args()
    work = Path(args.work)
    timings = {}
    if not (work / "shop" / "ranked.csv").exists():
        timings["synth_large_s"] = run([sys.executable, "-m", "gclcore.synth", str(work / "shop"),
                                        "--preset", "large", "--no-images"])
    split = work / "single" / "query_0_product_id_0.csv"
    if not split.exists():
        timings["build_single_split_s"] = run([sys.executable, "-m", "gclcore.splits", "build",
                                               str(work / "shop" / "ranked.csv"), str(work / "single"),
                                               "--query-frac", "1", "--product-frac", "1"])
    result = json.loads(subprocess.run([sys.executable, "-c", LOAD, str(split)], check=True,
                                       capture_output=True, text=True).stdout)
    result.update(timings, file=str(split), file_gib=round(split.stat().st_size / 2**30, 2))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""Benchmark: ``python -m gclcore.metrics`` against the reference procedure's metric part, whole process.

    python bench/metrics_cli.py [--queries 2000] [--results 1000] [--repeats 5]

Both read the same two JSON files, qrels ``{qid: {doc_id: grade}}`` (~100 graded documents per query,
grades 1..100, 20-digit ids as in Marqo-GS) and a run ``{qid: {doc_id: score}}`` of ``--results`` documents
per query (the judged ones ranked higher on average, so the metrics are informative; once in rank order,
as retrieval tools write runs, once shuffled), and print the
metrics as JSON. Timed from process start to exit (interpreter start, imports, JSON parsing and
conversion included), the two commands interleaved ``--repeats`` times; medians and their ratio. The
anchor is ``bench/reference_metrics.py`` (a straight port of the published procedure: BEIR's evaluate
and evaluate_custom, GCL's ERR and RBP; the same 21 cut-offs and measures as ours). Also prints the
largest difference between the two outputs' values, over every measure both report. Prints JSON and
draws ``bench/metrics_cli.png``.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def write_files(folder: Path, n_queries: int, n_results: int, ranked_order: bool, judged: int = 100,
                n_docs: int = 1_000_000, seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    doc_ids = np.array([str(10**19 + i) for i in range(n_docs)])
    qrels, run = {}, {}
    for q in range(n_queries):
        qid = f"{10**19 + q}_q"  # not a document id (BEIR would drop a document of the same id)
        judged_docs = rng.choice(n_docs, judged, replace=False)
        grades = rng.integers(1, 101, judged)
        qrels[qid] = dict(zip(doc_ids[judged_docs].tolist(), grades.tolist()))
        ranked = np.unique(np.concatenate([judged_docs[rng.random(judged) < 0.6], rng.choice(n_docs, n_results)]))
        ranked = rng.permutation(ranked)[:n_results]
        scores = rng.normal(size=len(ranked)) + np.isin(ranked, judged_docs)  # judged documents rank higher
        order = np.argsort(-scores, kind="stable") if ranked_order else np.arange(len(ranked))
        run[qid] = dict(zip(doc_ids[ranked[order]].tolist(), scores[order].round(6).tolist()))
    paths = folder / "qrels.json", folder / "run.json"
    for path, data in zip(paths, (qrels, run)):
        path.write_text(json.dumps(data))
    return paths


def timed(command: list[str]) -> tuple[float, dict]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, json.loads(done.stdout)


def measure(folder: Path, args, ranked_order: bool) -> dict:
    qrels, run = write_files(folder, args.queries, args.results, ranked_order)
    commands = {"reference_port": [sys.executable, str(HERE / "reference_metrics.py"), str(qrels), str(run)],
                "gclcore_metrics": [sys.executable, "-m", "gclcore.metrics", str(qrels), str(run)]}
    times, outputs = {name: [] for name in commands}, {}
    for _ in range(args.repeats):  # interleaved: a slow spell of the machine hits both
        for name, command in commands.items():
            seconds, outputs[name] = timed(command)
            times[name].append(seconds)
    reference, ours = outputs["reference_port"], outputs["gclcore_metrics"]
    result = {"run_json_mb": round(run.stat().st_size / 1e6, 1)}
    result |= {f"{name}_s": round(float(np.median(t)), 3) for name, t in times.items()}
    result |= {f"{name}_all_s": [round(x, 2) for x in t] for name, t in times.items()}
    result["speedup"] = round(result["reference_port_s"] / result["gclcore_metrics_s"], 2)
    result["max_abs_metric_diff"] = max(abs(ours[key] - reference[key]) for key in reference)
    result["metrics_compared"] = len(reference)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--results", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    out = {"queries": args.queries, "results_per_query": args.results, "repeats": args.repeats}
    with tempfile.TemporaryDirectory() as tmp:
        for order in ("ranked", "shuffled"):
            out[order] = measure(Path(tmp), args, order == "ranked")
    print(json.dumps(out, indent=1))
    plot(out, HERE / "metrics_cli.png")


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    orders = ["ranked", "shuffled"]
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    y = np.arange(len(orders))
    for offset, name, label, color in ((0.2, "reference_port", "reference port", "#999999"),
                                       (-0.2, "gclcore_metrics", "python -m gclcore.metrics", "#2b6cb0")):
        seconds = [out[order][f"{name}_s"] for order in orders]
        ax.barh(y + offset, seconds, height=0.38, label=label, color=color)
        if name == "gclcore_metrics":
            for i, order in enumerate(orders):
                ax.annotate(f"{out[order]['speedup']:.1f}x faster", (seconds[i], y[i] + offset), xytext=(4, 0),
                            textcoords="offset points", va="center", fontsize=9)
    ax.set_yticks(y, ["run in rank order\n(as written by retrieval)", "run shuffled"])
    ax.set(xlabel="whole process, seconds (median)",
           title=f"{out['queries']:,} queries x {out['results_per_query']:,} results, every published measure")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())

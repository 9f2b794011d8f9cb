"""The book's experiments: named training runs (a base config + overrides) and the tables they feed.

An experiments file (``book/experiments.yaml``) holds::

    base: {TrainConfig fields shared by every run}
    runs: {name: {overrides}}                 e.g. clip-baseline: {stw: constant}
    tables: {table name: [run names]}         e.g. stw: [clip-baseline, gcl-linear, stw-reciprocal]

Command line (the Makefile takes its run list from ``list`` and trains every run in one ``run`` call)::

    python -m gclcore.experiments list book/experiments.yaml
    python -m gclcore.experiments run book/experiments.yaml NAME [NAME ...] --out build/main/runs [--set key=value ...]

Several runs in one call share one process (importing torch / open_clip costs ~15 s per process).
A run writes ``<out>/<name>/`` (see :mod:`gclcore.train`), including ``test/results.csv``: the
reference protocol's summary row on every split. A run with ``model: bm25`` has nothing to train
(``epochs: 0``): it is only tested, by :class:`gclcore.bm25.BM25Retriever` on its ``rhs_fields``.

Runs that share settings share them with YAML anchors (``text: &text {...}`` then ``{<<: *text, ...}``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import yaml

from gclcore.config import TrainConfig, parse_overrides
from gclcore.interrupt import EXIT_INTERRUPTED, TrainingInterrupted


def load(path: str | Path) -> dict:
    spec = yaml.safe_load(Path(path).read_text()) or {}
    for key in ("base", "runs"):
        if key not in spec:
            raise ValueError(f"{path}: missing top-level key {key!r}")
    for table, names in (spec.get("tables") or {}).items():
        unknown = [n for n in names if n not in spec["runs"]]
        if unknown:
            raise ValueError(f"{path}: table {table!r} names unknown runs {unknown}")
    return spec


def run_config(spec: dict, name: str, out: str | Path, overrides: dict | None = None) -> TrainConfig:
    """The full config of run ``name``: the base, then ``overrides`` (data, model, budget), then the run's
    own settings, which define the run and therefore win (``zero-shot`` keeps ``epochs: 0``)."""
    if name not in spec["runs"]:
        raise ValueError(f"unknown run {name!r}; runs: {', '.join(spec['runs'])}")
    values = {**spec["base"], **(overrides or {}), **(spec["runs"][name] or {})}
    values["output_dir"] = str(Path(out) / name)
    return TrainConfig.from_dict(values)


def ensure_runs(spec: dict, names: list[str], runs_dir: str | Path, overrides: dict | None = None) -> list[str]:
    """Train (and test) every run of ``names`` that has no ``<runs_dir>/<name>/test/results.csv`` yet;
    returns the names it trained. ``make book`` trains all runs beforehand; a chapter run by hand
    (JupyterLab, papermill) trains what it is missing, saying so."""
    missing = [name for name in names if not (Path(runs_dir) / name / "test" / "results.csv").exists()]
    for name in missing:
        print(f"run {name!r} is not in {runs_dir}: training it", flush=True)
        execute(run_config(spec, name, runs_dir, overrides))
    return missing


def ensure_chapter_runs(spec: dict, names: list[str], runs_dir: str | Path, data_dir: str = "", image_root: str = "",
                        model: str = "default", pretrained: str = "") -> list[str]:
    """:func:`ensure_runs` with a chapter's parameters: the data folder ("" -> the embedded shop, generated
    on first use), image root and weights are resolved only when a run is missing, so a chapter that reads
    finished runs needs no data."""
    if all((Path(runs_dir) / name / "test" / "results.csv").exists() for name in names):
        return []
    from gclcore import paths
    from gclcore.models import resolve_pretrained

    data_dir = paths.resolve_data_dir(data_dir)
    return ensure_runs(spec, names, runs_dir, {"data_dir": data_dir, "image_root": paths.resolve_image_root(image_root, data_dir),
                                               "model": model, "pretrained": resolve_pretrained(model, pretrained)})


def execute(cfg: TrainConfig):
    """Train and test one run (:func:`gclcore.train.train`); returns its test table (``test/results.csv``).

    ``model: bm25`` is a lexical ranker with no parameters: the run only tests it, over the same splits,
    fields and protocol depth (``eval_top_q``, ``eval_top_k``) as a trained run, and records its config."""
    if cfg.model != "bm25":
        from gclcore.train import train

        return train(cfg).test
    if cfg.epochs or cfg.max_steps:
        raise ValueError(f"model bm25 has nothing to train, but the run asks for epochs={cfg.epochs}, "
                         f"max_steps={cfg.max_steps}: give the run epochs: 0 (and no max_steps)")
    if not cfg.test_splits:
        raise ValueError("a bm25 run is only tested, but its test_splits is empty: give it test_splits: all")
    from gclcore.bm25 import BM25Retriever
    from gclcore.evaluate import evaluate
    from gclcore.fusion import parse_fields

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    return evaluate(BM25Retriever(), cfg.data_dir, out / "test", cfg.test_splits, image_root=cfg.image_root or None,
                    lhs_fields=parse_fields(cfg.lhs_fields), rhs_fields=parse_fields(cfg.rhs_fields),
                    top_q=cfg.eval_top_q, top_k=cfg.eval_top_k, cache_dir=False, progress=False,
                    save_rankings=cfg.save_rankings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gclcore.experiments", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list")
    p_list.add_argument("experiments")
    p_run = sub.add_parser("run")
    p_run.add_argument("experiments")
    p_run.add_argument("names", nargs="+", metavar="NAME")
    p_run.add_argument("--out", required=True)
    p_run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    spec = load(args.experiments)
    if args.command == "list":
        print("\n".join(spec["runs"]))
        return 0
    try:
        overrides = parse_overrides(args.set)
    except ValueError as err:
        parser.error(str(err))
    from gclcore.train import RUN_ERRORS

    for name in args.names:
        try:
            test = execute(run_config(spec, name, args.out, overrides))
        except RUN_ERRORS as err:
            print(f"error in run {name!r}: {err}", file=sys.stderr)
            return 2
        except TrainingInterrupted as stopped:
            print(f"run {name!r} stopped: {stopped}", file=sys.stderr)
            return EXIT_INTERRUPTED
        print(f"== {name}")
        if test is not None:
            print(test.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())

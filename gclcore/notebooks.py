"""Checks that every notebook is a jupytext pair in sync, with no outputs in the ``.ipynb``.

Each ``notebooks/NN_name.py`` (py:percent, the reviewed source) must have a ``NN_name.ipynb`` twin with
the same cells (type and source) and no outputs or execution counts: executed copies live in the book.

Command line::

    python -m gclcore.notebooks check notebooks/    # exit 1 and list the problems if any
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def pair_problems(directory: str | Path) -> list[str]:
    """Problems with the notebook pairs under ``directory`` (empty when all is well)."""
    import jupytext
    import nbformat

    directory = Path(directory)
    problems = []
    sources = sorted(directory.glob("*.py"))
    notebooks = sorted(directory.glob("*.ipynb"))
    for ipynb in notebooks:
        if not ipynb.with_suffix(".py").exists():
            problems.append(f"{ipynb}: no paired {ipynb.with_suffix('.py').name}")
    for py in sources:
        ipynb = py.with_suffix(".ipynb")
        if not ipynb.exists():
            problems.append(f"{py}: no paired {ipynb.name} (run `make sync-notebooks`)")
            continue
        text_cells = [(c.cell_type, c.source.strip()) for c in jupytext.read(py).cells]
        nb = nbformat.read(ipynb, as_version=4)
        json_cells = [(c.cell_type, c.source.strip()) for c in nb.cells]
        if text_cells != json_cells:
            first = next((i for i, (a, b) in enumerate(zip(text_cells, json_cells)) if a != b),
                         min(len(text_cells), len(json_cells)))
            problems.append(f"{ipynb}: out of sync with {py.name} from cell {first + 1} "
                            f"(run `make sync-notebooks`)")
        for i, cell in enumerate(nb.cells, start=1):
            if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count")):
                problems.append(f"{ipynb}: cell {i} carries outputs (run `make sync-notebooks` to strip them)")
                break
        if not any("parameters" in c.get("metadata", {}).get("tags", []) for c in nb.cells):
            problems.append(f"{ipynb}: no cell tagged 'parameters' (papermill needs one)")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gclcore.notebooks")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="verify notebook pairs are in sync and stripped")
    check.add_argument("directory", nargs="?", default="notebooks")
    args = parser.parse_args(argv)
    problems = pair_problems(args.directory)
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"notebook pairs: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

"""Where the book's files are, whatever the working directory: the defaults of the notebooks.

The notebooks run from the repository root (``papermill notebooks/03_train.ipynb out.ipynb``), from
``notebooks/`` (JupyterLab, ``make lab``) or from anywhere else, so no default may be relative to the
working directory. Each default is an absolute path in the repository this package is imported from (an
editable install or a checkout on ``PYTHONPATH``):

======================  =====================================================================
``""`` for              means
======================  =====================================================================
``data_dir``            ``<repo>/data/synth-small-seed0``, generated on first use
``image_root``          ``<data_dir>/images`` if it exists, else none (as Dataset)
``runs_dir``            ``<repo>/build/runs`` (``make book`` keeps its own, ``build/<book>/runs``)
``experiments_file``    ``<repo>/book/experiments.yaml``
``expected_file``       ``<repo>/book/expected.yaml``
======================  =====================================================================

A path given explicitly is made absolute against the working directory of the moment, as any
command-line tool reads its arguments. Every ``resolve_*`` function returns an absolute
:class:`~pathlib.Path`.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_PRESET = "small"
DEFAULT_SEED = 0
DONE_STAMP = ".done"
"""Written into a synthetic shop's folder once it is complete (by :func:`ensure_synth` and the Makefile)."""


def repo_root() -> Path:
    """The gcl-book checkout holding this package (the folder with ``book/experiments.yaml``).

    Raises FileNotFoundError when gclcore is imported from elsewhere (a plain, non-editable install).
    """
    root = Path(__file__).resolve().parent.parent
    if not (root / "book" / "experiments.yaml").is_file():
        raise FileNotFoundError(
            f"gclcore is imported from {root / 'gclcore'}, which is not inside a gcl-book checkout (no "
            f"book/experiments.yaml next to it), so the notebooks' defaults have no repository to point at: "
            f"install the checkout with `pip install -e .`, put it on PYTHONPATH, or give every path parameter")
    return root


def absolute(path: str | os.PathLike) -> Path:
    """``path`` (``~`` expanded) as an absolute path, against the current working directory if relative.
    Symlinks are kept as written."""
    return Path(os.path.abspath(os.path.expanduser(path)))


def synth_dir(preset: str = DEFAULT_PRESET, seed: int = DEFAULT_SEED) -> Path:
    """``<repo>/data/synth-<preset>-seed<seed>``: where the Makefile and :func:`ensure_synth` put a shop."""
    return repo_root() / "data" / f"synth-{preset}-seed{seed}"


def ensure_synth(preset: str = DEFAULT_PRESET, seed: int = DEFAULT_SEED) -> Path:
    """The synthetic shop ``synth_dir(preset, seed)``, generated first when it is not complete.

    Generation writes a sibling staging folder, which is renamed into place once complete, so the shop's
    folder never holds a partial dataset; an incomplete folder (no :data:`DONE_STAMP`, e.g. an interrupted
    ``make``) is replaced. When two processes generate at once, the first to finish wins and the other
    discards its identical copy (generation is deterministic).
    """
    from gclcore.synth import generate

    target = synth_dir(preset, seed)
    if (target / DONE_STAMP).is_file():
        return target
    print(f"data_dir: {target} is not generated yet; generating the synthetic shop (preset {preset!r}, "
          f"seed {seed}) ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))  # same filesystem: atomic rename
    try:
        generate(staging, preset, seed=seed, progress=False)
        (staging / DONE_STAMP).touch()
        if target.exists() and not (target / DONE_STAMP).is_file():
            shutil.rmtree(target)
        try:
            staging.rename(target)
        except OSError:  # another process renamed its complete copy into place first
            if not (target / DONE_STAMP).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # nothing left once renamed
    print(f"data_dir: generated {target} in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return target


def resolve_data_dir(data_dir: str | os.PathLike = "") -> Path:
    """The dataset folder for a ``data_dir`` parameter: ``""`` -> the default synthetic shop (generated
    when missing), else ``data_dir`` made absolute. Raises FileNotFoundError naming it if it is not a folder."""
    if not str(data_dir):
        return ensure_synth()
    path = absolute(data_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"data_dir {path}: no such folder (give the dataset folder, or data_dir='' for "
                                f"the embedded synthetic shop)")
    return path


def resolve_image_root(image_root: str | os.PathLike, data_dir: Path) -> Path | None:
    """The image folder for an ``image_root`` parameter: ``""`` -> the dataset's own default
    (:class:`gclcore.data.Dataset`: ``<data_dir>/images`` when it exists, else None for no images),
    else ``image_root`` made absolute."""
    from gclcore.data import open_dataset

    return absolute(image_root) if str(image_root) else open_dataset(data_dir).image_root


def resolve_runs_dir(runs_dir: str | os.PathLike = "") -> Path:
    """The folder of training runs for a ``runs_dir`` parameter: ``""`` -> ``<repo>/build/runs``."""
    return absolute(runs_dir) if str(runs_dir) else repo_root() / "build" / "runs"


def resolve_book_file(value: str | os.PathLike, name: str) -> Path:
    """A file of ``book/`` for a parameter: ``""`` -> ``<repo>/book/<name>``, else ``value`` made absolute.

    Raises FileNotFoundError naming the file when it does not exist.
    """
    path = absolute(value) if str(value) else repo_root() / "book" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (give the path of a {name} file, or '' for the book's own)")
    return path

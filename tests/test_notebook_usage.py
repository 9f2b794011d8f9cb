"""The notebooks' documented usages work from any working directory, with no other flag.

Each notebook runs under papermill from a temporary folder that is not the repository (its defaults must
locate the repository, not the cwd) on the tiny shop, with a few training steps. The runs chapters 4 and 5
read come from an experiments file with the book's base and a tiny budget; a run missing there is trained
by the notebook itself. The Makefile's per-notebook parameter lists are checked against the notebooks.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import papermill
import pytest
import yaml

from gclcore import experiments, paths

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
TINY_BUDGET = {"epochs": 1, "max_steps": 2, "batch_size": 16, "eval_top_k": 50}
MAIN_RUNS = ["zero-shot", "clip-baseline", "gcl-linear"]
TEXT_RUNS = ["text-bm25", "text-zero-shot", "text-binary", "text-gcl-linear"]  # the text runs' own budget: 2 steps here
# chapter 7's tables, cut down: trained by the notebook itself (only the main runs are in tiny_runs)
BEYOND_TABLES = {"beyond_random": ["gcl-linear", "beyond-random-lambda-0.1"], "beyond_grouped": ["beyond-grouped-lambda"],
                 "beyond_seeds": ["clip-baseline", "clip-baseline-seed1", "gcl-linear", "gcl-linear-seed1",
                                  "beyond-grouped-lambda", "beyond-grouped-lambda-seed1"]}
BEYOND_RUNS = list(dict.fromkeys(name for names in BEYOND_TABLES.values() for name in names))


@pytest.fixture
def kernel_env(monkeypatch):
    """The kernels papermill starts import this checkout's gclcore (they inherit the environment)."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


@pytest.fixture
def elsewhere(tmp_path) -> Path:
    """A working directory outside the repository."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    return cwd


@pytest.fixture(scope="module")
def tiny_experiments(tmp_path_factory) -> Path:
    """book/experiments.yaml's base with a tiny budget, the main runs, and every table chapters 5 and 7 read."""
    book = experiments.load(REPO / "book" / "experiments.yaml")
    features = tmp_path_factory.mktemp("features")  # the shared tiny shop stays read-only
    spec = {"base": {**book["base"], **TINY_BUDGET, "feature_cache_dir": str(features)},
            "runs": {name: book["runs"][name] for name in MAIN_RUNS + TEXT_RUNS + BEYOND_RUNS},
            "tables": {"main": MAIN_RUNS, "stw": ["clip-baseline", "gcl-linear"], "fields": ["gcl-linear"],
                       "duplicates": ["gcl-linear"], "text": TEXT_RUNS}}
    path = tmp_path_factory.mktemp("experiments") / "experiments.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory, tiny_shop, tiny_experiments) -> Path:
    """The main and text runs on the tiny shop, trained the way the Makefile does (read-only: copy to change)."""
    out = tmp_path_factory.mktemp("runs")
    code = experiments.main(["run", str(tiny_experiments), *MAIN_RUNS, *TEXT_RUNS, "--out", str(out),
                             "--set", f"data_dir={tiny_shop}"])
    assert code == 0
    return out


def run_notebook(name: str, cwd: Path, out_dir: Path, **parameters) -> nbformat.NotebookNode:
    """Execute notebooks/<name>.ipynb with papermill in ``cwd``; returns the executed notebook."""
    output = out_dir / f"{name}.out.ipynb"
    papermill.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(output), parameters=parameters,
                               cwd=str(cwd), progress_bar=False)
    return nbformat.read(output, as_version=4)


def outputs_text(nb: nbformat.NotebookNode) -> str:
    """Every stream, result (plain, Markdown and HTML: a styled table has only HTML) and error text of an
    executed notebook, concatenated."""
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            parts += [output.get("text", ""), data.get("text/markdown", ""), data.get("text/plain", ""),
                      data.get("text/html", ""), output.get("evalue", "")]
    return "\n".join(parts)


def test_makefile_passes_only_declared_parameters():
    makefile = (REPO / "Makefile").read_text()
    lists = dict(re.findall(r"^NB_PARAMS_(\w+)\s*:=\s*(.*)$", makefile, flags=re.MULTILINE))
    assert sorted(lists) == sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
    for name, passed in lists.items():
        declared = papermill.inspect_notebook(str(NOTEBOOKS / f"{name}.ipynb"))
        assert set(passed.split()) <= set(declared), (name, set(passed.split()) - set(declared))
    values = set(re.findall(r"^NB_VALUE_(\w+)\s*:=", makefile, flags=re.MULTILINE))
    assert {p for passed in lists.values() for p in passed.split()} <= values


def test_defaults_point_into_the_repository(elsewhere, monkeypatch):
    monkeypatch.chdir(elsewhere)
    assert paths.repo_root() == REPO
    assert paths.resolve_runs_dir("") == REPO / "build" / "runs"
    assert paths.resolve_book_file("", "experiments.yaml") == REPO / "book" / "experiments.yaml"
    assert paths.resolve_runs_dir("runs") == elsewhere / "runs"  # given paths: against the cwd, made absolute
    with pytest.raises(FileNotFoundError, match="data_dir .*no-such-shop: no such folder"):
        paths.resolve_data_dir("no-such-shop")
    with pytest.raises(FileNotFoundError, match="missing.yaml: no such file"):
        paths.resolve_book_file("missing.yaml", "expected.yaml")


def test_default_shop_is_generated_once_and_atomically(tmp_path, monkeypatch):
    target = tmp_path / "data" / "synth-tiny-seed0"
    monkeypatch.setattr(paths, "synth_dir", lambda preset, seed: target)
    target.mkdir(parents=True)
    (target / "ranked.csv").write_text("half-written")  # an interrupted generation: no .done stamp
    assert paths.ensure_synth("tiny", 0) == target
    assert (target / paths.DONE_STAMP).is_file() and (target / "corpus_1.json").is_file()
    assert (target / "ranked.csv").read_text() != "half-written"
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # no staging folder left
    stamp = (target / paths.DONE_STAMP).stat().st_mtime_ns
    assert paths.ensure_synth("tiny", 0) == target
    assert (target / paths.DONE_STAMP).stat().st_mtime_ns == stamp  # complete: not generated again


@pytest.mark.slow
def test_01_explore_data(kernel_env, elsewhere, tmp_path, tiny_shop):
    nb = run_notebook("01_explore_data", elsewhere, tmp_path, data_dir=str(tiny_shop))
    assert "ranked (query, product) pairs" in outputs_text(nb)


@pytest.mark.slow
def test_02_multi_split_rebuilds_in_a_scratch_folder(kernel_env, elsewhere, tmp_path, tiny_shop):
    nb = run_notebook("02_multi_split", elsewhere, tmp_path, data_dir=str(tiny_shop))
    assert "files identical to the shipped ones" in outputs_text(nb)
    assert list(elsewhere.iterdir()) == []  # nothing written relative to the cwd


@pytest.mark.slow
def test_03_train_with_config_overrides(kernel_env, elsewhere, tmp_path, tiny_shop, tiny_experiments):
    runs = tmp_path / "runs"
    run_notebook("03_train", elsewhere, tmp_path, data_dir=str(tiny_shop), runs_dir=str(runs),
                 experiments_file=str(tiny_experiments), stw="reciprocal", **TINY_BUDGET)
    config = json.loads((runs / "gcl-linear" / "config.json").read_text())
    assert config["stw"] == "reciprocal" and config["max_steps"] == 2  # papermill parameters, typed
    assert config["data_dir"] == str(tiny_shop) and Path(config["image_root"]).is_absolute()
    assert (runs / "gcl-linear" / "test" / "results.csv").is_file()
    assert config["keep_state"] and (runs / "gcl-linear" / "checkpoints" / "state-latest.pt").is_file()  # reusable
    assert list(elsewhere.iterdir()) == []


@pytest.mark.slow
def test_03_open_clip_model_offline_fails_before_any_work(elsewhere, tmp_path):
    """The design-card usage `papermill notebooks/03_train.ipynb out.ipynb -p model ViT-B-32`, offline."""
    empty_cache = tmp_path / "empty-cache"
    empty_cache.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(empty_cache), "XDG_CACHE_HOME": str(empty_cache),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "papermill", str(NOTEBOOKS / "03_train.ipynb"), "out.ipynb",
                           "-p", "model", "ViT-B-32"], cwd=elsewhere, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode != 0
    nb = nbformat.read(elsewhere / "out.ipynb", as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    failed = [i for i, cell in enumerate(code) if any(o.output_type == "error" for o in cell.get("outputs", []))]
    # cells: parameters, papermill's injected parameters, then the first code cell of the notebook
    assert failed == [2] and all(cell.get("execution_count") is None for cell in code[3:])
    error = next(o for o in code[2].outputs if o.output_type == "error")
    assert error.ename == "PretrainedUnavailable"
    for part in ("'ViT-B-32'", "laion2b_s34b_b79k", "-p pretrained /path/to/weights.bin", "pretrained=none"):
        assert part in error.evalue
    assert sorted(p.name for p in elsewhere.iterdir()) == ["out.ipynb"]


@pytest.mark.slow
def test_04_evaluate_trains_a_missing_run(kernel_env, elsewhere, tmp_path, tiny_shop, tiny_experiments, tiny_runs):
    runs = Path(shutil.copytree(tiny_runs, tmp_path / "runs"))
    shutil.rmtree(runs / "gcl-linear")
    nb = run_notebook("04_evaluate", elsewhere, tmp_path, data_dir=str(tiny_shop), runs_dir=str(runs),
                      experiments_file=str(tiny_experiments))
    assert "run 'gcl-linear' is not in" in outputs_text(nb)
    assert (runs / "gcl-linear" / "test" / "results.csv").is_file()
    assert list(elsewhere.iterdir()) == []


@pytest.mark.slow
def test_05_paper_tables(kernel_env, elsewhere, tmp_path, tiny_experiments, tiny_runs):
    nb = run_notebook("05_paper_tables", elsewhere, tmp_path, runs_dir=str(tiny_runs),
                      experiments_file=str(tiny_experiments), expected_key="", strict=False)
    text = outputs_text(nb)
    assert "is not in" not in text  # every run was there: nothing trained
    assert "nothing to check on this dataset" in text
    assert "GCL e5-large-v2 (published)" in text and "text-gcl-linear vs text-binary" in text  # the text-only table
    in_domain = {run: float(pd.read_csv(tiny_runs / run / "test" / "results.csv").set_index("name").loc["in_domain", "NDCG@10"])
                 for run in ("clip-baseline", "gcl-linear")}
    best = {"clip-baseline": "constant", "gcl-linear": "linear"}[max(in_domain, key=in_domain.get)]
    verdict = "is" if best == "linear" else "is **not**"  # the text table's GCL run here is linear only
    assert f"Best STW of the multi-modal ablation: `{best}`; it {verdict} among" in text


def test_07_beyond_paper_trains_its_missing_runs(kernel_env, elsewhere, tmp_path, tiny_shop, tiny_experiments, tiny_runs):
    spec = yaml.safe_load(tiny_experiments.read_text())
    spec["tables"].update(BEYOND_TABLES)
    experiments_file = tmp_path / "experiments.yaml"
    experiments_file.write_text(yaml.safe_dump(spec))
    runs = Path(shutil.copytree(tiny_runs, tmp_path / "runs"))
    nb = run_notebook("07_beyond_paper", elsewhere, tmp_path, data_dir=str(tiny_shop), runs_dir=str(runs),
                      experiments_file=str(experiments_file))
    text = outputs_text(nb)
    trained = set(re.findall(r"run '([\w.-]+)' is not in", text))
    assert trained == set(BEYOND_RUNS) - set(MAIN_RUNS)
    assert "`clip-baseline` 2, `gcl-linear` 2, `beyond-grouped-lambda` 2" in text
    assert "beyond-grouped-lambda vs gcl-linear" in text and "gcl-linear vs clip-baseline" in text
    assert re.search(r"\*\*`beyond-grouped-lambda`\*\* is ahead of `gcl-linear` in \d of 8 cells", text)
    assert sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", [])) == 2  # the scatters
    config = json.loads((runs / "beyond-grouped-lambda-seed1" / "config.json").read_text())
    assert (config["batching"], config["ranking_loss"], config["seed"]) == ("grouped", "lambda", 1)


@pytest.mark.slow
def test_06_reproduce_without_checkpoints_says_what_to_download(kernel_env, elsewhere, tmp_path):
    nb = run_notebook("06_reproduce", elsewhere, tmp_path)
    text = outputs_text(nb)
    assert "No checkpoints given" in text and "gcl-vitb32-117-gs-full-states.pt" in text
    assert list(elsewhere.iterdir()) == []


@pytest.mark.slow
def test_06_reproduce_with_a_checkpoint(kernel_env, elsewhere, tmp_path, tiny_shop):
    """A checkpoint under a released name (the embedded model's weights: fast) goes through the chapter."""
    import torch

    from gclcore.models import load_encoder

    release = tmp_path / "gcl-vitb32-117-gs-full-states.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in load_encoder("default", device="cpu").model.state_dict().items()}},
               release)
    nb = run_notebook("06_reproduce", elsewhere, tmp_path, data_dir=str(tiny_shop), checkpoints=str(release),
                      architecture="default", output_dir=str(tmp_path / "out"))
    text = outputs_text(nb)
    html = "".join(o.get("data", {}).get("text/html", "") for c in nb.cells for o in c.get("outputs", []))
    assert "Verdicts n/a" in text and "n/a" in html  # the tiny shop is not the published data
    assert any(o.get("data", {}).get("image/png") for c in nb.cells for o in c.get("outputs", []))  # the plot
    assert (tmp_path / "out" / "comparison.csv").is_file() and list(elsewhere.iterdir()) == []

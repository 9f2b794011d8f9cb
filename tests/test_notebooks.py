"""The notebook-pair check that CI runs: the shipped pairs pass, broken pairs are caught."""
import json
import shutil
from pathlib import Path

from gclcore.notebooks import pair_problems

NOTEBOOKS = Path(__file__).parents[1] / "notebooks"


def test_shipped_notebooks_are_paired_and_stripped():
    assert pair_problems(NOTEBOOKS) == []


def test_broken_pairs_are_reported(tmp_path):
    for name in ("01_explore_data.py", "01_explore_data.ipynb", "02_multi_split.py", "02_multi_split.ipynb"):
        shutil.copy(NOTEBOOKS / name, tmp_path / name)
    with open(tmp_path / "01_explore_data.py", "a") as fh:
        fh.write("\n# %%\nprint('edited in the .py only')\n")
    nb = json.loads((tmp_path / "02_multi_split.ipynb").read_text())
    code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    code["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["hi\n"]}]
    (tmp_path / "02_multi_split.ipynb").write_text(json.dumps(nb))
    (tmp_path / "03_orphan.py").write_text("# %% [markdown]\n# # Orphan\n")
    problems = "\n".join(pair_problems(tmp_path))
    assert "01_explore_data.ipynb: out of sync" in problems
    assert "02_multi_split.ipynb: cell" in problems and "carries outputs" in problems
    assert "03_orphan.py: no paired 03_orphan.ipynb" in problems


def test_missing_parameters_cell(tmp_path):
    nb = json.loads((NOTEBOOKS / "01_explore_data.ipynb").read_text())
    for cell in nb["cells"]:
        cell.get("metadata", {}).pop("tags", None)
    (tmp_path / "x.ipynb").write_text(json.dumps(nb))
    shutil.copy(NOTEBOOKS / "01_explore_data.py", tmp_path / "x.py")
    assert any("no cell tagged 'parameters'" in p for p in pair_problems(tmp_path))

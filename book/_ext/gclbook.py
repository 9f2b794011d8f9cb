"""Sphinx extension for the gcl-book pages: what the executed notebooks should look like in the book.

``make book`` executes the notebooks with papermill and builds the HTML from those executed copies. This
extension cleans each notebook as Sphinx reads it (the ``source-read`` event, before myst-nb parses it);
the executed ``.ipynb`` files on disk are left exactly as papermill wrote them.

* The cell papermill injects (tag ``injected-parameters``: absolute paths of the build machine and the
  ``make`` overrides) is dropped. The notebook's own ``parameters`` cell stays, collapsed behind a
  "Show the chapter's parameters" toggle: it documents the knobs of the chapter without putting a block
  of default values (which the build overrides) between the title and the first result; the values a
  build actually used are printed by each chapter's first output (data set, run, batch, epochs).
* Known library noise on stderr (see :data:`NOISE`) is removed line by line; everything else on stderr,
  our own ``warning: ...`` lines in particular, is kept. An output left empty is dropped.
* ``book/_static`` is added to the HTML static path and its ``gcl-book.css`` to every page (wide tables
  scroll inside the content column).

Used from ``_config.yml`` (``sphinx.local_extensions: {gclbook: book/_ext}``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from sphinx.util import logging

logger = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent.parent / "_static"
PARAMETERS_PROMPT = ("Show the chapter's parameters", "Hide the chapter's parameters")

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

# A Python warning as ``warnings.showwarning`` prints it: ``path:line: Category: message`` and then the
# indented source line.
WARNING_HEADER = re.compile(r"^\S.*:\d+: (?P<category>\w+): (?P<message>.*)$")

# Library warnings that say nothing to a reader of the book: (category, message regex, where from).
NOISE_WARNINGS = [
    ("TqdmWarning", re.compile(r"IProgress not found"),
     "tqdm.auto imported in a Jupyter kernel without ipywidgets (gclcore's `from tqdm.auto import tqdm`)"),
    ("UserWarning", re.compile(r"The given NumPy array is not writable"),
     "torch.as_tensor on a read-only pandas array (gclcore/evaluate.py)"),
]
# Whole lines of library logging that are expected for the embedded default model.
NOISE_LINES = [
    (re.compile(r"^(WARNING:root:)?Model \S+ initialized partially\.$"),
     "open_clip.create_model: the default model's towers are loaded separately (gclcore/models.py)"),
]
# tqdm progress bars: ``desc:  42%|####      | 42/101 [00:01<00:02, 30.1it/s]`` or ``desc: 12it [00:01, ...]``.
PROGRESS_BAR = re.compile(r"(\d+%\|.*\|\s*[\d.]+[kMG]?/[\d.?]+[kMG]?\s*\[|^[^|]*\b\d+it \[\d+:\d+)")
# transformers' weight-loading report (a table of keys and their status, then notes).
LOAD_REPORT = re.compile(r"^\[transformers\] .*LOAD REPORT")
LOAD_REPORT_BODY = re.compile(r"^(\s*|.*\|.*|-[-+]*|Notes:|- .*)$")
BENIGN_LOAD_STATUS = {"UNEXPECTED"}  # checkpoint keys the architecture does not use (e.g. BERT's pooler)

NOISE = [w[2] for w in NOISE_WARNINGS] + [n[1] for n in NOISE_LINES] + [
    "tqdm progress bars (transformers' 'Loading weights')",
    "transformers LOAD REPORT listing only UNEXPECTED keys",
]


def _is_progress(line: str) -> bool:
    pieces = [p for p in ANSI.sub("", line).split("\r") if p.strip()]
    return bool(pieces) and all(PROGRESS_BAR.search(p) for p in pieces)


def clean_stderr(text: str) -> tuple[str, int]:
    """``text`` without the known noise, and how many lines were removed."""
    lines = re.findall(r"[^\n]*\n|[^\n]+$", text)  # on newlines only: a progress bar redraws with \r
    kept: list[str] = []
    i = removed = 0
    while i < len(lines):
        line = lines[i]
        plain = ANSI.sub("", line).rstrip("\r\n")
        header = WARNING_HEADER.match(plain)
        if header and any(header["category"] == cat and msg.search(header["message"])
                          for cat, msg, _ in NOISE_WARNINGS):
            j = i + 1
            while j < len(lines) and lines[j][:1] in (" ", "\t"):
                j += 1  # the quoted source line
        elif LOAD_REPORT.match(plain):
            j = i + 1
            while j < len(lines) and LOAD_REPORT_BODY.match(ANSI.sub("", lines[j]).rstrip("\r\n")):
                j += 1
            rows = [ANSI.sub("", r).split("|") for r in lines[i + 1:j]]
            statuses = {r[1].strip() for r in rows if len(r) > 1} - {"Status"}
            if not statuses <= BENIGN_LOAD_STATUS:  # MISSING / MISMATCHED keys: a real problem, keep it
                kept.append(line)
                i += 1
                continue
        elif any(pattern.match(plain) for pattern, _ in NOISE_LINES) or _is_progress(plain):
            j = i + 1
        else:
            kept.append(line)
            i += 1
            continue
        removed += j - i
        i = j
    return "".join(kept), removed


def clean_notebook(nb: dict) -> dict[str, int]:
    """Clean a notebook (nbformat 4 JSON) in place for the book; returns what was changed."""
    stats = {"injected-parameters cells": 0, "noise lines": 0}
    cells = []
    for cell in nb.get("cells", []):
        metadata = cell.setdefault("metadata", {})
        tags = metadata.get("tags", [])
        if "injected-parameters" in tags:
            stats["injected-parameters cells"] += 1
            continue
        if "parameters" in tags and cell.get("cell_type") == "code":
            if not {"hide-input", "remove-input", "remove-cell", "hide-cell"} & set(tags):
                metadata["tags"] = [*tags, "hide-input"]
            prompts = metadata.setdefault("mystnb", {})
            prompts.setdefault("code_prompt_show", PARAMETERS_PROMPT[0])
            prompts.setdefault("code_prompt_hide", PARAMETERS_PROMPT[1])
        outputs = []
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                text = output["text"] if isinstance(output["text"], str) else "".join(output["text"])
                text, removed = clean_stderr(text)
                stats["noise lines"] += removed
                if not text.strip():
                    continue
                output["text"] = text
            outputs.append(output)
        if cell.get("cell_type") == "code":
            cell["outputs"] = outputs
        cells.append(cell)
    nb["cells"] = cells
    return stats


def _source_read(app, docname: str, source: list[str]) -> None:
    if not str(app.env.doc2path(docname)).endswith(".ipynb"):
        return
    nb = json.loads(source[0])
    stats = clean_notebook(nb)
    source[0] = json.dumps(nb, ensure_ascii=False)
    logger.info(f"gclbook: {docname}: removed " + ", ".join(f"{n} {what}" for what, n in stats.items()))


def _config_inited(app, config) -> None:
    config.html_static_path = [*config.html_static_path, str(STATIC)]


def setup(app):
    app.connect("config-inited", _config_inited)
    app.connect("source-read", _source_read)
    app.add_css_file("gcl-book.css")
    # env_version: bump when the cleaning changes, so Sphinx re-reads notebooks whose files did not change
    return {"version": "2", "env_version": 2, "parallel_read_safe": True, "parallel_write_safe": True}

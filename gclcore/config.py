"""The training configuration: one dataclass, and one parser for ``key=value`` overrides.

:class:`TrainConfig` is the single vocabulary of a training run: its fields are the YAML keys of a
config file (``python -m gclcore.train --config FILE``), the ``--set key=value`` overrides of
``gclcore.train`` and ``gclcore.experiments``, the keys of a run in ``book/experiments.yaml`` and the
papermill parameters of ``notebooks/03_train``. Every one of those paths goes through
:func:`coerce_overrides`, so an unknown key or a value of the wrong type fails the same way everywhere,
naming the key, the value and the expected type.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass
class TrainConfig:
    """Every field is also a papermill parameter of notebooks/03_train and a YAML key.

    Defaults marked (Marqtune) follow Marqo's hosted GCL trainer, not the unpublished paper settings.
    """

    # data
    data_dir: str = "data/synth-small-seed0"
    image_root: str = ""                    # "" -> <data_dir>/images when it exists
    train_split: str = "query_0_product_id_0"
    max_position: int = 0                   # keep rows with position <= this (0: all rows)
    max_bad_images: float = 0.5             # stop when more than this fraction of images is missing/unreadable (1: never)
    missing_images: str = "placeholder"     # training rows: placeholder (counted) | skip (rows without files) | error
    # model
    model: str = "default"
    pretrained: str = ""
    hf_dir: str = ""                        # model = an open_clip config file (*.json): its Hugging Face text model's folder
    pooling: str = "mean"                   # hf:DIR text models: mean | cls
    query_prefix: str = ""                  # prepended to query texts in training and evaluation (E5: "query: ")
    document_prefix: str = ""               # ... to document texts (E5: "passage: ")
    freeze: str = "auto"                    # "trunks" (cached features, heads trained) | "none" | "auto"
    # GCL
    stw: str = "linear"                     # see gclcore.weights; "constant" is the CLIP baseline
    lhs_fields: str = "query=1"
    rhs_fields: str = "image_local=0.9,title=0.1"
    field_mode: str = "fused"               # fused | pairs | both
    weight_norm: str = "mean"               # none | mean | sum
    direction: float = 0.5                  # weight of the query->document term
    duplicates: str = "negatives"           # in-batch targets: negatives | mask | positives | cwcl
    loss_tile: int = -1                     # logits in blocks of this many (O(B*d) memory); 0: dense;
                                            # -1: dense up to 8,192 pairs per global batch, blocks of 2,048 above
    ranking_loss: str = "none"              # + a ranking term over each query's in-batch products: none | listnet | lambda
    ranking_weight: float = 1.0             # its weight beside the contrastive loss
    # batches (gclcore.batching)
    batching: str = "random"                # random (the paper's) | grouped (k products of each query together)
    products_per_query: int = 4             # grouped: k, the rows of one query in one group
    within_query: str = "uniform"           # grouped: uniform | stratified (one product per position stratum)
    # optimisation
    epochs: int = 5                         # (Marqtune)
    max_steps: int = 0                      # stop after this many steps (0: run all epochs)
    batch_size: int = 256                   # (Marqtune, per device)
    accum_freq: int = 1
    grad_checkpointing: bool = False        # full fine-tuning: recompute the towers' activations in backward
                                            # (less memory for large batches, ~1/3 more compute)
    lr: float = 0.0                         # 0: the regime's default (REGIME_DEFAULTS: 1e-3 heads, 1e-5 full)
    weight_decay: float = 0.1
    warmup_steps: int = -1                  # -1: the regime's default (20 heads; full: 500, at most 10% of the run)
    beta1: float = 0.9
    beta2: float = 0.98                     # (Marqtune for ViT)
    eps: float = 1e-6                       # (Marqtune for ViT)
    grad_clip: float = 1.0                  # 0: off
    max_bad_steps: int = 10                 # non-finite loss/gradient: the step is skipped; more in a row stop the run
    learn_logit_scale: bool = True
    precision: str = "auto"                 # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    seed: int = 0
    # evaluation and runtime
    eval_split: str = "query_1_product_id_0"  # "" turns evaluation during training off
    eval_query_set: str = "dev"             # the shipped dev ground truth; test stays untouched
    eval_every: int = 0                     # steps between evaluations (0: at the end only)
    eval_top_q: int = 2000
    eval_top_k: int = 1000
    eval_corpus_size: int = 20_000          # in-training evaluation searches a fixed dev sub-corpus of this many
                                            # products (judged + sampled distractors); 0: the full corpus
    test_splits: str = ""                   # after training, the reference protocol on these splits ("all")
    save_rankings: bool = True              # write each evaluated split's retrieval.json (top-k of every query)
    output_dir: str = "runs/default"
    feature_cache_dir: str = ""             # "" -> <data_dir>/.feature-cache
    image_store_dir: str = ""               # image stores (python -m gclcore.image_store build), used when one
                                            # matches the model; "" -> <data_dir>/.image-store; "none": off
    resume: str = ""                        # "" | "latest" | path to a state file
    save_every: int = 0                     # steps between full-state saves (0: each epoch, -1: at the end only)
    save_every_minutes: int = 30            # also save the state once this long since the last save (0: off)
    epoch_checkpoints: bool = True          # keep an open_clip checkpoint per epoch (checkpoints/epoch_N.pt)
    keep_state: bool = True                 # keep checkpoints/state-latest.pt when the run ends (false: removed
                                            # after the tests: the ended run can't be extended)
    log_every: int = 10
    device: str = ""                        # "" -> cuda if available; under torchrun each rank's cuda:LOCAL_RANK
    dist_backend: str = "auto"              # under torchrun: auto (nccl on GPUs, gloo on CPUs) | nccl | gloo
    dist_timeout_min: int = 60              # how long ranks wait while rank 0 evaluates or builds caches
    grad_sync: str = "overlap"              # under torchrun: overlap (DistributedDataParallel's bucketed
                                            # all-reduce during backward) | after_backward (one flat all-reduce)
    workers: int = -1                       # -1: one per spare core
    progress: bool = True
    tensorboard: bool = False

    def __post_init__(self):
        problems = self.problems()
        if problems:
            raise ValueError("invalid config: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """Every value that can never work (ranges, choices, STW and field syntax), each as ``"key=value:
        the rule"``; checked when a config is made, so a bad value fails before any model or data is loaded."""
        from gclcore.fusion import parse_fields
        from gclcore.weights import get_stw

        found = [f"{key}={getattr(self, key)!r}: must be {rule}" for key, (ok, rule) in _VALUE_RULES.items()
                 if not ok(getattr(self, key))]
        found += [f"{key}={getattr(self, key)!r}: choose from {', '.join(choices)}"
                  for key, choices in _CHOICES.items() if getattr(self, key) not in choices]
        for key, check in (("stw", get_stw), ("lhs_fields", parse_fields), ("rhs_fields", parse_fields)):
            try:
                check(getattr(self, key))
            except ValueError as err:
                found.append(f"{key}={getattr(self, key)!r}: {err}")
        return found

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, **overrides) -> TrainConfig:
        """The fields of a YAML file, then ``overrides`` (both checked by :func:`coerce_overrides`)."""
        import yaml

        values = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of TrainConfig fields, got {type(values).__name__}")
        return cls.from_dict({**values, **overrides})

    def resolved(self, freeze: str, total_steps: int) -> TrainConfig:
        """This config as the run uses it: ``freeze`` resolved to ``"trunks"`` or ``"none"`` (see
        :func:`gclcore.towers.resolve_freeze`), and ``lr`` / ``warmup_steps`` left at 0 / -1 replaced by
        that regime's :data:`REGIME_DEFAULTS`; values given explicitly are kept. The trainer resolves
        once, prints the result and records it in ``config.json``."""
        if freeze not in REGIME_DEFAULTS:
            raise ValueError(f"a resolved freeze is 'trunks' or 'none', not {freeze!r}")
        defaults = REGIME_DEFAULTS[freeze]
        warmup = defaults.warmup_steps
        if defaults.warmup_fraction:
            warmup = min(warmup, int(defaults.warmup_fraction * total_steps))
        return dataclasses.replace(self, freeze=freeze, lr=self.lr if self.lr > 0 else defaults.lr,
                                   warmup_steps=self.warmup_steps if self.warmup_steps >= 0 else warmup)

    def resume_conflicts(self, saved: dict[str, Any]) -> list[str]:
        """The fields in which ``saved`` (the config a state file was written with) differs from this one,
        other than :data:`RESUME_MAY_CHANGE`, as ``"key: saved -> now"``. Both configs resolved."""
        mine = dataclasses.asdict(self)
        return [f"{key}: {saved[key]!r} -> {mine[key]!r}" for key in mine
                if key in saved and key not in RESUME_MAY_CHANGE and saved[key] != mine[key]]

    def optimizer_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`gclcore.optim.build_optimizer`."""
        return {"lr": self.lr, "weight_decay": self.weight_decay, "betas": (self.beta1, self.beta2), "eps": self.eps,
                "learn_logit_scale": self.learn_logit_scale}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        return cls(**coerce_overrides(values))


def _at_least(low):
    return (lambda value: value >= low), f">= {low}"


_VALUE_RULES = {
    "max_position": _at_least(0), "epochs": _at_least(0), "max_steps": _at_least(0), "batch_size": _at_least(1),
    "accum_freq": _at_least(1), "products_per_query": _at_least(1), "ranking_weight": _at_least(0),
    "loss_tile": _at_least(-1),
    "max_bad_images": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "lr": (lambda v: v >= 0, ">= 0 (0: the regime's default)"),
    "weight_decay": _at_least(0), "warmup_steps": (lambda v: v >= -1, ">= -1 (-1: the regime's default)"),
    "beta1": (lambda v: 0 <= v < 1, "in [0, 1)"), "beta2": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "eps": (lambda v: v > 0, "> 0"), "max_bad_steps": _at_least(0), "grad_clip": (lambda v: v >= 0, ">= 0 (0: off)"),
    "direction": (lambda v: 0 <= v <= 1, "in [0, 1]"), "seed": _at_least(0), "eval_every": _at_least(0),
    "eval_top_q": _at_least(1), "eval_top_k": _at_least(1), "eval_corpus_size": _at_least(0),
    "save_every": (lambda v: v >= -1, ">= -1 (0: each epoch, -1: at the end only)"),
    "save_every_minutes": _at_least(0), "log_every": _at_least(1), "dist_timeout_min": _at_least(1),
    "workers": (lambda v: v >= -1, ">= -1 (-1: one per spare core)"),
}
"""Ranges of the numeric fields: (check, the rule in words)."""

_CHOICES = {
    "freeze": ("auto", "trunks", "none"), "field_mode": ("fused", "pairs", "both"),
    "weight_norm": ("none", "mean", "sum"), "duplicates": ("negatives", "mask", "positives", "cwcl"),
    "precision": ("auto", "fp32", "bf16", "fp16"), "pooling": ("mean", "cls"),
    "dist_backend": ("auto", "nccl", "gloo"), "eval_query_set": ("dev", "test", "sampled"),
    "missing_images": ("placeholder", "skip", "error"), "batching": ("random", "grouped"),
    "within_query": ("uniform", "stratified"), "ranking_loss": ("none", "listnet", "lambda"),
    "grad_sync": ("overlap", "after_backward"),
}
"""The fields that take one of a fixed set of words."""


@dataclass(frozen=True)
class RegimeDefaults:
    """The learning-rate defaults of one training regime (``lr=0`` / ``warmup_steps=-1`` ask for them)."""

    lr: float
    warmup_steps: int
    warmup_fraction: float = 0.0  # > 0: the warm-up is at most this fraction of the run's steps


REGIME_DEFAULTS = {
    # Heads only (locked trunks, LiT-style): the projection heads start from a random init, so they take
    # a large step size; tuned on the synthetic shop (the book's runs).
    "trunks": RegimeDefaults(lr=1e-3, warmup_steps=20),
    # Full fine-tuning of pretrained towers: two orders of magnitude smaller, inside the 1e-6 .. 5e-5 that
    # open_clip users fine-tune CLIP with (open_clip's own fine-tuning example: ViT-B-32 from
    # laion2b_s34b_b79k at --lr 1e-5); 1e-3 would wreck the pretrained features within a few hundred
    # steps. A longer warm-up (500 steps, as CLIP fine-tuning recipes use), capped at a tenth of short runs.
    "none": RegimeDefaults(lr=1e-5, warmup_steps=500, warmup_fraction=0.1),
}
"""``freeze`` (resolved) -> its defaults; see the methods page, "Optimisation"."""


RESUME_MAY_CHANGE = frozenset({
    "resume", "output_dir", "data_dir", "image_root", "hf_dir", "feature_cache_dir", "device", "dist_backend",
    "dist_timeout_min", "workers", "progress", "tensorboard", "log_every", "save_every", "save_every_minutes",
    "epoch_checkpoints", "keep_state", "eval_every", "test_splits", "epochs", "max_steps", "warmup_steps",
    "max_bad_images", "max_bad_steps", "save_rankings", "loss_tile", "grad_checkpointing", "grad_sync",
    "image_store_dir"})
"""Fields a resumed run may change (where things are, how it reports and saves, how long it runs: the
default full fine-tuning warm-up follows the run's length); any other difference means another run, and
resuming refuses it (:meth:`TrainConfig.resume_conflicts`)."""


def config_fields() -> dict[str, type]:
    """Field name -> its type (that of the default), in declaration order."""
    return {f.name: type(f.default) for f in dataclasses.fields(TrainConfig)}


def coerce_value(key: str, value: Any, kind: type) -> Any:
    """``value`` as ``kind`` (str, int, float or bool); strings such as ``"64"`` or ``"false"`` are parsed.

    Raises ValueError naming the key for anything that does not convert exactly (``"2.5"`` for an int,
    ``"maybe"`` for a bool, ``True`` for an int).
    """
    if kind is str:
        return "" if value is None else str(value)
    if isinstance(value, str):
        text = value.strip()
        if kind is bool:
            if text.lower() in _TRUE + _FALSE:
                return text.lower() in _TRUE
        else:
            try:
                number = float(text)
                if kind is float or number.is_integer():
                    return kind(number) if kind is float else int(number)
            except ValueError:
                pass
    elif kind is bool and isinstance(value, bool):
        return value
    elif kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    elif kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"config key {key!r} expects {kind.__name__}, got {value!r}")


def coerce_overrides(values: dict[str, Any]) -> dict[str, Any]:
    """Check and type a mapping of TrainConfig fields; unknown keys raise, listing the known ones."""
    known = config_fields()
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown}; known: {', '.join(known)}")
    return {key: coerce_value(key, value, known[key]) for key, value in values.items()}


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["batch_size=64", "stw=log"]`` -> ``{"batch_size": 64, "stw": "log"}``, checked and typed.

    An item without ``=`` raises. ``key=`` gives the empty string: a valid value only for str fields, where
    it means what that field documents for ``""`` (e.g. ``eval_split=`` turns evaluation off).
    """
    raw = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        raw[key.strip()] = value
    return coerce_overrides(raw)

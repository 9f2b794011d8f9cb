"""Optimiser, learning-rate schedule and mixed precision of a training run.

- AdamW with two parameter groups: weight decay on matrices only; none on gains, biases and the
  learnable logit scale (open_clip's rule).
- Linear warm-up to ``lr`` over ``warmup_steps``, then a half-cosine to 0 at ``total_steps``.
- Precision ``auto`` = bf16 autocast on CUDA, fp32 on CPU; fp16 uses a gradient scaler.
- cuDNN picks its convolution algorithms by timing them in a training step (:func:`autotuned_convolutions`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


def build_optimizer(trainable: list[torch.nn.Parameter], logit_scale: torch.nn.Parameter, *, lr: float,
                    weight_decay: float, betas: tuple[float, float], eps: float,
                    learn_logit_scale: bool) -> tuple[torch.optim.AdamW, list[torch.nn.Parameter]]:
    """``(AdamW, every optimised parameter)``; the logit scale is trained only if ``learn_logit_scale``."""
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    logit_scale.requires_grad_(learn_logit_scale)
    if learn_logit_scale:
        no_decay.append(logit_scale)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=betas, eps=eps)
    return optimizer, decay + no_decay


def cosine_schedule(lr: float, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """``step -> learning rate``: ``lr * (step + 1) / warmup`` during warm-up, then
    ``lr / 2 * (1 + cos(pi * progress))`` with progress from 0 to 1 over the remaining steps."""
    def lr_at(step: int) -> float:
        if step < warmup_steps:
            return lr * (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * lr * (1 + math.cos(math.pi * min(progress, 1.0)))

    return lr_at


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@dataclass
class Precision:
    """Autocast dtype (None: fp32) and the gradient scaler (active for fp16 only)."""

    device_type: str
    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler

    @classmethod
    def choose(cls, precision: str, device: torch.device) -> Precision:
        if precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, not {precision!r}")
        resolved = precision if precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(resolved)
        return cls(device.type, dtype, torch.amp.GradScaler("cuda", enabled=resolved == "fp16"))

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


@contextlib.contextmanager
def autotuned_convolutions(device: torch.device):
    """A training step on a GPU with ``torch.backends.cudnn.benchmark`` on, as ``open_clip_train`` trains: cuDNN
    times its convolution algorithms once per input shape and keeps the fastest, instead of taking the one
    its heuristics choose (for a ViT, its patch embedding: a 32 x 32 kernel at stride 32). A run's
    micro-batches keep one shape (a shorter last one is timed once more). The setting is restored on leaving,
    so evaluation, during training or after it, encodes with cuDNN's heuristics, as the published evaluation
    does. Nothing changes on other devices."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before

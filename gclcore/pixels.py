"""Images leave the data loader as uint8 pixels and are normalised on the model's device.

open_clip's transforms end with ``ToTensor`` (uint8 -> float32 / 255) and ``Normalize`` (``(x - mean) /
std`` per channel). Done in the DataLoader workers, they make every pixel four bytes on its way through
the workers' batching, shared memory, the pinned copy and the host-to-device copy; as uint8 a worker
serves 1.4x the stored training images and 2x the eval images per second (CPU box, bench/RESULTS.md).
:func:`split_transform` cuts them off the end of a transform: the workers run the rest and hand over
(3, H, W) uint8 tensors (:class:`PixelsAsUint8`), and :class:`DeviceNormalize` applies the same float32
operations in the same order to a whole batch on the device. On the CPU the pixels are bitwise those of
the whole transform (tested); on a GPU the same IEEE float32 division, subtraction and division run
there (not tested: the project's CI has no GPU). The trainer (:class:`~gclcore.towers.FullTowers`), the
evaluator's image encoding and the feature cache (:func:`~gclcore.loaders.model_image_batches`) read
images this way. GradCache keeps a global batch's pixels on the device for its re-forward: as uint8, a
quarter of the memory.

A transform that does not end with ``ToTensor`` + ``Normalize`` is left whole (float pixels from the
workers, nothing done on the device).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torchvision import transforms


class PixelsAsUint8:
    """An 8-bit PIL image -> a (C, H, W) uint8 tensor, laid out as ``ToTensor`` lays it out before it divides."""

    def __call__(self, pic: Image.Image) -> torch.Tensor:
        if not isinstance(pic, Image.Image) or pic.mode not in ("RGB", "L"):
            raise TypeError(f"uint8 training pixels need an RGB or L PIL image, got "
                            f"{getattr(pic, 'mode', type(pic).__name__)}")
        array = np.array(pic, np.uint8, copy=True)
        return torch.from_numpy(array if array.ndim == 3 else array[:, :, None]).permute(2, 0, 1).contiguous()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class DeviceNormalize:
    """``ToTensor``'s division and ``Normalize`` of a (N, C, H, W) uint8 batch, on the batch's device."""

    def __init__(self, mean, std):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        # a tensor, not the Python 255: CUDA divides by a CPU scalar as a multiplication by its
        # reciprocal (one bit off for about half the values); by a tensor it divides, as the CPU does
        self.full_scale = torch.full((1, 1, 1, 1), 255.0)
        self._on_device = {}

    def constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(full_scale, mean, std)`` on ``device``, copied there once: a copy from host memory in every
        step would wait for the work queued on the device before it."""
        if device not in self._on_device:
            self._on_device[device] = tuple(t.to(device) for t in (self.full_scale, self.mean, self.std))
        return self._on_device[device]

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        full_scale, mean, std = self.constants(pixels.device)
        return pixels.to(torch.float32).div(full_scale).sub_(mean).div_(std)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


def split_transform(transform: Callable) -> tuple[Callable, DeviceNormalize | None]:
    """``(worker part, device part)`` of a training transform: the part the workers run (ending in
    :class:`PixelsAsUint8`) and the normalisation for the device; ``(transform, None)`` when it does not
    end with ``ToTensor`` + ``Normalize``."""
    steps = getattr(transform, "transforms", None)
    if (not steps or len(steps) < 2 or not isinstance(steps[-2], transforms.ToTensor)
            or not isinstance(steps[-1], transforms.Normalize)):
        return transform, None
    return transforms.Compose([*steps[:-2], PixelsAsUint8()]), DeviceNormalize(steps[-1].mean, steps[-1].std)

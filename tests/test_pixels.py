"""gclcore.pixels: the training transform cut into a worker part (uint8 pixels) and a device part."""

import numpy as np
import pytest
import torch
from PIL import Image

from gclcore.models import load_encoder
from gclcore.pixels import DeviceNormalize, PixelsAsUint8, split_transform


@pytest.mark.parametrize("model", ["ViT-S-32", "default"])
@pytest.mark.parametrize("which", ["preprocess_train", "preprocess"])
def test_the_two_parts_give_the_whole_transforms_pixels_bitwise(model, which):
    """Training and eval transforms (the evaluator's and the feature cache's images go the same way)."""
    encoder = load_encoder(model, pretrained="none" if model != "default" else None, device="cpu")
    transform = getattr(encoder, which)
    worker, device = split_transform(transform)
    assert isinstance(device, DeviceNormalize) and isinstance(worker.transforms[-1], PixelsAsUint8)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((300, 260), (224, 224))]
    for image in images:
        torch.manual_seed(1)
        whole = transform(image)
        torch.manual_seed(1)
        pixels = worker(image)
        assert pixels.dtype == torch.uint8
        assert torch.equal(device(pixels[None])[0], whole)


def test_uint8_pixels_match_to_tensor_for_rgb_and_grey():
    from torchvision.transforms.functional import to_tensor

    rng = np.random.default_rng(1)
    for image in (Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)),
                  Image.fromarray(rng.integers(0, 256, (5, 7), dtype=np.uint8))):
        assert torch.equal(PixelsAsUint8()(image).float().div(255), to_tensor(image))
    with pytest.raises(TypeError, match="RGB or L PIL image, got F"):
        PixelsAsUint8()(Image.fromarray(np.zeros((2, 2), dtype=np.float32)))


def test_a_transform_without_the_tensor_tail_is_left_whole():
    def plain(image):
        return image

    assert split_transform(plain) == (plain, None)
    encoder = load_encoder("ViT-S-32", pretrained="none", device="cpu")
    cut = split_transform(encoder.preprocess_train)[0]
    assert split_transform(cut) == (cut, None)  # ends in PixelsAsUint8 now: nothing more to cut

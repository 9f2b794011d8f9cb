"""The quick demo: texts ranked for an image by softmax(10 * cosine), for any loadable model."""
import numpy as np
import pytest
import torch
from PIL import Image

from gclcore import demo
from gclcore.models import load_encoder


@pytest.fixture(scope="module")
def encoder():
    return load_encoder("default", device="cpu")


def test_rank_texts_is_a_softmax_of_scaled_cosines(encoder, tiny_shop):
    image = Image.open(next((tiny_shop / "images").iterdir())).convert("RGB")
    texts = ["red shoes", "a blue dress", "a cat"]
    table = demo.rank_texts(encoder, image, texts)
    cosine = (encoder.encode_images([image]) @ encoder.encode_text(texts).T)[0].numpy()
    expected = np.exp(10 * cosine) / np.exp(10 * cosine).sum()
    by_text = table.set_index("text")
    assert np.allclose(by_text.loc[texts, "cosine"], cosine, atol=1e-6)
    assert np.allclose(by_text.loc[texts, "probability"], expected, atol=1e-6)
    assert table["probability"].is_monotonic_decreasing
    learned = demo.rank_texts(encoder, image, texts, logit_scale=None).set_index("text")
    scale = float(encoder.model.logit_scale.detach().exp())
    assert np.allclose(learned.loc[texts, "probability"], torch.softmax(scale * torch.tensor(cosine), 0).numpy(),
                       atol=1e-6)


def test_cli(tiny_shop, capsys):
    image = next((tiny_shop / "images").iterdir())
    assert demo.main(["--image", str(image), "a dog", "red shoes", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "probability" in out and "red shoes" in out and "a dog" in out
    assert demo.main(["--image", str(tiny_shop / "missing.png"), "x"]) == 2
    with pytest.raises(SystemExit):
        demo.main(["--logit-scale", "abc", "x"])

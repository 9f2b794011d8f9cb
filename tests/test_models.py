"""The embedded default model loads offline and sees real images; checkpoints load in every format."""
import socket

import pytest
import torch
from PIL import Image

from gclcore import models


@pytest.fixture(scope="module")
def default_encoder():
    return models.load_encoder("default", device="cpu")


def test_loads_without_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # prove it does not rely on the offline flag either
    encoder = models.load_encoder("default", device="cpu")
    assert encoder.encode_text(["red dress"]).shape == (1, 256)


def test_lite0_weights_classify_real_photos():
    import timm
    from skimage import data

    net = timm.create_model("efficientnet_lite0", pretrained=False)
    net.load_state_dict(models.lite0_state_dict())
    net.eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=net))
    with torch.no_grad():
        cat = net(transform(Image.fromarray(data.chelsea())).unsqueeze(0)).argmax().item()
        coffee = net(transform(Image.fromarray(data.coffee())).unsqueeze(0)).argmax().item()
    assert cat in {281, 282, 283, 284, 285}   # ImageNet cats (tabby, tiger, Persian, Siamese, Egyptian)
    assert coffee in {967, 968, 504}          # espresso, cup, coffee mug


def test_default_encoder_uses_the_packaged_weights(default_encoder):
    trunk = default_encoder.model.visual.trunk.state_dict()
    mapped = models.lite0_state_dict()
    assert all(torch.equal(trunk[k], mapped[k]) for k in trunk)
    texts = default_encoder.encode_text(["red dress", "a red frock", "stainless steel watch"])
    sims = texts @ texts.T
    assert sims[0, 1] > sims[0, 2]            # the pretrained text tower carries meaning
    assert torch.allclose(texts.norm(dim=1), torch.ones(3), atol=1e-5)


def test_image_file_encoding_counts_missing(default_encoder, tiny_shop):
    from gclcore.data import ImageResolver, read_corpus

    corpus = read_corpus(tiny_shop / "corpus_1.json")
    paths = corpus["image_local"].tolist()[:5] + ["/MarqoData/none.webp"]
    resolver = ImageResolver(tiny_shop / "images", missing="placeholder")
    emb = default_encoder.encode_image_files(paths, resolver, batch_size=4, workers=0)
    assert emb.shape == (6, 256) and resolver.missing_count == 1
    single = default_encoder.encode_images([resolver.open(paths[0])])
    assert torch.allclose(single[0], emb[0], atol=1e-5)


@pytest.mark.parametrize("wrap", ["bare", "open_clip", "gcl_states"])
def test_checkpoint_formats(default_encoder, tmp_path, wrap):
    state = {k: v.clone() for k, v in default_encoder.model.state_dict().items()}
    state["logit_scale"] = torch.tensor(1.2345)
    if wrap == "bare":
        payload = state
    elif wrap == "open_clip":
        payload = {"epoch": 3, "name": "run", "state_dict": state, "optimizer": {}}
    else:  # DDP-trained checkpoints carry module. prefixes
        payload = {"epoch": 1, "state_dict": {f"module.{k}": v for k, v in state.items()}}
    torch.save(payload, tmp_path / "ckpt.pt")
    encoder = models.load_encoder("default", str(tmp_path / "ckpt.pt"), device="cpu")
    assert encoder.model.logit_scale.item() == pytest.approx(1.2345)
    assert encoder.checksum() != default_encoder.checksum()


def test_mismatched_checkpoint_is_refused(tmp_path):
    torch.save({"state_dict": {"nonsense.weight": torch.zeros(2)}}, tmp_path / "bad.pt")
    with pytest.raises(RuntimeError, match="does not match"):
        models.load_encoder("default", str(tmp_path / "bad.pt"), device="cpu")


def test_any_open_clip_architecture_with_local_weights(tmp_path):
    import open_clip

    net = open_clip.create_model("RN50", pretrained=None)
    torch.save(net.state_dict(), tmp_path / "rn50.pt")
    encoder = models.load_encoder("RN50", str(tmp_path / "rn50.pt"), device="cpu")
    assert encoder.encode_text(["a query"]).shape == (1, 1024)

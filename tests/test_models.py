"""The embedded default model loads offline and sees real images; checkpoints load in every format."""
import socket
import tempfile
from pathlib import Path

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


def test_registering_model_configs_leaves_no_files_behind(tmp_path, monkeypatch):
    import open_clip

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the configs' files would be left
    default = models.load_encoder("default", device="cpu", pretrained="none")
    text_only = models.load_encoder(f"hf:{models.minilm_path()}", device="cpu")
    assert list(tmp_path.iterdir()) == []
    assert default.encode_text(["red dress"]).shape == (1, 256)
    assert text_only.encode_text(["red dress"]).shape == (1, 384)
    # registered all the same: open_clip builds the model again by name, from its registry
    assert models.DEFAULT_MODEL in open_clip.list_models()


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


def test_mismatched_or_unreadable_checkpoints_are_refused_in_one_line(tmp_path, default_encoder):
    torch.save({"state_dict": {"nonsense.weight": torch.zeros(2)}}, tmp_path / "bad.pt")
    with pytest.raises(models.CheckpointError, match=f"checkpoint {tmp_path / 'bad.pt'} does not fit model "
                                                     f"{models.DEFAULT_MODEL} \\(first difference: .* missing\\).* 1 unexpected"):
        models.load_encoder("default", str(tmp_path / "bad.pt"), device="cpu")
    state = dict(default_encoder.model.state_dict())
    state["logit_scale"] = torch.zeros(3)
    torch.save(state, tmp_path / "shape.pt")
    with pytest.raises(models.CheckpointError, match=r"first difference: logit_scale \(3,\) vs \(\)\): 1 tensors of "
                                                     r"other shapes \(e.g. \['logit_scale \(3,\) vs \(\)'"):
        models.load_encoder("default", str(tmp_path / "shape.pt"), device="cpu")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "shape.pt").read_bytes()[:5000])  # a truncated download
    with pytest.raises(models.CheckpointError, match="truncated download"):
        models.load_encoder("default", str(tmp_path / "cut.pt"), device="cpu")


def test_any_open_clip_architecture_with_local_weights(tmp_path):
    import open_clip

    net = open_clip.create_model("RN50", pretrained=None)
    torch.save(net.state_dict(), tmp_path / "rn50.pt")
    encoder = models.load_encoder("RN50", str(tmp_path / "rn50.pt"), device="cpu")
    assert encoder.encode_text(["a query"]).shape == (1, 1024)


def fake_hub_cache(cache: Path, repo_id: str, filename: str) -> Path:
    """A Hugging Face hub cache holding one file of ``repo_id`` (the layout try_to_load_from_cache reads)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / filename).write_bytes(b"weights")
    return snapshot / filename


@pytest.mark.parametrize("name, tag", [("ViT-B-32", "laion2b_s34b_b79k"), ("ViT-L-14", "laion2b_s32b_b82k"),
                                       ("ViT-H-14", "laion2b_s32b_b79k"), ("RN50", "openai"),
                                       ("ViT-B-16-SigLIP", "webli")])
def test_standard_tag_rule(name, tag):
    assert models.standard_pretrained_tag(name) == tag


@pytest.mark.parametrize("pretrained", [None, ""])
def test_open_clip_model_without_pretrained_needs_cached_standard_weights(tmp_path, monkeypatch, pretrained):
    import open_clip

    def must_not_build(*args, **kwargs):
        raise AssertionError("the model was built before the weights were found missing")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", must_not_build)
    monkeypatch.setattr(socket.socket, "connect", must_not_build)  # an implicit default never downloads
    with pytest.raises(models.PretrainedUnavailable) as err:
        models.load_encoder("ViT-B-32", pretrained, device="cpu", cache_dir=str(tmp_path))
    message = str(err.value)
    assert "'ViT-B-32'" in message and "laion2b_s34b_b79k" in message
    assert "-p pretrained /path/to/weights.bin" in message and "pretrained=none" in message


def test_cached_standard_weights_are_found(tmp_path):
    path = fake_hub_cache(tmp_path, "laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "open_clip_model.safetensors")
    assert models.cached_weights("ViT-B-32", "laion2b_s34b_b79k", str(tmp_path)) == str(path)
    assert models.resolve_pretrained("ViT-B-32", "", str(tmp_path)) == "laion2b_s34b_b79k"
    assert models.cached_weights("ViT-B-32", "openai", str(tmp_path)) is None


def test_explicit_tag_offline_fails_before_any_download(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "is_offline_mode", lambda: True)
    with pytest.raises(models.PretrainedUnavailable, match="HF_HUB_OFFLINE"):
        models.resolve_pretrained("ViT-B-32", "openai", str(tmp_path))


@pytest.mark.parametrize("model, value, message", [
    ("ViT-B-32", "/no/such/weights.bin", "neither a file nor an open_clip tag"),
    ("ViT-B-32", "laion9000", "neither a file nor an open_clip tag"),
    ("default", "/no/such/checkpoint.pt", "is not a file"),
])
def test_bad_pretrained_values_name_the_value(model, value, message):
    with pytest.raises(models.PretrainedUnavailable, match=message) as err:
        models.resolve_pretrained(model, value)
    assert value in str(err.value)


@pytest.mark.parametrize("value", ["none", "None", "NONE"])
def test_random_init_only_when_asked_for(value):
    assert models.resolve_pretrained("ViT-B-32", value) == models.RANDOM_INIT
    assert models.resolve_pretrained("default", value) == models.RANDOM_INIT


def test_default_model_random_init(default_encoder):
    encoder = models.load_encoder("default", "none", device="cpu")
    trunk = encoder.model.visual.trunk.state_dict()
    mapped = models.lite0_state_dict()
    assert not all(torch.equal(trunk[k], mapped[k]) for k in trunk)
    assert encoder.pretrained == models.RANDOM_INIT
    assert models.resolve_pretrained("default", "") == "" and default_encoder.pretrained is None


def test_open_clip_random_init_needs_no_weights(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    encoder = models.load_encoder("RN50", "None", device="cpu")
    assert encoder.pretrained == models.RANDOM_INIT
    assert encoder.encode_text(["a query"]).shape == (1, 1024)


def test_models_that_carry_their_weights_skip_the_tag_rule():
    from gclcore.models import resolve_pretrained

    assert resolve_pretrained("hf-hub:Marqo/some-model", "") == ""
    assert resolve_pretrained("local-dir:/models/exported", None) == ""


def test_random_initialisation_is_seeded_and_leaves_the_caller_generator_alone():
    load_encoder = models.load_encoder
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = load_encoder("default", device="cpu")
    assert torch.rand(1) == before                        # the caller's generator is where it was
    assert load_encoder("default", device="cpu").checksum() == first.checksum()
    assert load_encoder("default", device="cpu", seed=1).checksum() != first.checksum()
    torch.manual_seed(0)
    assert load_encoder("default", device="cpu", seed=None).checksum() == first.checksum()  # seed 0, drawn as is


def test_no_random_init_warning_when_a_checkpoint_is_loaded(tmp_path, caplog):
    """open_clip builds the model without weights before our loader puts the checkpoint in; its "initialized
    randomly" warning would be untrue then, and is dropped. Asked-for random weights still say so."""
    import open_clip

    net = open_clip.create_model("ViT-S-32", pretrained=None)
    torch.save({k: v.half() for k, v in net.state_dict().items()}, tmp_path / "vits32.pt")  # half: a smaller file
    caplog.clear()
    with caplog.at_level("INFO"):
        models.load_encoder("ViT-S-32", str(tmp_path / "vits32.pt"), device="cpu")
    assert "initialized randomly" not in caplog.text
    assert "Instantiating model architecture" in caplog.text  # open_clip's other messages still show
    caplog.clear()
    with caplog.at_level("WARNING"):
        models.load_encoder("ViT-S-32", "none", device="cpu")
    assert "No pretrained weights loaded for model 'ViT-S-32'. Model initialized randomly." in caplog.text

"""Missing and unreadable images: counted the same way by training and evaluation, never trained on in
silence, and a feature cache that follows the images on disk."""
import shutil

import pytest
import torch

from gclcore import data
from gclcore import train as trainer
from gclcore.data import DataFormatError, ImageStatus
from gclcore.features import FeatureCache, HeadEncoder
from gclcore.models import load_encoder


@pytest.fixture
def shop(tiny_shop, tmp_path):
    """A writable copy of the tiny shop (its images may be deleted)."""
    return shutil.copytree(tiny_shop, tmp_path / "shop")


def test_the_bad_fraction_is_checked_after_enough_images_and_at_the_end(tmp_path):
    resolver = data.ImageResolver(tmp_path, missing="placeholder", max_bad=0.5)
    resolver.record_batch(["a.png"] * 60, [ImageStatus.MISSING] * 60)        # 60 of 60: too few seen to judge
    resolver.record_batch(["b.png"] * 39, [ImageStatus.OK] * 39)             # 60 of 99
    with pytest.raises(DataFormatError, match="61 of 100 images seen are missing \\(61\\) or unreadable \\(0\\), "
                                              "more than the 50% allowed"):
        resolver.record("a.png", ImageStatus.MISSING)                        # checked once 100 were seen
    small = data.ImageResolver(tmp_path, missing="placeholder", max_bad=0.5)
    small.record_batch(["a.png", "b.png", "c.png"], [ImageStatus.MISSING, ImageStatus.UNREADABLE, ImageStatus.OK])
    with pytest.raises(DataFormatError, match="raise max_bad_images"):
        small.check_bad_fraction()                                           # a pass's end judges any count
    lenient = data.ImageResolver(tmp_path, missing="placeholder", max_bad=1.0)
    lenient.record_batch(["a.png"] * 200, [ImageStatus.MISSING] * 200)
    lenient.check_bad_fraction()
    assert (lenient.seen_count, lenient.missing_count) == (200, 200)


def test_training_with_an_empty_image_root_stops_before_training(shop, tmp_path):
    empty = tmp_path / "empty-images"
    empty.mkdir()
    cfg = trainer.TrainConfig(data_dir=str(shop), image_root=str(empty), output_dir=str(tmp_path / "run"),
                              batch_size=32, epochs=1, eval_split="", progress=False)
    with pytest.raises(DataFormatError, match="empty-images: .* images seen are missing .* more than the 50% allowed"):
        trainer.train(cfg)
    assert not (tmp_path / "run" / "model.pt").exists()


def test_a_few_missing_images_are_trained_on_as_counted_placeholders(shop, tmp_path, capsys):
    referenced = data.open_dataset(shop).corpus("in_domain")["image_local"].map(data.image_basename)
    for name in referenced[:5]:
        (shop / "images" / name).unlink()
    cfg = trainer.TrainConfig(data_dir=str(shop), output_dir=str(tmp_path / "run"), batch_size=32, max_steps=2,
                              eval_split="", test_splits="in_domain", eval_top_k=50, progress=False,
                              feature_cache_dir=str(tmp_path / "features"))
    trainer.train(cfg)
    assert f"5 missing and 0 unreadable images under {shop / 'images'} were cached as grey placeholders" in \
        capsys.readouterr().err
    from gclcore.report import history, image_note

    assert image_note(history(tmp_path / "run")).startswith("**Images: 5 missing and 0 unreadable of ")
    output = (tmp_path / "run" / "test" / "query_0_product_id_0" / "output.json").read_text()
    assert '"images_substituted": {"missing": ' in output and '"missing": 0,' not in output
    trainer.train(cfg)  # the cache is reused: its placeholders are still counted and said
    assert "5 missing and 0 unreadable images" in capsys.readouterr().err


def test_the_feature_cache_re_embeds_images_restored_or_changed_since_it_was_built(shop, tmp_path, capsys):
    from PIL import Image

    encoder = load_encoder("default", device="cpu")
    names = sorted(p.name for p in (shop / "images").iterdir())[:12]
    kept = {name: (shop / "images" / name).read_bytes() for name in names[:2]}
    for name in names[:2]:
        (shop / "images" / name).unlink()

    def build():
        resolver = data.ImageResolver(shop / "images", missing="placeholder", max_bad=1.0)
        return FeatureCache.build(encoder, [], names, resolver, tmp_path / "cache", progress=False), resolver

    stale, resolver = build()
    assert stale.image_status.tolist()[:3] == [ImageStatus.MISSING, ImageStatus.MISSING, ImageStatus.OK]
    again, resolver = build()
    assert "re-embedding" not in capsys.readouterr().out and resolver.missing_count == 2  # reused, still counted
    for name, content in kept.items():
        (shop / "images" / name).write_bytes(content)                     # the user restores the two images
    Image.new("RGB", (40, 40), (250, 0, 0)).save(shop / "images" / names[5], format="PNG")  # and replaces one
    restored, resolver = build()
    assert "3 image(s) changed, restored or lost since it was built: re-embedding them" in capsys.readouterr().out
    assert resolver.missing_count == 0 and restored.image_status.eq(ImageStatus.OK).all()
    fresh = FeatureCache.build(encoder, [], names, data.ImageResolver(shop / "images"), None, progress=False)
    assert torch.allclose(restored.image_features, fresh.image_features, atol=1e-5)
    assert not torch.allclose(restored.image_features[5], stale.image_features[5], atol=1e-3)
    assert torch.equal(restored.image_features[6:], stale.image_features[6:])  # the others were not recomputed
    # evaluation through the cached features counts their statuses like a decoding encoder does
    counted = data.ImageResolver(shop / "images", missing="placeholder")
    HeadEncoder(encoder.model, stale, encoder.device).encode_image_files(names[:3], counted)
    assert (counted.seen_count, counted.missing_count) == (3, 2)


class DecodingEncoder:
    """Opens every image through the resolver as a real encoder does (statuses counted); embeds by path."""

    def __init__(self):
        self.image_calls = 0

    def _embed(self, items):
        generator = torch.Generator().manual_seed(len(items))
        return torch.nn.functional.normalize(torch.randn(len(items), 8, generator=generator), dim=1)

    def encode_text(self, texts):
        return self._embed(texts)

    def encode_image_files(self, paths, resolver):
        self.image_calls += 1
        for path in paths:
            resolver.open(path)
        return self._embed(paths)

    def checksum(self):
        return "decoding"


def test_the_evaluation_cache_follows_the_images_and_counts_reused_placeholders(shop, tmp_path):
    import json

    from gclcore.evaluate import evaluate_split
    from gclcore.fusion import Field

    corpus = data.open_dataset(shop).corpus("novel_query")
    gone = corpus["image_local"].map(data.image_basename).tolist()[:3]
    kept = {name: (shop / "images" / name).read_bytes() for name in gone}
    for name in gone:
        (shop / "images" / name).unlink()
    encoder = DecodingEncoder()

    def evaluate():
        evaluate_split(encoder, shop, "novel_query", tmp_path / "out", rhs_fields=(Field("image_local"),), top_k=20,
                       progress=False, cache_dir=tmp_path / "cache")
        output = json.loads((tmp_path / "out" / "output.json").read_text())
        return output["gclcore"]["images_substituted"]["missing"], encoder.image_calls

    assert evaluate() == (3, 1)
    assert evaluate() == (3, 1)          # reused from the cache, the placeholders still counted
    for name, content in kept.items():
        (shop / "images" / name).write_bytes(content)
    assert evaluate() == (0, 2)          # the images came back: embedded again


def test_the_feature_cache_key_covers_weights_transform_texts_and_images(shop, tmp_path):
    """Each input of the trunk features, changed alone, gives a new cache file; nothing changed reuses it."""
    import copy

    import torchvision.transforms as T

    encoder = load_encoder("default", device="cpu")
    names = sorted(p.name for p in (shop / "images").iterdir())[:4]

    def files(enc, texts, images, image_root=shop / "images"):
        FeatureCache.build(enc, texts, images, data.ImageResolver(image_root), tmp_path / "cache", progress=False)
        return sorted(p.name for p in (tmp_path / "cache").iterdir())

    first = files(encoder, ["red shoes"], names)
    assert files(encoder, ["red shoes"], names) == first and len(first) == 1          # reused
    assert len(files(encoder, ["red shoes", "blue"], names)) == 2                     # texts
    assert len(files(encoder, ["red shoes"], names[:3])) == 3                         # images
    other_root = shutil.copytree(shop / "images", tmp_path / "copy")
    assert len(files(encoder, ["red shoes"], names, other_root)) == 4                 # image source
    smaller = copy.copy(encoder)
    smaller.preprocess = T.Compose([T.Resize(160), *encoder.preprocess.transforms[1:]])
    assert len(files(smaller, ["red shoes"], names)) == 5                             # image transform
    with torch.no_grad():
        encoder.model.visual.trunk.conv_stem.weight.add_(0.01)
    assert len(files(encoder, ["red shoes"], names)) == 6                             # trunk weights


def test_missing_images_skip_drops_the_rows_and_error_stops_at_the_first(shop, tmp_path, capsys):
    rows = data.open_dataset(shop).rows("in_domain")
    gone = set(rows["image_local"].dropna().map(data.image_basename).tolist()[:4])
    for name in gone:
        (shop / "images" / name).unlink()
    dropped = int(rows["image_local"].map(lambda p: isinstance(p, str) and data.image_basename(p) in gone).sum())
    base = dict(data_dir=str(shop), batch_size=32, max_steps=2, eval_split="", progress=False,
                feature_cache_dir=str(tmp_path / "features"))
    cfg = trainer.TrainConfig(output_dir=str(tmp_path / "skip"), missing_images="skip", **base)
    assert len(trainer.training_rows(cfg, (trainer.Field("image_local"),))) == len(rows) - dropped
    trainer.train(cfg)
    assert f"missing_images=skip: {dropped} of {len(rows)} training rows dropped" in capsys.readouterr().out
    with pytest.raises(DataFormatError, match="image missing"):
        trainer.train(trainer.TrainConfig(output_dir=str(tmp_path / "error"), missing_images="error", **base))
    with pytest.raises(ValueError, match="missing_images='drop': choose from placeholder, skip, error"):
        trainer.TrainConfig(missing_images="drop")

"""The image store (gclcore.image_store): stored images are the eval transform's pixels of the originals,
changed images are stored again, another transform gets another store, and readers work in workers."""

import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from gclcore import image_store
from gclcore.data import ImageStatus, open_dataset
from gclcore.loaders import image_batches
from gclcore.models import load_encoder


@pytest.fixture(scope="module")
def preprocess():
    return load_encoder("default", device="cpu").preprocess


@pytest.fixture
def shop(tiny_shop, tmp_path):
    return shutil.copytree(tiny_shop, tmp_path / "shop")


def test_stored_images_are_the_eval_transform_of_the_originals(shop, preprocess):
    names = image_store.dataset_images(open_dataset(shop))
    (shop / "images" / names[3]).unlink()  # a missing image is stored as the placeholder, with its status
    dataset = open_dataset(shop)
    folder = image_store.build(dataset, preprocess, workers=0, progress=False)
    assert folder.parent == shop / ".image-store" and folder.name.startswith("images-96px-bicubic-")
    pixels = np.load(folder / "pixels.npy", mmap_mode="r")
    assert pixels.shape == (len(names), 96, 96, 3) and pixels.dtype == np.uint8
    stored, originals = image_store.source_for(dataset, dataset.image_resolver(), preprocess), dataset.image_resolver()
    assert isinstance(stored, image_store.StoredImages)
    for name in names:
        (image, status), (original, original_status) = stored.load(name), originals.load(name)
        assert status == original_status
        assert torch.equal(preprocess(image), preprocess(original)), name
    assert stored.load(names[3])[1] == ImageStatus.MISSING
    # a stored publisher path (resolved by basename) reads the same row; anything else goes to the files
    assert torch.equal(preprocess(stored.load(f"/publisher/images/{names[0]}")[0]), preprocess(originals.load(names[0])[0]))
    assert stored.load("not-in-the-store.jpg")[1] == ImageStatus.MISSING
    assert image_store.source_for(dataset, originals, preprocess, store_dir="none") is originals


def test_a_changed_image_is_stored_again_and_another_transform_gets_its_own_store(shop, preprocess, capsys):
    dataset = open_dataset(shop)
    folder = image_store.build(dataset, preprocess, workers=0, progress=False)
    name = image_store.dataset_images(dataset)[0]
    path = shop / "images" / name
    before = os.stat(path)
    with Image.open(path) as img:
        kind = img.format
    Image.new("RGB", (120, 80), (200, 30, 30)).save(path, format=kind)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    stored = image_store.source_for(dataset, dataset.image_resolver(), preprocess)
    assert "1 image(s) changed" in capsys.readouterr().err
    assert stored.folder == folder  # the same store, brought up to date
    assert torch.equal(preprocess(stored.load(name)[0]), preprocess(dataset.image_resolver().load(name)[0]))
    assert image_store.source_for(dataset, dataset.image_resolver(), preprocess).folder == folder  # nothing stale now
    assert "changed" not in capsys.readouterr().err

    larger = transforms.Compose([transforms.Resize(64), transforms.CenterCrop(64), transforms.ToTensor()])
    assert not isinstance(image_store.source_for(dataset, dataset.image_resolver(), larger), image_store.StoredImages)
    other = image_store.build(dataset, larger, workers=0, progress=False)
    assert other != folder and other.name.startswith("images-64px-bilinear-")
    with pytest.raises(ValueError, match="Resize\\(S\\) and CenterCrop\\(S\\)"):
        image_store.StoreSpec.of(transforms.Compose([transforms.RandomResizedCrop(64), transforms.ToTensor()]))


def test_stored_images_load_in_dataloader_workers(shop, preprocess):
    dataset = open_dataset(shop)
    image_store.build(dataset, preprocess, workers=0, progress=False)
    names = image_store.dataset_images(dataset)[:40]
    stored = image_store.source_for(dataset, dataset.image_resolver(), preprocess)
    in_workers = torch.cat([p for p, _ in image_batches(names, stored, preprocess, batch_size=8, workers=2)])
    here = torch.stack([preprocess(dataset.image_resolver().load(n)[0]) for n in names])
    assert torch.equal(in_workers, here)
    assert stored.seen_count == len(names)  # counted in the main process, as for image files


def test_evaluation_and_training_read_the_store(shop, preprocess, tmp_path):
    from gclcore import train as trainer
    from gclcore.evaluate import evaluate_split
    from gclcore.fusion import parse_fields
    from gclcore.towers import build_towers

    dataset = open_dataset(shop)
    image_store.build(dataset, preprocess, workers=0, progress=False)
    encoder = load_encoder("default", device="cpu")
    results = [evaluate_split(encoder, dataset, "query_0_product_id_0", tmp_path / store, top_q=30, top_k=50,
                              progress=False, cache_dir=False, image_store_dir=store) for store in ("", "none")]
    assert results[0].metrics == results[1].metrics

    cfg = trainer.TrainConfig(data_dir=str(shop), workers=0)
    lhs, rhs = parse_fields(cfg.lhs_fields), parse_fields(cfg.rhs_fields)
    rows = trainer.training_rows(cfg, lhs + rhs)
    towers = build_towers("none", encoder, rows, lhs + rhs, dataset, cache_dir="", seed=0, workers=0, progress=False)
    assert isinstance(towers.resolver, image_store.StoredImages)

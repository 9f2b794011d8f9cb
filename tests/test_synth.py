"""The synthetic shop: exact published conventions, determinism, and that it is learnable/rankable."""
import hashlib

import numpy as np
import pandas as pd
from PIL import Image

from gclcore import synth
from gclcore.data import SPLIT_STEMS, read_split_csv


def _digest(root):
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_same_seed_same_bytes(tiny_shop, tmp_path):
    again = synth.generate(tmp_path / "again", "tiny", seed=0, progress=False)
    assert _digest(again) == _digest(tiny_shop)
    other = synth.generate(tmp_path / "other", "tiny", seed=1, progress=False)
    assert (other / "ranked.csv").read_bytes() != (tiny_shop / "ranked.csv").read_bytes()


def test_published_value_conventions(tiny_shop):
    rows = pd.concat([read_split_csv(tiny_shop / f"{s}.csv") for s in SPLIT_STEMS])
    assert (rows["score_linear"] == 101 - rows["position"]).all()
    assert np.allclose(rows["score_reciprocal"], 1.0 / rows["position"])
    assert (rows["no_score"] == 1).all()
    ids = rows["product_id"].astype(str)
    assert ids.str.len().eq(20).all() and ids.map(int).gt(2**63 - 1).all()  # beyond int64
    assert rows["image_local"].str.startswith(synth.PUBLISHER_IMAGE_DIR + "/").all()
    assert rows["image_local"].str.endswith(".webp").all()
    assert rows["title"].isna().any()  # some titles are missing, as in the real data
    ranked = pd.read_csv(tiny_shop / "ranked.csv", dtype={"product_id": str})
    for _, group in ranked.groupby("query"):
        assert group["position"].tolist() == list(range(1, synth.PRESETS["tiny"].results + 1))
    with Image.open(next((tiny_shop / "images").iterdir())) as img:
        assert img.format == "WEBP" and img.size == (48, 48)


def test_titles_carry_scraped_quirks():
    product = {"category": "dress", "colour": "red", "pattern": "striped", "audience": "women", "brand": "Lumière"}
    titles = synth.make_titles(pd.DataFrame([product] * 3000), np.random.default_rng(0))
    present = [t for t in titles if t is not None]
    assert 0.01 < 1 - len(present) / len(titles) < 0.06
    assert any("\n" in t for t in present) and any('"' in t and "," in t for t in present)
    assert any("Lumière" in t for t in present)
    assert np.mean(["red" in t.lower() for t in present]) > 0.7


def test_rankings_follow_attribute_match(tiny_shop):
    """Graded order carries information: higher positions match more of the query's asked attributes."""
    ranked = pd.read_csv(tiny_shop / "ranked.csv", dtype={"product_id": str})
    products = pd.read_csv(tiny_shop / "products.csv", dtype={"product_id": str}).set_index("product_id")
    asked = pd.read_csv(tiny_shop / "queries.csv").set_index("query")
    matches = []
    for query, pid, position in zip(ranked["query"], ranked["product_id"], ranked["position"]):
        wanted = asked.loc[query].dropna()
        matches.append((position, np.mean([products.loc[pid, a] == v for a, v in wanted.items()])))
    frame = pd.DataFrame(matches, columns=["position", "match"])
    top, bottom = frame[frame.position <= 4].match.mean(), frame[frame.position > 12].match.mean()
    assert top > bottom + 0.2, (top, bottom)


def test_images_are_learnable():
    """A nearest-centroid classifier on pose-free pixel statistics recovers the colour far above chance."""
    import io

    products = synth.make_products(600, np.random.default_rng(0))
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(synth.render_image(r, 32, 0, i))), dtype=np.float32)
                       for i, r in enumerate(products.to_dict("records"))])
    # sorted per-channel intensities: a colour histogram that ignores pose and position
    feats = np.sort(pixels.reshape(len(pixels), -1, 3), axis=1)[:, ::16].reshape(len(pixels), -1)
    labels = products["colour"].to_numpy()
    train, test = slice(0, 400), slice(400, None)
    keys = np.unique(labels[train])
    centroids = np.stack([feats[train][labels[train] == k].mean(0) for k in keys])
    predicted = keys[((feats[test][:, None] - centroids[None]) ** 2).sum(-1).argmin(1)]
    assert np.mean(predicted == labels[test]) > 4 / len(synth.COLOURS)


def test_every_category_has_a_silhouette():
    from PIL import ImageDraw
    masks = {}
    for category in synth.CATEGORIES:
        mask = Image.new("L", (64, 64), 0)
        synth._silhouette(ImageDraw.Draw(mask), category, 64)
        masks[category] = np.asarray(mask) > 0
        assert 0.08 < masks[category].mean() < 0.7, category
    shapes = list(masks.values())
    assert all((a ^ b).mean() > 0.02 for i, a in enumerate(shapes) for b in shapes[i + 1:])


def test_queries_ask_one_to_three_attributes():
    rng = np.random.default_rng(0)
    for _ in range(300):
        text, asked = synth.make_query(rng)
        assert 1 <= len(asked) <= 3 and text.strip() == text and text
        if "brand" in asked:
            assert asked["brand"].lower() in text.lower()


def test_cli_no_images(tmp_path):
    assert synth.main([str(tmp_path / "s"), "--preset", "tiny", "--no-images", "--queries", "20"]) == 0
    assert not (tmp_path / "s" / "images").exists()
    assert pd.read_csv(tmp_path / "s" / "ranked.csv")["query"].nunique() == 20

"""The embedded default dataset: a synthetic shop in the exact Marqo-GS-10M layout.

The shop is learnable and rankable, not noise:

- **products** have attributes -- category, colour, pattern, audience, brand -- and a popularity;
- **images** are rendered from those attributes: the silhouette comes from the category, the fill from
  the colour, the texture from the pattern, with a random pose, scale and background; stored as WebP;
- **titles** are generated from the attributes with noise (dropped words, synonyms, sizes, model codes,
  some missing, some with commas, quotes, newlines and non-ASCII characters, like scraped titles);
- **queries** ask for 1-3 attributes in natural phrasing ("red striped dress", "boots for kids");
- **rankings**: each query's results are ordered by a latent relevance (weighted attribute match +
  popularity + noise), so the graded order carries information beyond binary membership.

:func:`generate` writes the flat table of ranked search results (``ranked.csv``: query, product_id,
position, title, image_local) plus the product and query attribute tables, and
:func:`gclcore.splits.build_splits` turns it into the four-split layout with both corpora and the
dev/test ground truth. Everything is deterministic for a seed (same bytes).

Command line::

    python -m gclcore.synth OUT_DIR [--preset tiny|small|large] [--seed N] [--no-images]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from gclcore.data import write_csv

PUBLISHER_IMAGE_DIR = "/MarqoData/google_shopping/images_synth"
"""Absolute prefix written into ``image_local``, like the publisher's own paths: never valid locally."""

CATEGORIES = {
    # name: (plural, title synonyms)
    "t-shirt": ("t-shirts", ["t-shirt", "tee", "t shirt"]),
    "dress": ("dresses", ["dress", "midi dress", "frock"]),
    "trousers": ("trousers", ["trousers", "pants", "slacks"]),
    "sneaker": ("sneakers", ["sneakers", "trainers", "running shoes"]),
    "boot": ("boots", ["boots", "ankle boots", "chelsea boots"]),
    "handbag": ("handbags", ["handbag", "tote bag", "shoulder bag"]),
    "backpack": ("backpacks", ["backpack", "rucksack", "daypack"]),
    "hat": ("hats", ["hat", "bucket hat", "cap"]),
    "mug": ("mugs", ["mug", "coffee mug", "cup"]),
    "watch": ("watches", ["watch", "wristwatch", "analog watch"]),
    "lamp": ("lamps", ["lamp", "table lamp", "desk lamp"]),
    "chair": ("chairs", ["chair", "dining chair", "accent chair"]),
}
COLOURS = {
    "red": (200, 30, 40), "blue": (40, 80, 210), "green": (40, 150, 60), "black": (25, 25, 25),
    "white": (240, 240, 235), "yellow": (235, 205, 40), "pink": (240, 130, 180), "purple": (120, 50, 160),
    "orange": (240, 130, 30), "grey": (128, 128, 128), "brown": (120, 75, 35), "navy": (20, 30, 90),
}
COLOUR_SYNONYMS = {"grey": ("grey", "gray"), "navy": ("navy", "navy blue"), "purple": ("purple", "violet")}
PATTERNS = ["plain", "striped", "polka dot", "checked", "camo", "denim"]
AUDIENCES = {"men": ("men's", "men"), "women": ("women's", "women"), "kids": ("kids'", "kids"),
             "unisex": ("unisex", "everyone")}
BRANDS = ["Norvik", "Aldera", "Kestrel", "Lumière", "Brisa", "Ødegård", "Tamsin", "Veloce", "Harbour & Co",
          "Quillon", "Sable", "Mirth", "Osprey", "Calloway", "Zephyr", "Nakoda", "Fenwick", "Orla", "Pico", "Rune"]
BRAND_SYLLABLES = ["al", "bri", "cor", "dax", "el", "fen", "gro", "hal", "ix", "jun", "kel", "lor", "mav", "nor",
                   "ol", "pra", "quin", "ros", "sul", "tam", "ul", "ven", "wex", "yor", "zan"]
ATTRIBUTES = ("category", "colour", "pattern", "audience", "brand")
ATTRIBUTE_VALUES = {"category": list(CATEGORIES), "colour": list(COLOURS), "pattern": PATTERNS,
                    "audience": list(AUDIENCES), "brand": BRANDS}
RELEVANCE_WEIGHTS = {"category": 4.0, "colour": 2.0, "pattern": 1.5, "audience": 1.2, "brand": 1.8}
"""How much matching each asked attribute adds to the latent relevance (before popularity and noise)."""


@dataclass(frozen=True)
class Preset:
    """Size of a synthetic shop.

    ``results`` is the ranked list length per query (real data: ~100); ``pool`` how many candidates a
    query's ranking is drawn from; ``noise`` the standard deviation of the ranking noise.
    """

    queries: int
    products: int
    results: int
    image_size: int = 96
    pool: int = 400
    noise: float = 0.6
    images: bool = True
    brands: int = len(BRANDS)


PRESETS = {
    "tiny": Preset(queries=40, products=320, results=16, image_size=48, pool=120),
    "small": Preset(queries=1200, products=6000, results=30, image_size=96, pool=300),
    "large": Preset(queries=100_000, products=5_000_000, results=100, image_size=96, pool=400, images=False,
                    brands=3000),
}


def brand_names(n: int) -> list[str]:
    """``n`` brand names: the hand-written :data:`BRANDS` first, then syllable compounds (a long tail of
    brands, as in real catalogues, so that large shops have enough distinct queries)."""
    names = list(BRANDS[:n])
    syllables = BRAND_SYLLABLES
    for length in (2, 3):
        for index in range(len(syllables) ** length):
            if len(names) >= n:
                return names
            parts = [syllables[(index // len(syllables) ** k) % len(syllables)] for k in range(length)]
            names.append("".join(parts).capitalize())
    if len(names) < n:
        raise ValueError(f"at most {len(names)} brand names available")
    return names


# --------------------------------------------------------------------------------------------------
# Products
# --------------------------------------------------------------------------------------------------

def make_products(n: int, rng: np.random.Generator, brands: list[str] = BRANDS) -> pd.DataFrame:
    """Product attribute table: ``product_id`` (20-digit string, > int64), attributes, ``popularity``."""
    ids = _unique_ids(n, rng)
    table = {"product_id": ids}
    for name in ATTRIBUTES:
        values = brands if name == "brand" else ATTRIBUTE_VALUES[name]
        # Zipf-like marginals: some colours and brands are far more common, as in real catalogues.
        p = 1.0 / np.arange(1, len(values) + 1) ** 0.6
        table[name] = np.asarray(values, dtype=object)[rng.choice(len(values), size=n, p=p / p.sum())]
    table["popularity"] = rng.beta(2.0, 5.0, size=n)
    return pd.DataFrame(table)


def _unique_ids(n: int, rng: np.random.Generator) -> np.ndarray:
    # 20-digit ids in [10^19, 2^64): beyond int64, like the published product ids.
    low, span = 10**19, 2**64 - 10**19
    ids: set[int] = set()
    out = []
    while len(out) < n:
        for value in rng.integers(0, span, size=n - len(out), dtype=np.uint64):
            v = low + int(value)
            if v not in ids:
                ids.add(v)
                out.append(str(v))
    return np.asarray(out, dtype=object)


TITLE_EXTRAS = ["Size XS", "Size S", "Size M", "Size L", "Size XL", "2-Pack", "3-Pack", "New Season",
                "Free Delivery"]


def make_titles(products: pd.DataFrame, rng: np.random.Generator) -> list[str | None]:
    """Noisy shop titles, one per product row (``category``, ``colour``, ``pattern``, ``audience``,
    ``brand``); ~3% are missing (None).

    Noise: attribute words dropped (12% each), category and colour synonyms, three title styles, sizes /
    pack counts / model codes, and scraped-text quirks (commas with quotes, newlines, em dashes). All
    random draws are made as arrays up front, so 5M titles take seconds.
    """
    n = len(products)
    u = rng.random((n, 8))
    drop = rng.random((n, 4)) < 0.12  # audience, colour, pattern, brand
    style = rng.integers(0, 3, n)
    pick = rng.integers(0, 1 << 30, (n, 3))
    model_code = rng.integers(100, 999, n)
    titles: list[str | None] = []
    rows = zip(products["category"], products["colour"], products["pattern"], products["audience"],
               products["brand"])
    for i, (cat, col, pat, aud, brand) in enumerate(rows):
        if u[i, 0] < 0.03:
            titles.append(None)
            continue
        synonyms = CATEGORIES[cat][1]
        category = synonyms[pick[i, 0] % len(synonyms)]
        colours = COLOUR_SYNONYMS.get(col, (col,))
        colour = "" if drop[i, 1] else colours[pick[i, 1] % len(colours)]
        pattern = "" if drop[i, 2] or (pat == "plain" and u[i, 1] < 0.7) else pat
        audience = "" if drop[i, 0] else AUDIENCES[aud][0]
        brand_word = "" if drop[i, 3] else brand
        extra = ""
        if u[i, 2] < 0.4:
            k = pick[i, 2] % (len(TITLE_EXTRAS) + 1)
            extra = f"Model {chr(65 + k)}{model_code[i]}" if k == len(TITLE_EXTRAS) else TITLE_EXTRAS[k]
        if style[i] == 0:
            title = " ".join(p for p in (brand_word, audience, colour, pattern, category, extra) if p)
        elif style[i] == 1:
            head = " ".join(p for p in (colour, pattern, category) if p).capitalize()
            tail = ", ".join(p for p in (audience, extra) if p)
            title = f"{head} - {tail} | {brand_word}" if brand_word else f"{head} - {tail}"
        else:
            title = " ".join(p for p in (audience, category, "in", colour or "assorted colours",
                                         f"by {brand_word}" if brand_word else "") if p)
        title = title.strip(" -|,")
        if u[i, 3] < 0.02:
            title += ', 16" wide'
        elif u[i, 3] < 0.025:
            title += "\nLimited edition"
        elif u[i, 3] < 0.04:
            title += " — best seller"
        titles.append(title)
    return titles


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------

def _silhouette(draw, category: str, s: int) -> None:
    """Draw the category's silhouette in white (mask) on an s x s canvas."""
    f = lambda *xy: [(x * s, y * s) for x, y in zip(xy[::2], xy[1::2])]  # noqa: E731
    fill = 255
    if category == "t-shirt":
        draw.polygon(f(.3, .15, .42, .12, .58, .12, .7, .15, .92, .32, .8, .43, .72, .36, .72, .88, .28, .88,
                       .28, .36, .2, .43, .08, .32), fill=fill)
    elif category == "dress":
        draw.polygon(f(.4, .1, .6, .1, .62, .38, .85, .9, .15, .9, .38, .38), fill=fill)
    elif category == "trousers":
        draw.polygon(f(.28, .1, .72, .1, .76, .9, .56, .9, .5, .35, .44, .9, .24, .9), fill=fill)
    elif category == "sneaker":
        draw.polygon(f(.08, .55, .35, .5, .5, .35, .62, .38, .9, .6, .92, .72, .08, .72), fill=fill)
    elif category == "boot":
        draw.polygon(f(.3, .12, .55, .12, .57, .6, .88, .68, .9, .85, .3, .85), fill=fill)
    elif category == "handbag":
        draw.rectangle([.18 * s, .4 * s, .82 * s, .85 * s], fill=fill)
        draw.arc([.32 * s, .15 * s, .68 * s, .6 * s], 180, 360, fill=fill, width=max(2, s // 20))
    elif category == "backpack":
        draw.rounded_rectangle([.25 * s, .12 * s, .75 * s, .88 * s], radius=.15 * s, fill=fill)
    elif category == "hat":
        draw.pieslice([.25 * s, .25 * s, .75 * s, .75 * s], 180, 360, fill=fill)
        draw.ellipse([.1 * s, .45 * s, .9 * s, .6 * s], fill=fill)
    elif category == "mug":
        draw.rectangle([.22 * s, .25 * s, .65 * s, .85 * s], fill=fill)
        draw.ellipse([.55 * s, .38 * s, .85 * s, .7 * s], outline=fill, width=max(2, s // 14))
    elif category == "watch":
        draw.rectangle([.4 * s, .05 * s, .6 * s, .95 * s], fill=fill)
        draw.ellipse([.25 * s, .3 * s, .75 * s, .7 * s], fill=fill)
    elif category == "lamp":
        draw.polygon(f(.3, .15, .7, .15, .82, .48, .18, .48), fill=fill)
        draw.rectangle([.47 * s, .48 * s, .53 * s, .82 * s], fill=fill)
        draw.rectangle([.3 * s, .82 * s, .7 * s, .88 * s], fill=fill)
    elif category == "chair":
        draw.rectangle([.25 * s, .1 * s, .35 * s, .9 * s], fill=fill)
        draw.rectangle([.25 * s, .5 * s, .75 * s, .6 * s], fill=fill)
        draw.rectangle([.65 * s, .55 * s, .75 * s, .9 * s], fill=fill)
    else:
        raise ValueError(f"no silhouette for category {category!r}")


def _texture(pattern: str, colour: tuple[int, int, int], s: int, rng: np.random.Generator):
    from PIL import Image, ImageDraw

    base = np.asarray(colour, dtype=np.float32)
    contrast = np.where(base.mean() > 128, base * 0.45, np.minimum(base + 110, 255)).astype(np.uint8)
    img = Image.new("RGB", (s, s), colour)
    draw = ImageDraw.Draw(img)
    step = max(4, s // int(rng.integers(6, 10)))
    c2 = tuple(int(v) for v in contrast)
    if pattern == "striped":
        for y in range(0, s, step):
            draw.rectangle([0, y, s, y + step // 2], fill=c2)
    elif pattern == "polka dot":
        r = max(1, step // 4)
        for y in range(step // 2, s, step):
            for x in range(step // 2, s, step):
                draw.ellipse([x - r, y - r, x + r, y + r], fill=c2)
    elif pattern == "checked":
        for y in range(0, s, step):
            for x in range(0, s, step):
                if (x // step + y // step) % 2:
                    draw.rectangle([x, y, x + step - 1, y + step - 1], fill=c2)
    elif pattern == "camo":
        for _ in range(int(rng.integers(8, 14))):
            x, y = rng.integers(0, s, size=2)
            r = int(rng.integers(s // 10, s // 5))
            draw.ellipse([x - r, y - r // 2, x + r, y + r // 2], fill=c2)
    elif pattern == "denim":
        noise = rng.normal(0, 28, size=(s, s, 1)).astype(np.float32)
        weave = (np.add.outer(np.arange(s), np.arange(s)) % 3 == 0)[..., None] * 25.0
        arr = np.clip(np.asarray(img, dtype=np.float32) + noise - weave, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr)
    return img


def render_image(product: dict, size: int, seed: int, index: int) -> bytes:
    """Render one product photo as WebP bytes: category silhouette, colour fill, pattern texture,
    random rotation / scale / offset and background. Deterministic for (seed, index)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng([seed, index, 7])
    s = size * 2  # draw at 2x then downsample: cheap anti-aliasing
    mask = Image.new("L", (s, s), 0)
    _silhouette(ImageDraw.Draw(mask), product["category"], s)
    mask = mask.rotate(float(rng.uniform(-25, 25)), resample=Image.BILINEAR)
    scale = float(rng.uniform(0.6, 0.95))
    inner = max(8, int(s * scale))
    mask = mask.resize((inner, inner), Image.BILINEAR)
    texture = _texture(product["pattern"], COLOURS[product["colour"]], inner, rng)
    bg = tuple(int(v) for v in rng.integers(150, 256, size=3))
    canvas = Image.new("RGB", (s, s), bg)
    offset = rng.integers(0, s - inner + 1, size=2)
    canvas.paste(texture, (int(offset[0]), int(offset[1])), mask)
    canvas = canvas.resize((size, size), Image.LANCZOS)
    buffer = io.BytesIO()
    canvas.save(buffer, format="WEBP", quality=80, method=4)
    return buffer.getvalue()


def image_name(product_id: str) -> str:
    """Opaque image file name (like the publisher's, it does not reveal the product id)."""
    return hashlib.blake2b(product_id.encode(), digest_size=10).hexdigest() + ".webp"


def _render_chunk(args) -> list[tuple[str, bytes]]:
    records, size, seed, start = args
    return [(image_name(r["product_id"]), render_image(r, size, seed, start + i)) for i, r in enumerate(records)]


def render_images(products: pd.DataFrame, out_dir: Path, size: int, seed: int, workers: int | None = None,
                  progress: bool = True) -> None:
    """Render every product image into ``out_dir`` (parallel over processes; output does not depend on
    the number of workers)."""
    from tqdm.auto import tqdm

    out_dir.mkdir(parents=True, exist_ok=True)
    records = products[["product_id", *ATTRIBUTES]].to_dict("records")
    chunk = 250
    jobs = [(records[i:i + chunk], size, seed, i) for i in range(0, len(records), chunk)]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    bar = tqdm(total=len(records), desc="render images", unit="img", disable=not progress)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for rendered in pool.map(_render_chunk, jobs):
            for name, data in rendered:
                (out_dir / name).write_bytes(data)
            bar.update(len(rendered))
    bar.close()


# --------------------------------------------------------------------------------------------------
# Queries and rankings
# --------------------------------------------------------------------------------------------------

def make_query(rng: np.random.Generator, brands: list[str] = BRANDS) -> tuple[str, dict]:
    """One natural-language query asking for 1-3 attributes; returns (text, asked attributes)."""
    asked: dict[str, str] = {}
    if rng.random() < 0.9:
        asked["category"] = str(rng.choice(ATTRIBUTE_VALUES["category"]))
    extra = ["colour", "pattern", "audience", "brand"]
    n_extra = int(rng.choice([0, 1, 2], p=[0.25, 0.5, 0.25])) if asked else int(rng.integers(1, 3))
    for name in rng.choice(extra, size=n_extra, replace=False):
        choices = brands if name == "brand" else [v for v in ATTRIBUTE_VALUES[name]
                                                      if not (name == "pattern" and v == "plain")]
        asked[str(name)] = str(choices[int(rng.integers(len(choices)))])
    cat = asked.get("category")
    noun = (CATEGORIES[cat][0] if rng.random() < 0.5 else cat) if cat else "clothing"
    adjectives = " ".join(asked[k] for k in ("colour", "pattern") if k in asked)
    head = f"{adjectives} {noun}".strip()
    if "brand" in asked:
        head = f"{asked['brand']} {head}" if rng.random() < 0.6 else f"{head} by {asked['brand']}"
    if "audience" in asked:
        possessive, plain = AUDIENCES[asked["audience"]]
        head = f"{possessive} {head}" if rng.random() < 0.5 else f"{head} for {plain}"
    return head.lower() if rng.random() < 0.8 else head, asked


def rank_results(asked: dict, columns: dict[str, np.ndarray], by_category: dict[str, np.ndarray], preset: Preset,
                 rng: np.random.Generator) -> np.ndarray:
    """Indices of the query's ranked results, best first: the top ``preset.results`` of a candidate pool
    (mostly the asked category, some others) by latent relevance = sum of weights of matched asked
    attributes + popularity + Gaussian noise. ``columns`` maps attribute names and ``popularity`` to
    arrays over products (extracted once: per-query DataFrame access is far too slow at 5M products)."""
    n_products = len(columns["popularity"])
    if "category" in asked:
        same = by_category[asked["category"]]
        pool = rng.choice(same, size=min(len(same), int(preset.pool * 0.8)), replace=False)
        others = rng.integers(0, n_products, size=preset.pool - len(pool))
        pool = np.unique(np.concatenate([pool, others]))
    else:
        pool = np.unique(rng.integers(0, n_products, size=preset.pool))
    relevance = columns["popularity"][pool].copy()
    for name, value in asked.items():
        relevance += RELEVANCE_WEIGHTS[name] * (columns[name][pool] == value)
    relevance += rng.normal(0.0, preset.noise, size=len(pool))
    order = np.argsort(-relevance, kind="stable")[: preset.results]
    return pool[order]


def generate(out_dir: str | os.PathLike, preset: str | Preset = "small", seed: int = 0, images: bool | None = None,
             progress: bool = True) -> Path:
    """Write a synthetic shop into ``out_dir``: ``ranked.csv``, ``products.csv``, ``queries.csv`` and
    ``images/`` (unless images are off), then the four-split layout built from ``ranked.csv``.

    Returns ``out_dir``, which is then both the ``data_dir`` and (its ``images/``) the ``image_root``.
    """
    from tqdm.auto import tqdm

    from gclcore.splits import build_splits

    spec = PRESETS[preset] if isinstance(preset, str) else preset
    if images is not None:
        spec = replace(spec, images=images)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    brands = brand_names(spec.brands)
    products = make_products(spec.products, rng, brands)
    products["title"] = make_titles(products, np.random.default_rng([seed, 1]))
    products["image_local"] = [f"{PUBLISHER_IMAGE_DIR}/{image_name(p)}" for p in products["product_id"]]
    by_category = {c: np.flatnonzero(products["category"].to_numpy() == c) for c in CATEGORIES}

    query_rng = np.random.default_rng([seed, 2])
    seen: dict[str, dict] = {}
    attempts = 0
    while len(seen) < spec.queries:
        text, asked = make_query(query_rng, brands)
        attempts += 1
        if text not in seen:
            seen[text] = asked
        if attempts > 50 * spec.queries:
            raise RuntimeError(f"cannot draw {spec.queries} distinct queries; the attribute space is too small")
    rank_rng = np.random.default_rng([seed, 3])
    query_col, index_col = [], []
    columns = {name: products[name].to_numpy() for name in (*ATTRIBUTES, "popularity")}
    for text, asked in tqdm(seen.items(), desc="rank results", disable=not progress):
        hits = rank_results(asked, columns, by_category, spec, rank_rng)
        query_col.append(np.full(len(hits), text, dtype=object))
        index_col.append(hits)
    rows = np.concatenate(index_col)
    lengths = [len(h) for h in index_col]
    ranked = pd.DataFrame({
        "query": np.concatenate(query_col),
        "product_id": products["product_id"].to_numpy()[rows],
        "position": np.concatenate([np.arange(1, n + 1) for n in lengths]),
        "title": products["title"].to_numpy()[rows],
        "image_local": products["image_local"].to_numpy()[rows],
    })
    write_csv(ranked, out / "ranked.csv")
    write_csv(products, out / "products.csv")
    queries = pd.DataFrame([{"query": q, **{a: asked.get(a) for a in ATTRIBUTES}} for q, asked in seen.items()])
    write_csv(queries, out / "queries.csv")
    if spec.images:
        render_images(products, out / "images", spec.image_size, seed, progress=progress)
    build_splits(out / "ranked.csv", out, seed=seed, progress=progress)
    if progress:
        print(f"synthetic shop: {len(seen):,} queries, {len(products):,} products, {len(ranked):,} ranked "
              f"results -> {out} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gclcore.synth", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-images", action="store_true", help="skip rendering images (scale tests)")
    parser.add_argument("--queries", type=int, help="override the preset's number of queries")
    parser.add_argument("--products", type=int, help="override the preset's number of products")
    args = parser.parse_args(argv)
    spec = PRESETS[args.preset]
    spec = replace(spec, queries=args.queries or spec.queries, products=args.products or spec.products)
    generate(args.out_dir, spec, seed=args.seed, images=False if args.no_images else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())

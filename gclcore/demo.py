"""The quick demo: rank a few texts for one image with any loadable model.

The published README's demo, for every model this project loads: the image and the texts are embedded,
and each text's probability is ``softmax(logit_scale * cos(image, text))`` over the texts, with the
demo's ``logit_scale = 10`` (``--logit-scale model`` uses the model's own learned scale instead).

Without ``--image`` the demo takes a product of the embedded synthetic shop and, without texts, that
product's title against the titles of two other products, so the right answer is known::

    python -m gclcore.demo                                        # the embedded default model
    python -m gclcore.demo --model ViT-B-32 --pretrained gcl-vitb32-117-gs-full-states.pt \\
        --image shoe.png "a dog" "Vintage Style Women's Oxfords" "a cat"
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd
import torch

from gclcore.models import DEFAULT_MODEL

DEMO_LOGIT_SCALE = 10.0
"""The published demo's fixed logit scale (a softmax illustration, not the trained temperature)."""


def rank_texts(encoder, image, texts: list[str], logit_scale: float | None = DEMO_LOGIT_SCALE) -> pd.DataFrame:
    """Texts ranked for one PIL image: ``cosine`` and ``probability`` (softmax over the texts at
    ``logit_scale``; None: the model's own ``logit_scale.exp()``), best first."""
    image_emb = encoder.encode_images([image])
    text_emb = encoder.encode_text(texts)
    cosine = (image_emb @ text_emb.T)[0]
    scale = float(encoder.model.logit_scale.detach().exp()) if logit_scale is None else logit_scale
    probability = torch.softmax(scale * cosine, dim=0)
    table = pd.DataFrame({"text": texts, "cosine": cosine.numpy(), "probability": probability.numpy()})
    return table.sort_values("probability", ascending=False, kind="stable").reset_index(drop=True)


def shop_example(n_texts: int = 3):
    """A product image of the embedded synthetic shop, its title (first) and the titles of other products."""
    from gclcore import paths
    from gclcore.data import open_dataset

    dataset = open_dataset(paths.resolve_data_dir(""))
    corpus = dataset.corpus(dataset.resolve_splits("all")[0]).dropna(subset=["title"])
    titles = corpus["title"].drop_duplicates().head(n_texts).tolist()
    first = corpus.iloc[0]
    return dataset.image_resolver().open(first["image_local"]), titles


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gclcore.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("texts", nargs="*", help="candidate texts (default: shop titles)")
    parser.add_argument("--image", help="an image file (default: a product of the embedded synthetic shop)")
    parser.add_argument("--model", default="default", help="open_clip model name, or default (embedded)")
    parser.add_argument("--pretrained", default=None, help="open_clip tag or checkpoint file")
    parser.add_argument("--logit-scale", type=_scale, default=DEMO_LOGIT_SCALE,
                        help="softmax scale (default: the published demo's 10), or 'model' for the learned one")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    from PIL import Image, UnidentifiedImageError

    from gclcore.models import load_encoder

    try:
        answer = None
        if args.image:
            with Image.open(args.image) as img:
                image, texts = img.convert("RGB"), args.texts
        else:
            image, titles = shop_example()
            texts = args.texts or titles
            answer = None if args.texts else titles[0]
        if not texts:
            parser.error("give candidate texts after the options")
        encoder = load_encoder(args.model, args.pretrained, device=args.device)
    except (FileNotFoundError, UnidentifiedImageError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{encoder.name} ({encoder.pretrained or 'packaged weights'}); image: {args.image or 'a shop product'}")
    if encoder.name == DEFAULT_MODEL and not encoder.pretrained:
        print("note: the embedded model's projection heads are untrained (seeded random) until a run trains them; "
              "after `make book`, --pretrained build/main/runs/gcl-linear/model.pt is a trained one")
    table = rank_texts(encoder, image, texts, args.logit_scale)
    if answer is not None:
        table.insert(0, "", np.where(table["text"] == answer, "*", ""))
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if answer is not None:
        print("* the product's own title")
    return 0


def _scale(text: str) -> float | None:
    if text == "model":
        return None
    try:
        return float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"a number or 'model', not {text!r}") from err


if __name__ == "__main__":
    sys.exit(main())

"""open_clip's causal text towers on cut tokens (gclcore.causal_text) against open_clip's own ``encode_text``
on the tokens padded to the full context length: embeddings and every parameter's gradient."""
import numpy as np
import pytest
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP

from gclcore.causal_text import causal_tower, cut_after_pooled, encode_text
from gclcore.models import load_encoder, minilm_path

VISION = CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=16, image_size=32)
CONTEXT, VOCAB, EOT = 20, 100, 99


def small_model(cls=CLIP, **text):
    torch.manual_seed(0)
    cfg = CLIPTextCfg(context_length=CONTEXT, vocab_size=VOCAB, width=32, heads=2, layers=2, **text)
    return cls(embed_dim=16, vision_cfg=VISION, text_cfg=cfg).eval()


def padded_tokens(lengths, end=EOT) -> torch.Tensor:
    """Rows of ``lengths`` tokens each: random ids below 90, then ``end``, then zeros up to CONTEXT."""
    rng = np.random.default_rng(0)
    tokens = torch.zeros((len(lengths), CONTEXT), dtype=torch.long)
    for row, n in enumerate(lengths):
        tokens[row, :n - 1] = torch.as_tensor(rng.integers(10, 90, n - 1))
        tokens[row, n - 1] = end
    return tokens


def embeddings_and_gradients(model, tokens, encode):
    """The normalised embeddings and each parameter's gradient of a fixed random projection of them."""
    model.zero_grad(set_to_none=True)
    embedded = encode(model, tokens)
    (embedded * torch.randn(embedded.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return embedded.detach(), grads


CAUSAL = {
    "CLIP, argmax pooling": (CLIP, {}, EOT),
    "CLIP, eos pooling": (CLIP, {"pool_type": "eos", "eos_id": 7}, 7),
    "custom text tower, argmax, linear projection with bias": (CustomTextCLIP, {"proj_bias": True}, EOT),
    "custom text tower, eos pooling": (CustomTextCLIP, {"pool_type": "eos", "eos_id": 7}, 7),
}


@pytest.mark.parametrize("case", CAUSAL)
def test_cut_tokens_give_open_clips_embeddings_and_gradients(case):
    """Tokens cut after the batch's last pooled position embed as open_clip embeds them padded, and every
    parameter's gradient is the same (the positional embeddings' cut rows get none; padded, they get 0)."""
    cls, text, end = CAUSAL[case]
    model = small_model(cls, **text)
    tokens = padded_tokens([3, 8, 5, 1], end)
    cut = cut_after_pooled(model, tokens)
    assert causal_tower(model) is not None and torch.equal(cut, tokens[:, :8])
    full, full_grads = embeddings_and_gradients(model, tokens, lambda m, t: m.encode_text(t, normalize=True))
    ours, cut_grads = embeddings_and_gradients(model, cut, encode_text)
    assert ours.shape == (4, 16) and torch.allclose(ours, full, atol=1e-6)
    assert cut_grads.keys() == full_grads.keys()
    for name, grad in full_grads.items():  # float32 sums of other lengths: equal to rounding
        torch.testing.assert_close(cut_grads[name], grad, rtol=1e-5, atol=1e-5 * float(grad.abs().max()), msg=name)
    assert not full_grads[next(n for n in full_grads if n.endswith("positional_embedding"))][8:].any()


def test_a_batch_with_a_full_length_text_is_not_cut():
    model = small_model()
    tokens = padded_tokens([4, CONTEXT])
    assert cut_after_pooled(model, tokens) is tokens
    with torch.no_grad():
        assert torch.equal(encode_text(model, tokens), model.encode_text(tokens, normalize=True))


@pytest.mark.parametrize("text", [{"no_causal_mask": True}, {"pool_type": "last"}, {"pool_type": "first"},
                                  {"embed_cls": True}], ids=lambda t: next(iter(t)) + "=" + str(next(iter(t.values()))))
def test_towers_whose_padding_can_reach_the_pooled_output_are_left_alone(text):
    """Bidirectional attention, last / first pooling and CoCa's appended class token: nothing is cut and
    encode_text is the model's own."""
    model = small_model(CustomTextCLIP, **text)
    tokens = padded_tokens([3, 5])
    assert causal_tower(model) is None and cut_after_pooled(model, tokens) is tokens
    with torch.no_grad():
        assert torch.equal(encode_text(model, tokens), model.encode_text(tokens, normalize=True))


def test_a_hugging_face_tower_is_left_to_its_padding_mask():
    model = load_encoder("hf:" + minilm_path(), device="cpu").model
    tokens = torch.ones((2, 77), dtype=torch.long)
    assert causal_tower(model) is None and cut_after_pooled(model, tokens) is tokens


def test_vit_s_32_with_its_tokenizer():
    """A standard open_clip CLIP and its own tokenizer: texts cut after the longest one's end-of-text token."""
    encoder = load_encoder("ViT-S-32", pretrained="none", device="cpu")
    tokens = encoder.tokenizer(["red running shoes for women", "a blue denim jacket, size M", "x"])
    cut = cut_after_pooled(encoder.model, tokens)
    longest = int((tokens != 0).sum(1).max())
    assert tokens.shape == (3, 77) and cut.shape == (3, longest)
    with torch.no_grad():
        assert torch.allclose(encode_text(encoder.model, cut), encoder.model.encode_text(tokens, normalize=True),
                              atol=1e-6)

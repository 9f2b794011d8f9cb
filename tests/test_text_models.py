"""Hugging Face text models as encoders: ``hf:DIR`` and open_clip custom configs in the publisher's form,
against a direct transformers forward with the same pooling and prefixes."""
import json

import pytest
import torch

from gclcore import evaluate
from gclcore.models import CheckpointError, PretrainedUnavailable, load_encoder, minilm_path


def direct(model_dir, texts, pooling="mean", max_length=512):
    """transformers directly: tokenise, forward, pool over the attention mask (or CLS), L2-normalise."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(model_dir), AutoModel.from_pretrained(model_dir).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = hidden[:, 0] if pooling == "cls" else (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1)


TEXTS = ["red running shoes for women", "a blue denim jacket, size M", "x"]


def test_minilm_directory_equals_a_direct_forward():
    encoder = load_encoder("hf:" + minilm_path(), device="cpu")
    assert encoder.text_only and encoder.embed_dim == 384
    assert torch.allclose(encoder.encode_text(TEXTS), direct(minilm_path(), TEXTS, max_length=77), atol=1e-5)
    with pytest.raises(ValueError, match="text-only"):
        encoder.encode_image_files(["a.png"], None)


def test_the_packaged_minilm_by_name():
    """``hf:pkg:all-MiniLM-L6-v2`` is the wheel's MiniLM (the book's text runs name it so on any machine);
    an unknown packaged name is refused, listing the packaged ones."""
    encoder = load_encoder("hf:pkg:all-MiniLM-L6-v2", device="cpu")
    assert encoder.name == "hf:pkg:all-MiniLM-L6-v2"
    assert torch.allclose(encoder.encode_text(TEXTS), direct(minilm_path(), TEXTS, max_length=77), atol=1e-5)
    with pytest.raises(PretrainedUnavailable, match="no such packaged text model; packaged: hf:pkg:all-MiniLM-L6-v2"):
        load_encoder("hf:pkg:e5-large-v2", device="cpu")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A randomly initialised 2-layer BERT with MiniLM's tokenizer, saved as a plain model directory."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-bert")
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(folder)
    return folder


def test_tiny_bert_with_cls_pooling_and_prefixes(tiny_bert, tiny_shop, tmp_path):
    encoder = load_encoder(f"hf:{tiny_bert}", device="cpu", pooling="cls", query_prefix="query: ",
                           document_prefix="passage: ")
    assert torch.allclose(encoder.encode_text(TEXTS), direct(tiny_bert, TEXTS, "cls", max_length=77), atol=1e-5)
    assert encoder.text_prefixes == {"query": "query: ", "document": "passage: "}
    # the evaluator prepends each side's prefix: embeddings of the prefixed texts, cached per field
    calls = []
    original = encoder.encode_text
    encoder.encode_text = lambda texts, **kw: calls.append(list(texts)) or original(texts, **kw)
    evaluate.evaluate_split(encoder, tiny_shop, "zero_shot", tmp_path, rhs_fields=(evaluate.Field("title"),),
                            top_q=3, top_k=20, progress=False, cache_dir=False)
    assert all(t.startswith("query: ") for t in calls[0]) and all(t.startswith("passage: ") for t in calls[1])


def test_a_publisher_style_config_loads_a_local_model(tiny_bert, tmp_path):
    """The shape of the publisher's evals/cfg/e5-large-v2.json, with its older key spelling as in
    roberta-base-hf.json; the hub name is replaced by the local directory."""
    cfg = {"embed_dim": 32, "quick_gelu": True,
           "vision_cfg": {"image_size": 224, "layers": 1, "width": 768, "patch_size": 32},
           "text_cfg": {"hf_model_name": "intfloat/e5-large-v2", "hf_tokenizer_name": "intfloat/e5-large-v2",
                        "proj": None, "pooler_type": "mean_pooler"}}
    path = tmp_path / "e5-large-v2.json"
    path.write_text(json.dumps(cfg))
    encoder = load_encoder(str(path), device="cpu", hf_dir=tiny_bert)
    assert torch.allclose(encoder.encode_text(TEXTS), direct(tiny_bert, TEXTS, max_length=77), atol=1e-5)
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache; give the model's directory"):
        load_encoder(str(path), device="cpu")
    # a checkpoint of that architecture (as the released text-only *-states.pt) loads on top
    state = {f"module.{k}": v + 1 for k, v in encoder.model.state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "gcl-text-states.pt")
    reloaded = load_encoder(str(path), str(tmp_path / "gcl-text-states.pt"), device="cpu", hf_dir=tiny_bert)
    assert reloaded.checksum() != encoder.checksum()
    torch.save({"state_dict": {"nonsense": torch.zeros(1)}}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError):
        load_encoder(str(path), str(tmp_path / "bad.pt"), device="cpu", hf_dir=tiny_bert)


def test_cli_with_a_text_model(tiny_shop, tmp_path):
    assert evaluate.main(["--model", "hf:" + minilm_path(), "--data-dir", str(tiny_shop), "--split", "zero_shot",
                          "--output-dir", str(tmp_path), "--device", "cpu", "--top-q", "5"]) == 0
    output = json.loads((tmp_path / "query_1_product_id_1" / "output.json").read_text())
    assert output["gclcore"]["rhs_fields"] == "title=1" and output["summary"]["NDCG@10"][0] > 0


def test_padding_is_trimmed_to_the_longest_text_without_changing_embeddings(tiny_bert):
    """Hugging Face towers get the batch's tokens cut after its longest text; the embeddings equal those
    of the tokens padded to the full context length (mean and CLS pooling); other towers are untouched."""
    from gclcore.models import trim_padding

    for model_dir, pooling in ((minilm_path(), "mean"), (tiny_bert, "cls")):
        encoder = load_encoder(f"hf:{model_dir}", device="cpu", pooling=pooling)
        tokens = encoder.tokenizer(TEXTS)
        trimmed = trim_padding(encoder.model, tokens)
        longest = int((tokens != encoder.model.text.config.pad_token_id).sum(1).max())
        assert tokens.shape == (3, 77) and trimmed.shape == (3, longest) and torch.equal(trimmed, tokens[:, :longest])
        with torch.no_grad():
            padded = encoder.model.encode_text(tokens, normalize=True)
            assert torch.allclose(encoder.model.encode_text(trimmed, normalize=True), padded, atol=1e-6)
        # the encoder sorts texts by length (here "x" first) and cuts each batch's padding; rows keep their order
        assert torch.allclose(encoder.encode_text(TEXTS, batch_size=2), padded, atol=1e-6)
    assert trim_padding(torch.nn.Linear(1, 1), tokens) is tokens  # e.g. CLIP's own text transformer

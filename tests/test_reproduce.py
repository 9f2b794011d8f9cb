"""`make reproduce`: released-checkpoint loading, architecture inference, the comparison with the
published rows, and a fake released checkpoint (random ViT-B-32 weights in the released format) through
the whole command on the tiny shop."""
import pandas as pd
import pytest
import torch

from gclcore import reproduce
from gclcore.paths import repo_root

EXPECTED = repo_root() / "book" / "expected.yaml"


@pytest.fixture(scope="module")
def protocol():
    return reproduce.load_protocol(EXPECTED)


def test_checkpoint_names(protocol):
    assert reproduce.checkpoint_key("/x/gcl-vitb32-117-gs-full-states.pt") == "gcl-vitb32-117-gs-full"
    assert reproduce.checkpoint_key("gcl-vitb32-117-gs-full.pt") == "gcl-vitb32-117-gs-full"  # the early name
    assert reproduce.checkpoint_key("marqo-gcl-vitl14-124-gs-full_states.pt") == "marqo-gcl-vitl14-124-gs-full"
    assert reproduce.infer_architecture("gcl-vitb32-117-gs-full-states.pt") == "ViT-B-32"
    assert reproduce.infer_architecture("clip-vitl14-110-gs-full-states.pt") == "ViT-L-14"
    with pytest.raises(ValueError, match="text-only checkpoint.*--model-config CONFIG.json --hf-dir DIR"):
        reproduce.infer_architecture("gcl-e5l-113-gs-full-states.pt")
    with pytest.raises(ValueError, match="pass --model"):
        reproduce.infer_architecture("my-model.pt")
    assert [r.model for r in protocol.releases] == ["ViT-L-14", "ViT-B-32", "ViT-L-14", "ViT-B-32", "ViT-L-14"]
    assert all(reproduce.infer_architecture(r.checkpoint) == r.model for r in protocol.releases)
    assert protocol.metrics == {"nDCG": "NDCG@10", "ERR": "mERR", "RBP": "mRBP9"}


def test_compare_marks_each_value(protocol):
    vitb = protocol.releases[1]  # GCL ViT-B-32: 0.577 / 0.554 / 0.446
    key = reproduce.checkpoint_key(vitb.checkpoint)
    measured = pd.DataFrame([
        {"checkpoint": key, "fields": "query -> image", "split": "query_0_product_id_0",
         "NDCG@10": 0.5705, "mERR": 0.5600, "mRBP9": 0.4300},       # within, within, 0.016 off
        {"checkpoint": key, "fields": "image 0.9 + title 0.1", "split": "query_0_product_id_0",
         "NDCG@10": 0.5800, "mERR": 0.5500, "mRBP9": 0.4500},       # all within 0.01
        {"checkpoint": key, "fields": "query -> image", "split": "query_1_product_id_1",
         "NDCG@10": 0.3, "mERR": 0.2, "mRBP9": 0.1},                # nothing published
        {"checkpoint": "someone-elses", "fields": "query -> image", "split": "query_0_product_id_0",
         "NDCG@10": 0.3, "mERR": 0.2, "mRBP9": 0.1}])
    table = reproduce.compare(measured, protocol, protocol.releases, "query_0_product_id_0")
    assert table.loc[0, ["nDCG verdict", "ERR verdict", "RBP verdict"]].tolist() == ["PASS", "PASS", "FAIL"]
    assert (table.loc[1, ["nDCG verdict", "ERR verdict", "RBP verdict"]] == "PASS").all()
    assert (table.loc[2:, ["nDCG verdict", "ERR verdict", "RBP verdict"]] == "-").all().all()
    assert table.loc[0, "nDCG published"] == 0.577
    assert reproduce.passed(table, protocol) == {key: True}
    assert reproduce.passed(table.drop(index=1), protocol) == {key: False}
    elsewhere = reproduce.compare(measured, protocol, protocol.releases, "query_0_product_id_0", comparable=False)
    assert (elsewhere.loc[:1, ["nDCG verdict", "ERR verdict"]] == "n/a").all().all()
    assert elsewhere.loc[0, "nDCG published"] == 0.577 and reproduce.passed(elsewhere, protocol) == {}


def test_without_checkpoints_it_says_what_to_download(capsys):
    assert reproduce.main(["--expected", str(EXPECTED)]) == 2
    text = capsys.readouterr().out
    assert "marqo-gs-dataset.tar" in text and "images_archive.tar" in text and "make reproduce" in text
    assert "https://marqo-gcl-public.s3.us-west-2.amazonaws.com/v1/gcl-vitb32-117-gs-full-states.pt" in text
    assert reproduce.main(["--data-dir", ".", "missing/gcl-vitl14-120-gs-full-states.pt"]) == 2
    assert "v1/gcl-vitl14-120-gs-full-states.pt" in capsys.readouterr().err


@pytest.fixture(scope="module")
def fake_release(tmp_path_factory):
    """Random ViT-B-32 weights saved as a released checkpoint: {"state_dict": {"module.<name>": ...}}."""
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    path = tmp_path_factory.mktemp("release") / "gcl-vitb32-117-gs-full-states.pt"
    torch.save({"epoch": 10, "name": "fake", "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}},
               path)
    return path, model


@pytest.mark.slow
def test_fake_release_through_reproduce(tiny_shop, fake_release, tmp_path, capsys):
    path, model = fake_release
    from gclcore.models import load_encoder

    encoder = load_encoder("ViT-B-32", str(path), device="cpu")
    tokens = encoder.tokenizer(["red shoes"])
    with torch.no_grad():
        assert torch.allclose(encoder.model.encode_text(tokens), model.encode_text(tokens))  # the weights loaded

    status = reproduce.main(["--data-dir", str(tiny_shop), "--image-root", str(tiny_shop / "images"), str(path),
                             "--out", str(tmp_path), "--device", "cpu", "--compare-any-data"])
    printed = capsys.readouterr().out
    assert status == 1 and "NOT reproduced (in no document configuration)" in printed  # random weights
    table = pd.read_csv(tmp_path / "comparison.csv")
    assert len(table) == 8 and set(table["fields"]) == {"query -> image", "image 0.9 + title 0.1"}
    in_domain = table[table["split"] == "query_0_product_id_0"]
    assert (in_domain["nDCG published"] == 0.577).all() and (in_domain["nDCG verdict"] == "FAIL").all()
    assert (table[table["split"] != "query_0_product_id_0"]["nDCG verdict"] == "-").all()
    # the published evaluation's files for every (fields, split), and one image embedding per corpus
    assert len(list(tmp_path.glob("gcl-vitb32-117-gs-full/*/*/output.json"))) == 8
    assert len(list((tmp_path / "gcl-vitb32-117-gs-full" / "cache").glob("corpus-*-image_local-*.pt"))) == 2


@pytest.mark.slow
def test_on_data_smaller_than_the_published_the_verdicts_are_na(tiny_shop, tmp_path, capsys):
    """The embedded model under a released name on the tiny shop: published values shown, verdicts n/a."""
    from gclcore.models import load_encoder

    release = tmp_path / "gcl-vitb32-117-gs-full-states.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in load_encoder("default", device="cpu").model.state_dict().items()}},
               release)
    status = reproduce.main(["--data-dir", str(tiny_shop), str(release), "--model", "default", "--out", str(tmp_path / "o"),
                             "--device", "cpu"])
    printed = capsys.readouterr().out
    assert status == 0 and "verdicts n/a" in printed and "reproduced" not in printed
    table = pd.read_csv(tmp_path / "o" / "comparison.csv", keep_default_na=False)
    assert set(table["nDCG verdict"]) == {"n/a", "-"}

"""Exported models: folders that open_clip or sentence-transformers load on their own (a process that never
imports gclcore), with the trainer's embeddings, the run's metrics when evaluated again, safetensors only,
no path of this machine in any file, and a model card of what the run measured."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from gclcore import evaluate
from gclcore import export as exporter
from gclcore import train as trainer
from gclcore.models import load_encoder, minilm_path

pytestmark = pytest.mark.slow

TEXTS = ["red running shoes for women", "Vintage Style Women's Oxfords", "x"]

# open_clip alone: embeddings of TEXTS and of images (open_clip's own transform), saved for the test to compare
OPEN_CLIP_ALONE = """
import sys, torch, open_clip
from PIL import Image
import json, os
folder, out, texts, images = sys.argv[1], sys.argv[2], sys.argv[3].split("|"), sys.argv[4:]
override = {}
if os.environ.get("TOWER_FROM_FOLDER"):  # the model card's offline route: the tower's config from the folder
    text_cfg = json.load(open(folder + "/open_clip_config.json"))["model_cfg"]["text_cfg"]
    override = {"text_cfg": {**text_cfg, "hf_model_name": folder}}
model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + folder, **override)
tokenizer = open_clip.get_tokenizer("local-dir:" + folder)
model.eval()
with torch.no_grad():
    text = model.encode_text(tokenizer(texts), normalize=True)
    image = model.encode_image(torch.stack([preprocess(Image.open(p)) for p in images]), normalize=True) if images else None
assert not any(name.startswith("gclcore") for name in sys.modules), "gclcore was imported"
torch.save({"text": text, "image": image}, out)
"""

SENTENCE_TRANSFORMERS_ALONE = """
import sys, torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModel
folder, out, texts = sys.argv[1], sys.argv[2], sys.argv[3].split("|")
model = SentenceTransformer(folder, device="cpu")
AutoModel.from_pretrained(folder)  # a plain transformers folder too
query = model.encode_query(texts, convert_to_tensor=True)
document = model.encode_document(texts, convert_to_tensor=True)
assert not any(name.startswith("gclcore") for name in sys.modules), "gclcore was imported"
torch.save({"query": query, "document": document, "prompts": model.prompts}, out)
"""


def alone(script: str, tmp_path: Path, *args, env: dict | None = None) -> dict:
    """Run ``script`` in a fresh interpreter, offline, without gclcore on its path; its saved tensors."""
    out = tmp_path / f"alone-{len(list(tmp_path.glob('alone-*')))}.pt"
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"} | (env or {})
    done = subprocess.run([sys.executable, "-c", script, *map(str, args[:1]), str(out), *map(str, args[1:])],
                          cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out, weights_only=False)


def hub_cache_with(tmp_path: Path, hub_id: str, config_file: Path) -> Path:
    """A Hugging Face cache holding one model's ``config.json``, as on any machine that has used ``hub_id``:
    what open_clip needs offline to rebuild a Hugging Face text tower's architecture from its id."""
    cache = tmp_path / "hf-cache"
    repo = cache / f"models--{hub_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_bytes(config_file.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    return cache


def assert_portable(folder: Path, *machine_paths) -> None:
    """Only safetensors weights, and no absolute path of this machine in any file."""
    weights = [p.name for p in folder.rglob("*") if p.suffix in (".pt", ".bin", ".pth", ".safetensors", ".pkl")]
    assert weights and all(name.endswith(".safetensors") for name in weights), weights
    needles = {str(Path(p).resolve()) for p in machine_paths} | {sys.prefix, str(Path.home())}
    for path in folder.rglob("*"):
        if path.is_file() and path.suffix != ".safetensors":
            text = path.read_text(errors="ignore")
            assert not [n for n in needles if n in text], (path, [n for n in needles if n in text])


def card_front_matter(folder: Path) -> dict:
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


@pytest.fixture(scope="module")
def default_run(tiny_shop, tmp_path_factory):
    base = tmp_path_factory.mktemp("default-run")
    return trainer.train(trainer.TrainConfig(
        data_dir=str(tiny_shop), output_dir=str(base / "run"), batch_size=32, epochs=1, lr=2e-3, eval_split="",
        test_splits="all", eval_top_k=50, progress=False, feature_cache_dir=str(base / "features")))


@pytest.fixture(scope="module")
def exported_default(default_run):
    return exporter.export(default_run.output_dir, default_run.output_dir.parent / "exported")


def test_an_exported_default_run_loads_in_open_clip_alone_with_the_trainers_embeddings(
        default_run, exported_default, tiny_shop, tmp_path):
    folder = exported_default
    config = json.loads((folder / "open_clip_config.json").read_text())
    tower = config["model_cfg"]["text_cfg"]["hf_model_name"]
    assert tower == "sentence-transformers/all-MiniLM-L6-v2"
    images = sorted((tiny_shop / "images").glob("*"))[:3]
    ours = load_encoder("default", str(default_run.checkpoint), device="cpu")
    from PIL import Image

    # a machine that has the tower's hub config cached (the real file, not the exported copy) ...
    cached = {"HF_HUB_CACHE": str(hub_cache_with(tmp_path, tower, Path(minilm_path()) / "config.json"))}
    # ... and one with nothing but the folder, by the card's offline route
    for env in (cached, {"HF_HUB_CACHE": str(tmp_path / "empty"), "TOWER_FROM_FOLDER": "1"}):
        got = alone(OPEN_CLIP_ALONE, tmp_path, folder, "|".join(TEXTS), *images, env=env)
        assert torch.allclose(got["text"], ours.encode_text(TEXTS), atol=1e-5)
        assert torch.allclose(got["image"], ours.encode_images([Image.open(p) for p in images]), atol=1e-5)


def test_the_folder_is_portable_and_its_card_holds_the_runs_table(default_run, exported_default, tiny_shop):
    folder = exported_default
    assert_portable(folder, default_run.output_dir, tiny_shop, exporter.__file__)
    results = pd.read_csv(default_run.output_dir / "test" / "results.csv")
    meta = card_front_matter(folder)
    assert meta["library_name"] == "open_clip" and meta["base_model"] == ["sentence-transformers/all-MiniLM-L6-v2"]
    assert meta["model-index"][0]["name"] == "exported"  # the folder's name unless one is given
    index = meta["model-index"][0]["results"]
    assert [r["dataset"]["split"] for r in index] == results["name"].tolist()
    for entry, (_, row) in zip(index, results.iterrows()):
        metrics = {m["type"]: m["value"] for m in entry["metrics"]}
        assert metrics["ndcg_at_10"] == pytest.approx(row["NDCG@10"], abs=1e-5)
        assert metrics["err"] == pytest.approx(row["mERR"], abs=1e-5)
    card = (folder / "README.md").read_text()
    first = results.iloc[0]
    assert f"| {first['name']} | {first['NDCG@10']:.4f} | {first['mERR']:.4f} |" in card
    assert "GCL ViT-B-32 (published) | 0.577" in card  # published rows beside, labelled
    assert 'open_clip.create_model_and_transforms("local-dir:exported")' in card
    assert json.loads((folder / "training_config.json").read_text())["data_dir"] == tiny_shop.name


def test_gclcore_evaluates_and_fine_tunes_the_folder_like_the_runs_checkpoint(default_run, exported_default,
                                                                               tiny_shop, tmp_path):
    common = ["--data-dir", str(tiny_shop), "--split", "zero_shot", "--device", "cpu", "--top-q", "20", "--top-k", "50"]
    assert evaluate.main(["--model", "default", "--pretrained", str(default_run.checkpoint), *common,
                          "--output-dir", str(tmp_path / "checkpoint")]) == 0
    assert evaluate.main(["--model", f"local-dir:{exported_default}", *common,
                          "--output-dir", str(tmp_path / "folder")]) == 0
    summaries = [json.loads((tmp_path / kind / "query_1_product_id_1" / "output.json").read_text())["summary"]
                 for kind in ("checkpoint", "folder")]
    assert summaries[0] == summaries[1] and summaries[0]["NDCG@10"][0] > 0
    # trained again from the folder (pretrained "" = its own weights), with locked trunks as the default model
    again = trainer.train(trainer.TrainConfig(
        data_dir=str(tiny_shop), model=f"local-dir:{exported_default}", output_dir=str(tmp_path / "again"),
        batch_size=32, max_steps=2, eval_split="", test_splits="", progress=False,
        feature_cache_dir=str(tmp_path / "features")))
    assert again.steps == 2 and again.config.freeze == "trunks"


def test_a_text_only_run_leaves_as_a_sentence_transformers_folder(tiny_shop, tmp_path):
    run = trainer.train(trainer.TrainConfig(
        data_dir=str(tiny_shop), model="hf:pkg:all-MiniLM-L6-v2", output_dir=str(tmp_path / "run"), lhs_fields="query=1",
        rhs_fields="title=1", query_prefix="query: ", document_prefix="passage: ", freeze="none", batch_size=16,
        max_steps=2, lr=1e-4, eval_split="", test_splits="zero_shot", eval_top_k=50, workers=0, progress=False))
    folder = exporter.export(run.output_dir, tmp_path / "st", name="text-gcl")
    assert_portable(folder, run.output_dir, tiny_shop)
    got = alone(SENTENCE_TRANSFORMERS_ALONE, tmp_path, folder, "|".join(TEXTS))
    ours = load_encoder("hf:pkg:all-MiniLM-L6-v2", str(run.checkpoint), device="cpu")
    assert got["prompts"]["query"] == "query: " and got["prompts"]["document"] == "passage: "
    assert torch.allclose(got["query"], ours.encode_text([f"query: {t}" for t in TEXTS]), atol=1e-5)
    assert torch.allclose(got["document"], ours.encode_text([f"passage: {t}" for t in TEXTS]), atol=1e-5)
    meta = card_front_matter(folder)
    assert meta["library_name"] == "sentence-transformers"
    assert meta["model-index"][0]["results"][0]["dataset"]["split"] == "zero_shot"
    assert meta["model-index"][0]["name"] == "text-gcl"
    card = (folder / "README.md").read_text()
    assert "\n# text-gcl\n" in card and 'SentenceTransformer("st")' in card  # titled by name, loaded by folder
    # back in: hf:FOLDER takes the folder's prompts and pooling, and measures what the run measured
    reloaded = load_encoder(f"hf:{folder}", device="cpu")
    assert reloaded.text_prefixes == {"query": "query: ", "document": "passage: "}
    again = evaluate.evaluate(reloaded, tiny_shop, tmp_path / "again", "zero_shot", rhs_fields=(evaluate.Field("title"),),
                              top_k=50, progress=False, cache_dir=False)
    measured = pd.read_csv(run.output_dir / "test" / "results.csv")
    assert again["NDCG@10"].iloc[0] == pytest.approx(measured["NDCG@10"].iloc[0], abs=1e-5)
    pooling = folder / "1_Pooling" / "config.json"
    pooling.write_text(json.dumps(json.loads(pooling.read_text()) | {"pooling_mode": "cls"}))
    with pytest.warns(UserWarning, match="folder with cls pooling .*; encoding with mean pooling as asked"):
        load_encoder(f"hf:{folder}", device="cpu")


def test_a_vit_checkpoint_file_exports_a_self_contained_folder(tmp_path):
    """An open_clip architecture with its own text tower: nothing but the folder is needed, not even a cache."""
    encoder = load_encoder("ViT-S-32", pretrained="none", device="cpu", seed=3)
    torch.save({"epoch": 1, "state_dict": encoder.model.state_dict()}, tmp_path / "vit.pt")
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(exporter.ExportError, match="does not say its architecture"):
        exporter.export(tmp_path / "weights.safetensors", tmp_path / "out")
    with pytest.raises(exporter.ExportError, match="vit.pt: cannot be loaded as model 'default'.*does not fit"):
        exporter.export(tmp_path / "vit.pt", tmp_path / "out", model="default")
    folder = exporter.export(tmp_path / "vit.pt", tmp_path / "out", model="ViT-S-32")
    assert_portable(folder, tmp_path)
    got = alone(OPEN_CLIP_ALONE, tmp_path, folder, "|".join(TEXTS), env={"HF_HUB_CACHE": str(tmp_path / "empty")})
    assert torch.allclose(got["text"], encoder.encode_text(TEXTS), atol=1e-5)
    assert "Not measured" in (folder / "README.md").read_text()


def test_what_cannot_be_exported_is_named_and_nothing_half_written_is_left(default_run, tmp_path, monkeypatch):
    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoints").mkdir(parents=True)
    (unfinished / "config.json").write_text((default_run.output_dir / "config.json").read_text())
    (unfinished / "checkpoints" / "state-latest.pt").write_bytes(b"")
    with pytest.raises(exporter.ExportError, match=r"model\.pt: no final weights .*state-latest\.pt.*resume=latest"):
        exporter.export(unfinished, tmp_path / "out")
    with pytest.raises(exporter.ExportError, match="not a run folder"):
        exporter.export(tmp_path, tmp_path / "out")
    with pytest.raises(exporter.ExportError, match="holds the run being exported"):
        exporter.export(default_run.output_dir, default_run.output_dir, overwrite=True)
    (tmp_path / "taken").mkdir()
    with pytest.raises(exporter.ExportError, match="exists; .*--overwrite"):
        exporter.export(default_run.output_dir, tmp_path / "taken")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("safetensors.torch.save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        exporter.export(default_run.output_dir, tmp_path / "taken", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken", "unfinished"]  # untouched, no partial folder
    assert exporter.main([str(unfinished), str(tmp_path / "out")]) == 2


def test_no_path_of_the_training_machine_reaches_the_card_or_the_config(tmp_path):
    """Model names and config paths keep their last part; the check finds a path as a whole, not inside a word."""
    config = {"model": "hf:/data/models/e5-large-v2", "data_dir": "/data/gs/marqo_gs_full_10m", "pretrained": "/w/a.pt",
              "output_dir": "/runs/text-gcl", "lr": 1e-4}
    portable = exporter.portable_config(config)
    assert portable == {"model": "hf:e5-large-v2", "data_dir": "marqo_gs_full_10m", "pretrained": "a.pt",
                        "output_dir": "text-gcl", "lr": 1e-4}
    assert exporter.portable_model("local-dir:/x/gcl") == "local-dir:gcl"
    assert exporter.portable_model("/cfg/xlm-roberta-base-ViT-B-32.json") == "xlm-roberta-base-ViT-B-32.json"
    assert exporter.portable_model("hf:pkg:all-MiniLM-L6-v2") == "hf:pkg:all-MiniLM-L6-v2"
    (tmp_path / "a.json").write_text('{"vocab": "/tmpl", "note": "see /data/models"}')
    exporter.check_portable(tmp_path, ["/tmp", "/data/models/e5"])  # neither path is there as a whole
    with pytest.raises(exporter.ExportError, match="a.json holds the training machine's path /data/models"):
        exporter.check_portable(tmp_path, ["/tmp", "/data/models"])
    assert exporter._cached_hub_id("/h/hub/models--xlm-roberta-base/snapshots/abc") == "xlm-roberta-base"
    assert exporter._cached_hub_id("/h/hub/models--intfloat--e5-large-v2/snapshots/abc") == "intfloat/e5-large-v2"

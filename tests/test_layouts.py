"""Every published layout, end to end: the Hugging Face parquet layout (all splits, or only some), the
explicit-files layout of the publisher's tiny test, and the companion-file fallback.

The CSV layout is the independent reference: the same shop in another layout must give the same numbers,
with an encoder whose image embeddings hash the decoded pixels (so the parquet images must decode to the
very pixels of the image files)."""
import hashlib
import json
import pickle
import shutil
import warnings

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from gclcore import data, evaluate
from gclcore.data import DataFormatError, DataWarning
from gclcore.fusion import Field

RHS = (Field("image_local", 0.9), Field("title", 0.1))
HALF_SPLITS = {"corpus_1.json": ["query_0_product_id_0", "query_1_product_id_0"],
               "corpus_2.json": ["query_0_product_id_1", "query_1_product_id_1"]}


class PixelEncoder:
    """Embeddings from hashes: of the text, or of the decoded RGB pixels of the image (via the resolver)."""

    def __init__(self):
        self.images = 0

    @staticmethod
    def _vectors(blobs):
        rows = [np.random.default_rng(int(hashlib.sha256(b).hexdigest()[:8], 16)).normal(size=16) for b in blobs]
        return torch.nn.functional.normalize(torch.tensor(np.array(rows), dtype=torch.float32), dim=1)

    def encode_text(self, texts):
        return self._vectors([t.encode() for t in texts])

    def encode_image_files(self, refs, resolver):
        self.images += len(refs)
        return self._vectors([np.asarray(resolver.open(r)).tobytes() for r in refs])

    def checksum(self):
        return "pixels"


def write_derived_order_corpora(shop, stems_by_corpus=HALF_SPLITS):
    """Rewrite corpus JSONs to hold exactly the products of their splits' rows, first occurrence first
    (computed here with plain pandas from the CSVs), so a corpus derived from rows must equal them."""
    for name, stems in stems_by_corpus.items():
        corpus = json.loads((shop / name).read_text())
        rows = pd.concat([pd.read_csv(shop / f"{s}.csv", dtype=str) for s in stems if (shop / f"{s}.csv").exists()])
        ids = list(dict.fromkeys(rows["product_id"]))
        (shop / name).write_text(json.dumps({pid: corpus[pid] for pid in ids}))


@pytest.fixture
def layouts(tiny_shop, tmp_path):
    """(CSV shop with derived-order corpora, its parquet copy (row groups of 16), the zero-shot-only CSV shop,
    the zero-shot-only parquet copy)."""
    shop = shutil.copytree(tiny_shop, tmp_path / "csv")
    write_derived_order_corpora(shop)
    hf = tmp_path / "hf"
    assert data.main(["to-parquet", str(shop), str(hf), "--image-root", str(shop / "images"),
                      "--row-group-size", "16"]) == 0
    zs_csv = tmp_path / "zs_csv"
    zs_csv.mkdir()
    shutil.copy(shop / "query_1_product_id_1.csv", zs_csv)
    shutil.copy(shop / "corpus_2.json", zs_csv)
    shutil.copytree(shop / "images", zs_csv / "images")
    write_derived_order_corpora(zs_csv, {"corpus_2.json": ["query_1_product_id_1"]})
    zs_hf = tmp_path / "zs_hf" / "data"
    zs_hf.mkdir(parents=True)
    shutil.copy(hf / "data" / "zero_shot-00000-of-00001.parquet", zs_hf)
    return shop, hf, zs_csv, zs_hf.parent


def evaluate_all(dataset, out):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        table = evaluate.evaluate(PixelEncoder(), dataset, out, "all", rhs_fields=RHS, top_k=50, progress=False)
    return table


def test_layout_detection_and_errors(layouts, tmp_path):
    shop, hf, _, zs = layouts
    assert data.open_dataset(shop).layout == "csv" and data.open_dataset(hf).layout == "parquet"
    only = data.open_dataset(zs)
    assert only.splits == ["query_1_product_id_1"]
    with pytest.warns(DataWarning, match="'all' splits means the 1 this dataset ships: zero_shot"):
        assert only.resolve_splits("all") == ["query_1_product_id_1"]
    with pytest.raises(DataFormatError, match=r"split 'in_domain' .* not in this parquet dataset \(splits present: zero_shot\)"):
        only.rows("in_domain")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError) as err:
        data.open_dataset(tmp_path / "empty")
    text = str(err.value)
    assert str(tmp_path / "empty") in text and "query_0_product_id_0.csv" in text and "data/<split>-*.parquet" in text


def test_parquet_rows_and_derived_corpus_equal_the_csv_layout(layouts):
    shop, hf, _, _ = layouts
    csv, pq_data = data.open_dataset(shop), data.open_dataset(hf)
    for stem in data.SPLIT_STEMS:
        a, b = csv.rows(stem), pq_data.rows(stem)
        assert sorted(a.columns) == sorted(b.columns)
        for column in a.columns:
            if column != "image_local":
                assert a[column].astype(object).where(a[column].notna(), None).tolist() == \
                    b[column].astype(object).where(b[column].notna(), None).tolist(), (stem, column)
    with pytest.warns(DataWarning, match="derived from the parquet rows of novel_document \\+ zero_shot"):
        derived = pq_data.corpus("zero_shot")
    reference = csv.corpus("zero_shot")
    assert derived["product_id"].tolist() == reference["product_id"].tolist()
    assert derived["title"].isna().tolist() == reference["title"].isna().tolist()
    resolver, files = pq_data.image_resolver(), csv.image_resolver()
    for ref, stored in zip(derived["image_local"][:20], reference["image_local"][:20]):
        assert np.array_equal(np.asarray(resolver.open(ref)), np.asarray(files.open(stored)))
    assert "derived from parquet rows of novel_document + zero_shot" in pq_data.corpus_label("zero_shot")
    clone = pickle.loads(pickle.dumps(resolver))  # DataLoader workers get a copy
    assert np.array_equal(np.asarray(clone.open(derived["image_local"][3])), np.asarray(resolver.open(derived["image_local"][3])))
    image, status = resolver.load("/MarqoData/not-a-reference.webp")
    assert status == data.ImageStatus.MISSING and image.size == (224, 224)


def test_parquet_evaluates_like_the_csv_layout(layouts, tmp_path):
    shop, hf, zs_csv, zs_hf = layouts
    pd.testing.assert_frame_equal(evaluate_all(hf, tmp_path / "pq"), evaluate_all(shop, tmp_path / "csv"))
    only = evaluate_all(zs_hf, tmp_path / "zs_pq")
    assert only["name"].tolist() == ["zero_shot"]
    pd.testing.assert_frame_equal(only, evaluate_all(zs_csv, tmp_path / "zs_csv"))
    for name in ("retrieval.json", "gt_results.json"):
        assert (tmp_path / "zs_pq" / "query_1_product_id_1" / name).read_text() == \
            (tmp_path / "zs_csv" / "query_1_product_id_1" / name).read_text()
    output = json.loads((tmp_path / "zs_pq" / "query_1_product_id_1" / "output.json").read_text())
    assert output["gclcore"]["corpus"] == "derived from parquet rows of zero_shot (not corpus_2.json; without novel_document)"
    assert output["gclcore"]["ground_truth"]["used"] == "sampled"


def test_embedding_a_parquet_corpus_reads_each_row_group_once(layouts, tmp_path, monkeypatch):
    """Images are decoded one row group at a time: each group of image bytes is read once, never a split."""
    _, _, _, zs = layouts
    reads = []
    original = pq.ParquetFile.read_row_group

    def spy(self, i, columns=None, **kwargs):
        if columns is not None and "image" in columns:
            reads.append(i)
        return original(self, i, columns=columns, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", spy)
    monkeypatch.setattr(pq.ParquetFile, "read", lambda self, columns=None, **kw: _no_images(self, columns, kw))
    encoder = PixelEncoder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        evaluate.evaluate_split(encoder, zs, "zero_shot", tmp_path / "out", rhs_fields=RHS, top_k=20, progress=False)
    groups = pq.ParquetFile(next((zs / "data").glob("*.parquet"))).metadata.num_row_groups
    assert encoder.images > groups > 1
    assert sorted(reads) == sorted(set(reads)) and len(reads) <= groups, reads


_READ = pq.ParquetFile.read


def _no_images(self, columns, kwargs):
    assert columns is not None and "image" not in columns, "a whole split's image column was read"
    return _READ(self, columns=columns, **kwargs)


def test_to_parquet_holds_one_row_group_of_images_at_a_time(tiny_shop, tmp_path, monkeypatch):
    frame = data.read_split_csv(tiny_shop / "query_0_product_id_0.csv")
    events = []

    class CountingResolver(data.ImageResolver):
        def resolve(self, stored_path):
            events.append("read")
            return super().resolve(stored_path)

    original = pq.ParquetWriter.write_table

    def write_table(self, table, *args, **kwargs):
        events.append(("write", table.num_rows))
        return original(self, table, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", write_table)
    out = tmp_path / "data" / "in_domain-00000-of-00001.parquet"
    data.write_parquet_split(frame, CountingResolver(tiny_shop / "images"), out, row_group_size=10)
    writes = [e for e in events if e != "read"]
    assert len(writes) == -(-len(frame) // 10) and sum(n for _, n in writes) == len(frame)
    pending = 0
    for event in events:  # never more than one row group of images read before it is written
        pending = pending + 1 if event == "read" else 0
        assert pending <= 10
    split = data.ParquetSplit(tmp_path, "in_domain")
    assert split._parquet[0].metadata.num_row_groups == len(writes)
    assert split.image_bytes(len(frame) - 1) == (tiny_shop / "images" / data.image_basename(
        frame["image_local"].iloc[-1])).read_bytes()


def test_to_parquet_counts_missing_images_against_every_image_written(tmp_path):
    """Under the placeholder policy a missing image becomes a null image, counted; the share that stops the
    run is of all images seen (120 missing of 420 is 29%, under the 50% limit)."""
    images = tmp_path / "images"
    images.mkdir()
    for i in range(300):
        (images / f"p{i}.png").write_bytes(b"not decoded: copied as is")
    stored = [f"/MarqoData/p{i}.png" for i in range(300)] + [f"/MarqoData/gone{i}.png" for i in range(120)]
    frame = pd.DataFrame({"query": ["q"] * 420, "product_id": [str(i) for i in range(420)], "image_local": stored})
    resolver = data.ImageResolver(images, missing="placeholder", max_bad=0.5)
    data.write_parquet_split(frame, resolver, tmp_path / "data" / "in_domain-00000-of-00001.parquet")
    assert (resolver.seen_count, resolver.missing_count) == (420, 120)
    table = pq.read_table(tmp_path / "data" / "in_domain-00000-of-00001.parquet")
    assert table.column("image").null_count == 120


def test_validate_a_parquet_folder_with_only_some_splits(layouts, tmp_path):
    _, _, zs_csv, zs = layouts
    report = data.validate(zs, progress=False)
    assert report.ok, report.render()
    rows = len(pd.read_csv(zs_csv / "query_1_product_id_1.csv"))
    assert report.stats["zero_shot"]["rows"] == rows
    assert report.stats["corpus of product half 1 (derived from zero_shot)"]["products"] == \
        len(json.loads((zs_csv / "corpus_2.json").read_text()))
    assert report.stats["images"]["unreadable"] == 0 and report.stats["images"]["decoded"] > 0
    checks = {f.check for f in report.findings}
    assert "split absent" in checks and any("derived" in c for c in checks)
    # a float id column and an undecodable image are errors naming the check
    table = pq.read_table(next((zs / "data").glob("*.parquet")))
    broken = tmp_path / "broken" / "data"
    broken.mkdir(parents=True)
    images = table.column("image").to_pylist()
    images[0] = {"bytes": b"not an image", "path": "x.webp"}
    import pyarrow as pa
    table = table.set_column(0, "image", pa.array(images, type=table.schema.field("image").type))
    table = table.set_column(table.schema.get_field_index("query_id"), "query_id",
                             pa.array(np.arange(len(table), dtype=float)))
    pq.write_table(table, broken / "zero_shot-0.parquet")
    found = {f.check: f for f in data.validate(broken.parent, decode_limit=0, progress=False).findings}
    assert found["unreadable images"].count == 1
    assert found["id column neither string nor integer (digits may be lost)"].column == "query_id"
    assert data.main(["validate", str(broken.parent)]) == 1


def publisher_tiny(shop, out):
    """The publisher's tiny-test shape from one split: ``query_tiny.csv`` + ``corpus_tiny.json`` with stored
    paths ``/input/images/<file>`` and the images under ``images/``."""
    out.mkdir()
    rows = pd.read_csv(shop / "query_1_product_id_1.csv", dtype=str, keep_default_na=False)
    rows["image_local"] = "/input/images/" + rows["image_local"].map(data.image_basename)
    rows.to_csv(out / "query_tiny.csv", index=False)
    corpus = json.loads((shop / "corpus_2.json").read_text())
    for entry in corpus.values():
        entry["image_local"] = "/input/images/" + data.image_basename(entry["image_local"])
    (out / "corpus_tiny.json").write_text(json.dumps(corpus))
    shutil.copytree(shop / "images", out / "images")
    return out


def test_explicit_files_dataset_evaluates_like_the_csv_layout(tiny_shop, tmp_path):
    tiny = publisher_tiny(tiny_shop, tmp_path / "tiny")
    dataset = data.files_dataset(tiny / "query_tiny.csv", tiny / "corpus_tiny.json")
    assert dataset.splits == ["query_tiny"] and dataset.resolve_splits("all") == ["query_tiny"]
    assert dataset.image_root == (tiny / "images").resolve() and dataset.corpus_label("query_tiny") == "corpus_tiny.json"
    assert data.files_dataset(str(tiny / "query_tiny.csv"), tiny / "corpus_tiny.json") is dataset
    with pytest.raises(ValueError, match="one split, 'query_tiny'"):
        dataset.rows("zero_shot")
    ours = evaluate_all(dataset, tmp_path / "files")
    assert ours["split"].tolist() == ["query_tiny"] and ours["name"].tolist() == ["query_tiny"]
    reference = evaluate.evaluate_split(PixelEncoder(), tiny_shop, "zero_shot", tmp_path / "csv", rhs_fields=RHS,
                                        top_k=50, progress=False)
    assert ours.drop(columns=["split", "name"]).iloc[0].to_dict() == reference.summary
    assert (tmp_path / "files" / "query_tiny" / "retrieval.json").read_text() == \
        (tmp_path / "csv" / "retrieval.json").read_text()


def fallback_warnings(record, name):
    return [w for w in record if issubclass(w.category, DataWarning) and name in str(w.message)]


@pytest.mark.parametrize("content, expected", [
    ("[1, 2, 3]", "expected {query_id: {product_id: grade}}"),
    ('{"no-such-query": {"1": 5}, "other": {"2": 3}, "third": {"3": 1}, "fourth": {"4": 1}}',
     "none of its 4 query ids matches a query_id or query text"),
])
def test_unusable_dev_ground_truth_falls_back_with_one_warning(tiny_shop, tmp_path, content, expected):
    shop = shutil.copytree(tiny_shop, tmp_path / "shop")
    gt = shop / "query_1_product_id_0_gt_dev.json"
    gt.write_text(content)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        results = [evaluate.evaluate_split(PixelEncoder(), shop, "novel_query", tmp_path / f"eval{i}", rhs_fields=RHS,
                                           top_k=20, query_set="dev", progress=False) for i in range(2)]
    said = fallback_warnings(record, str(gt))
    assert len(said) == 1 and expected in str(said[0].message) and "sampled" in str(said[0].message)
    if "no-such-query" in content:
        assert "'no-such-query', 'other', 'third'" in str(said[0].message)
    sampled = evaluate.evaluate_split(PixelEncoder(), shop, "novel_query", tmp_path / "sampled", rhs_fields=RHS,
                                      top_k=20, progress=False)
    assert results[0].summary == results[1].summary == sampled.summary
    truth = json.loads((tmp_path / "eval1" / "output.json").read_text())["gclcore"]["ground_truth"]
    assert truth["used"] == "sampled" and truth["fallback"] is True and truth["query_set"] == "dev"


def test_a_recognised_dev_ground_truth_is_used_and_recorded(tiny_shop, tmp_path):
    result = evaluate.evaluate_split(PixelEncoder(), tiny_shop, "novel_query", tmp_path, rhs_fields=RHS, top_k=20,
                                     query_set="dev", progress=False)
    dev = json.loads((tiny_shop / "query_1_product_id_0_gt_dev.json").read_text())
    assert len(result.per_query) == len(dev)
    truth = json.loads((tmp_path / "output.json").read_text())["gclcore"]["ground_truth"]
    assert truth.pop("settings")["query_set"] == "dev"
    assert truth == {"query_set": "dev", "used": "dev", "source": str(tiny_shop / "query_1_product_id_0_gt_dev.json"),
                     "schema": "qrels"}


@pytest.mark.slow
def test_training_dev_evaluation_falls_back_once(tiny_shop, tmp_path):
    from gclcore.train import train

    shop = shutil.copytree(tiny_shop, tmp_path / "shop")
    gt = shop / "query_1_product_id_0_gt_dev.json"
    gt.write_text('{"unknown": "schema"}')  # an id -> text map: query texts, not ground truth
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = train(data_dir=str(shop), output_dir=str(tmp_path / "run"), batch_size=16, epochs=1, max_steps=2,
                       eval_every=1, eval_top_k=20, progress=False, feature_cache_dir=str(tmp_path / "features"))
    assert len(fallback_warnings(record, str(gt))) == 1
    assert result.evaluations["step"].tolist() == [0, 1, 2]
    truth = json.loads((tmp_path / "run" / "eval" / "step-000002" / "output.json").read_text())["gclcore"]["ground_truth"]
    assert truth["used"] == "sampled" and truth["fallback"] is True


@pytest.mark.slow
def test_heads_only_training_on_a_zero_shot_only_parquet_dataset(layouts, tmp_path):
    from gclcore.train import main, train

    _, _, _, zs = layouts
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = train(data_dir=str(zs), train_split="zero_shot", eval_split="zero_shot", test_splits="all",
                       output_dir=str(tmp_path / "run"), batch_size=16, epochs=1, max_steps=2, eval_top_k=20,
                       progress=False, feature_cache_dir=str(tmp_path / "features"))
    assert result.steps == 2 and result.test["name"].tolist() == ["zero_shot"]
    assert result.test["NDCG@10"].between(0, 1).all() and len(result.evaluations) == 2
    said = [str(w.message) for w in record if issubclass(w.category, DataWarning)]
    assert sum("no usable gt_dev ground truth for zero_shot" in m for m in said) == 1, said
    assert sum("derived from the parquet rows of zero_shot" in m for m in said) == 1, said
    assert list((tmp_path / "features").glob("trunk-features-*.pt"))  # the feature cache works on parquet
    assert main(["--set", f"data_dir={zs}", "--set", f"output_dir={tmp_path / 'cli'}", "--set", "train_split=in_domain",
                 "--set", "progress=false"]) == 2  # an absent split: a clear error, no traceback


@pytest.mark.slow
def test_evaluate_cli_on_the_publishers_tiny_test_shape(tiny_shop, tmp_path):
    """The publisher's tiny test as its script is called (its flag spellings), outputs straight into
    --output-dir; the same numbers as evaluate_split on files_dataset with the same model."""
    from gclcore.models import load_encoder

    tiny = publisher_tiny(tiny_shop, tmp_path / "tiny")
    out = tmp_path / "out"
    argv = ["--test_csv", str(tiny / "query_tiny.csv"), "--doc-meta", str(tiny / "corpus_tiny.json"),
            "--weight_key", "score_linear", "--output-dir", str(out), "--batch-size", "64", "--left-keys", "['query']",
            "--right-keys", "['image_local']", "--img-or-txt", "[['txt'], ['img']]", "--left-weights", "[1]",
            "--right-weights", "[1]", "--context-length", "[[77], [0]]", "--top-q", "5", "--device", "cpu"]
    assert evaluate.main(argv) == 0
    assert {"gt_results.json", "retrieval.json", "output.json", "output.csv"} <= {p.name for p in out.iterdir()}
    cli = json.loads((out / "output.json").read_text())
    direct = evaluate.evaluate_split(load_encoder("default", device="cpu"), data.files_dataset(
        tiny / "query_tiny.csv", tiny / "corpus_tiny.json"), "query_tiny", tmp_path / "direct", top_q=5, progress=False)
    assert cli["summary"]["NDCG@10"] == [direct.metrics["NDCG@10"]] and cli["summary"]["mERR"] == direct.metrics["mERR"]
    assert cli["gclcore"]["corpus"] == "corpus_tiny.json" and cli["gclcore"]["queries"] == 5
    # the published script's other flags: boolean flags with or without a value, a shared queries file,
    # metrics only from the files already there
    shared = tmp_path / "shared_gt.json"
    more = argv + ["--overwrite-feature", "True", "--overwrite-retrieval", "--run-queries-cpu", "false",
                   "--gt_results_path", str(shared)]
    assert evaluate.main(more) == 0 and json.loads(shared.read_text()) == json.loads((out / "gt_results.json").read_text())
    (out / "output.json").unlink()
    assert evaluate.main(argv + ["--metric-only"]) == 0
    assert json.loads((out / "output.json").read_text())["summary"] == cli["summary"]
    with pytest.raises(SystemExit) as stop:
        evaluate.main(argv + ["--features-path", "f.pt"])
    assert stop.value.code == 2

"""One dataset interface: every consumer gets rows, corpora, companions and images from open_dataset,
and each file is read once per process."""
import shutil
from collections import Counter

import pytest

from gclcore.data import DataFormatError, dataset, open_dataset


@pytest.fixture
def counted_reads(monkeypatch):
    """Counts every file the data layer reads (split CSVs, corpora, companion files), by file name."""
    reads = Counter()
    for name in ("read_split_csv", "read_corpus", "read_companion"):
        original = getattr(dataset, name)

        def counting(path, *args, _original=original, **kwargs):
            reads[path.name] += 1
            return _original(path, *args, **kwargs)

        monkeypatch.setattr(dataset, name, counting)
    return reads


@pytest.fixture
def shop(tiny_shop, tmp_path):
    return shutil.copytree(tiny_shop, tmp_path / "shop")


def test_each_file_is_read_once_and_again_when_rewritten(shop, counted_reads):
    data = open_dataset(shop)
    assert open_dataset(str(shop)) is data and open_dataset(data) is data
    assert data.image_root == (shop / "images").resolve()  # the embedded shop's default
    rows = data.rows("in_domain")
    assert data.rows("query_0_product_id_0") is rows
    assert list(data.rows("in_domain", ["query"]).columns) == ["query"]  # a view of the whole frame
    assert data.corpus("novel_query") is data.corpus("in_domain")  # both use corpus_1.json
    data.companion("novel_query", "gt_dev")
    data.companion("novel_query", "gt_dev")
    assert counted_reads == {"query_0_product_id_0.csv": 1, "corpus_1.json": 1, "query_1_product_id_0_gt_dev.json": 1}
    path = shop / "query_0_product_id_0.csv"
    text = path.read_text()
    path.write_text(text[:text.rindex("\n", 0, len(text) - 1) + 1])  # drop the last row
    assert len(data.rows("in_domain")) == len(rows) - 1 and counted_reads["query_0_product_id_0.csv"] == 2


def test_column_subsets_are_read_on_their_own_until_the_whole_file_is(shop, counted_reads):
    data = open_dataset(shop)
    assert list(data.rows("zero_shot", ["query", "position"]).columns) == ["query", "position"]
    data.rows("zero_shot", ["query", "position"])
    assert counted_reads["query_1_product_id_1.csv"] == 1


def test_missing_pieces_name_the_file_and_the_fix(shop, tmp_path):
    (shop / "query_1_product_id_1_gt_test.json").unlink()
    with pytest.raises(DataFormatError, match="no query_1_product_id_1_gt_test.json next to this split"):
        open_dataset(shop).companion("zero_shot", "gt_test")
    with pytest.raises(DataFormatError, match="dataset folder not found"):
        open_dataset(tmp_path / "nowhere")
    assert open_dataset(shop, image_root=shop / "images").image_resolver().root == (shop / "images").resolve()


@pytest.mark.slow
def test_a_training_run_reads_each_file_once(shop, tmp_path, counted_reads):
    """Training rows, the feature cache, the dev evaluation at every step and the test protocol on all
    four splits share one Dataset."""
    from gclcore.train import train

    train(data_dir=str(shop), output_dir=str(tmp_path / "run"), batch_size=32, epochs=1, max_steps=2, eval_every=1,
          eval_top_k=20, test_splits="all", progress=False, feature_cache_dir=str(tmp_path / "features"))
    assert counted_reads and set(counted_reads.values()) == {1}, counted_reads
    assert {"query_0_product_id_0.csv", "query_1_product_id_1.csv", "corpus_1.json", "corpus_2.json",
            "query_1_product_id_0_gt_dev.json"} <= set(counted_reads)

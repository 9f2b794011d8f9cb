"""Readers, image resolution, remapping and validation on hand-written fixtures and on the synth shop."""
import csv
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from gclcore import data
from gclcore.data import DataFormatError

SPLIT = "query_0_product_id_0.csv"


def test_split_csv_types_and_quirks(quirks):
    df = data.read_split_csv(quirks / SPLIT)
    assert list(df.columns) == list(data.CSV_COLUMNS)
    assert df["product_id"].tolist() == ["12053970133486540503", "18446744073709551615", "10000000000000000000",
                                         "12053970133486540503", "10000000000000000000"]
    assert df["query_id"].iloc[0] == "18446744073709551615" and df["pair_id"].iloc[0] == "90000000000000000001"
    assert df["title"].iloc[0] == 'Shoe, "red" edition\nwith a newline'
    assert df["query"].iloc[0] == "red shoes, women"
    assert df["title"].iloc[3] == "Tasse à café — «crème» 🫖"
    # "NA", "" and "null" are missing with pandas' defaults, as in the reference evaluation
    assert df["title"].isna().tolist() == [False, True, True, False, True]
    assert df["position"].dtype == np.int64 and df["score_linear"].dtype == np.int64
    assert df["score_reciprocal"].dtype == np.float64


def test_split_csv_matches_pandas_reference(quirks):
    ours = data.read_split_csv(quirks / SPLIT)
    ref = pd.read_csv(quirks / SPLIT, dtype={c: str for c in data.ID_COLUMNS})
    for column in ref.columns:
        assert ours[column].astype(object).where(ours[column].notna(), None).tolist() == \
            ref[column].astype(object).where(ref[column].notna(), None).tolist(), column


def test_split_csv_raw_text_mode(quirks):
    df = data.read_split_csv(quirks / SPLIT, keep_default_na=False)
    assert df["title"].iloc[1] == "NA" and df["title"].iloc[4] == "null" and pd.isna(df["title"].iloc[2])


def test_split_csv_column_subset(quirks):
    df = data.read_split_csv(quirks / SPLIT, columns=["query", "product_id"])
    assert list(df.columns) == ["query", "product_id"] and len(df) == 5


def test_missing_column_names_file_and_column(quirks):
    with pytest.raises(DataFormatError) as err:
        data.read_split_csv(quirks / SPLIT, columns=["query", "no_such"])
    assert SPLIT in str(err.value) and "'no_such'" in str(err.value)
    bad = quirks / "bad.csv"
    bad.write_text("title,position\nx,1\n")
    with pytest.raises(DataFormatError, match="missing required column 'query'"):
        data.read_split_csv(bad)


def test_unparsable_number_names_row_and_column(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text('query,product_id,position\nq,1,1\nq,2,"2, or so"\nq,3,x\n')
    with pytest.raises(DataFormatError) as err:
        data.read_split_csv(path)
    assert err.value.row == 2 and err.value.column == "position" and "2 value(s)" in str(err.value)
    path.write_text("query,product_id,position\nq,1,1.0\nq,2,\n")
    with pytest.raises(DataFormatError, match="missing value") as err:
        data.read_split_csv(path)
    assert err.value.row == 2
    path.write_text("query,product_id,position\nq,1,1.0\nq,2,2\n")
    assert data.read_split_csv(path)["position"].tolist() == [1, 2]


def test_malformed_rows_raise_or_are_counted(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("query,product_id,position\nq,1,1\nq,2,2,extra\nq,3,3\n")
    with pytest.raises(DataFormatError, match="expected 3 fields, found 4"):
        data.read_split_csv(path)
    report = data.CsvReadReport(str(path))
    df = data.read_split_csv(path, on_malformed="skip", report=report)
    assert df["product_id"].tolist() == ["1", "3"]
    assert len(report.malformed_rows) == 1 and "extra" in report.malformed_rows[0][1]


def test_not_a_csv(tmp_path):
    with pytest.raises(DataFormatError, match="file not found"):
        data.read_split_csv(tmp_path / "absent.csv")
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"query,product_id\ntea,0\n" + "caf\xe9,1\n".encode("latin-1") * 3)
    with pytest.raises(DataFormatError, match="(?s)latin1.csv, row at line 3: not UTF-8 text: invalid bytes in "
                                              "'.*tea,0\\\\ncaf\ufffd,1.*fix: re-encode the file as UTF-8"):
        data.read_split_csv(path)
    path.write_bytes("qu\xe9ry,product_id\n".encode("latin-1"))
    with pytest.raises(DataFormatError, match="row the header: not UTF-8 text"):
        data.read_split_csv(path)


def test_a_byte_order_mark_is_not_part_of_the_first_column(quirks, tmp_path):
    path = tmp_path / SPLIT
    path.write_bytes(b"\xef\xbb\xbf" + (quirks / SPLIT).read_bytes())
    pd.testing.assert_frame_equal(data.read_split_csv(path), data.read_split_csv(quirks / SPLIT))


def test_the_first_invalid_utf8_is_found_across_chunk_boundaries(tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes("a\nb\u00e9\u00e9\n".encode() * 5 + b"c\xff\n")  # 2-byte characters cut by 3-byte chunks
    assert data.csv_reader.first_invalid_utf8(path, chunk_bytes=3)[0] == 11
    path.write_bytes("a\nb\u00e9\u00e9\n".encode() * 5)
    assert data.csv_reader.first_invalid_utf8(path, chunk_bytes=3) is None


@pytest.mark.parametrize("value", ["inf", "-inf", "1e999"])
def test_an_infinite_score_is_an_error_naming_row_and_column(quirks, tmp_path, value):
    rows = list(csv.reader(open(quirks / SPLIT, newline="", encoding="utf-8")))
    rows[2][rows[0].index("score_reciprocal")] = value
    with open(tmp_path / SPLIT, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    with pytest.raises(DataFormatError, match="row 2, column 'score_reciprocal': 1 value\\(s\\) are not finite"):
        data.read_split_csv(tmp_path / SPLIT)


def test_corpus_key_order_and_missing_titles(quirks):
    corpus = data.read_corpus(quirks / "corpus_1.json")
    assert corpus["product_id"].tolist() == ["12053970133486540503", "18446744073709551615", "10000000000000000000"]
    assert pd.isna(corpus["title"].iloc[1]) and corpus["title"].iloc[2] == "Tasse à café"
    bad = quirks / "corpus_bad.json"
    bad.write_text('{"1": ["not", "an", "object"]}')
    with pytest.raises(DataFormatError) as err:
        data.read_corpus(bad)
    assert err.value.row == "1"
    bad.write_text('{"1": {"title": "x"},')
    with pytest.raises(DataFormatError, match="invalid JSON at line 1"):
        data.read_corpus(bad)


@pytest.mark.parametrize("name, kind, expected", [
    ("query_0_product_id_0_queries.json", "queries", {"9223372036854775808": "café crème mug"}),
    ("query_0_product_id_0_gt_dev.json", "qrels",
     {"18446744073709551615": {"12053970133486540503": 100.0, "18446744073709551615": 99.0}}),
    ("query_0_product_id_0_gt_test.json", "qrels",
     {"9223372036854775808": {"12053970133486540503": 100.0, "10000000000000000000": 99.0}}),
    ("binary_qrels.json", "binary_qrels",
     {"9223372036854775808": {"12053970133486540503": 1.0, "10000000000000000000": 1.0}}),
])
def test_companion_sniffing(quirks, name, kind, expected):
    found = data.read_companion(quirks / name)
    assert found.kind == kind
    for key, value in expected.items():
        assert found.data[key] == value


def test_companion_unknown_shape_is_described(quirks):
    with pytest.raises(DataFormatError, match=r"unrecognised structure: list of 3 items \(first: int\)"):
        data.read_companion(quirks / "unknown_shape.json")


def test_split_files_pairing(tiny_shop):
    files = data.split_files(tiny_shop, "novel_document")
    assert files.stem == "query_0_product_id_1" and files.corpus.name == "corpus_2.json"
    assert files.gt_dev is not None and files.queries is not None
    assert data.split_files(tiny_shop, "query_1_product_id_0").corpus.name == "corpus_1.json"
    with pytest.raises(ValueError, match="unknown split"):
        data.split_files(tiny_shop, "train")


def test_image_resolver_uses_basename_only(quirks):
    resolver = data.ImageResolver(quirks / "images")
    df = data.read_split_csv(quirks / SPLIT)
    colours = [resolver.open(p).getpixel((4, 4)) for p in df["image_local"].iloc[:3]]
    assert colours[0][0] > 150 and colours[1][1] > 150 and colours[2][2] > 150  # webp red, jpg green, png blue
    assert resolver.resolve("C:\\data\\imgs\\x.webp") == quirks / "images" / "x.webp"
    with pytest.raises(DataFormatError, match="image missing"):
        resolver.open("/MarqoData/none.webp")
    lenient = data.ImageResolver(quirks / "images", missing="placeholder", placeholder_size=4)
    assert lenient.open("/x/none.webp").size == (4, 4) and lenient.open("/x/broken.webp").size == (4, 4)
    assert (lenient.missing_count, lenient.unreadable_count) == (1, 1)


def test_image_load_statuses_are_counted_once_in_the_main_process(quirks, capsys):
    resolver = data.ImageResolver(quirks / "images", missing="placeholder", placeholder_size=4)
    stored = ["/x/none.webp", "/x/broken.webp", float("nan"), ""]
    loaded = [resolver.load(p) for p in stored]  # what a DataLoader worker does: nothing counted yet
    assert [status for _, status in loaded] == [data.ImageStatus.MISSING, data.ImageStatus.UNREADABLE,
                                                data.ImageStatus.MISSING, data.ImageStatus.MISSING]
    assert all(image.getpixel((0, 0)) == data.placeholder(4).getpixel((0, 0)) for image, _ in loaded)
    assert (resolver.missing_count, resolver.unreadable_count) == (0, 0)
    resolver.record_batch(stored, torch.tensor([int(s) for _, s in loaded]))
    assert (resolver.missing_count, resolver.unreadable_count) == (3, 1)
    resolver.warn_placeholders("embedded")
    assert "3 missing and 1 unreadable images" in capsys.readouterr().err
    strict = data.ImageResolver(quirks / "images")
    with pytest.raises(DataFormatError, match="broken.webp.*image unreadable"):
        strict.record_batch(stored[1:2], [data.ImageStatus.UNREADABLE])


def test_an_image_over_the_decompression_bomb_limit_is_unreadable_not_fatal(tmp_path, monkeypatch):
    """Pillow raises DecompressionBombError (not an OSError) past 2x MAX_IMAGE_PIXELS: counted as unreadable."""
    from PIL import Image

    Image.new("RGB", (64, 64), (10, 200, 30)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 = 4096 > 2 x 1000
    resolver = data.ImageResolver(tmp_path, missing="placeholder", placeholder_size=4)
    image, status = resolver.load("/MarqoData/big.png")
    assert status == data.ImageStatus.UNREADABLE and image.size == (4, 4)
    assert data.decode_image((tmp_path / "big.png").read_bytes())[1] == data.ImageStatus.UNREADABLE


@pytest.mark.parametrize("dtype, name, values, expected", [
    (np.uint16, "deep.png", [[0, 65535], [32768, 257]], [[0, 255], [128, 1]]),   # a 16-bit greyscale PNG (I;16)
    (np.int32, "deep.tif", [[0, 65535], [1000, 30000]], [[0, 255], [4, 117]]),   # a 32-bit integer TIFF (I)
])
def test_16_bit_greyscale_is_scaled_not_clipped_to_white(tmp_path, dtype, name, values, expected):
    from PIL import Image

    Image.fromarray(np.array(values, dtype=dtype)).save(tmp_path / name)
    with Image.open(tmp_path / name) as raw:
        assert raw.mode.startswith("I") and np.asarray(raw.convert("RGB")).max() == 255  # Pillow alone clips
    image, status = data.ImageResolver(tmp_path).load(name)
    assert status == data.ImageStatus.OK and image.mode == "RGB"
    assert np.asarray(image)[..., 0].tolist() == expected


def test_the_split_rule_lives_in_one_place():
    assert data.split_halves("query_1_product_id_0") == (1, 0, "corpus_1.json")
    assert data.split_halves("zero_shot") == (1, 1, "corpus_2.json")
    assert [data.split_stem(*data.split_halves(s)[:2]) for s in data.SPLIT_STEMS] == list(data.SPLIT_STEMS)
    assert data.canonical_stem("novel_document") == "query_0_product_id_1"
    with pytest.raises(ValueError, match="unknown split 'train'"):
        data.split_halves("train")


def test_remap_images_rewrites_only_paths(quirks, tmp_path):
    before = list(csv.reader(open(quirks / SPLIT, newline="", encoding="utf-8")))
    done = data.remap_images(quirks, tmp_path / "imgs")
    assert done[str(quirks / SPLIT)] == 5 and done[str(quirks / "corpus_1.json")] == 3
    after = list(csv.reader(open(quirks / SPLIT, newline="", encoding="utf-8")))
    col = before[0].index("image_local")
    for old, new in zip(before[1:], after[1:]):
        assert new[col] == str((tmp_path / "imgs").resolve() / old[col].rsplit("/", 1)[1])
        assert new[:col] + new[col + 1:] == old[:col] + old[col + 1:]  # ids and titles byte-identical
    corpus = json.loads((quirks / "corpus_1.json").read_text())
    assert list(corpus) == ["12053970133486540503", "18446744073709551615", "10000000000000000000"]
    assert corpus["10000000000000000000"]["image_local"].endswith("imgs/c3.png")


def test_remap_is_atomic_when_interrupted(quirks, monkeypatch):
    original = (quirks / SPLIT).read_bytes()
    calls = {"n": 0}
    real_writer = csv.writer

    class Exploding:
        def __init__(self, *a, **k):
            self.inner = real_writer(*a, **k)

        def writerow(self, row):
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt
            self.inner.writerow(row)

    monkeypatch.setattr(data.remap.csv, "writer", Exploding)
    with pytest.raises(KeyboardInterrupt):
        data.remap_csv_images(quirks / SPLIT, "/new")
    assert (quirks / SPLIT).read_bytes() == original
    assert not [p for p in quirks.iterdir() if p.name.endswith(".tmp")]


def test_validate_clean_shop(tiny_shop):
    report = data.validate(tiny_shop, tiny_shop / "images", progress=False)
    assert report.ok, report.render()
    assert report.stats["images"]["missing"] == 0 and report.stats["images"]["decoded"] > 0
    assert sum(report.stats[s]["rows"] for s in data.SPLIT_STEMS) == \
        len(pd.read_csv(tiny_shop / "ranked.csv"))


def test_validate_reports_every_problem(tiny_shop, tmp_path):
    broken = shutil.copytree(tiny_shop, tmp_path / "broken")
    path = broken / SPLIT
    rows = list(csv.reader(open(path, newline="", encoding="utf-8")))
    header = rows[0]
    rows.append(list(rows[1]))                                   # duplicate pair -> last data row
    rows[2][header.index("product_id")] = "99999999999999999999"  # absent from corpus_1 (data row 2)
    rows[3][header.index("score_linear")] = "250"                 # out of range (data row 3)
    rows[4][header.index("position")] = "first"                   # unparsable (data row 4)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    first_image = next((broken / "images").iterdir())
    first_image.unlink()
    (broken / "images" / "junk.webp").write_bytes(b"nope")
    report = data.validate(broken, broken / "images", progress=False)
    found = {f.check: f for f in report.findings}
    assert not report.ok
    assert found["duplicate (query, product) pairs"].first_row == len(rows) - 1
    assert found["products absent from corpus_1.json"].first_row == 2
    assert found["values out of range"].first_row == 3 and found["values out of range"].column == "score_linear"
    assert found["unparsable numbers"].first_row == 4 and found["unparsable numbers"].column == "position"
    assert found["missing images"].count == 1 and first_image.name in found["missing images"].example
    assert data.main(["validate", str(broken), "--image-root", str(broken / "images")]) == 1


def test_validate_unreadable_images(quirks):
    (quirks / "query_0_product_id_0.csv").write_text(
        (quirks / SPLIT).read_text().replace("a1.webp", "broken.webp", 1))
    report = data.validate(quirks, quirks / "images", progress=False)
    found = {f.check: f for f in report.findings}
    assert found["unreadable images"].count == 1
    assert "split CSV absent" in found  # only one of the four splits is in the fixture


def test_parquet_layout_round_trip(quirks, tmp_path):
    frame = data.read_split_csv(quirks / SPLIT)
    resolver = data.ImageResolver(quirks / "images")
    out = tmp_path / "hf" / "data" / "in_domain-00000-of-00001.parquet"
    data.write_parquet_split(frame, resolver, out, row_group_size=2)
    split = data.ParquetSplit(tmp_path / "hf", "query_0_product_id_0")
    assert len(split) == 5 and split.columns[0] == "image" and "image_local" not in split.columns
    loaded = split.frame()
    assert loaded["product_id"].tolist() == frame["product_id"].tolist()
    assert loaded["title"].iloc[0] == frame["title"].iloc[0] and pd.isna(loaded["title"].iloc[1])
    for row in (4, 0, 1, 2):
        assert np.array_equal(np.asarray(split.image(row)), np.asarray(resolver.open(frame["image_local"].iloc[row])))
    assert split._cached[0] == 1  # row 2 sits in the second row group: only that group is held
    with pytest.raises(IndexError):
        split.image(5)


def test_parquet_uint64_ids_and_folder_layouts(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"query": ["q"], "product_id": pa.array([18446744073709551615], pa.uint64()),
                      "position": [1], "title": [None]})
    for layout in ("novel_query/part-0.parquet", "default/novel_query/0000.parquet", "novel-query/x.parquet"):
        root = tmp_path / layout.split("/")[0]
        (root / layout).parent.mkdir(parents=True)
        pq.write_table(table, root / layout)
        frame = data.ParquetSplit(root, "novel_query").frame()
        assert frame["product_id"].iloc[0] == "18446744073709551615"
    with pytest.raises(DataFormatError, match="no parquet shards for split 'zero_shot'"):
        data.parquet_split_files(tmp_path, "zero_shot")


def test_cli_to_parquet(tiny_shop, tmp_path):
    assert data.main(["to-parquet", str(tiny_shop), str(tmp_path / "hf"), "--image-root",
                      str(tiny_shop / "images")]) == 0
    split = data.ParquetSplit(tmp_path / "hf", "zero_shot")
    csv_rows = data.read_split_csv(tiny_shop / "query_1_product_id_1.csv")
    assert len(split) == len(csv_rows) and split.image(0).size == (48, 48)


def test_atomic_write_gives_new_files_normal_permissions(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        with data.atomic_write(tmp_path / "new.txt") as fh:
            fh.write("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o644

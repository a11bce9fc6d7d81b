"""seqrec-json loader: small fixtures written in tmp_path, with and without the item file, and
malformed files (the error must name the file and the offending key)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from onerec.data import (TEST, TRAIN, VALID, SeqRecFormatError, build_item_embeddings,
                         build_pathways, load_dataset)

SEQS = {"10": [5, 7, 9, 7], "2": [7, 3, 5], "4": [9, 11]}
META = {"3": {"title": "Red lipstick", "brand": "Acme", "categories": "Beauty,Makeup"},
        "5": {"title": "", "description": "A soft brush", "categories": ""},
        "7": {"brand": "Acme"},
        "9": {"title": "Shampoo", "categories": "Beauty,Hair"},
        "11": {},
        "42": {"title": "Never bought", "categories": "Hair"}}


def _write(folder, name="beauty", seqs=SEQS, meta=META):
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.inter.json").write_text(json.dumps(seqs))
    if meta is not None:
        (folder / f"{name}.item.json").write_text(json.dumps(meta))
    return folder


def test_reads_sequences_split_and_item_text(tmp_path):
    ds = load_dataset(f"seqrec-json:{_write(tmp_path / 'd')}")
    assert ds.name == "seqrec-json:beauty"
    assert ds.items.has_content
    np.testing.assert_array_equal(ds.users.ids, [2, 4, 10])
    np.testing.assert_array_equal(ds.items.ids, [3, 5, 7, 9, 11, 42])  # 42: cold, item file only
    inter = ds.interactions
    orig = ds.items.ids[inter.item]
    # user 2 (dense 0): 7 3 5; user 4 (dense 1): 9 11; user 10 (dense 2): 5 7 9 7 (a repeat).
    np.testing.assert_array_equal(orig, [7, 3, 5, 9, 11, 5, 7, 9, 7])
    np.testing.assert_array_equal(inter.timestamp, [0, 1, 2, 0, 1, 0, 1, 2, 3])
    np.testing.assert_array_equal(ds.split.role,
                                  [TRAIN, VALID, TEST, TRAIN, TRAIN, TRAIN, TRAIN, VALID, TEST])
    users, items, _ = ds.targets("test")
    np.testing.assert_array_equal(ds.users.ids[users], [2, 10])
    np.testing.assert_array_equal(ds.items.ids[items], [5, 7])
    title = dict(zip(ds.items.ids.tolist(), ds.items.titles))
    assert title[3] == "Red lipstick Acme" and title[5] == "A soft brush" and title[11] == ""
    assert ds.items.genre_names == ["Beauty", "Hair", "Makeup"]  # by frequency, then name
    g = dict(zip(ds.items.ids.tolist(), ds.items.genres.tolist()))
    assert g[3] == [1, 0, 1] and g[9] == [1, 1, 0] and g[42] == [0, 1, 0] and g[5] == [0, 0, 0]
    brand = dict(zip(ds.items.ids.tolist(), ds.items.categorical[:, 0].tolist()))
    assert brand[3] == brand[7] == 1 and brand[9] == 0 and ds.items.categorical_cardinalities == [2]
    # the pathway builder sees the position as time: the test target's history is everything before
    paths = build_pathways(ds, users, ds.interactions.timestamp[ds.split.test])
    np.testing.assert_array_equal(ds.items.ids[paths.lifelong.row(1).numpy()], [5, 7, 9])


def test_without_item_file_embeddings_are_collaborative(tmp_path):
    rng = np.random.default_rng(0)
    seqs = {str(u): rng.integers(0, 30, size=12).tolist() for u in range(40)}
    ds = load_dataset(f"seqrec-json:{_write(tmp_path / 'd', seqs=seqs, meta=None)}")
    assert not ds.items.has_content and ds.items.genres.shape[1] == 0
    assert all(t == "" for t in ds.items.titles)
    emb, report = build_item_embeddings(ds, dim=8, steps=5)
    assert report["fusion"] == "collaborative" and "content" not in report["recall@10"]
    assert emb.shape == (ds.num_items, 8) and np.isfinite(emb).all()
    with pytest.raises(ValueError, match="no item content"):
        build_item_embeddings(ds, dim=8, fusion="content")


@pytest.mark.parametrize("seqs, meta, file, key", [
    ({"1": [1, 2], "x7": [3]}, None, "inter", "'x7'"),
    ({"1": [1, 2], "-3": [3]}, None, "inter", "'-3'"),
    ({"1": [1, 2], "5": "3 4"}, None, "inter", "'5'"),
    ({"1": [1, -2]}, None, "inter", "'1'"),
    ({"1": [1, 2.5]}, None, "inter", "'1'"),
    ({"1": [1, True]}, None, "inter", "'1'"),
    ({"1": [1], "01": [2]}, None, "inter", "user id 1"),
    ([[1, 2]], None, "inter", "top level"),
    ({"1": [1, 2]}, {"1": {"title": 3}}, "item", "'1'"),
    ({"1": [1, 2]}, {"2": ["title"]}, "item", "'2'"),
    ({"1": [1, 2]}, {"abc": {}}, "item", "'abc'"),
    ({"1": [1, 2]}, {"1": {"categories": ["a", 2]}}, "item", "'1'"),
])
def test_malformed_files_name_file_and_key(tmp_path, seqs, meta, file, key):
    folder = _write(tmp_path / "d", seqs=seqs, meta=meta)
    with pytest.raises(SeqRecFormatError) as err:
        load_dataset(f"seqrec-json:{folder}")
    assert f"beauty.{file}.json" in str(err.value) and key in str(err.value)


def test_bad_json_and_missing_files(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "x.inter.json").write_text("{\"1\": [1, 2]")
    with pytest.raises(SeqRecFormatError, match="x.inter.json"):
        load_dataset(f"seqrec-json:{folder}")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(f"seqrec-json:{tmp_path / 'nope'}")
    (folder / "y.inter.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="exactly one"):
        load_dataset(f"seqrec-json:{folder}")
    with pytest.raises(ValueError, match="needs a folder"):
        load_dataset("seqrec-json:")
    with pytest.raises(TypeError, match="unknown option"):
        load_dataset(f"seqrec-json:{folder}", ties="keep")

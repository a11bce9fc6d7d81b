"""MovieLens-100K loader: counts and mapping on the real files, split, malformed-file errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onerec.data import (DROPPED, TEST, TRAIN, VALID, MovieLensFormatError, load_dataset,
                         load_movielens_100k)

GENRE_FLAGS = "|".join(["0"] * 19)


def test_counts(ml100k):
    assert (ml100k.num_users, ml100k.num_items, ml100k.num_interactions) == (943, 1682, 100000)
    assert ml100k.items.genres.shape == (1682, 19)
    assert ml100k.items.genre_names[0] == "unknown" and ml100k.items.genre_names[-1] == "Western"
    assert ml100k.users.cardinalities[2] == 21  # occupations from u.occupation


def test_mapping(ml100k):
    items, users, inter = ml100k.items, ml100k.users, ml100k.interactions
    toy = int(np.flatnonzero(items.ids == 1)[0])
    assert items.titles[toy] == "Toy Story"  # year stripped into the decade categorical
    assert {items.genre_names[g] for g in np.flatnonzero(items.genres[toy])} == {
        "Animation", "Children's", "Comedy"}
    assert items.categorical[toy, 0] == (1995 - 1910) // 10 + 1
    assert any("é" in t for t in items.titles)  # latin-1 decoding
    u1 = int(np.flatnonzero(users.ids == 1)[0])  # 1|24|M|technician|85711
    assert list(users.features[u1, :2]) == [1, 0] and users.features[u1, 3] == 8
    rating = inter.signals["rating"]
    assert set(np.unique(rating)) == {1, 2, 3, 4, 5}
    np.testing.assert_allclose(inter.engagement, rating / 5)
    np.testing.assert_array_equal(inter.positive, rating >= 4)
    # u.data line 1: 196 242 3 881250949
    u, i = np.flatnonzero(users.ids == 196)[0], np.flatnonzero(items.ids == 242)[0]
    row = np.flatnonzero((inter.user == u) & (inter.item == i))
    assert row.size == 1 and rating[row[0]] == 3 and inter.timestamp[row[0]] == 881250949


def _check_split(ds, strict: bool):
    inter, role, off = ds.interactions, ds.split.role, ds.user_offsets
    for u in range(ds.num_users):
        ts, r = inter.timestamp[off[u]:off[u + 1]], role[off[u]:off[u + 1]]
        assert list(r[-2:]) == [VALID, TEST]  # every ML user has >= 20 ratings
        train_ts = ts[r == TRAIN]
        assert train_ts.size > 0
        if strict:
            assert train_ts.max() < ts[-2] <= ts[-1]
        else:
            assert train_ts.max() <= ts[-2] <= ts[-1]
    assert ds.split.valid.size == ds.split.test.size == ds.num_users


def test_split_drops_same_second_ties(ml100k):
    _check_split(ml100k, strict=True)
    dropped = ml100k.split.num_dropped
    assert 0 < dropped < 0.05 * ml100k.num_interactions  # ties exist but are rare


def test_split_keep_ties(ml100k, ml100k_path):
    kept = load_dataset(f"ml-100k:{ml100k_path}", ties="keep")
    _check_split(kept, strict=False)
    assert DROPPED not in kept.split.role
    assert kept.split.train.size == ml100k.split.train.size + ml100k.split.num_dropped


def test_positive_threshold_option(ml100k_path):
    ds = load_dataset(f"ml-100k:{ml100k_path}", positive_threshold=5)
    np.testing.assert_array_equal(ds.interactions.positive, ds.interactions.signals["rating"] == 5)


# ---- malformed files: a tiny hand-written copy, corrupted one line at a time -------------------
def _write_tiny(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "u.item").write_bytes(
        (f"1|Toy Story (1995)|01-Jan-1995||http://x|{GENRE_FLAGS}\n"
         f"2|Les Misérables (1995)|01-Jan-1995||http://y|{GENRE_FLAGS}\n"
         f"3|unknown||||{GENRE_FLAGS}\n").encode("latin-1"))
    (root / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|T8H1N\n")
    (root / "u.data").write_text("1\t1\t5\t100\n1\t2\t3\t90\n2\t3\t4\t50\n1\t3\t1\t100\n")


def test_tiny_copy_loads(tmp_path):
    _write_tiny(tmp_path)
    ds = load_movielens_100k(tmp_path)
    assert (ds.num_users, ds.num_items, ds.num_interactions) == (2, 3, 4)
    assert ds.items.titles[1] == "Les Misérables"
    assert ds.items.categorical[2, 0] == 0  # unknown year
    assert ds.users.features[1, 3] == 10  # non-numeric zip
    # user 1: times 90, 100, 100 -> sorted by (time, item): items 2, 1, 3
    assert list(ds.interactions.item[:3]) == [1, 0, 2]


@pytest.mark.parametrize("fname, line_no, bad_line, words", [
    ("u.data", 2, "1\t2\tx\t90", "rating"),
    ("u.data", 3, "2\t3\t4", "4 tab-separated"),
    ("u.data", 1, "1\t9\t5\t100", "item id 9"),
    ("u.data", 4, "7\t3\t1\t100", "user id 7"),
    ("u.data", 2, "1\t2\t6\t90", "1..5"),
    ("u.item", 2, "2|Broken title|01-Jan-1995", "fields"),
    ("u.item", 3, f"3|x||||{GENRE_FLAGS[:-1]}2", "genre flags"),
    ("u.item", 1, f"one|Toy Story (1995)|01-Jan-1995||http://x|{GENRE_FLAGS}", "movie id"),
    ("u.user", 2, "2|fifty|F|other|T8H1N", "age"),
    ("u.user", 1, "1|24|X|technician|85711", "gender"),
])
def test_malformed_files_name_file_and_line(tmp_path, fname, line_no, bad_line, words):
    _write_tiny(tmp_path)
    path = tmp_path / fname
    lines = path.read_bytes().decode("latin-1").splitlines()
    lines[line_no - 1] = bad_line
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    with pytest.raises(MovieLensFormatError, match=words) as info:
        load_dataset(f"ml-100k:{tmp_path}")
    assert f"{fname}:{line_no}:" in str(info.value)


def test_missing_file_and_folder(tmp_path):
    _write_tiny(tmp_path)
    (tmp_path / "u.user").unlink()
    with pytest.raises(FileNotFoundError, match="u.user"):
        load_dataset(f"ml-100k:{tmp_path}")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_dataset(f"ml-100k:{tmp_path / 'nope'}")


def test_bad_options(tmp_path):
    _write_tiny(tmp_path)
    with pytest.raises(ValueError, match="positive_threshold"):
        load_dataset(f"ml-100k:{tmp_path}", positive_threshold=7)
    with pytest.raises(ValueError, match="ties"):
        load_dataset(f"ml-100k:{tmp_path}", ties="maybe")
    with pytest.raises(TypeError, match="num_users"):
        load_dataset(f"ml-100k:{tmp_path}", num_users=3)

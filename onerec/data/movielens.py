"""MovieLens-100K loader (`u.data`, `u.item`, `u.user`; `u.genre`, `u.occupation` when present).

Mapping onto the dataset schema:
- interactions: rating 1..5 -> signal `rating`, engagement = rating / 5, positive = rating >=
  `positive_threshold` (default 4); timestamps are unix seconds (many ties within a second).
- items: title without the trailing "(year)" -> text; 19 genre flags -> genres; release decade
  -> categorical `decade` (0 = unknown).
- users: age bucket (MovieLens-1M style), gender, occupation, first zip digit (10 = non-numeric
  zip) -> categorical profile; age (standardized) -> numeric.

Every malformed line raises `MovieLensFormatError` naming the file and the 1-based line number;
the files are parsed line by line for exactly that reason (100k lines take ~0.2 s).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .dataset import Dataset, Interactions, Items, Users

DEFAULT_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                  "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                  "Romance", "Sci-Fi", "Thriller", "War", "Western"]
AGE_EDGES = np.array([18, 25, 35, 45, 50, 56])  # buckets <18, 18-24, ..., 56+
ENCODING = "latin-1"
_YEAR = re.compile(r"\s*\((\d{4})\)\s*$")
_DATE_YEAR = re.compile(r"(\d{4})\s*$")
FIRST_DECADE, NUM_DECADES = 1910, 10  # 1910s..2000s, bucket 0 = unknown/older


class MovieLensFormatError(ValueError):
    """A MovieLens file is malformed; the message names the file and the line."""


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"ml-100k: required file {path} is missing")
    try:
        text = path.read_bytes().decode(ENCODING)
    except OSError as exc:  # pragma: no cover - permissions etc.
        raise MovieLensFormatError(f"{path}: cannot read ({exc})") from exc
    return text.splitlines()


def _records(path: Path, sep: str, n_fields: int, what: str):
    """(line number, fields) of each non-blank line of a MovieLens file; a line with another
    field count is an error naming the file and line."""
    sep_name = "tab" if sep == "\t" else repr(sep)
    for lineno, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        parts = line.split(sep)
        if len(parts) != n_fields:
            raise MovieLensFormatError(f"{path}:{lineno}: expected {n_fields} {sep_name}-separated "
                                       f"fields ({what}), got {len(parts)}")
        yield lineno, parts


def _int(path: Path, lineno: int, field: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise MovieLensFormatError(
            f"{path}:{lineno}: field {field!r} must be an integer, got {value!r}") from None


def _read_genre_names(root: Path) -> list[str]:
    path = root / "u.genre"
    if not path.is_file():
        return list(DEFAULT_GENRES)
    names: dict[int, str] = {}
    for lineno, parts in _records(path, "|", 2, "name, index"):
        names[_int(path, lineno, "index", parts[1])] = parts[0]
    if sorted(names) != list(range(len(names))):
        raise MovieLensFormatError(f"{path}: genre indices must be 0..{len(names) - 1}, "
                                   f"got {sorted(names)}")
    return [names[i] for i in range(len(names))]


def _read_items(root: Path, genre_names: list[str]) -> tuple[Items, dict[int, int]]:
    path = root / "u.item"
    g = len(genre_names)
    n_fields = 5 + g
    ids, titles, decades, genre_rows = [], [], [], []
    what = f"id, title, dates, url, {g} genre flags"
    for lineno, parts in _records(path, "|", n_fields, what):
        ids.append(_int(path, lineno, "movie id", parts[0]))
        flags = parts[5:]
        if any(f not in ("0", "1") for f in flags):
            raise MovieLensFormatError(f"{path}:{lineno}: genre flags must be 0 or 1, got {flags}")
        genre_rows.append([f == "1" for f in flags])
        m = _YEAR.search(parts[1])
        titles.append(_YEAR.sub("", parts[1]).strip() if m else parts[1].strip())
        year = int(m.group(1)) if m else None
        if year is None:
            dm = _DATE_YEAR.search(parts[2])
            year = int(dm.group(1)) if dm else None
        decades.append(0 if year is None or year < FIRST_DECADE
                       else min((year - FIRST_DECADE) // 10 + 1, NUM_DECADES))
    index = {mid: i for i, mid in enumerate(ids)}
    if len(index) != len(ids):
        dup = next(m for m in ids if ids.count(m) > 1)
        raise MovieLensFormatError(f"{path}: movie id {dup} appears more than once")
    items = Items(
        ids=np.asarray(ids, dtype=np.int64), titles=titles,
        genres=np.asarray(genre_rows, dtype=np.float32).reshape(len(ids), g),
        genre_names=genre_names,
        categorical=np.asarray(decades, dtype=np.int64).reshape(len(ids), 1),
        categorical_names=["decade"], categorical_cardinalities=[NUM_DECADES + 1],
    )
    return items, index


def _read_users(root: Path) -> tuple[Users, dict[int, int]]:
    path = root / "u.user"
    occ_path = root / "u.occupation"
    occupations = [o.strip() for o in _lines(occ_path) if o.strip()] if occ_path.is_file() else None
    rows = []
    for lineno, parts in _records(path, "|", 5, "id, age, gender, occupation, zip"):
        uid = _int(path, lineno, "user id", parts[0])
        age = _int(path, lineno, "age", parts[1])
        if parts[2] not in ("M", "F"):
            raise MovieLensFormatError(f"{path}:{lineno}: gender must be M or F, got {parts[2]!r}")
        if occupations is not None and parts[3] not in occupations:
            raise MovieLensFormatError(f"{path}:{lineno}: occupation {parts[3]!r} is not listed "
                                       f"in {occ_path}")
        rows.append((uid, age, parts[2], parts[3], parts[4]))
    if occupations is None:
        occupations = sorted({r[3] for r in rows})
    occ_index = {o: i for i, o in enumerate(occupations)}
    ids = [r[0] for r in rows]
    index = {uid: i for i, uid in enumerate(ids)}
    if len(index) != len(ids):
        raise MovieLensFormatError(f"{path}: duplicate user ids")
    age = np.asarray([r[1] for r in rows], dtype=np.float64)
    zip_region = [int(r[4][0]) if r[4][:1].isdigit() else 10 for r in rows]
    features = np.stack([
        np.searchsorted(AGE_EDGES, age, side="right"),
        np.asarray([r[2] == "F" for r in rows], dtype=np.int64),
        np.asarray([occ_index[r[3]] for r in rows], dtype=np.int64),
        np.asarray(zip_region, dtype=np.int64),
    ], axis=1).astype(np.int64).reshape(len(rows), 4)
    users = Users(
        ids=np.asarray(ids, dtype=np.int64), features=features,
        feature_names=["age_bucket", "gender", "occupation", "zip_region"],
        cardinalities=[len(AGE_EDGES) + 1, 2, len(occupations), 11],
        numeric=((age - age.mean()) / max(age.std(), 1e-6)).astype(np.float32).reshape(-1, 1)
        if rows else np.zeros((0, 1), np.float32),
        numeric_names=["age"],
    )
    return users, index


def _read_ratings(root: Path, user_index: dict[int, int], item_index: dict[int, int]):
    path = root / "u.data"
    users, items, ratings, stamps = [], [], [], []
    for lineno, parts in _records(path, "\t", 4, "user, item, rating, timestamp"):
        u = _int(path, lineno, "user id", parts[0])
        i = _int(path, lineno, "item id", parts[1])
        r = _int(path, lineno, "rating", parts[2])
        t = _int(path, lineno, "timestamp", parts[3])
        if u not in user_index:
            raise MovieLensFormatError(f"{path}:{lineno}: user id {u} is not in u.user")
        if i not in item_index:
            raise MovieLensFormatError(f"{path}:{lineno}: item id {i} is not in u.item")
        if not 1 <= r <= 5:
            raise MovieLensFormatError(f"{path}:{lineno}: rating must be in 1..5, got {r}")
        users.append(user_index[u])
        items.append(item_index[i])
        ratings.append(r)
        stamps.append(t)
    if not users:  # an empty catalogue of ratings would "succeed" with nothing to learn or score
        raise MovieLensFormatError(f"{path}: no ratings (the file is empty)")
    return (np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64),
            np.asarray(ratings, dtype=np.float32), np.asarray(stamps, dtype=np.int64))


def load_movielens_100k(path: str | Path, *, positive_threshold: int = 4,
                        ties: str = "drop") -> Dataset:
    """Load MovieLens-100K from the folder `path` (see the module docstring for the mapping).

    positive_threshold: ratings >= this are positive feedback (1..5).
    ties: split tie policy (see `Split`)."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"ml-100k: {root} is not a directory (expected the folder "
                                f"holding u.data, u.item, u.user)")
    if isinstance(positive_threshold, bool) or not isinstance(positive_threshold, int) \
            or not 1 <= positive_threshold <= 5:
        raise ValueError(f"ml-100k: positive_threshold must be an int in 1..5, "
                         f"got {positive_threshold!r}")
    genre_names = _read_genre_names(root)
    items, item_index = _read_items(root, genre_names)
    users, user_index = _read_users(root)
    u, i, r, t = _read_ratings(root, user_index, item_index)
    inter = Interactions(user=u, item=i, timestamp=t, engagement=(r / 5.0).astype(np.float32),
                         positive=r >= positive_threshold, signals={"rating": r})
    return Dataset(name="ml-100k", items=items, users=users, interactions=inter.sorted(), ties=ties)

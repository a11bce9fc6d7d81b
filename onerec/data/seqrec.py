"""Loader for the item-sequence JSON format of the public generative-recommendation benchmarks.

    DIR/<name>.inter.json  {"<user id>": [item id, ...oldest first], ...}
    DIR/<name>.item.json   {"<item id>": {"title": str, "description": str, "brand": str,
                                          "categories": "a,b,c"}, ...}      (optional)

Ids are non-negative integers (JSON keys are strings of digits). There are no timestamps: the
position in the sequence is the time stamp, so the chronological leave-one-out split is the
standard one (last item = test, the one before = validation).

Mapping onto the dataset schema:
- interactions: timestamp = position (0, 1, ...), engagement 1.0, every event positive (the
  format only lists consumed items), no extra signals.
- items: the catalogue is every id seen in either file (item-file entries never interacted with
  are cold items), dense ids in ascending original-id order. Text = title, brand and
  description joined (feeds the hashed TF-IDF content side); categories -> genre multi-hot
  (the `max_categories` most frequent); brand -> categorical `brand` (0 = none).
- users: no profile in this format (zero static features).
- without the item file, `Items.has_content` is False and `build_item_embeddings` uses the
  collaborative side alone.

Every malformed entry raises `SeqRecFormatError` naming the file and the offending key.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from .dataset import Dataset, Interactions, Items, Users

INTER_SUFFIX = ".inter.json"
ITEM_SUFFIX = ".item.json"
TEXT_FIELDS = ("title", "brand", "description")
ITEM_FIELDS = TEXT_FIELDS + ("categories",)


class SeqRecFormatError(ValueError):
    """A seqrec-json file is malformed; the message names the file and the offending key."""


def _read_json_object(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise SeqRecFormatError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise SeqRecFormatError(f"{path}: top level must be a JSON object "
                                f"{{id: ...}}, got {type(data).__name__}")
    return data


def _parse_id(path: Path, key: str, what: str) -> int:
    if not (isinstance(key, str) and key.isascii() and key.isdigit()):
        raise SeqRecFormatError(f"{path}: key {key!r} is not a non-negative integer {what} id")
    return int(key)


def _is_id(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def find_files(folder: str | Path) -> tuple[str, Path, Path | None]:
    """(name, inter file, item file or None) of a seqrec-json folder: exactly one
    `<name>.inter.json` must be there."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"seqrec-json: folder {folder} does not exist")
    inters = sorted(folder.glob("*" + INTER_SUFFIX))
    if len(inters) != 1:
        found = [p.name for p in inters]
        raise FileNotFoundError(f"seqrec-json: {folder} must hold exactly one "
                                f"'<name>{INTER_SUFFIX}', found {found or 'none'}")
    name = inters[0].name[:-len(INTER_SUFFIX)]
    item = folder / (name + ITEM_SUFFIX)
    return name, inters[0], (item if item.is_file() else None)


def _read_sequences(path: Path) -> tuple[list[int], list[list[int]]]:
    data = _read_json_object(path)
    users, seqs = [], []
    for key, seq in data.items():
        users.append(_parse_id(path, key, "user"))
        if not isinstance(seq, list):
            raise SeqRecFormatError(f"{path}: user {key!r}: value must be a list of item ids, "
                                    f"got {type(seq).__name__}")
        for pos, v in enumerate(seq):
            if not _is_id(v):
                raise SeqRecFormatError(f"{path}: user {key!r}: entry {pos} ({v!r}) is not a "
                                        f"non-negative integer item id")
        seqs.append(seq)
    if len(set(users)) != len(users):  # "1" and "01" are the same user
        dup = [k for k, c in Counter(users).items() if c > 1][0]
        raise SeqRecFormatError(f"{path}: user id {dup} appears more than once")
    return users, seqs


def _read_items(path: Path) -> dict[int, dict]:
    data = _read_json_object(path)
    out: dict[int, dict] = {}
    for key, meta in data.items():
        iid = _parse_id(path, key, "item")
        if iid in out:
            raise SeqRecFormatError(f"{path}: item id {iid} appears more than once (key {key!r})")
        if meta is None:
            meta = {}
        if not isinstance(meta, dict):
            raise SeqRecFormatError(f"{path}: item {key!r}: value must be an object with fields "
                                    f"{list(ITEM_FIELDS)}, got {type(meta).__name__}")
        clean = {}
        for fld in ITEM_FIELDS:
            v = meta.get(fld)
            if v is None:
                v = ""
            if fld == "categories" and isinstance(v, list):  # some dumps store a list already
                if not all(isinstance(c, str) for c in v):
                    raise SeqRecFormatError(f"{path}: item {key!r}: field 'categories' must be "
                                            f"a string 'a,b,c' or a list of strings")
                v = ",".join(v)
            if not isinstance(v, str):
                raise SeqRecFormatError(f"{path}: item {key!r}: field {fld!r} must be a string, "
                                        f"got {type(v).__name__}")
            clean[fld] = v.strip()
        out[iid] = clean
    return out


def load_seqrec_json(folder: str | Path, *, max_categories: int = 512) -> Dataset:
    """Dataset from a seqrec-json folder (see the module docstring)."""
    if isinstance(max_categories, bool) or not isinstance(max_categories, int) \
            or max_categories < 0:
        raise ValueError(f"seqrec-json: max_categories must be an int >= 0, got {max_categories!r}")
    name, inter_path, item_path = find_files(folder)
    user_ids, seqs = _read_sequences(inter_path)
    meta = _read_items(item_path) if item_path is not None else {}

    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    flat = np.fromiter((v for s in seqs for v in s), dtype=np.int64, count=int(lengths.sum()))
    item_ids = np.union1d(np.unique(flat), np.fromiter(meta.keys(), dtype=np.int64,
                                                       count=len(meta)))
    order = np.argsort(np.asarray(user_ids, dtype=np.int64), kind="stable")
    user_sorted = np.asarray(user_ids, dtype=np.int64)[order]
    dense_user = np.empty(len(user_ids), dtype=np.int64)
    dense_user[order] = np.arange(len(user_ids))

    n = flat.shape[0]
    user = np.repeat(dense_user, lengths)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    interactions = Interactions(
        user=user, item=np.searchsorted(item_ids, flat).astype(np.int64),
        timestamp=(np.arange(n, dtype=np.int64) - starts),
        engagement=np.ones(n, dtype=np.float32), positive=np.ones(n, dtype=bool))

    num_items = item_ids.shape[0]
    rows = [meta.get(int(i), {}) for i in item_ids]
    titles = [" ".join(r.get(f, "") for f in TEXT_FIELDS if r.get(f)) for r in rows]
    cats = [[c.strip() for c in r.get("categories", "").split(",") if c.strip()] for r in rows]
    freq = Counter(c for cs in cats for c in set(cs))
    # Most frequent first, ties by name: deterministic column order.
    genre_names = [c for c, _ in sorted(freq.items(), key=lambda kv: (-kv[1], kv[0]))
                   ][:max_categories]
    col = {c: j for j, c in enumerate(genre_names)}
    genres = np.zeros((num_items, len(genre_names)), dtype=np.float32)
    for i, cs in enumerate(cats):
        for c in cs:
            if c in col:
                genres[i, col[c]] = 1.0
    brands = sorted({r["brand"] for r in rows if r.get("brand")})
    brand_of = {b: j + 1 for j, b in enumerate(brands)}
    brand = np.array([brand_of.get(r.get("brand", ""), 0) for r in rows], dtype=np.int64)
    items = Items(ids=item_ids, titles=titles, genres=genres, genre_names=genre_names,
                  categorical=brand[:, None], categorical_names=["brand"],
                  categorical_cardinalities=[len(brands) + 1],
                  has_content=item_path is not None)
    users = Users(ids=user_sorted, features=np.zeros((len(user_ids), 0), dtype=np.int64),
                  feature_names=[], cardinalities=[],
                  numeric=np.zeros((len(user_ids), 0), dtype=np.float32), numeric_names=[])
    # Positions are distinct within a user, so ties="drop" never drops anything here.
    return Dataset(name=f"seqrec-json:{name}", items=items, users=users,
                   interactions=interactions)

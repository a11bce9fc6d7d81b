"""The in-memory dataset every stage reads: items, users, timestamped interactions with their
engagement signals, and a deterministic chronological leave-one-out split.

Storage is columnar numpy (the data layer is host-side bookkeeping); the pathway builder turns
it into torch tensors for the model. Interactions are kept sorted by (user, timestamp, item), a
total order that makes every per-user query a contiguous slice (`Dataset.user_offsets`).

Shapes use `num_items` (I), `num_users` (U), `num_interactions` (N).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

TRAIN, VALID, TEST, DROPPED = 0, 1, 2, -1
ROLE_NAMES = {"train": TRAIN, "valid": VALID, "test": TEST}


def _check_len(owner: str, name: str, arr: np.ndarray, n: int) -> None:
    if arr.shape[0] != n:
        raise ValueError(f"{owner}: {name} must have {n} rows, got shape {arr.shape}")


@dataclass
class Items:
    """Item catalogue and content features (row i describes item i, 0-based dense ids).

    ids: (I,) int64 -- the source's original item id (MovieLens movie id; synthetic: 0..I-1).
    titles: I strings -- free text (MovieLens titles without the year; synthetic pseudo-words).
    genres: (I, G) float32 multi-hot -- genre flags, names in `genre_names`.
    categorical: (I, C) int64 -- categorical features, column c in [0, categorical_cardinalities[c]);
        names in `categorical_names` (MovieLens: release decade; synthetic: creator, length bucket).
    cluster: (I,) int64 or None -- ground-truth latent cluster (synthetic only; never used as a
        feature, only by tests and reports).
    has_content: False when the source has no item metadata (seqrec-json without its item
        file): the content features are then empty placeholders and item embeddings are
        collaborative only.
    """
    ids: np.ndarray
    titles: list[str]
    genres: np.ndarray
    genre_names: list[str]
    categorical: np.ndarray
    categorical_names: list[str]
    categorical_cardinalities: list[int]
    cluster: np.ndarray | None = None
    has_content: bool = True

    def __post_init__(self) -> None:
        n = self.ids.shape[0]
        if len(self.titles) != n:
            raise ValueError(f"Items: titles must have {n} entries, got {len(self.titles)}")
        _check_len("Items", "genres", self.genres, n)
        _check_len("Items", "categorical", self.categorical, n)
        if self.genres.ndim != 2 or self.genres.shape[1] != len(self.genre_names):
            raise ValueError(f"Items: genres must be (num_items, {len(self.genre_names)}), "
                             f"got {self.genres.shape}")
        c = len(self.categorical_names)
        if self.categorical.ndim != 2 or self.categorical.shape[1] != c \
                or len(self.categorical_cardinalities) != c:
            raise ValueError(f"Items: categorical must be (num_items, {c}) with {c} cardinalities, "
                             f"got {self.categorical.shape} and {len(self.categorical_cardinalities)}")
        if c and n and ((self.categorical < 0).any()
                        or (self.categorical >= np.asarray(self.categorical_cardinalities)).any()):
            raise ValueError("Items: categorical values must lie in [0, cardinality)")

    @property
    def num_items(self) -> int:
        return int(self.ids.shape[0])


@dataclass
class Users:
    """Users and their static profile (row u describes user u, 0-based dense ids).

    ids: (U,) int64 -- the source's original user id.
    features: (U, F) int64 -- categorical static features, column f in [0, cardinalities[f]);
        names in `feature_names` (MovieLens: age bucket, gender, occupation, zip region;
        synthetic: age bucket, gender, region, device).
    numeric: (U, Fn) float32 -- numeric static features (standardized), names in `numeric_names`.
    """
    ids: np.ndarray
    features: np.ndarray
    feature_names: list[str]
    cardinalities: list[int]
    numeric: np.ndarray
    numeric_names: list[str]

    def __post_init__(self) -> None:
        n = self.ids.shape[0]
        _check_len("Users", "features", self.features, n)
        _check_len("Users", "numeric", self.numeric, n)
        if self.features.ndim != 2 or self.features.shape[1] != len(self.feature_names) \
                or len(self.cardinalities) != len(self.feature_names):
            raise ValueError(f"Users: features must be (num_users, {len(self.feature_names)}), "
                             f"got {self.features.shape}")
        if self.numeric.ndim != 2 or self.numeric.shape[1] != len(self.numeric_names):
            raise ValueError(f"Users: numeric must be (num_users, {len(self.numeric_names)}), "
                             f"got {self.numeric.shape}")
        if n and self.features.shape[1] and (
                (self.features < 0).any() or (self.features >= np.asarray(self.cardinalities)).any()):
            raise ValueError("Users: features must lie in [0, cardinality)")

    @property
    def num_users(self) -> int:
        return int(self.ids.shape[0])


@dataclass
class Interactions:
    """Timestamped user-item events, columnar, sorted by (user, timestamp, item).

    user, item: (N,) int64 dense ids. timestamp: (N,) int64 seconds.
    engagement: (N,) float32 in [0, 1] -- one graded engagement score per event
        (MovieLens: rating / 5; synthetic: weighted completion + like/follow/comment/share).
    positive: (N,) bool -- high-engagement flag (MovieLens: rating >= threshold; synthetic:
        completion >= 0.8 or an explicit like/follow/share); feeds the positive-feedback pathway.
    signals: name -> (N,) array -- every raw signal the source has (MovieLens: `rating`;
        synthetic: `play_time`, `duration` (s), `like`, `follow`, `comment`, `share`).
    """
    user: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    engagement: np.ndarray
    positive: np.ndarray
    signals: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.user.shape[0]
        for name in ("item", "timestamp", "engagement", "positive"):
            _check_len("Interactions", name, getattr(self, name), n)
        for name, arr in self.signals.items():
            _check_len("Interactions", f"signals[{name!r}]", arr, n)

    def __len__(self) -> int:
        return int(self.user.shape[0])

    def canonical_order(self) -> np.ndarray:
        """(N,) int64 permutation into the canonical (user, timestamp, item) order (stable for
        full ties)."""
        return np.lexsort((self.item, self.timestamp, self.user))

    def sorted(self) -> "Interactions":
        """A copy in the canonical (user, timestamp, item) order (stable for full ties)."""
        return self.take(self.canonical_order())

    def take(self, index: np.ndarray) -> "Interactions":
        """Rows `index` (int array or bool mask) as a new Interactions."""
        return Interactions(self.user[index], self.item[index], self.timestamp[index],
                            self.engagement[index], self.positive[index],
                            {k: v[index] for k, v in self.signals.items()})


@dataclass
class Split:
    """Chronological leave-one-out split, as index arrays into `Dataset.interactions`.

    Per user (in the canonical order): the last event is `test`, the one before it `valid`, the
    rest `train`. Users with fewer than 3 events keep everything in `train`.
    role: (N,) int8 -- TRAIN (0), VALID (1), TEST (2) or DROPPED (-1) per interaction.
    With `ties="drop"` (the default) a train event whose timestamp equals a held-out event's
    timestamp (MovieLens logs many ratings in the same second) is DROPPED, so every held-out
    event is strictly later than all of its user's train events; with `ties="keep"` it stays in
    train (held-out events are then only not earlier).
    """
    role: np.ndarray
    ties: str

    @property
    def train(self) -> np.ndarray:
        return np.flatnonzero(self.role == TRAIN)

    @property
    def valid(self) -> np.ndarray:
        return np.flatnonzero(self.role == VALID)

    @property
    def test(self) -> np.ndarray:
        return np.flatnonzero(self.role == TEST)

    @property
    def num_dropped(self) -> int:
        return int((self.role == DROPPED).sum())

    def indices(self, name: str) -> np.ndarray:
        if name not in ROLE_NAMES:
            raise ValueError(f"split: name must be one of {sorted(ROLE_NAMES)}, got {name!r}")
        return np.flatnonzero(self.role == ROLE_NAMES[name])


def leave_one_out_split(user: np.ndarray, timestamp: np.ndarray, *, ties: str = "drop") -> Split:
    """Leave-one-out roles for interactions already sorted by (user, timestamp, item).

    Vectorized: per-user positions come from the CSR offsets, no Python loop over users."""
    if ties not in ("drop", "keep"):
        raise ValueError(f"split: ties must be 'drop' or 'keep', got {ties!r}")
    n = user.shape[0]
    role = np.zeros(n, dtype=np.int8)
    if n == 0:
        return Split(role, ties)
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    ends = np.r_[starts[1:], n]
    big = (ends - starts) >= 3
    test_pos, valid_pos = ends[big] - 1, ends[big] - 2
    role[test_pos] = TEST
    role[valid_pos] = VALID
    if ties == "drop":
        # Earliest held-out timestamp per user (the valid event's); train events at or after it
        # (only possible as equal timestamps, the order being sorted) are dropped.
        cut = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
        seg_cut = np.full(starts.shape[0], np.iinfo(np.int64).max, dtype=np.int64)
        seg_cut[big] = timestamp[valid_pos]
        cut[:] = np.repeat(seg_cut, ends - starts)
        role[(role == TRAIN) & (timestamp >= cut)] = DROPPED
    return Split(role, ties)


@dataclass
class Dataset:
    """A recommendation dataset: items, users, interactions and their chronological split.

    `interactions` is sorted by (user, timestamp, item) (re-sorted if given otherwise, a given
    `split` permuted along with its rows); `user_offsets` (U + 1,) int64 is the CSR
    index into it (user u's events are rows user_offsets[u]:user_offsets[u + 1]).
    """
    name: str
    items: Items
    users: Users
    interactions: Interactions
    split: Split | None = None  # None: the leave-one-out split is computed in __post_init__
    ties: str = "drop"
    user_offsets: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        inter = self.interactions
        if self.split is not None and self.split.role.shape[0] != len(inter):
            raise ValueError(f"Dataset {self.name}: split has {self.split.role.shape[0]} roles "
                             f"for {len(inter)} interactions")
        if len(inter):
            for name, arr, hi in (("user", inter.user, self.num_users),
                                  ("item", inter.item, self.num_items)):
                lo_v, hi_v = int(arr.min()), int(arr.max())
                if lo_v < 0 or hi_v >= hi:
                    raise ValueError(f"Dataset {self.name}: interaction {name} ids must lie in "
                                     f"[0, {hi}), got range [{lo_v}, {hi_v}]")
            key_sorted = np.all((inter.user[1:] > inter.user[:-1])
                                | ((inter.user[1:] == inter.user[:-1])
                                   & ((inter.timestamp[1:] > inter.timestamp[:-1])
                                      | ((inter.timestamp[1:] == inter.timestamp[:-1])
                                         & (inter.item[1:] >= inter.item[:-1])))))
            if not key_sorted:
                order = inter.canonical_order()
                self.interactions = inter = inter.take(order)
                if self.split is not None:  # a given split's roles follow their rows
                    self.split = Split(self.split.role[order], self.split.ties)
        self.user_offsets = np.searchsorted(inter.user, np.arange(self.num_users + 1),
                                            side="left").astype(np.int64)
        if self.split is None:
            self.split = leave_one_out_split(inter.user, inter.timestamp, ties=self.ties)

    @property
    def num_users(self) -> int:
        return self.users.num_users

    @property
    def num_items(self) -> int:
        return self.items.num_items

    @property
    def num_interactions(self) -> int:
        return len(self.interactions)

    def split_interactions(self, name: str) -> Interactions:
        """The interactions of split `name` ('train' | 'valid' | 'test')."""
        return self.interactions.take(self.split.indices(name))

    def targets(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(users, items, timestamps) of the events in split `name`; feed users and timestamps
        to `build_pathways` to get the inputs that predict those items."""
        idx = self.split.indices(name)
        inter = self.interactions
        return inter.user[idx], inter.item[idx], inter.timestamp[idx]

    def summary(self) -> str:
        inter = self.interactions
        per_user = np.diff(self.user_offsets)
        return (f"{self.name}: {self.num_users} users, {self.num_items} items, "
                f"{self.num_interactions} interactions "
                f"(per user median {int(np.median(per_user)) if per_user.size else 0}, "
                f"positive {inter.positive.mean() if len(inter) else 0:.1%}); split train "
                f"{self.split.train.size} / valid {self.split.valid.size} / test "
                f"{self.split.test.size} (dropped ties {self.split.num_dropped}); "
                f"signals {sorted(inter.signals)}")

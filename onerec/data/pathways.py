"""Pathway builder: the four encoder inputs of many (user, reference time) queries at once.

For query b = (user u_b, time t_b), using only interactions with timestamp strictly before t_b:
- static: u_b's static profile, `static` (B, F) int64 categorical + `static_numeric` (B, Fn) f32;
- short_term: the last `short_len` (20) interactions;
- positive: the last `positive_len` (256) positive (high-engagement) interactions;
- lifelong: the whole earlier history (optionally capped to the last `lifelong_len`).

Each sequence set is a `PackedSequences`: values concatenated over the batch, oldest first
inside a row, with `offsets` (B + 1,) int64 so row b is values[offsets[b]:offsets[b + 1]];
`.padded()` gives (B, L) views with a mask. Everything is vectorized over the batch: the
interactions are sorted by (user, timestamp), so each row is one contiguous slice found by a
single `searchsorted` on a (user, time-rank) key, and slices are gathered with one arange.

Strict `<` is what makes it leak-free for every split: held-out events are the last of their
user, so the history of a valid/test target never contains the target or anything later (with
`pool="all"` the test target's history includes the valid event, as it happened before).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .dataset import DROPPED, TEST, TRAIN, VALID, Dataset

# "all" includes DROPPED events (train events tied with a held-out one): they are real history,
# strictly earlier than any later query, and only excluded from training targets.
POOLS = {"all": (TRAIN, VALID, TEST, DROPPED), "train": (TRAIN,), "train+valid": (TRAIN, VALID)}


@dataclass
class PackedSequences:
    """Ragged sequences for B rows, chronological (oldest first) within each row.

    offsets: (B + 1,) int64, offsets[0] = 0, non-decreasing; row b = [offsets[b], offsets[b+1]).
    item: (T,) int64 item ids. timestamp: (T,) int64. engagement: (T,) float32.
    positive: (T,) bool. index: (T,) int64 rows of `Dataset.interactions` (to fetch any signal).
    """
    offsets: torch.Tensor
    item: torch.Tensor
    timestamp: torch.Tensor
    engagement: torch.Tensor
    positive: torch.Tensor
    index: torch.Tensor

    FIELDS = ("item", "timestamp", "engagement", "positive", "index")

    @property
    def lengths(self) -> torch.Tensor:
        """(B,) int64 row lengths."""
        return self.offsets[1:] - self.offsets[:-1]

    @property
    def batch_size(self) -> int:
        return int(self.offsets.shape[0]) - 1

    def row(self, b: int, field: str = "item") -> torch.Tensor:
        return getattr(self, field)[int(self.offsets[b]):int(self.offsets[b + 1])]

    def padded(self, field: str = "item", *, max_len: int | None = None, pad_value=0,
               align: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
        """(values (B, L), mask (B, L) bool) with L = max_len or the longest row.

        Rows longer than max_len keep their most recent max_len entries. align="left" puts a
        row's oldest kept entry in column 0 (padding on the right); align="right" puts the most
        recent entry in column L - 1 (padding on the left)."""
        if field not in self.FIELDS:
            raise ValueError(f"padded: field must be one of {self.FIELDS}, got {field!r}")
        if align not in ("left", "right"):
            raise ValueError(f"padded: align must be 'left' or 'right', got {align!r}")
        lengths = self.lengths
        longest = int(lengths.max()) if lengths.numel() else 0
        if max_len is None:
            max_len = longest
        elif isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 0:
            raise ValueError(f"padded: max_len must be an int >= 0 or None, got {max_len!r}")
        values = getattr(self, field)
        B = self.batch_size
        kept = torch.clamp(lengths, max=max_len)
        out = torch.full((B, max_len), pad_value, dtype=values.dtype)
        mask = torch.zeros((B, max_len), dtype=torch.bool)
        total = int(kept.sum())
        if total:
            row = torch.repeat_interleave(torch.arange(B), kept)
            kept_off = torch.zeros(B + 1, dtype=torch.int64)
            kept_off[1:] = torch.cumsum(kept, 0)
            j = torch.arange(total) - kept_off[:-1][row]  # position within the kept part
            src = self.offsets[1:][row] - kept[row] + j  # the tail of each row
            col = j if align == "left" else j + (max_len - kept[row])
            out[row, col] = values[src]
            mask[row, col] = True
        return out, mask

    def to(self, device) -> "PackedSequences":
        return PackedSequences(*(getattr(self, f).to(device) for f in ("offsets",) + self.FIELDS))


@dataclass
class Pathways:
    """Encoder inputs for B queries (see the module docstring).

    users: (B,) int64. times: (B,) int64 reference times (exclusive).
    static: (B, F) int64 categorical profile (`Dataset.users.feature_names`).
    static_numeric: (B, Fn) float32 (`Dataset.users.numeric_names`).
    short_term, positive, lifelong: PackedSequences with B rows each.
    """
    users: torch.Tensor
    times: torch.Tensor
    static: torch.Tensor
    static_numeric: torch.Tensor
    short_term: PackedSequences
    positive: PackedSequences
    lifelong: PackedSequences

    def to(self, device) -> "Pathways":
        return Pathways(self.users.to(device), self.times.to(device), self.static.to(device),
                        self.static_numeric.to(device), self.short_term.to(device),
                        self.positive.to(device), self.lifelong.to(device))


class _PoolIndex:
    """Sorted (user, time-rank) keys of the interactions in a pool, and of its positive subset."""

    def __init__(self, dataset: Dataset, rows: np.ndarray) -> None:
        inter = dataset.interactions
        self.rows = rows  # canonical order is preserved by boolean selection
        self.uniq = np.unique(inter.timestamp[rows])
        self.stride = self.uniq.shape[0] + 1
        self.key = self._key(inter.user[rows], inter.timestamp[rows])
        self.user_start = np.searchsorted(inter.user[rows], np.arange(dataset.num_users + 1))
        pos = inter.positive[rows]
        self.pos_rows = rows[pos]
        self.pos_key = self.key[pos]
        self.pos_user_start = np.searchsorted(inter.user[self.pos_rows],
                                              np.arange(dataset.num_users + 1))

    def _key(self, users: np.ndarray, times: np.ndarray) -> np.ndarray:
        # rank = number of distinct pool timestamps strictly below `times`, so an event is
        # strictly earlier than a query exactly when its key is below the query's key.
        return users.astype(np.int64) * self.stride + np.searchsorted(self.uniq, times, side="left")


def _pool_index(dataset: Dataset, pool) -> _PoolIndex:
    cache = dataset.__dict__.setdefault("_pathway_pools", {})
    if isinstance(pool, str):
        if pool not in POOLS:
            raise ValueError(f"build_pathways: pool must be one of {sorted(POOLS)} or a boolean "
                             f"mask over interactions, got {pool!r}")
        if pool not in cache:
            rows = np.flatnonzero(np.isin(dataset.split.role, POOLS[pool]))
            cache[pool] = _PoolIndex(dataset, rows)
        return cache[pool]
    mask = np.asarray(pool.cpu() if isinstance(pool, torch.Tensor) else pool)
    if mask.dtype != np.bool_ or mask.shape != (dataset.num_interactions,):
        raise ValueError(f"build_pathways: a pool mask must be bool of shape "
                         f"({dataset.num_interactions},), got {mask.dtype} {mask.shape}")
    return _PoolIndex(dataset, np.flatnonzero(mask))


def _as_int_array(name: str, value, batch: int | None) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.ndim == 0 and batch is not None:
        arr = np.full(batch, arr)
    if arr.ndim != 1:
        raise ValueError(f"build_pathways: {name} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"build_pathways: {name} must hold integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _gather(starts: np.ndarray, ends: np.ndarray, rows: np.ndarray, dataset: Dataset
            ) -> PackedSequences:
    lengths = np.maximum(ends - starts, 0)
    offsets = np.zeros(lengths.shape[0] + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    pos = np.arange(total, dtype=np.int64) - np.repeat(offsets[:-1] - starts, lengths)
    idx = rows[pos]
    inter = dataset.interactions
    return PackedSequences(
        offsets=torch.from_numpy(offsets), item=torch.from_numpy(inter.item[idx]),
        timestamp=torch.from_numpy(inter.timestamp[idx]),
        engagement=torch.from_numpy(inter.engagement[idx].astype(np.float32)),
        positive=torch.from_numpy(inter.positive[idx].astype(np.bool_)),
        index=torch.from_numpy(idx.astype(np.int64)))


def build_pathways(dataset: Dataset, users, times=None, *, short_len: int = 20,
                   positive_len: int = 256, lifelong_len: int | None = None,
                   pool="all") -> Pathways:
    """Build the encoder inputs for B queries.

    users: (B,) int user ids in [0, num_users). times: (B,) int reference timestamps (a scalar
    is broadcast; None = after each user's last event). Only interactions with timestamp
    strictly before the query time are used.
    short_len / positive_len: caps of the short-term and positive-feedback pathways (>= 0).
    lifelong_len: cap of the lifelong pathway (None = the whole earlier history).
    pool: which interactions may appear: "all" (default; leak-free by the strict time cut),
    "train", "train+valid", or a bool mask (num_interactions,).
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"build_pathways: dataset must be a Dataset, got {type(dataset).__name__}")
    for name, v in (("short_len", short_len), ("positive_len", positive_len),
                    ("lifelong_len", lifelong_len)):
        if v is None and name == "lifelong_len":
            continue
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"build_pathways: {name} must be an int >= 0, got {v!r}")
    u = _as_int_array("users", users, None)
    if u.size and (u.min() < 0 or u.max() >= dataset.num_users):
        raise ValueError(f"build_pathways: users must lie in [0, {dataset.num_users}), got range "
                         f"[{u.min()}, {u.max()}]")
    B = u.shape[0]
    if times is None:
        t = np.full(B, np.iinfo(np.int64).max, dtype=np.int64)
    else:
        t = _as_int_array("times", times, B)
        if t.shape[0] != B:
            raise ValueError(f"build_pathways: times must have {B} entries like users, "
                             f"got {t.shape[0]}")
    idx = _pool_index(dataset, pool)
    qkey = idx._key(u, t)
    end = np.searchsorted(idx.key, qkey, side="left")
    start = idx.user_start[u]
    pos_end = np.searchsorted(idx.pos_key, qkey, side="left")
    pos_start = idx.pos_user_start[u]

    def cap(lo, hi, n):
        return lo if n is None else np.maximum(lo, hi - n)

    users_data = dataset.users
    return Pathways(
        users=torch.from_numpy(u), times=torch.from_numpy(t),
        static=torch.from_numpy(users_data.features[u]),
        static_numeric=torch.from_numpy(users_data.numeric[u].astype(np.float32)),
        short_term=_gather(cap(start, end, short_len), end, idx.rows, dataset),
        positive=_gather(cap(pos_start, pos_end, positive_len), pos_end, idx.pos_rows, dataset),
        lifelong=_gather(cap(start, end, lifelong_len), end, idx.rows, dataset),
    )

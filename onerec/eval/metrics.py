"""Full-catalogue leave-one-out metrics from ranked item lists.

Every user has one held-out target item. A ranker returns, per user, its top `k_max` items
(best first, -1 = an empty slot, e.g. a dead beam); every item of the catalogue is a candidate
(no sampled negatives). For K in `KS`:

    Recall@K = share of users whose target is among their top K (one target: the hit rate);
    NDCG@K   = mean of 1 / log2(rank + 2) over users whose target sits at 0-based rank < K
               (the ideal DCG of one relevant item is 1).

Beside them: the legal-output rate (filled slots that hold a catalogue item, no duplicate in a
user's list), the share of recommended items the user already consumed (history before the
target), catalogue coverage@K (distinct items recommended in the top K over all users / catalogue
size), and the cold-target split: targets with no training interaction are counted and scored
separately from the warm ones.
"""
from __future__ import annotations

import numpy as np
import torch

KS = (1, 5, 10, 20)


def _as_np(name: str, x, ndim: int) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim != ndim:
        raise ValueError(f"evaluate_ranking: {name} must have {ndim} dims, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"evaluate_ranking: {name} must hold integer ids, got {a.dtype}")
    return a.astype(np.int64, copy=False)


def hit_ranks(ranked: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(U,) int64 0-based rank of each user's target in `ranked` (U, K), K if absent."""
    hit = ranked == targets[:, None]
    return np.where(hit.any(1), hit.argmax(1), ranked.shape[1]).astype(np.int64)


def ranking_metrics(ranks: np.ndarray, ks=KS) -> dict:
    """{"recall@K", "ndcg@K"} means over the users given their targets' 0-based ranks."""
    out = {}
    n = max(ranks.shape[0], 1)
    for k in ks:
        hit = ranks < k
        out[f"recall@{k}"] = float(hit.sum() / n)
        out[f"ndcg@{k}"] = float((1.0 / np.log2(ranks[hit] + 2.0)).sum() / n)
    return out


def _consumed_mask(ranked: np.ndarray, history_offsets: np.ndarray, history_items: np.ndarray,
                   num_items: int) -> np.ndarray:
    """(U, K) bool: ranked[u, j] is one of user row u's history items (keys row * I + item)."""
    rows = np.repeat(np.arange(history_offsets.shape[0] - 1), np.diff(history_offsets))
    hist_keys = rows * (num_items + 1) + history_items
    keys = np.arange(ranked.shape[0])[:, None] * (num_items + 1) + np.clip(ranked, 0, None)
    return np.isin(keys, hist_keys) & (ranked >= 0)


def evaluate_ranking(users, ranked, targets, *, num_items: int, train_counts=None,
                     history_offsets=None, history_items=None, ks=KS) -> dict:
    """Metrics of one ranker on one split.

    users: (U,) int -- the evaluated users (only their count and order matter here; kept so a
        caller can check it scored the rows it meant to).
    ranked: (U, k) int, k >= max(ks) -- each user's items, best first; -1 = empty slot.
    targets: (U,) int -- each user's held-out item, in [0, num_items).
    num_items: catalogue size I (coverage denominator, legal range).
    train_counts: optional (I,) training interactions per item; targets with count 0 are cold.
    history_offsets (U + 1,), history_items (T,): optional packed history of each row (items the
        user consumed before the target), for the consumed share.

    Returns a flat dict: users, recall@K / ndcg@K, legal_rate, consumed_share (NaN without a
    history), coverage@K, cold_targets, and warm_/cold_ recall@K / ndcg@K (NaN on an empty group).
    """
    u = _as_np("users", users, 1)
    r = _as_np("ranked", ranked, 2)
    t = _as_np("targets", targets, 1)
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"evaluate_ranking: ks must be positive ints, got {ks}")
    if r.shape[0] != u.shape[0] or t.shape[0] != u.shape[0]:
        raise ValueError(f"evaluate_ranking: users {u.shape}, ranked {r.shape} and targets "
                         f"{t.shape} must have the same number of rows")
    if r.shape[1] < max(ks):
        raise ValueError(f"evaluate_ranking: ranked must hold at least max(ks) = {max(ks)} items "
                         f"per user, got {r.shape[1]}")
    if t.size and (t.min() < 0 or t.max() >= num_items):
        raise ValueError(f"evaluate_ranking: targets must lie in [0, {num_items}), got range "
                         f"[{t.min()}, {t.max()}]")
    r = r[:, :max(ks)]
    ranks = hit_ranks(r, t)
    out: dict = {"users": int(u.shape[0])}
    out.update(ranking_metrics(ranks, ks))

    filled = r >= 0
    valid = filled & (r < num_items)
    srt = np.sort(np.where(valid, r, -1), axis=1)
    dup_sorted = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)
    num_filled = int(filled.sum())
    out["legal_rate"] = float((valid.sum() - dup_sorted.sum()) / num_filled) if num_filled else 1.0
    out["filled_rate"] = float(num_filled / max(r.size, 1))

    if history_offsets is not None:
        ho = _as_np("history_offsets", history_offsets, 1)
        hi = _as_np("history_items", history_items, 1)
        if ho.shape[0] != u.shape[0] + 1:
            raise ValueError(f"evaluate_ranking: history_offsets must have {u.shape[0] + 1} "
                             f"entries, got {ho.shape[0]}")
        consumed = _consumed_mask(r, ho, hi, num_items)
        out["consumed_share"] = float(consumed.sum() / max(int(valid.sum()), 1))
    else:
        out["consumed_share"] = float("nan")
    for k in ks:
        top = r[:, :k]
        out[f"coverage@{k}"] = float(np.unique(top[(top >= 0) & (top < num_items)]).shape[0]
                                     / max(num_items, 1))

    if train_counts is not None:
        counts = _as_np("train_counts", train_counts, 1)
        if counts.shape[0] != num_items:
            raise ValueError(f"evaluate_ranking: train_counts must have {num_items} entries, "
                             f"got {counts.shape[0]}")
        cold = counts[t] == 0
        out["cold_targets"] = int(cold.sum())
        for name, sel in (("warm", ~cold), ("cold", cold)):
            group = ranking_metrics(ranks[sel], ks) if sel.any() else \
                {m: float("nan") for k in ks for m in (f"recall@{k}", f"ndcg@{k}")}
            out.update({f"{name}_{m}": v for m, v in group.items()})
    return out

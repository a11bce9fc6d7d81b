"""Lifelong-history compression (OneRec): hierarchical k-means over each user's history item
embeddings, keeping one real item per cluster, so the QFormer sees at most `target_len` items.

Per user with N > target_len items: start from one cluster holding the whole history; each
round splits every cluster larger than leaf = ceil(N / target_len) items into about
cbrt(size) clusters with a few Lloyd steps, never letting the user's cluster count pass
target_len (larger clusters split first); stop when no cluster splits. Each final cluster is
represented by its item nearest the centroid (its row, so ids and categorical features come
along; continuous features are averaged over the cluster), and the kept items are returned in
their original (chronological) order. Users with N <= target_len pass through unchanged.

Batching: a round's Lloyd steps for all clusters of all users are one `grouped_kmeans` call,
each cluster's items compared only with its own centroids, so a round costs
sum(size x k) x D per step (not (all items) x (all centroids) as one dense k-means over every
cluster would), and a cluster stops iterating once its assignments repeat (an exact fixed
point: more steps would change nothing). Distances are exact fp32 differences summed in one
fixed order, so the "torch", "cpp" and "triton" backends compute identical distances (see
grouped_kmeans for when the float64 centroid sums of the GPU paths can differ in a last bit).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from onerec_kernels import grouped_kmeans
from onerec_kernels.kmeans.op import GROUPED_SUPPORTED

_KEY_SCALE = 1 << 24  # torch.rand's fp32 values are multiples of 2^-24


@dataclass
class CompressedHistory:
    """index: (T',) int64 rows of the packed input that were kept, user by user, in their
    original order. cu_seqlens: (B + 1,) int64 offsets of the kept rows (cu_seqlens[-1] = T').
    cluster_size: (T',) int64 items each kept row stands for (1 on pass-through).
    continuous: (T', F) cluster means of the `continuous` features (None when not given)."""

    index: torch.Tensor
    cu_seqlens: torch.Tensor
    cluster_size: torch.Tensor
    continuous: torch.Tensor | None


def compress_history(item_emb: torch.Tensor, cu_seqlens: torch.Tensor, *, target_len: int = 2000,
                     continuous: torch.Tensor | None = None, iters: int = 8, seed: int = 0,
                     max_rounds: int = 64, backend: str | None = None) -> CompressedHistory:
    """Compress every history longer than target_len to at most target_len real items.

    Args:
        item_emb: (T, D) float embeddings of the packed history items, chronological per user.
        cu_seqlens: (B + 1,) int32/int64 offsets (starts at 0, non-decreasing, ends at T).
        target_len: the most items a user keeps (>= 1).
        continuous: optional (T, F) float features to average over each cluster.
        iters: Lloyd steps per split. seed: the random initial centroids (distinct items of
            the cluster). max_rounds: a safety bound on the split rounds.
        backend: of grouped_kmeans ("torch" | "triton" | "cpp"; None: C++ on CPU, the Triton
            kernel on CUDA). The model passes its one kernel backend to every op, so a backend
            with no grouped k-means kernel ("cuda") takes grouped_kmeans's default.
            Deterministic for a seed, and identical between "torch" and "cpp" on CPU; on CUDA
            the float64 atomics of the sums can move a centroid's last bit where a sum is not
            exact (rare; see grouped_kmeans).
    Returns: CompressedHistory (see there). Ids / categorical features of the kept items are
    `ids[result.index]`.
    """
    if item_emb.dim() != 2:
        raise ValueError(f"compress_history: item_emb must be (T, D), got {tuple(item_emb.shape)}")
    if target_len < 1:
        raise ValueError(f"compress_history: target_len must be >= 1, got {target_len}")
    cu = cu_seqlens.tolist()
    if cu[0] != 0 or cu[-1] != item_emb.shape[0] or any(b < a for a, b in zip(cu, cu[1:])):
        raise ValueError("compress_history: cu_seqlens must start at 0, be non-decreasing and end "
                         f"at T = {item_emb.shape[0]}")
    if continuous is not None and continuous.shape[0] != item_emb.shape[0]:
        raise ValueError(f"compress_history: continuous must have T = {item_emb.shape[0]} rows, "
                         f"got {continuous.shape[0]}")
    if backend not in GROUPED_SUPPORTED:
        backend = None
    dev = item_emb.device
    total, num_users = item_emb.shape[0], len(cu) - 1
    lengths_list = [b - a for a, b in zip(cu, cu[1:])]
    lengths = torch.tensor(lengths_list, device=dev)
    user_of_row = torch.repeat_interleave(torch.arange(num_users, device=dev), lengths,
                                          output_size=total)
    long_user = lengths > target_len
    keep = ~long_user[user_of_row]  # (T,) pass-through rows, then the representatives
    size_of_row = torch.ones(total, dtype=torch.int64, device=dev)
    rep_rows = None
    if max(lengths_list, default=0) > target_len:
        rows = torch.nonzero(~keep).squeeze(1)  # user-major, chronological
        owner = (torch.cumsum(long_user, 0) - 1)[user_of_row[rows]]
        leaf = (lengths[long_user] + target_len - 1) // target_len
        x = item_emb.index_select(0, rows).float()
        cluster, sizes = _split_rounds(x, owner, leaf, target_len, iters, seed, max_rounds,
                                       backend)
        rep, rep_size = _representatives(x, cluster, sizes)
        rep_rows = rows[rep]
        keep[rep_rows] = True
        size_of_row[rep_rows] = rep_size
    index = torch.nonzero(keep).squeeze(1)  # kept rows in their original order
    cluster_size = size_of_row[index]
    out_cu = torch.zeros(num_users + 1, dtype=torch.int64, device=dev)
    out_cu[1:] = torch.bincount(user_of_row[index], minlength=num_users).cumsum(0)
    cont = None
    if continuous is not None:
        # Pass-through rows copy their features exactly; kept cluster rows take the means.
        cont = continuous[index].clone()
        if rep_rows is not None:
            sums = torch.zeros(rep_rows.shape[0], continuous.shape[1], device=dev,
                               dtype=torch.float32).index_add_(0, cluster, continuous[rows].float())
            means = sums / rep_size[:, None].to(sums.dtype)
            cont[torch.searchsorted(index, rep_rows)] = means.to(cont.dtype)
    return CompressedHistory(index=index, cu_seqlens=out_cu, cluster_size=cluster_size,
                             continuous=cont)


def _split_counts(sizes, c_user, leaf, target_len) -> torch.Tensor:
    """Clusters each cluster splits into this round (1: stays): about cbrt(size) for clusters
    above their user's leaf size, capped so no user passes target_len clusters, the largest
    clusters of a user served first. c_user is non-decreasing (clusters are numbered user by
    user, see _split)."""
    num_users = leaf.shape[0]
    want = torch.where(sizes > leaf[c_user], torch.round(sizes.double() ** (1 / 3)).long().clamp_min(2),
                       torch.ones_like(sizes)).minimum(sizes)
    # Usually no user would pass the cap: then want is the answer (one check, no sort).
    if bool((torch.zeros_like(leaf).index_add_(0, c_user, want) <= target_len).all()):
        return want
    per_user = torch.bincount(c_user, minlength=num_users)
    budget = target_len - per_user
    # By user, then size descending, then id: one stable sort; it permutes within users only.
    top = sizes.max()
    order = torch.argsort(c_user * (top + 1) + (top - sizes), stable=True)
    extra = (want - 1)[order]
    before = torch.cumsum(extra, 0) - extra  # extra clusters granted before, over all users
    user_first = torch.cumsum(per_user, 0) - per_user  # each user's first position in order
    before = before - before[user_first[c_user]]
    allowed = (budget[c_user] - before).clamp_min(0)
    k = torch.ones_like(sizes)
    k[order] = 1 + extra.minimum(allowed)
    return k


def _split_rounds(x, owner, leaf, target_len, iters, seed, max_rounds, backend):
    """(cluster id (compact, in [0, C)) of every item after the recursive splitting, (C,) rows
    per cluster).

    The clusters are kept as segments of `order` (item indices sorted by cluster id, each
    cluster's items in their original order) with their sizes and users, so a round needs no
    sort of all items: only the items of the clusters that split are regrouped."""
    dev = x.device
    gen = torch.Generator().manual_seed(seed)
    order = torch.arange(x.shape[0], device=dev)  # owner is sorted: one cluster per user
    sizes = torch.bincount(owner, minlength=leaf.shape[0])
    c_user = torch.arange(leaf.shape[0], device=dev)
    for _ in range(max_rounds):
        k = _split_counts(sizes, c_user, leaf, target_len)
        split = k > 1
        if not bool(split.any()):
            break
        new = _split(x, order, sizes, c_user, split, k, iters, gen, backend)
        if new[1].shape[0] == sizes.shape[0]:
            break  # no split produced a second non-empty cluster (e.g. duplicate items)
        order, sizes, c_user = new
    cluster = torch.empty_like(order)
    cluster[order] = torch.repeat_interleave(torch.arange(sizes.shape[0], device=dev), sizes,
                                             output_size=order.shape[0])
    return cluster, sizes


def _split(x, order, sizes, c_user, split, k, iters, gen, backend):
    """One round: k-means each cluster with split[c] into k[c] clusters (k[c] random distinct
    items as initial centroids); renumber compactly in (old cluster, new centroid) order, which
    keeps the clusters numbered user by user. Returns the new (order, sizes, c_user)."""
    dev = x.device
    num_clusters = sizes.shape[0]
    seg = torch.repeat_interleave(torch.arange(num_clusters, device=dev), sizes,
                                  output_size=order.shape[0])  # cluster of each position
    pos = torch.nonzero(split[seg]).squeeze(1)  # positions of the moving items
    item_idx = order[pos]  # grouped: the clusters being split, in id order
    g_sizes, k_group = sizes[split], k[split]
    num_moving = pos.shape[0]
    g_item = torch.repeat_interleave(torch.arange(g_sizes.shape[0], device=dev), g_sizes,
                                     output_size=num_moving)
    zero = torch.zeros(1, dtype=torch.int64, device=dev)
    x_off = torch.cat([zero, g_sizes.cumsum(0)])
    c_off = torch.cat([zero, k_group.cumsum(0)])
    # Initial centroids: the k items of lowest random key in each group, by one sort on
    # (group, key): torch.rand's fp32 keys are multiples of 2^-24, so key * 2^24 is an exact
    # integer below 2^24 (an int64 sort is several times faster than a float one).
    keys = (torch.rand(num_moving, generator=gen) * _KEY_SCALE).long().to(dev)
    perm = torch.argsort(g_item * _KEY_SCALE + keys, stable=True)
    rank = torch.arange(num_moving, device=dev) - x_off[g_item]  # sorted position - group start
    pick = perm[rank < k_group[g_item]]
    x_moving = x.index_select(0, item_idx)  # index_select: ~5x faster than x[idx] on CPU
    assign, _ = grouped_kmeans(x_moving, x_moving.index_select(0, pick), x_off, c_off,
                               iters=iters, backend=backend)
    # New ids: unsplit clusters keep one slot, split ones get k slots (empty ones vanish).
    slots = torch.where(split, k, torch.ones_like(k))
    slot0 = torch.cumsum(slots, 0) - slots
    new_id = slot0[seg]
    new_id[pos] += assign - c_off[g_item]
    slot_sizes = torch.bincount(new_id)
    present = slot_sizes > 0
    slot_user = torch.repeat_interleave(c_user, slots)[:slot_sizes.shape[0]]
    # The moving items regrouped by new cluster: the same positions, sorted by centroid.
    new_order = order.clone()
    new_order[pos] = item_idx[torch.argsort(assign, stable=True)]
    return new_order, slot_sizes[present], slot_user[present]


def _representatives(x, cluster, size):
    """Per cluster: the item nearest its centroid (ties: the earliest) and the cluster size
    (`size`: the rows of each cluster, all > 0, as _split_rounds returns them)."""
    num_clusters = size.shape[0]
    cent = torch.zeros(num_clusters, x.shape[1], device=x.device).index_add_(0, cluster, x)
    cent /= size[:, None]
    dist = (x - cent.index_select(0, cluster)).square_().sum(1)
    best = torch.full((num_clusters,), float("inf"), device=x.device).scatter_reduce(
        0, cluster, dist, "amin")
    items = torch.arange(x.shape[0], device=x.device)
    cand = torch.where(dist <= best[cluster], items, torch.iinfo(torch.int64).max)
    rep = torch.full((num_clusters,), torch.iinfo(torch.int64).max, device=x.device).scatter_reduce(
        0, cluster, cand, "amin")
    return rep, size

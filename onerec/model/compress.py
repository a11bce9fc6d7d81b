"""Lifelong-history compression (OneRec): hierarchical k-means over each user's history item
embeddings, keeping one real item per cluster, so the QFormer sees at most `target_len` items.

Per user with N > target_len items: start from one cluster holding the whole history; each
round splits every cluster larger than leaf = ceil(N / target_len) items into about
cbrt(size) clusters with a few Lloyd steps, never letting the user's cluster count pass
target_len (larger clusters split first); stop when no cluster splits. Each final cluster is
represented by its item nearest the centroid (its row, so ids and categorical features come
along; continuous features are averaged over the cluster), and the kept items are returned in
their original (chronological) order. Users with N <= target_len pass through unchanged.

Batching: a round's Lloyd steps for all clusters of all users are `kmeans_step` calls on many
independent problems at once. kmeans_step solves one problem (every point against every
centroid), so each cluster's points and centroids are centred on the cluster mean and moved
to their own point of a coarse grid in 8 extra dimensions, spaced 4x the largest cluster radius
apart: a point is then always nearer any centroid of its own cluster than one of another, so
the single call computes every cluster's assignment exactly. The dense call costs
(points x centroids) of its chunk, so clusters are grouped into chunks under a work budget.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from onerec_kernels import kmeans_step

_GRID_DIMS = 8
_PAIR_BUDGET = 1 << 26  # points x centroids of one kmeans_step call


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


def _grid_points(num_groups: int, spacing: float, device, dtype) -> torch.Tensor:
    """(num_groups, 8) distinct grid points, >= spacing apart, centred on 0."""
    base = max(2, math.ceil(num_groups ** (1.0 / _GRID_DIMS)) + 1)
    g = torch.arange(num_groups, device=device)
    digits = torch.stack([(g // base ** j) % base for j in range(_GRID_DIMS)], dim=1)
    return (digits.to(dtype) - (base - 1) / 2) * spacing


def _chunks(sizes: list[int], ks: list[int], budget: int):
    """Consecutive group ranges [a, b) whose sum(sizes) * sum(ks) stays under budget."""
    a, n, k = 0, 0, 0
    for i, (s, c) in enumerate(zip(sizes, ks)):
        if i > a and (n + s) * (k + c) > budget:
            yield a, i
            a, n, k = i, 0, 0
        n, k = n + s, k + c
    if a < len(sizes):
        yield a, len(sizes)


def _lloyd_batched(x: torch.Tensor, group: torch.Tensor, cent: torch.Tensor,
                   cent_group: torch.Tensor, iters: int, backend: str | None) -> torch.Tensor:
    """k-means of many independent groups in one kmeans_step call per step (the grid trick of
    the module docstring). x (N, D) fp32, group (N,) in [0, G) sorted; cent (K, D) initial
    centroids, cent_group (K,) sorted. Returns assignments (N,) into [0, K)."""
    num_groups = int(cent_group.max()) + 1
    counts = torch.bincount(group, minlength=num_groups).clamp_min(1)
    mean = torch.zeros(num_groups, x.shape[1], device=x.device).index_add_(0, group, x)
    mean /= counts[:, None]
    xc = x - mean[group]
    radius = float(xc.norm(dim=1).max()) if xc.numel() else 0.0
    grid = _grid_points(num_groups, 4.0 * radius + 1e-6, x.device, x.dtype)
    x_aug = torch.cat([xc, grid[group]], dim=1)
    tail = grid[cent_group]
    c = cent - mean[cent_group]
    assign = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
    for _ in range(iters):
        assign, sums, cnt, _ = kmeans_step(x_aug, torch.cat([c, tail], dim=1), backend=backend)
        nonempty = cnt > 0
        c = torch.where(nonempty[:, None], sums[:, :c.shape[1]] / cnt.clamp_min(1)[:, None], c)
    return assign


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
        backend: of kmeans_step. Deterministic for a seed with the "torch"/"cpp" backends; the
            Triton kernel's fp32 atomics can change last bits of centroids between runs.
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
    dev = item_emb.device
    lengths = [b - a for a, b in zip(cu, cu[1:])]
    long_users = [u for u, n in enumerate(lengths) if n > target_len]
    keep_rows = [torch.arange(cu[u], cu[u + 1]) for u, n in enumerate(lengths) if n <= target_len]
    keep_size = [torch.ones(lengths[u], dtype=torch.int64) for u, n in enumerate(lengths)
                 if n <= target_len]
    rep_rows = torch.empty(0, dtype=torch.int64, device=dev)
    rep_size = torch.empty(0, dtype=torch.int64, device=dev)
    rep_cont = None
    if long_users:
        rows = torch.cat([torch.arange(cu[u], cu[u + 1]) for u in long_users]).to(dev)
        owner = torch.cat([torch.full((lengths[u],), i) for i, u in enumerate(long_users)]).to(dev)
        leaf = torch.tensor([math.ceil(lengths[u] / target_len) for u in long_users], device=dev)
        x = item_emb[rows].float()
        cluster = _split_rounds(x, owner, leaf, target_len, iters, seed, max_rounds, backend)
        rep_rows, rep_size, cluster_of_rep = _representatives(x, cluster, rows)
        if continuous is not None:
            sums = torch.zeros(rep_rows.shape[0], continuous.shape[1], device=dev,
                               dtype=torch.float32).index_add_(0, cluster, continuous[rows].float())
            rep_cont = (sums / rep_size[:, None].to(sums.dtype))[cluster_of_rep]
    all_rows = torch.cat([r.to(dev) for r in keep_rows] + [rep_rows])
    all_size = torch.cat([s.to(dev) for s in keep_size] + [rep_size])
    order = torch.argsort(all_rows)  # packed input is user-major, chronological within a user
    index, cluster_size = all_rows[order], all_size[order]
    user_of_row = torch.searchsorted(torch.tensor(cu[1:], device=dev), index, right=True)
    out_cu = torch.zeros(len(lengths) + 1, dtype=torch.int64, device=dev)
    out_cu[1:] = torch.bincount(user_of_row, minlength=len(lengths)).cumsum(0)
    cont = None
    if continuous is not None:
        # Pass-through rows copy their features exactly; kept cluster rows take the means.
        cont = continuous[index].clone()
        if rep_cont is not None and rep_rows.numel():
            pos = torch.searchsorted(index, rep_rows)
            cont[pos] = rep_cont.to(cont.dtype)
    return CompressedHistory(index=index, cu_seqlens=out_cu, cluster_size=cluster_size,
                             continuous=cont)


def _split_rounds(x, owner, leaf, target_len, iters, seed, max_rounds, backend) -> torch.Tensor:
    """Cluster id (compact, in [0, C)) of every item after the recursive splitting."""
    dev = x.device
    gen = torch.Generator().manual_seed(seed)
    cluster = owner.clone()  # one cluster per user to start
    num_users = int(owner.max()) + 1
    for _ in range(max_rounds):
        num_clusters = int(cluster.max()) + 1
        sizes = torch.bincount(cluster, minlength=num_clusters)
        c_user = torch.zeros(num_clusters, dtype=torch.int64, device=dev).scatter_(0, cluster, owner)
        want = torch.where(sizes > leaf[c_user], torch.round(sizes.double() ** (1 / 3)).long().clamp_min(2),
                           torch.ones_like(sizes)).minimum(sizes)
        # Per-user cap: at most target_len clusters; the largest clusters get the budget first.
        budget = target_len - torch.bincount(c_user, minlength=num_users)
        order = torch.argsort(-sizes, stable=True)
        order = order[torch.argsort(c_user[order], stable=True)]  # by user, then size desc
        extra = (want - 1)[order]
        before = extra.cumsum(0) - extra
        user_sorted = c_user[order]
        first = torch.searchsorted(user_sorted, user_sorted)  # each user's first position
        before = before - before[first]
        allowed = (budget[user_sorted] - before).clamp_min(0)
        k = torch.ones_like(sizes)
        k[order] = 1 + extra.minimum(allowed)
        split = k > 1
        if not bool(split.any()):
            break
        new_cluster = _split(x, cluster, split, k, iters, gen, backend)
        if int(new_cluster.max()) + 1 == num_clusters:
            break  # no split produced a second non-empty cluster (e.g. duplicate items)
        cluster = new_cluster
    return cluster


def _split(x, cluster, split, k, iters, gen, backend) -> torch.Tensor:
    """One round: k-means each cluster with split[c] into k[c] clusters; renumber compactly in
    (old cluster, new centroid) order."""
    dev = x.device
    moving = split[cluster]
    item_idx = torch.nonzero(moving).squeeze(1)
    # Groups = the clusters being split, renumbered 0..G-1 in cluster order; items sorted by group.
    group_of_cluster = torch.cumsum(split.long(), 0) - 1
    item_idx = item_idx[torch.argsort(cluster[item_idx], stable=True)]
    g_item = group_of_cluster[cluster[item_idx]]
    k_group = k[split]
    # Initial centroids: k distinct random items of each group (random keys, ranked per group).
    keys = torch.rand(item_idx.shape[0], generator=gen).to(dev)
    perm = torch.argsort(keys)
    perm = perm[torch.argsort(g_item[perm], stable=True)]
    g_sorted = g_item[perm]
    group_start = torch.searchsorted(g_sorted, g_sorted)
    rank = torch.arange(perm.shape[0], device=dev) - group_start
    pick = perm[rank < k_group[g_sorted]]  # grouped, k_group[g] per group
    cent_group = g_item[pick]
    cent_offset = torch.cumsum(k_group, 0) - k_group  # first centroid of each group
    assign = torch.empty(item_idx.shape[0], dtype=torch.int64, device=dev)
    g_sizes = torch.bincount(g_item, minlength=k_group.shape[0]).tolist()
    item_start = [0] + torch.tensor(g_sizes).cumsum(0).tolist()
    c_start = [0] + k_group.cumsum(0).tolist()
    for a, b in _chunks(g_sizes, k_group.tolist(), _PAIR_BUDGET):
        xs = x[item_idx[item_start[a]:item_start[b]]]
        local = _lloyd_batched(xs, g_item[item_start[a]:item_start[b]] - a,
                               x[item_idx[pick[c_start[a]:c_start[b]]]],
                               cent_group[c_start[a]:c_start[b]] - a, iters, backend)
        assign[item_start[a]:item_start[b]] = local + c_start[a]
    # New ids: unsplit clusters keep one slot, split ones get k slots (empty ones vanish below).
    slots = torch.where(split, k, torch.ones_like(k))
    slot0 = torch.cumsum(slots, 0) - slots
    new = slot0[cluster]
    new[item_idx] = slot0[cluster[item_idx]] + (assign - cent_offset[g_item])
    return torch.unique(new, return_inverse=True)[1]


def _representatives(x, cluster, rows):
    """Per cluster: the row of the item nearest its centroid (ties: the earliest), the cluster
    size; and for each representative its cluster id."""
    num_clusters = int(cluster.max()) + 1
    size = torch.bincount(cluster, minlength=num_clusters)
    cent = torch.zeros(num_clusters, x.shape[1], device=x.device).index_add_(0, cluster, x)
    cent /= size[:, None]
    dist = (x - cent[cluster]).square().sum(1)
    best = torch.full((num_clusters,), float("inf"), device=x.device).scatter_reduce(
        0, cluster, dist, "amin")
    cand = torch.where(dist <= best[cluster], rows, torch.iinfo(torch.int64).max)
    rep = torch.full((num_clusters,), torch.iinfo(torch.int64).max, device=x.device).scatter_reduce(
        0, cluster, cand, "amin")
    return rep, size, torch.arange(num_clusters, device=x.device)

"""Plain-PyTorch k-means: the oracles of the tests, the fallbacks, and the benchmark anchors.
`kmeans_step_reference`: one Lloyd step (chunked GEMM + argmin + index_add).
`grouped_kmeans_reference`: Lloyd steps of many independent groups (padded, gathered centroids)."""
from __future__ import annotations

import torch

from ..rq.reference import _ROW_CHUNK, _argmin_nan_last


def kmeans_step_reference(x: torch.Tensor, centroids: torch.Tensor, row_chunk: int = _ROW_CHUNK
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Lloyd step, chunked over rows so the (rows, K) score block stays small.

    x: (N, D) float; centroids: (K, D) same dtype. Works in float32 (float64 for float64 inputs).
    Assignment: argmin_k ||c_k||^2 - 2 x.c_k (ties: lowest k, torch.argmin's rule; NaN scores
    never win, so an all-NaN row gets 0).
    Returns assignments (N,) int64, sums (K, D) float32, counts (K,) int64 and inertia, a 0-d
    float32 tensor: the sum of the exact squared distances ||x_i - c_{a_i}||^2 (accumulated in
    float64).
    """
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    n, d = x.shape
    k = centroids.shape[0]
    c = centroids.detach().to(work)
    c_norm = (c * c).sum(dim=1)
    assignments = torch.empty((n,), dtype=torch.int64, device=x.device)
    sums = torch.zeros((k, d), dtype=work, device=x.device)
    inertia = torch.zeros((), dtype=torch.float64, device=x.device)
    with torch.no_grad():
        for start in range(0, n, row_chunk):
            rows = x[start:start + row_chunk].detach().to(work)
            a = _argmin_nan_last(c_norm - 2.0 * (rows @ c.T))
            assignments[start:start + row_chunk] = a
            sums.index_add_(0, a, rows)
            inertia += (rows - c[a]).square().sum(dtype=torch.float64)
    counts = torch.bincount(assignments, minlength=k)
    return assignments, sums.float(), counts, inertia.float()


DIST_LANES = 8  # the lane order of the squared distances (csrc/core/kmeans.h, kDistLanes)
_GATHER_BUDGET = 1 << 24  # elements of the (rows, K_max, D) block of one distance chunk


def _lane_sq_dist(x_pad: torch.Tensor, c_pad: torch.Tensor) -> torch.Tensor:
    """(R, J) fp32 ||x - c||^2 of x_pad (R, 1, Dp) against c_pad (R, J, Dp), Dp a multiple of
    DIST_LANES, in the C++ kernel's order: 8 running lane sums, then a fixed tree."""
    sq = (x_pad - c_pad).square()
    acc = sq[..., :DIST_LANES]
    for t in range(DIST_LANES, sq.shape[-1], DIST_LANES):
        acc = acc + sq[..., t:t + DIST_LANES]
    half = acc[..., :4] + acc[..., 4:]  # (s0+s4, s1+s5, s2+s6, s3+s7)
    return (half[..., 0] + half[..., 2]) + (half[..., 1] + half[..., 3])


def grouped_kmeans_reference(x: torch.Tensor, centroids: torch.Tensor, x_offsets: torch.Tensor,
                             centroid_offsets: torch.Tensor, iters: int
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd steps of many independent k-means problems (the semantics of `grouped_kmeans`).

    x: (N, D) float, grouped: group g owns rows x_offsets[g]:x_offsets[g+1]; centroids: (K, D),
    group g's initial ones at centroid_offsets[g]:centroid_offsets[g+1] (>= 1 where it has rows);
    offsets (G + 1,) int64. Each step: a_i = argmin over the group's centroids of the exact
    squared distance (fp32 differences, summed in the lane order of the C++ kernel; ties: the
    lowest index; NaN never wins, a row with no finite distance gets the group's first
    centroid), then each centroid with rows becomes their mean (summed in float64, rounded once)
    and the others stay. Stops once a step repeats the previous assignments (CPU tensors only:
    the check is a host sync; the result is the same either way).
    Returns assignments (N,) int64 global centroid indices in [0, K) and the final (K, D) float32
    centroids (the means of those assignments).
    """
    n, d = x.shape
    k = centroids.shape[0]
    dev = x.device
    x_offsets, centroid_offsets = x_offsets.long(), centroid_offsets.long()
    num_groups = x_offsets.shape[0] - 1
    rows_per_group = x_offsets[1:] - x_offsets[:-1]
    k_per_group = centroid_offsets[1:] - centroid_offsets[:-1]
    if n == 0 or num_groups == 0:
        return torch.empty((0,), dtype=torch.int64, device=dev), centroids.float().clone()
    k_max = int(k_per_group.max())
    group = torch.repeat_interleave(torch.arange(num_groups, device=dev), rows_per_group,
                                    output_size=n)
    c_group = torch.repeat_interleave(torch.arange(num_groups, device=dev), k_per_group,
                                      output_size=k)
    # Centroid j lives in slot (group, j - first centroid of its group) of a (G, K_max) grid.
    slot = c_group * k_max + torch.arange(k, device=dev) - centroid_offsets[c_group]
    d_pad = -(-d // DIST_LANES) * DIST_LANES
    x32 = x.detach().float()
    x_pad = torch.nn.functional.pad(x32, (0, d_pad - d))[:, None, :]
    x64 = x32.double()
    c_pad = torch.zeros(num_groups * k_max, d_pad, device=dev)
    c_pad[slot, :d] = centroids.detach().float()
    filler = torch.ones(num_groups * k_max, dtype=torch.bool, device=dev)
    filler[slot] = False  # slots past a group's own centroids: never chosen
    chunk = max(1, _GATHER_BUDGET // (k_max * d_pad))
    base = group * k_max
    local = None
    for _ in range(iters):
        grid = c_pad.view(num_groups, k_max, d_pad)
        parts = []
        for s in range(0, n, chunk):
            g = group[s:s + chunk]
            dist = _lane_sq_dist(x_pad[s:s + chunk], grid[g])
            dist = dist.masked_fill(torch.isnan(dist) | filler.view(num_groups, k_max)[g],
                                    float("inf"))
            parts.append(dist.argmin(dim=1))  # first minimum: the lowest index
        new = torch.cat(parts) if len(parts) > 1 else parts[0]
        if local is not None and dev.type == "cpu" and torch.equal(new, local):
            break  # a fixed point: the update would change nothing
        local = new
        target = base + local
        sums = torch.zeros(num_groups * k_max, d, dtype=torch.float64, device=dev)
        sums.index_add_(0, target, x64)
        counts = torch.bincount(target, minlength=num_groups * k_max)
        means = (sums / counts.clamp_min(1)[:, None]).float()
        c_pad[:, :d] = torch.where((counts > 0)[:, None], means, c_pad[:, :d])
    return centroid_offsets[group] + local, c_pad[slot, :d].contiguous()

"""Plain-PyTorch k-means step: the oracle of the tests, the fallback, and the benchmark anchor
(chunked GEMM + argmin + index_add)."""
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

"""Plain-PyTorch greedy residual quantization: the oracle of the tests and the fallback."""
from __future__ import annotations

import torch

# Rows per distance block: the (rows, K) fp32 score block stays at 64 MiB for K = 8192.
_ROW_CHUNK = 2048


def _argmin_nan_last(scores: torch.Tensor) -> torch.Tensor:
    """argmin over dim 1 where NaN counts as +inf (torch.argmin would pick the NaN)."""
    return scores.masked_fill(scores.isnan(), float("inf")).argmin(dim=1)


def rq_assign_reference(x: torch.Tensor, codebooks: torch.Tensor,
                        row_chunk: int = _ROW_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy residual quantization, one level after another.

    x: (N, D) float; codebooks: (L, K, D) same dtype. Works in float32 (float64 for float64
    inputs). Per level: c = argmin_k ||r - codebooks[l, k]||^2 via ||c||^2 - 2 r.c (ties: lowest
    k, torch.argmin's rule; a NaN score never wins, so an all-NaN row gets 0, as in every
    backend), then r -= codebooks[l, c].
    Returns codes (N, L) int64 and the final residual (N, D) in x's dtype (differentiable with
    respect to x and codebooks; the codes are not).
    """
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    n, _ = x.shape
    num_levels = codebooks.shape[0]
    cb = codebooks.to(work)
    codes = torch.empty((n, num_levels), dtype=torch.int64, device=x.device)
    with torch.no_grad():
        r = x.detach().to(work).clone()
        for level in range(num_levels):
            c = cb[level]
            c_norm = (c * c).sum(dim=1)
            for start in range(0, n, row_chunk):
                rows = r[start:start + row_chunk]
                scores = c_norm - 2.0 * (rows @ c.T)
                codes[start:start + row_chunk, level] = _argmin_nan_last(scores)
            r -= c[codes[:, level]]
    if not (torch.is_grad_enabled() and (x.requires_grad or codebooks.requires_grad)):
        return codes, r.to(x.dtype)
    # Rebuilt outside no_grad so gradients flow to x and the codebooks (straight-through).
    chosen = codebooks.to(work)[torch.arange(num_levels, device=x.device), codes]  # (N, L, D)
    residual = x.to(work) - chosen.sum(dim=1)
    return codes, residual.to(x.dtype)

"""Fused k-means step in one Triton kernel.

One program owns BLOCK_N rows. The nearest centroid comes from the tile loop shared with
`rq_assign` (`nearest_code_tile` in onerec_kernels/rq/triton_kernels.py: streamed BLOCK_K-code
tiles, tl.dot scores, running argmin in registers, no (N, K) matrix in memory). The same program
then rereads its rows (from L2: BLOCK_N x D is small) in BLOCK_D slices and, in that one pass,
  - scatters them into the per-centroid sums with tl.atomic_add (fp32; coalesced: each row
    adds BLOCK_D contiguous floats to its centroid's row),
  - adds its exact squared distance ||x - c||^2 (fp32, from the gathered centroid row),
then adds 1 per row to the counts and one per-program partial to the inertia.

Why atomics rather than a two-phase (sort, segment-sum) reduction: the scatter moves N*D floats
once, the GEMM above it is 2*N*K*D FLOPs, so at K = 8192 the atomics are ~1/K of the work and
sit in L2; a sort would need another pass over the data. The price: fp32 addition order, and so
the sums' last bits, vary from run to run on the GPU (assignments and counts do not).

FLOPs: 2*N*K*D (the norm trick). Bytes: x read twice (once per phase) + centroids once per
program tile + N*D atomics.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton_tiles import (EVEN_TILES, aot_spec, autotune_configs, codebook_descriptor,
                             dot_input_precision, launch, prune_to_family, register_aot)
from ..rq.triton_kernels import nearest_code_tile


# reset_to_zero: autotuning runs the kernel once per config (and repeatedly), and every run adds
# into the same accumulators; Triton re-zeroes them before each trial run.
@triton.autotune(configs=autotune_configs("kmeans_step"), key=["D", "K", "INPUT_PRECISION"],
                 prune_configs_by={"early_config_prune": prune_to_family},
                 reset_to_zero=["sums_ptr", "counts_ptr", "inertia_ptr"])
@triton.heuristics(EVEN_TILES)
@triton.jit
def _kmeans_step_kernel(
    x_ptr,  # (N, D) input dtype, row stride stride_xn, unit column stride
    c_ptr,  # (K, D) input dtype, contiguous
    cb_desc,  # None, or a tensor descriptor of the centroids (USE_TMA)
    cnorm_ptr,  # (K,) fp32: ||centroids[k]||^2
    assign_ptr,  # (N,) int64 out
    sums_ptr,  # (K, D) fp32, zeroed, accumulated with atomics
    counts_ptr,  # (K,) int32, zeroed, accumulated with atomics
    inertia_ptr,  # (1,) fp32, zeroed, accumulated with atomics
    N,
    D,
    K,
    stride_xn,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    FLAT: tl.constexpr,
    EVEN_K: tl.constexpr,
    EVEN_D: tl.constexpr,
    USE_TMA: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    rows64 = rows.to(tl.int64)
    x_rows = x_ptr + rows64[:, None] * stride_xn

    _, best_idx = nearest_code_tile(x_rows, c_ptr, cb_desc, 0, cnorm_ptr, row_mask, D, K,
                                    INPUT_PRECISION, BLOCK_N, BLOCK_K, BLOCK_D, FLAT, EVEN_K,
                                    EVEN_D, USE_TMA)
    idx64 = best_idx.to(tl.int64)
    tl.store(assign_ptr + rows64, idx64, mask=row_mask)

    offs_d = tl.arange(0, BLOCK_D)
    chosen = c_ptr + idx64[:, None] * D
    sum_rows = sums_ptr + idx64[:, None] * D
    sq = tl.zeros((BLOCK_N,), tl.float32)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + offs_d
        m = row_mask[:, None] & (ds < D)[None, :]
        xs = tl.load(x_rows + ds[None, :], mask=m, other=0.0).to(tl.float32)
        cs = tl.load(chosen + ds[None, :], mask=m, other=0.0).to(tl.float32)
        diff = xs - cs
        sq += tl.sum(diff * diff, axis=1)
        tl.atomic_add(sum_rows + ds[None, :], xs, mask=m, sem="relaxed")
    ones = tl.full((BLOCK_N,), 1, tl.int32)
    tl.atomic_add(counts_ptr + idx64, ones, mask=row_mask, sem="relaxed")
    tl.atomic_add(inertia_ptr, tl.sum(tl.where(row_mask, sq, 0.0), axis=0), sem="relaxed")


def kmeans_step_triton(x: torch.Tensor, centroids: torch.Tensor, *, config=None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the fused kernel. x (N, D) with unit column stride, centroids (K, D) contiguous,
    same dtype; 1 <= N < 2^31 (checked by the caller). Returns assignments (N,) int64, sums
    (K, D) fp32, counts (K,) int64, inertia 0-d fp32. config: force one tile config (see
    onerec_kernels._triton_tiles.launch) instead of autotuning."""
    n, d = x.shape
    k = centroids.shape[0]
    c_norm = centroids.float().square().sum(dim=-1).contiguous()
    assignments = torch.empty((n,), dtype=torch.int64, device=x.device)
    sums = torch.zeros((k, d), dtype=torch.float32, device=x.device)
    counts = torch.zeros((k,), dtype=torch.int32, device=x.device)
    inertia = torch.zeros((1,), dtype=torch.float32, device=x.device)
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    precision = dot_input_precision(x.dtype)
    launch(_kmeans_step_kernel, grid, x, centroids, codebook_descriptor(centroids, precision),
           c_norm, assignments, sums, counts, inertia, n, d, k, x.stride(0),
           INPUT_PRECISION=precision, device=x.device, config=config)
    return assignments, sums, counts.to(torch.int64), inertia.reshape(())


def _aot_spec(family: str, config, tma: bool) -> tuple[dict, dict]:
    return aot_spec(family, config, tma, {
        "x_ptr": "*op", "c_ptr": "*op", "cb_desc": "desc", "cnorm_ptr": "*fp32",
        "assign_ptr": "*i64",
        "sums_ptr": "*fp32", "counts_ptr": "*i32", "inertia_ptr": "*fp32", "N": "i32", "D": "i32",
        "K": "i32", "stride_xn": "i32"})


register_aot("kmeans_step", _kmeans_step_kernel, _aot_spec)

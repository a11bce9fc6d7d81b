"""Fused greedy residual quantization in one Triton kernel.

A program owns BLOCK_N rows for all L levels. Per level it streams the level's codebook in
BLOCK_K-code tiles; each tile's scores ||c||^2 - 2 r.c come from a tiled tl.dot over D (fp32
accumulation), and a running (min, argmin) per row is kept in registers across tiles, so the
(N, K) distance matrix never exists in memory. The chosen code is then subtracted from the
residual, which the program keeps in its own BLOCK_N scratch rows (no other program touches
them; barriers order its threads' writes and reads), and the next level reads that residual.
Level 0 reads x directly; the last level writes the residual to the output only when the caller
asked for it.

Why the residual lives in a global buffer rather than registers: it is the A operand of the
tiled GEMM, loaded in BLOCK_D slices, and Triton cannot slice a register tile; the program
rereads it from L2 (BLOCK_N x D is small) once per code tile, which is what a GEMM does anyway.
The buffer holds the operand only, in the input dtype (what the tensor cores take: no fp32 copy
to load and convert on every code tile); the exact fp32 residual is rebuilt from x and the
chosen codes at each update, in the reference's order, so rounding never accumulates. The
buffer holds one launch's rows, and N is launched in chunks of SMs * 1024 rows, so it stays
small whatever N is. Which tensor cores (if any) run the dot: see
onerec_kernels/_triton_tiles.py (fp32 inputs use exact fp32 FMA unless torch's TF32 switch is
on).

FLOPs: 2*N*K*D per level (the norm trick); minimum bytes: read x and the codebooks once, write
the codes (and the residual if asked): at N=1M, K=8192, D=512 that is ~26 TFLOP against ~1 GB,
so HBM is no limit. L2 is the one to watch: every program streams the whole level codebook
(K*D*2 bytes) and rereads its own A rows once per code tile, i.e. per (BLOCK_N x BLOCK_K) output
tile 2*BLOCK_N*BLOCK_K*D FLOPs for (BLOCK_N + BLOCK_K)*D*2 bytes: 64 FLOP/B at 128x128, 85 at
128x256 (what cuBLAS-class GEMMs run at), so the large tiles are in the autotune list.

Two loop shapes, both in the autotune list (FLAT): nested (code tiles outside, D slices inside:
the software pipeline restarts at every code tile) and flat (one loop over code tile x D slice
with the argmin epilogue under `if` at the last slice, the persistent-matmul pattern: the
pipeline never drains). Which wins depends on D/BLOCK_D and is left to the autotuner.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton_tiles import (EVEN_TILES, aot_spec, autotune_configs, codebook_descriptor,
                             dot_input_precision, launch, prune_to_family, register_aot)


@triton.jit
def _score_slice(acc, a_rows, cb_ptr, cb_desc, cb_row0, row_mask, k0, d0, offs_k, offs_d, D, K,
                 op_dtype: tl.constexpr, INPUT_PRECISION: tl.constexpr, EVEN_K: tl.constexpr,
                 EVEN_D: tl.constexpr, USE_TMA: tl.constexpr):
    """acc += a[:, d0:d0+BLOCK_D] @ codebook[k0:k0+BLOCK_K, d0:d0+BLOCK_D]^T for one (code tile,
    D slice). USE_TMA: the codebook tile comes through its tensor descriptor (rows cb_row0 + k0
    of the (L * K, D) view; TMA zero-fills past the end, and codes past K are masked by their
    +inf norm), so no thread holds a pointer or mask for it: the B tile's addresses were most of
    the registers the 128x256 tile spilled. EVEN_K / EVEN_D (pointer path): K / D are multiples
    of the tile, so those masks go."""
    ks = k0 + offs_k
    ds = d0 + offs_d
    if EVEN_D:
        a_mask = row_mask[:, None]
    else:
        a_mask = row_mask[:, None] & (ds < D)[None, :]
    a = tl.load(a_rows + ds[None, :], mask=a_mask, other=0.0).to(op_dtype)
    if USE_TMA:
        b = cb_desc.load([cb_row0 + k0, d0]).T
    else:
        b_ptrs = cb_ptr + ks[None, :].to(tl.int64) * D + ds[:, None]
        if EVEN_K and EVEN_D:
            b = tl.load(b_ptrs)
        elif EVEN_D:
            b = tl.load(b_ptrs, mask=(ks < K)[None, :], other=0.0)
        else:
            b = tl.load(b_ptrs, mask=(ks < K)[None, :] & (ds < D)[:, None], other=0.0)
    return tl.dot(a, b, acc, input_precision=INPUT_PRECISION)


@triton.jit
def _argmin_update(acc, cnorm_ptr, k0, offs_k, K, best_val, best_idx, BLOCK_K: tl.constexpr):
    """Fold one code tile's dot products into the running (min, argmin) of each row."""
    ks = k0 + offs_k
    c_norm = tl.load(cnorm_ptr + ks, mask=ks < K, other=float("inf"))
    scores = c_norm[None, :] - 2.0 * acc
    # NaN never wins (all backends agree): an all-NaN row keeps code 0.
    scores = tl.where(scores == scores, scores, float("inf"))
    tile_min = tl.min(scores, axis=1)
    tile_arg = tl.min(tl.where(scores == tile_min[:, None], offs_k[None, :], BLOCK_K), axis=1)
    # Strict '<': an earlier tile keeps ties, so the lowest index wins overall.
    better = tile_min < best_val
    return tl.where(better, tile_min, best_val), tl.where(better, tile_arg + k0, best_idx)


@triton.jit
def nearest_code_tile(
    a_rows,  # (BLOCK_N, 1) pointers to the starts of this program's rows (unit column stride)
    cb_ptr,  # (K, D) codebook, contiguous; its dtype is the tensor-core operand dtype
    cb_desc,  # USE_TMA: tensor descriptor of the codebook rows (block BLOCK_K x BLOCK_D)
    cb_row0,  # USE_TMA: the codebook's first row in cb_desc
    cnorm_ptr,  # (K,) fp32 squared norms of the codebook rows
    row_mask,  # (BLOCK_N,) which rows exist
    D,
    K,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    FLAT: tl.constexpr,
    EVEN_K: tl.constexpr,
    EVEN_D: tl.constexpr,
    USE_TMA: tl.constexpr,
):
    """Nearest code of BLOCK_N rows: streams the codebook in BLOCK_K-code tiles, scores
    ||c||^2 - 2 a.c with a tiled tl.dot over D (fp32 accumulation) and keeps a running
    (min, argmin) per row in registers, so no (N, K) distance matrix exists. Rows are loaded in
    BLOCK_D slices and cast to the codebook dtype. Ties: the lowest code; an all-NaN row gets 0.
    Returns (best score (BLOCK_N,) fp32, best code (BLOCK_N,) int32). Shared by `rq_assign`
    and `kmeans_step` (onerec_kernels/kmeans/triton_kernels.py)."""
    offs_k = tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, BLOCK_D)
    op_dtype = cb_ptr.dtype.element_ty
    best_val = tl.full((BLOCK_N,), float("inf"), tl.float32)
    best_idx = tl.zeros((BLOCK_N,), tl.int32)
    if FLAT:
        num_d = tl.cdiv(D, BLOCK_D)
        acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
        for it in range(0, tl.cdiv(K, BLOCK_K) * num_d):
            k0 = (it // num_d) * BLOCK_K
            d_it = it % num_d
            acc = _score_slice(acc, a_rows, cb_ptr, cb_desc, cb_row0, row_mask, k0, d_it * BLOCK_D,
                               offs_k, offs_d, D, K, op_dtype, INPUT_PRECISION, EVEN_K, EVEN_D,
                               USE_TMA)
            if d_it == num_d - 1:
                best_val, best_idx = _argmin_update(acc, cnorm_ptr, k0, offs_k, K, best_val,
                                                    best_idx, BLOCK_K)
                acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
    else:
        for k0 in range(0, K, BLOCK_K):
            acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
            for d0 in range(0, D, BLOCK_D):
                acc = _score_slice(acc, a_rows, cb_ptr, cb_desc, cb_row0, row_mask, k0, d0, offs_k,
                                   offs_d, D, K, op_dtype, INPUT_PRECISION, EVEN_K, EVEN_D,
                                   USE_TMA)
            best_val, best_idx = _argmin_update(acc, cnorm_ptr, k0, offs_k, K, best_val, best_idx,
                                                BLOCK_K)
    return best_val, best_idx


@triton.autotune(configs=autotune_configs("rq_assign"), key=["D", "K", "L", "INPUT_PRECISION"],
                 prune_configs_by={"early_config_prune": prune_to_family})
@triton.heuristics(EVEN_TILES)
@triton.jit
def _rq_assign_kernel(
    x_ptr,  # (N, D) input dtype, row stride stride_xn, unit column stride
    cb_ptr,  # (L, K, D) input dtype, contiguous
    cb_desc,  # None, or a tensor descriptor of the (L * K, D) codebook rows (USE_TMA)
    cnorm_ptr,  # (L, K) fp32: ||codebooks[l, k]||^2
    codes_ptr,  # (N, L) int64
    scratch_ptr,  # (chunk rows, D) input dtype: the residual as the next level's dot operand
    out_ptr,  # (N, D) input dtype: the final residual (WRITE_RESIDUAL only)
    N,
    D,
    K,
    stride_xn,
    L: tl.constexpr,
    WRITE_RESIDUAL: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    FLAT: tl.constexpr,
    EVEN_K: tl.constexpr,
    EVEN_D: tl.constexpr,
    USE_TMA: tl.constexpr,
):
    # The launcher cuts N into chunks of at most scratch-many rows (one launch each), so the
    # residual scratch holds one chunk: row i of the chunk uses scratch row i.
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    rows64 = rows.to(tl.int64)
    x_rows = x_ptr + rows64[:, None] * stride_xn
    res_rows = scratch_ptr + rows64[:, None] * D
    out_rows = out_ptr + rows64[:, None] * D
    offs_d = tl.arange(0, BLOCK_D)
    for level in tl.static_range(L):
        cb_level = cb_ptr + level * K.to(tl.int64) * D  # L * K * D may pass 2^31
        # `level` is a compile-time constant: level 0 reads x directly, later levels the
        # residual operand the previous level left in the scratch rows.
        if level == 0:
            best_val, best_idx = nearest_code_tile(x_rows, cb_level, cb_desc, level * K,
                                                   cnorm_ptr + level * K, row_mask, D, K,
                                                   INPUT_PRECISION, BLOCK_N, BLOCK_K, BLOCK_D,
                                                   FLAT, EVEN_K, EVEN_D, USE_TMA)
        else:
            best_val, best_idx = nearest_code_tile(res_rows, cb_level, cb_desc, level * K,
                                                   cnorm_ptr + level * K, row_mask, D, K,
                                                   INPUT_PRECISION, BLOCK_N, BLOCK_K, BLOCK_D,
                                                   FLAT, EVEN_K, EVEN_D, USE_TMA)
        tl.store(codes_ptr + rows64 * L + level, best_idx.to(tl.int64), mask=row_mask)

        if (level < L - 1) or WRITE_RESIDUAL:
            # The scratch rows are read as the dot operand (one thread layout) and rewritten
            # below (another), and the codes of earlier levels are reread in yet another: every
            # thread's reads and writes must be ordered (WAR and RAW) ...
            tl.debug_barrier()
            for d0 in range(0, D, BLOCK_D):
                ds = d0 + offs_d
                m = row_mask[:, None] & (ds < D)[None, :]
                # The residual is rebuilt from x in fp32 in the reference's order,
                # ((x - c_0) - c_1) - ..., so no fp32 copy of it is kept between levels: the
                # scratch holds only the dot operand (input dtype: half of fp32's bytes for
                # fp16/bf16, loaded straight into the tensor-core pipeline, no conversion).
                r = tl.load(x_rows + ds[None, :], mask=m, other=0.0).to(tl.float32)
                for prev in tl.static_range(level):
                    idx = tl.load(codes_ptr + rows64 * L + prev, mask=row_mask, other=0)
                    c = tl.load(cb_ptr + prev * K.to(tl.int64) * D + idx[:, None] * D + ds[None, :],
                                mask=m, other=0.0)
                    r = r - c.to(tl.float32)
                c = tl.load(cb_level + best_idx.to(tl.int64)[:, None] * D + ds[None, :], mask=m,
                            other=0.0)
                r = r - c.to(tl.float32)
                if level == L - 1:
                    tl.store(out_rows + ds[None, :], r.to(out_ptr.dtype.element_ty), mask=m)
                else:
                    tl.store(res_rows + ds[None, :], r.to(scratch_ptr.dtype.element_ty), mask=m)
            # ... and the next level's operand loads must see every thread's writes.
            tl.debug_barrier()


# Rows of the residual scratch, per SM: N is processed in chunks of SMs * this rows (one
# launch each, reusing the scratch), so no buffer grows with N. 1024 rows = 4 full waves of
# 256-row tiles (8 of 128), so chunking adds no wave-quantization loss but the last chunk's.
_SCRATCH_ROWS_PER_SM = 1024
_INTERPRET_SCRATCH_ROWS = 64  # CPU tests: small, so several chunks run


def scratch_rows(n: int, device: torch.device) -> int:
    """Rows of the residual scratch (and of a launch's chunk) for N rows: at most N, and
    independent of N once N is large."""
    if device.type == "cuda":
        cap = torch.cuda.get_device_properties(device).multi_processor_count * _SCRATCH_ROWS_PER_SM
    else:
        cap = _INTERPRET_SCRATCH_ROWS
    return min(n, cap)


def rq_assign_triton(x: torch.Tensor, codebooks: torch.Tensor, write_residual: bool, *,
                     config=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Launch the fused kernel. x (N, D) with unit column stride, codebooks (L, K, D)
    contiguous, same dtype; N >= 1 (checked by the caller). Returns codes (N, L) int64 and, when
    write_residual, the final residual (N, D) in x's dtype (else None). config: force one tile
    config (a dict of BLOCK_N, BLOCK_K, BLOCK_D, FLAT, or a triton.Config) instead of autotuning.

    Memory: besides the outputs, a scratch of scratch_rows(N) x D in x's dtype when L > 1 (at most
    SMs * 1024 rows: N is launched in chunks of that many rows), and nothing N x D unless
    write_residual. A program per BLOCK_N rows, no persistent loop: a loop over row tiles
    around the level loop costs ~25 registers per thread and made the 128x128 flat tile spill.
    """
    n, d = x.shape
    num_levels, k, _ = codebooks.shape
    c_norm = codebooks.float().square().sum(dim=-1).contiguous()
    codes = torch.empty((n, num_levels), dtype=torch.int64, device=x.device)
    # L = 1: nothing between levels, the scratch is never touched (one row stands in).
    chunk = scratch_rows(n, x.device) if num_levels > 1 else n
    scratch = torch.empty((chunk if num_levels > 1 else 1, d), dtype=x.dtype,
                          device=x.device)
    out = torch.empty((n, d) if write_residual else (1, 1), dtype=x.dtype, device=x.device)
    precision = dot_input_precision(x.dtype)
    cb_desc = codebook_descriptor(codebooks.view(num_levels * k, d), precision)
    for start in range(0, n, chunk):  # kernels on one stream: each chunk reuses the scratch
        rows = min(chunk, n - start)
        grid = lambda meta, rows=rows: (triton.cdiv(rows, meta["BLOCK_N"]),)  # noqa: E731
        launch(_rq_assign_kernel, grid, x[start:], codebooks, cb_desc, c_norm, codes[start:],
               scratch, out[start:] if write_residual else out, rows, d, k, x.stride(0),
               L=num_levels, WRITE_RESIDUAL=write_residual, INPUT_PRECISION=precision,
               device=x.device, config=config)
    return codes, (out if write_residual else None)


def _aot_spec(family: str, config, tma: bool) -> tuple[dict, dict]:
    """A typical call: three levels, no residual asked for."""
    return aot_spec(family, config, tma, {
        "x_ptr": "*op", "cb_ptr": "*op", "cb_desc": "desc", "cnorm_ptr": "*fp32",
        "codes_ptr": "*i64", "scratch_ptr": "*op", "out_ptr": "*op", "N": "i32", "D": "i32", "K": "i32",
        "stride_xn": "i32"}, L=3, WRITE_RESIDUAL=False)


register_aot("rq_assign", _rq_assign_kernel, _aot_spec)

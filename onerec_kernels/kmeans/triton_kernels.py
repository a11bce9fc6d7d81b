"""Triton kernels of the k-means family: `kmeans_step`, a fused Lloyd step in one kernel (this
docstring), and `grouped_kmeans`, Lloyd runs of many small independent problems (its own
section below).

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

import os

import torch
import triton
import triton.language as tl

from .._backend import triton_interpret
from .._triton_tiles import (EVEN_TILES, aot_spec, autotune_configs, codebook_descriptor,
                             device_guard, dot_input_precision, grouped_kmeans_configs, launch,
                             prune_to_family, register_aot, register_aot_specs, version_tuple)
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


# ---- grouped_kmeans -------------------------------------------------------------------------
#
# Many small independent k-means problems (groups), `iters` Lloyd steps each, with the per-group
# early stop of the reference, all on the device: 2 launches per step and no host sync (but the
# autotuner's timing on the first call of each key).
#
# Launch 1 per step, `_grouped_assign_kernel`: one program per tile of up to GROUPED_TILE_ROWS
# rows of one group (the tile map is built once per call on the device: tiles never straddle
# groups, so a tile compares its rows with one group's centroids, streamed BLOCK_K at a time).
# Distances are exact fp32 differences summed as the 8 lanes of csrc/core/kmeans.h in the same
# order (the D loop walks 8 columns per step, each lane a running sum, then the fixed tree), and
# the launch turns off FMA contraction (enable_fp_fusion=False), so every distance is bit-equal
# to the reference's and the C++ kernel's. Argmin: ties to the lowest index, NaN never wins (a
# row with no finite distance keeps the group's first centroid). The program then writes the
# assignments, records on the device that its group changed (last_changed[g] = step), and adds
# its rows to fp64 per-centroid sums: per BLOCK_N block, a one-hot (centroid, row) matrix times
# the rows (fp64 tl.dot: exact products, DMMA tensor cores on sm_90), one fp64 atomic per
# (centroid present, column). Non-finite values are left out of the products (0 * NaN would
# reach every centroid) and added on their own, row by row (rare).
# Launch 2 per step, `_grouped_update_kernel`: one program per centroid; a centroid that got
# rows takes sum / count (fp64 division, rounded to fp32 once, as the reference) if its group
# changed at this step, and its sums and count are zeroed for the next step.
# Early stop: a group is active at step s iff s == 0 or it changed at step s - 1
# (last_changed[g] >= s - 1 at the start of step s; other tiles of the group may raise it to s
# during the step, which keeps the test true). Inactive groups' programs exit at once; all
# `iters` steps are launched (knowing when every group has stopped would need a host sync).
#
# Exactness: a centroid column's fp64 sum is exact, hence independent of the atomics' order,
# when rows x largest |value| / smallest nonzero |value| < 2^30 there (every fp32 addend and
# partial sum then fits 53 bits), which is the common case; otherwise its last fp64 bits depend
# on the order, which moves the fp32 mean by one ulp only when it lies that close to a rounding
# boundary, run to run. So on the GPU the centroids equal the reference's except for such rare
# last-bit differences, and the assignments equal the reference's wherever those do not flip
# an exact tie.
#
# Work per Lloyd step, per active group g (n_g rows, k_g centroids, D columns, s bytes per input
# element, 2 for fp16/bf16 and 4 for fp32):
#   distances: 3 n_g k_g D fp32 FLOPs (difference, square, add; k_g padded to BLOCK_K, n_g to
#     BLOCK_N), plus 7 n_g k_g for the lane trees;
#   sums: 2 * 16 * ceil(span / 16) * n_g D fp64 tensor-core FLOPs (span: the centroids a
#     block's rows went to, from the lowest to the highest), n_g D conversions to fp64;
#   bytes: x read twice, n_g D s each (the distance pass; the sums pass, likely from L2; the
#     rereads for further centroid blocks hit L1/L2), the group's centroids 4 k_g D per tile
#     (L2), assignments 16 n_g (the previous step's read, the new written), fp64 atomics
#     8 D per (block, centroid present) <= 8 n_g D, and the update 20 D per centroid that got
#     rows (8 read, 8 zeroed, 4 written).
# Intensity of the distance pass: 3 n_g k_g D FLOPs over n_g D s bytes = 3 k_g / s FLOP/byte
# (0.75 k_g for fp32). These are single-FLOP instructions, which an H200 issues at half its
# datasheet fp32 figure (67 TFLOP/s counts an FMA as 2), ~33 T/s, against 4.8 TB/s: a ridge
# of ~7 FLOP/byte, so with fp32 inputs groups of up to ~9 centroids are bound by memory
# bandwidth, larger ones by the fp32 pipes (datasheet arithmetic, not a measurement). Without
# FMA contraction a (row, centroid, column) costs 3 instructions instead of 2: the price of
# distances bit-equal to the CPU's.
GROUPED_TILE_ROWS = 128
# BLOCK_K (centroids per distance block) is the power of two covering the call's largest group,
# capped at GROUPED_MAX_BLOCK_K and so the (8, BLOCK_K, BLOCK_N) fp32 lane accumulator stays at
# 8 * GROUPED_PAIRS elements (larger groups take several blocks).
GROUPED_PAIRS = 512
GROUPED_MAX_BLOCK_K = 8
# Centroids per one-hot matrix of the sums (the M of the fp64 tl.dot: 16 is its minimum).
GROUPED_SUM_K = 16
GROUPED_UPDATE_BLOCK_D = 128
GROUPED_UPDATE_WARPS = 4


def _needs_f64_hop(x_bits: int) -> bool:
    """Whether the sums' fp64 dot operand needs a no-op reduction over a unit axis between its
    load and the dot: Triton 3.6 (the GPU image's) traces the operand back to a 16-bit load,
    gives it a 16-bit operand layout and fails to compile every 16-bit-input config ("fp64 don't
    support largeK MMA"; found by scripts/device_dryrun.sh). The hop breaks that trace but costs
    registers and shared memory (128-row tiles: 158 -> 222 registers), so only 16-bit inputs on a
    Triton older than 3.9, the first version seen compiling them without it, take it."""
    return x_bits == 16 and version_tuple(triton.__version__) < (3, 9)


def _grouped_block_k(args) -> int:
    return max(2, min(args["k_bucket"], GROUPED_MAX_BLOCK_K, GROUPED_PAIRS // args["BLOCK_N"]))


@triton.jit
def _lane_sq_dist(x_ptr, rows, valid, c_ptr, cents, c_ok, D, BLOCK_N: tl.constexpr,
                  BLOCK_K: tl.constexpr, EVEN_D: tl.constexpr):
    """(BLOCK_K, BLOCK_N) fp32 ||x[rows] - c[cents]||^2 in the lane order of kmeans.h: lane l
    sums the squared differences of the columns l, l + 8, ... in order, then the fixed tree.
    The accumulator is laid out (lane, centroid, row), rows fastest: Triton then gives each
    thread whole 8-column row slices (vector loads), the centroid slices are broadcast, and no
    layout conversion runs inside the D loop (rows fastest in the other orders cost one per
    step through shared memory, and up to 255 registers)."""
    lane3 = tl.arange(0, 8)[:, None, None]
    x3 = x_ptr + rows[None, None, :].to(tl.int64) * D + lane3  # (8, 1, BLOCK_N)
    c3 = c_ptr + cents[None, :, None].to(tl.int64) * D + lane3  # (8, BLOCK_K, 1)
    x_ok = valid[None, None, :]
    c_ok3 = c_ok[None, :, None]
    acc = tl.zeros((8, BLOCK_K, BLOCK_N), tl.float32)
    for d0 in range(0, D, 8):
        if EVEN_D:
            xv = tl.load(x3 + d0, mask=x_ok, other=0.0)
            cv = tl.load(c3 + d0, mask=c_ok3, other=0.0)
        else:  # zero past D: the reference's zero padding, which adds exact zeros
            in_d = (d0 + lane3) < D
            xv = tl.load(x3 + d0, mask=x_ok & in_d, other=0.0)
            cv = tl.load(c3 + d0, mask=c_ok3 & in_d, other=0.0)
        diff = xv.to(tl.float32) - cv
        acc = acc + diff * diff
    # The fixed tree of kmeans.h; a lane is taken out exactly by a sum with zeros.
    s0 = tl.sum(tl.where(lane3 == 0, acc, 0.0), axis=0)
    s1 = tl.sum(tl.where(lane3 == 1, acc, 0.0), axis=0)
    s2 = tl.sum(tl.where(lane3 == 2, acc, 0.0), axis=0)
    s3 = tl.sum(tl.where(lane3 == 3, acc, 0.0), axis=0)
    s4 = tl.sum(tl.where(lane3 == 4, acc, 0.0), axis=0)
    s5 = tl.sum(tl.where(lane3 == 5, acc, 0.0), axis=0)
    s6 = tl.sum(tl.where(lane3 == 6, acc, 0.0), axis=0)
    s7 = tl.sum(tl.where(lane3 == 7, acc, 0.0), axis=0)
    return ((s0 + s4) + (s2 + s6)) + ((s1 + s5) + (s3 + s7))


@triton.autotune(configs=grouped_kmeans_configs(), key=["D", "k_bucket", "rows_bucket"],
                 restore_value=["assign_ptr", "last_ptr"],
                 reset_to_zero=["sums_ptr", "counts_ptr"])
@triton.heuristics({"BLOCK_K": _grouped_block_k,
                    "EVEN_D": lambda args: args["D"] % 8 == 0})
@triton.jit(do_not_specialize=["step", "num_groups", "k_bucket", "rows_bucket"])
def _grouped_assign_kernel(
    x_ptr,  # (N, D) input dtype, contiguous
    c_ptr,  # (K, D) fp32 current centroids, contiguous
    x_off_ptr,  # (G + 1,) int64 row offsets of the groups
    c_off_ptr,  # (G + 1,) int64 centroid offsets of the groups
    tile_group_ptr,  # (T,) int32 group of each tile (>= G: no tile)
    tile_row_ptr,  # (T,) int64 first row of each tile
    assign_ptr,  # (N,) int64 global centroid index of each row, in (previous step) and out
    last_ptr,  # (G,) int32 the last step at which the group's assignments changed (-1: none)
    sums_ptr,  # (K, D) fp64, zero on entry, accumulated with atomics
    counts_ptr,  # (K,) int32, zero on entry, accumulated with atomics
    D,
    num_groups,
    step,
    k_bucket,  # autotune key: bucket of the largest k_g (BLOCK_K comes from it)
    rows_bucket,  # autotune key: bucket of the mean rows per group (small groups: small tiles)
    TILE_ROWS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SUM_K: tl.constexpr,
    EVEN_D: tl.constexpr,
    F64_HOP: tl.constexpr,
):
    t = tl.program_id(0)
    g = tl.load(tile_group_ptr + t)
    if g >= num_groups:
        return
    if tl.load(last_ptr + g) < step - 1:  # the group stopped: its assignments repeated
        return
    row_begin = tl.load(tile_row_ptr + t)
    row_end = tl.minimum(tl.load(x_off_ptr + g + 1), row_begin + TILE_ROWS)
    c0 = tl.load(c_off_ptr + g)
    k = (tl.load(c_off_ptr + g + 1) - c0).to(tl.int32)

    offs_k = tl.arange(0, BLOCK_K)
    offs_s = tl.arange(0, SUM_K)
    offs_d = tl.arange(0, BLOCK_D)
    changed = step == 0
    for r0 in range(row_begin, row_end, BLOCK_N):
        rows = r0 + tl.arange(0, BLOCK_N)
        valid = rows < row_end
        best_d = tl.full((BLOCK_N,), float("inf"), tl.float32)
        best_j = tl.zeros((BLOCK_N,), tl.int32)
        for j0 in range(0, k, BLOCK_K):
            js = j0 + offs_k
            j_ok = js < k
            dist = _lane_sq_dist(x_ptr, rows, valid, c_ptr, c0 + js, j_ok, D, BLOCK_N, BLOCK_K,
                                 EVEN_D)
            dist = tl.where(j_ok[:, None] & (dist == dist), dist, float("inf"))  # NaN: never
            block_min = tl.min(dist, axis=0)
            block_arg = tl.min(tl.where(dist == block_min[None, :], js[:, None], 2147483647),
                               axis=0)
            better = block_min < best_d  # strict: earlier blocks keep ties
            best_j = tl.where(better, block_arg, best_j)
            best_d = tl.where(better, block_min, best_d)

        new = c0 + best_j
        if step > 0:
            old = tl.load(assign_ptr + rows, mask=valid, other=0)
            changed = changed | (tl.sum((valid & (old != new)).to(tl.int32), axis=0) > 0)
        tl.store(assign_ptr + rows, new, mask=valid)

        # Per-centroid fp64 sums of the block's rows: a one-hot (centroid, row) matrix times
        # the rows (fp64 tensor cores; exact products), SUM_K centroids at a time over the
        # range the block's rows went to, then one atomic per (centroid present, column).
        # Non-finite values would spread through the products (0 * NaN), so the dot takes
        # them as zeros and they are added on their own below (rare).
        lo = tl.min(tl.where(valid, best_j, 2147483647), axis=0)
        hi = tl.max(tl.where(valid, best_j, -1), axis=0)
        x_rows = x_ptr + rows[:, None].to(tl.int64) * D
        num_bad = 0
        for jb in range(lo, hi + 1, SUM_K):
            js = jb + offs_s
            hit = valid[None, :] & (best_j[None, :] == js[:, None])  # (SUM_K, BLOCK_N)
            count = tl.sum(hit.to(tl.int32), axis=1)
            tl.atomic_add(counts_ptr + c0 + js, count, mask=count > 0, sem="relaxed")
            onehot = hit.to(tl.float64)
            sum_rows = sums_ptr + (c0 + js)[:, None] * D
            for d0 in range(0, D, BLOCK_D):
                ds = d0 + offs_d
                xs = tl.load(x_rows + ds[None, :], mask=valid[:, None] & (ds < D)[None, :],
                             other=0.0).to(tl.float64)
                if F64_HOP:  # see _needs_f64_hop
                    xs = tl.sum(tl.reshape(xs, (BLOCK_N, BLOCK_D, 1)), axis=2)
                finite = tl.abs(xs) < float("inf")  # False for inf and NaN
                num_bad += tl.sum(tl.sum((~finite).to(tl.int32), axis=1), axis=0)
                part = tl.dot(onehot, tl.where(finite, xs, 0.0), input_precision="ieee")
                tl.atomic_add(sum_rows + ds[None, :], part,
                              mask=(count > 0)[:, None] & (ds < D)[None, :], sem="relaxed")
        if num_bad > 0:
            # Row by row: the non-finite values into their row's centroid (the finite ones
            # are in). The barrier makes this block's assignment stores visible to every
            # thread of the program.
            tl.debug_barrier()
            for r in range(r0, tl.minimum(r0 + BLOCK_N, row_end)):
                a = tl.load(assign_ptr + r)
                for d0 in range(0, D, BLOCK_D):
                    ds = d0 + offs_d
                    v = tl.load(x_ptr + r * D + ds, mask=ds < D, other=0.0).to(tl.float64)
                    bad = (ds < D) & ~(tl.abs(v) < float("inf"))
                    tl.atomic_add(sums_ptr + a * D + ds, v, mask=bad, sem="relaxed")
    if changed:
        # Every writer stores the same value; the readers of this step only test >= step - 1.
        tl.atomic_max(last_ptr + g, step, sem="relaxed")


@triton.jit(do_not_specialize=["step"])
def _grouped_update_kernel(
    c_ptr,  # (K, D) fp32 centroids, updated in place
    sums_ptr,  # (K, D) fp64 sums of this step, zeroed here
    counts_ptr,  # (K,) int32 rows per centroid at this step, zeroed here
    c_group_ptr,  # (K,) int32 group of each centroid
    last_ptr,  # (G,) int32 (see _grouped_assign_kernel)
    D,
    step,
    BLOCK_D: tl.constexpr,
):
    j = tl.program_id(0).to(tl.int64)
    count = tl.load(counts_ptr + j)
    if count > 0:
        # A group whose assignments repeated keeps its centroids (the reference stops there).
        update = tl.load(last_ptr + tl.load(c_group_ptr + j)) == step
        offs_d = tl.arange(0, BLOCK_D)
        for d0 in range(0, D, BLOCK_D):
            ds = d0 + offs_d
            m = ds < D
            s = tl.load(sums_ptr + j * D + ds, mask=m, other=0.0)
            if update:
                tl.store(c_ptr + j * D + ds, (s / count.to(tl.float64)).to(tl.float32), mask=m)
            tl.store(sums_ptr + j * D + ds, tl.zeros((BLOCK_D,), tl.float64), mask=m)
        tl.store(counts_ptr + j, 0)


def grouped_kmeans_triton(x: torch.Tensor, centroids: torch.Tensor, x_offsets: torch.Tensor,
                          centroid_offsets: torch.Tensor, iters: int, max_group_k: int, *,
                          config=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch `iters` Lloyd steps of every group (2 launches per step, no host sync).

    x: (N, D) fp32/fp16/bf16; centroids: (K, D) same dtype; offsets: (G + 1,) int32/int64 on
    x's device, valid (checked by the caller: start at 0, non-decreasing, end at N and K, a
    centroid wherever a group has rows); iters >= 1. max_group_k: the largest k_g, a hint for
    the centroid block (any value >= 1 gives the same result). config: force one tile config
    (a dict of BLOCK_N / BLOCK_D, or a triton.Config) instead of the autotuner.
    Returns assignments (N,) int64 global centroid indices and the (K, D) fp32 centroids."""
    n, d = x.shape
    k_total = centroids.shape[0]
    num_groups = x_offsets.shape[0] - 1
    dev = x.device
    cent = torch.empty((k_total, d), dtype=torch.float32, device=dev)
    cent.copy_(centroids)
    assignments = torch.empty((n,), dtype=torch.int64, device=dev)  # step 0 writes every row
    if n == 0:
        return assignments, cent
    x = x.contiguous()
    x_off, c_off = x_offsets.long(), centroid_offsets.long()
    # The tile map, on the device: group g gets ceil(n_g / TILE_ROWS) tiles, in group order.
    # Its length is bounded from the shapes (sum_g ceil(n_g / R) <= ceil(N / R) + G), so no host
    # sync; tiles past the real ones get group G and exit.
    rows_per_group = x_off[1:] - x_off[:-1]
    tiles_per_group = (rows_per_group + GROUPED_TILE_ROWS - 1) // GROUPED_TILE_ROWS
    tile_end = tiles_per_group.cumsum(0)
    num_tiles = triton.cdiv(n, GROUPED_TILE_ROWS) + num_groups
    tile_ids = torch.arange(num_tiles, device=dev)
    tile_group = torch.searchsorted(tile_end, tile_ids, right=True, out_int32=True)
    g = tile_group.long().clamp_max(num_groups - 1)
    tile_row = (x_off[g] + (tile_ids - (tile_end - tiles_per_group)[g]) * GROUPED_TILE_ROWS)
    c_group = torch.repeat_interleave(
        torch.arange(num_groups, device=dev, dtype=torch.int32), c_off[1:] - c_off[:-1],
        output_size=k_total)
    last_changed = torch.full((num_groups,), -1, dtype=torch.int32, device=dev)
    sums = torch.zeros((k_total, d), dtype=torch.float64, device=dev)
    counts = torch.zeros((k_total,), dtype=torch.int32, device=dev)
    k_bucket = min(triton.next_power_of_2(max(max_group_k, 2)), 64)
    rows_bucket = min(triton.next_power_of_2(triton.cdiv(n, max(num_groups, 1))),
                      2 * GROUPED_TILE_ROWS)
    if config is None and (triton_interpret()
                           or os.environ.get("ONEREC_TRITON_AUTOTUNE", "1") == "0"):
        config = _grouped_assign_kernel.configs[0]  # the one config left: no autotuner run
    if isinstance(config, triton.Config):
        config = config.all_kwargs()
    assign_kernel = _grouped_assign_kernel if config is None else _grouped_assign_kernel.fn
    f64_hop = _needs_f64_hop(x.element_size() * 8)
    # enable_fp_fusion=False: no FMA contraction, so the distances round like the reference's.
    with device_guard(dev):
        for step in range(iters):
            assign_kernel[(num_tiles,)](
                x, cent, x_off, c_off, tile_group, tile_row, assignments, last_changed, sums,
                counts, d, num_groups, step, k_bucket, rows_bucket, TILE_ROWS=GROUPED_TILE_ROWS,
                SUM_K=GROUPED_SUM_K, F64_HOP=f64_hop,
                enable_fp_fusion=False, **(config or {}))
            _grouped_update_kernel[(k_total,)](
                cent, sums, counts, c_group, last_changed, d, step,
                BLOCK_D=GROUPED_UPDATE_BLOCK_D, num_warps=GROUPED_UPDATE_WARPS)
    return assignments, cent


def _grouped_aot_specs():
    """Compile list of scripts/triton_aot.py (family "grouped_kmeans"): every tile config of the
    step kernel for fp32 and bf16 inputs (fp16 compiles like bf16) at D = 512 and at the
    smallest and the largest centroid block the config allows, plus the update kernel, all with
    FMA contraction off as launched."""
    common = {"x_off_ptr": "*i64", "c_off_ptr": "*i64", "tile_group_ptr": "*i32",
              "tile_row_ptr": "*i64", "assign_ptr": "*i64", "last_ptr": "*i32",
              "sums_ptr": "*fp64", "counts_ptr": "*i32", "D": "i32", "num_groups": "i32",
              "step": "i32", "k_bucket": "i32", "rows_bucket": "i32"}
    pointers = [name for name, t in common.items() if t.startswith("*")]
    for dtype in ("fp32", "bf16"):
        for cfg in grouped_kmeans_configs("1"):
            largest = _grouped_block_k({"k_bucket": 64, "BLOCK_N": cfg.kwargs["BLOCK_N"]})
            for block_k in sorted({2, largest}):
                yield {"name": "grouped_kmeans_step", "fn": _grouped_assign_kernel,
                       "signature": {"x_ptr": f"*{dtype}", "c_ptr": "*fp32", **common},
                       "constexprs": {"TILE_ROWS": GROUPED_TILE_ROWS, "BLOCK_K": block_k,
                                      "SUM_K": GROUPED_SUM_K, "EVEN_D": True,
                                      "F64_HOP": _needs_f64_hop(32 if dtype == "fp32" else 16)},
                       "config": cfg, "dtype": dtype,
                       "divisible_by_16": ["x_ptr", "c_ptr", *pointers, "D"],
                       "options": {"enable_fp_fusion": False},
                       "config_name": (f"{cfg.kwargs['BLOCK_N']}x{block_k}x"
                                       f"{cfg.kwargs['BLOCK_D']} w{cfg.num_warps} "
                                       f"s{cfg.num_stages}"),
                       "quick": block_k != 2}
    yield {"name": "grouped_kmeans_update", "fn": _grouped_update_kernel,
           "signature": {"c_ptr": "*fp32", "sums_ptr": "*fp64", "counts_ptr": "*i32",
                         "c_group_ptr": "*i32", "last_ptr": "*i32", "D": "i32", "step": "i32"},
           "constexprs": {"BLOCK_D": GROUPED_UPDATE_BLOCK_D}, "num_warps": GROUPED_UPDATE_WARPS,
           "num_stages": 1, "dtype": "fp32",
           "divisible_by_16": ["c_ptr", "sums_ptr", "counts_ptr", "c_group_ptr", "last_ptr", "D"]}


register_aot_specs("grouped_kmeans", _grouped_aot_specs)

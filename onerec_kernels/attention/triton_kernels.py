"""Ragged cross-attention in Triton: forward (optionally split over the keys), backward.

Shapes (legend): B users, Q queries per user, H query heads, H_kv K/V heads, G = H / H_kv,
Dh head size, L_b keys of user b, packed as rows cu[b]..cu[b+1] of k/v (total_k, H_kv, Dh).

Forward, one program per (block of BLOCK_M query rows, user, K/V head[, key split]). The rows
of a program are (g, i) pairs of the G query heads that share the K/V head and the Q queries
(row r -> head kvh*G + r // Q, query r % Q), so each K/V tile is loaded once for all G heads
(grouped-query attention costs no extra K/V traffic). The program walks only its user's real
keys in BLOCK_N tiles (the last tile masked): no padding work, and the loop bounds come from
cu_seqlens on the device, so the host never syncs. Online softmax in fp32 with exp2 (the scale
folded into log2(e)); the Q x L score matrix never exists in memory. Shared queries are the same
kernel with the user stride of q set to 0: read by every program, never copied per user.

Split-KV: with few users (B * H_kv * row blocks well under the SM count, e.g. B = 1..16 at
L = 2000) most SMs would idle while a few programs walk 2000 keys. The keys of each user are
then cut into num_splits ranges of `split_len` keys (the last range runs to the user's end,
whatever max_seqlen_k said); every split writes an fp32 partial output and its log-sum-exp, and
one combine kernel merges them: out = sum_s exp(lse_s - lse) out_s, lse = logsumexp_s lse_s.
The split count is a runtime argument (only split / no split is compiled in), so batches of
different sizes do not compile new kernels.

Backward (FlashAttention-2's recomputation from the saved log-sum-exp):
  delta = rowsum(dO * O) (torch, one pass);
  dK/dV: one program per (key block, user, K/V head) walks all G*Q query rows of that user;
         it owns its key rows, so no atomics; the grid is a grid-stride loop over key blocks,
         so keys beyond max_seqlen_k still get their gradient;
  dQ:    one program per (query-row block, K/V head, user group) walks the group's keys; for
         per-user queries a group is one user, for shared queries a group of users writes one
         fp32 partial and torch sums the partials (deterministic, no atomics).

Safety: start/end of every user are clamped to [0, total_k] and end >= start in the kernel, so
no load ever leaves k/v whatever cu_seqlens holds (the host checks the values when that is free).
Per-tile pointers are an int64 scalar base (user, key-range start: total_k * H_kv * Dh may pass
2^31) plus int32 offsets within one user's keys (so one user's L_b * H_kv * Dh must stay under
2^31, i.e. L_b < 2M at H_kv * Dh = 1024): int64 offset tensors would cost registers on every
tile.

FLOPs (useful): 4 * sum_b(L_b) * Q * H * Dh forward (two GEMMs), 2.5x that for the backward.
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from .._backend import triton_interpret
from .._triton_tiles import register_aot_specs
from ..rq.triton_kernels import dot_input_precision

LOG2E = 1.4426950408889634

# Tile configs are data. Per kernel: the GPU autotune candidates, each with the largest head
# size it may run at for each operand kind: 16-bit, fp32 with TF32 dots (torch's allow_tf32),
# and fp32 with exact "ieee" dots (torch's default for fp32). Those limits come from compiling
# every (config, Dh, kind) for sm_90 with ptxas -v (`python scripts/triton_aot.py --family
# attention`; 2026-11-30, triton 3.9, and triton 3.6, the GPU image's): a config is allowed where
# it spills at most 64 bytes per thread under both and its shared memory fits sm_90's 227 KB (0:
# never for that kind). The first allowed
# config of the list is the ONEREC_TRITON_AUTOTUNE=0 choice, so the lists open with the best
# all-rounders. Exact fp32 dots are FMA loops holding whole operand slices in registers: every
# tensor-core-sized forward tile spilled heavily there (~1 KB/thread at Dh 32, 60-80 KB at
# Dh 128), so that kind gets its own small tiles at the end of each list (16x16 w8 spill-free up
# to Dh 128; 16x32 and 32x16 w8 up to Dh 64; dK/dV 32x32 w8 and dQ 16x64 w4 at every Dh).
FWD_TILES = [  # (BLOCK_M, BLOCK_N, num_warps, num_stages, max Dh 16-bit, TF32, exact fp32)
    (128, 64, 8, 3, 128, 64, 0),  # TF32 at Dh 128: 256 KB of shared memory
    (128, 128, 8, 2, 128, 64, 0),
    (64, 64, 4, 3, 128, 128, 0),
    (64, 128, 4, 3, 64, 32, 0),  # 16-bit Dh 128: spills 92 B on triton 3.6
    (128, 32, 4, 3, 128, 64, 0),
    (16, 32, 8, 2, 0, 0, 64),
    (32, 16, 8, 2, 0, 0, 64),
    (16, 16, 8, 2, 0, 0, 128),
]
BWD_KV_TILES = [  # BLOCK_M query rows per step, BLOCK_N keys owned
    (32, 64, 8, 2, 128, 64, 0),
    (64, 64, 4, 2, 32, 32, 0),  # TF32 Dh 64: spills 176 B on triton 3.6
    (32, 128, 8, 2, 128, 64, 0),
    (64, 128, 8, 2, 64, 32, 0),  # TF32 Dh 64: spills 108 B on triton 3.6
    (32, 64, 4, 2, 128, 64, 0),
    (32, 32, 8, 2, 128, 128, 128),
    (16, 32, 4, 2, 128, 128, 0),
]
BWD_Q_TILES = [  # BLOCK_M query rows owned, BLOCK_N keys per step
    (128, 64, 8, 2, 128, 64, 0),
    (64, 64, 4, 2, 64, 32, 0),  # triton 3.6 spills 84 B at 16-bit Dh 128 and TF32 Dh 64
    (32, 64, 8, 2, 128, 0, 0),  # TF32: spills 104 B at Dh 32
    (64, 128, 8, 2, 64, 32, 0),
    (32, 64, 4, 2, 128, 64, 0),
    (16, 64, 4, 2, 128, 128, 128),
    (64, 32, 8, 2, 128, 64, 0),
]
_KIND_COLUMN = {"16bit": 4, "tf32": 5, "ieee": 6}


def operand_kind(dtype: torch.dtype, input_precision: str) -> str:
    """Which max-Dh column of the tile tables applies: 16-bit operands, fp32 with TF32 dots, or
    fp32 with exact ("ieee") dots."""
    if dtype != torch.float32:
        return "16bit"
    return "tf32" if input_precision == "tf32" else "ieee"


def _make(tiles):
    return [triton.Config({"BLOCK_M": t[0], "BLOCK_N": t[1]}, num_warps=t[2], num_stages=t[3])
            for t in tiles]


FWD_CONFIGS = _make(FWD_TILES)
BWD_KV_CONFIGS = _make(BWD_KV_TILES)
BWD_Q_CONFIGS = _make(BWD_Q_TILES)
_INTERPRET_CONFIG = [triton.Config({"BLOCK_M": 16, "BLOCK_N": 64})]


def allowed_configs(tiles, configs, head_dim: int, kind: str, mode: str = "1"):
    """The configs of `tiles` allowed at (head_dim, operand kind: see operand_kind); mode "0"
    keeps the first, "quick" the first two (ONEREC_TRITON_AUTOTUNE)."""
    col = _KIND_COLUMN[kind]
    ok = [c for t, c in zip(tiles, configs) if head_dim <= t[col]]
    return ok[:1] if mode == "0" else ok[:2] if mode == "quick" else ok


def _pruner(tiles, configs):
    def prune(_configs, named_args, **kwargs):
        if triton_interpret():
            return _configs
        kind = operand_kind(named_args["q_ptr"].dtype, kwargs["INPUT_PRECISION"])
        return allowed_configs(tiles, configs, kwargs["HEAD_DIM"], kind,
                               os.environ.get("ONEREC_TRITON_AUTOTUNE", "1"))
    return {"early_config_prune": prune}


def _configs(gpu_configs):
    # Import-time list for the autotuner; the per-call choice is the pruner's.
    return _INTERPRET_CONFIG if triton_interpret() else gpu_configs


@triton.jit
def _user_range(cu_ptr, b, total_k):
    """[start, end) of user b's keys, clamped so no load can leave k/v."""
    start = tl.load(cu_ptr + b).to(tl.int64)
    end = tl.load(cu_ptr + b + 1).to(tl.int64)
    start = tl.minimum(tl.maximum(start, 0), total_k)
    end = tl.minimum(tl.maximum(end, start), total_k)
    return start, end


@triton.jit
def _row_heads(rows, num_q, kvh, GROUP: tl.constexpr):
    """Query index and query head of the rows (g, i) of K/V head kvh."""
    return rows % num_q, kvh * GROUP + rows // num_q


@triton.jit
def _bwd_rows(q_ptr, do_ptr, lse_ptr, delta_ptr, b64, qi, h, row_mask, offs_d,
              stride_qb, stride_qq, stride_qh, stride_dob, stride_doq, stride_doh,
              stride_lb, stride_lh):
    """q, dout, lse (log2 units) and delta of the rows (qi, h) of user b."""
    q_rows = qi * stride_qq + h * stride_qh
    q = tl.load(q_ptr + b64 * stride_qb + q_rows[:, None] + offs_d[None, :],
                mask=row_mask[:, None], other=0.0)
    do_rows = qi * stride_doq + h * stride_doh
    do = tl.load(do_ptr + b64 * stride_dob + do_rows[:, None] + offs_d[None, :],
                 mask=row_mask[:, None], other=0.0)
    l_rows = h * stride_lh + qi
    lse2 = tl.load(lse_ptr + b64 * stride_lb + l_rows, mask=row_mask, other=0.0) * 1.4426950408889634
    delta = tl.load(delta_ptr + b64 * stride_lb + l_rows, mask=row_mask, other=0.0)
    return q, do, lse2, delta


@triton.jit
def _fwd_tile(q, k_base, v_base, n0, num_keys, m_i, l_i, acc, offs_d, stride_kt, stride_vt,
              qk_scale, INPUT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr,
              MASKED: tl.constexpr):
    """One BLOCK_N-key tile of the online softmax: (m, l, acc) updated with keys n0.. of the
    range (offsets relative to k_base/v_base, computed here from the key numbers: offset
    tensors hoisted out of the loop would pin ~64 registers)."""
    keys = n0 + tl.arange(0, BLOCK_N)
    if MASKED:
        k_mask = keys < num_keys
        kt = tl.load(k_base + keys[None, :] * stride_kt + offs_d[:, None], mask=k_mask[None, :],
                     other=0.0)  # (Dh, BLOCK_N)
    else:
        kt = tl.load(k_base + keys[None, :] * stride_kt + offs_d[:, None])
    s = tl.dot(q, kt, input_precision=INPUT_PRECISION) * qk_scale
    if MASKED:
        s = tl.where(k_mask[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))  # finite: every tile has a real key
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    if MASKED:
        vt = tl.load(v_base + keys[:, None] * stride_vt + offs_d[None, :], mask=k_mask[:, None],
                     other=0.0)  # (BLOCK_N, Dh)
    else:
        vt = tl.load(v_base + keys[:, None] * stride_vt + offs_d[None, :])
    acc = tl.dot(p.to(vt.dtype), vt, acc * alpha[:, None], input_precision=INPUT_PRECISION)
    return m_new, l_i, acc


# Sizes vary from call to call (batch, lengths, query count): not specializing on them (== 1,
# multiple of 16) keeps one compiled kernel per (config, Dh, G, dtype) instead of several. The
# strides stay specialized: their divisibility is what lets loads vectorize.
_SIZES = ["total_k", "num_q", "num_kv_heads", "num_heads", "split_len", "len_bucket",
          "num_users", "users_per_group", "num_splits"]


# key bucket: autotune once per power of two of max_seqlen_k (ragged batches do not retune)
@triton.autotune(configs=_configs(FWD_CONFIGS), key=["HEAD_DIM", "GROUP", "len_bucket", "SPLIT"],
                 prune_configs_by=_pruner(FWD_TILES, FWD_CONFIGS))
@triton.jit(do_not_specialize=_SIZES)
def _attn_fwd_kernel(
    q_ptr, k_ptr, v_ptr, cu_ptr, o_ptr, lse_ptr,
    stride_qb, stride_qq, stride_qh,  # q (B|-, Q, H, Dh); stride_qb = 0 for shared queries
    stride_kt, stride_kh, stride_vt, stride_vh,  # k, v (total_k, H_kv, Dh)
    stride_os, stride_ob, stride_oq, stride_oh,  # out ([S,] B, Q, H, Dh)
    stride_ls, stride_lb, stride_lh,  # lse ([S,] B, H, Q), unit stride over Q
    total_k, num_q, num_kv_heads, split_len, len_bucket,
    qk_scale,  # softmax_scale * log2(e)
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, SPLIT: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_s = tl.program_id(2)
    b = pid_bh // num_kv_heads
    kvh = pid_bh % num_kv_heads
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < GROUP * num_q
    qi, h = _row_heads(rows, num_q, kvh, GROUP)
    offs_d = tl.arange(0, HEAD_DIM)
    b64 = b.to(tl.int64)
    q_rows = qi * stride_qq + h * stride_qh
    q = tl.load(q_ptr + b64 * stride_qb + q_rows[:, None] + offs_d[None, :],
                mask=row_mask[:, None], other=0.0)

    start, end = _user_range(cu_ptr, b, total_k)
    lo = tl.minimum(start + pid_s * split_len, end)
    hi = end
    if SPLIT:
        if pid_s < tl.num_programs(2) - 1:
            hi = tl.minimum(lo + split_len, end)

    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, HEAD_DIM), tl.float32)
    # Scalar int64 base at this range's first key; int32 offsets within the range.
    k_base = k_ptr + lo * stride_kt + kvh.to(tl.int64) * stride_kh
    v_base = v_ptr + lo * stride_vt + kvh.to(tl.int64) * stride_vh
    num_keys = (hi - lo).to(tl.int32)
    # Full tiles without masks, then the one partial tile (if any) with them.
    num_full = num_keys - num_keys % BLOCK_N
    for n0 in range(0, num_full, BLOCK_N):
        m_i, l_i, acc = _fwd_tile(q, k_base, v_base, n0, num_keys, m_i, l_i, acc, offs_d,
                                  stride_kt, stride_vt, qk_scale, INPUT_PRECISION, BLOCK_N, False)
    if num_full < num_keys:
        m_i, l_i, acc = _fwd_tile(q, k_base, v_base, num_full, num_keys, m_i, l_i, acc, offs_d,
                                  stride_kt, stride_vt, qk_scale, INPUT_PRECISION, BLOCK_N, True)

    # A user (or split) without keys: l = 0 -> output 0 and lse = -inf, never NaN.
    has_keys = l_i > 0.0
    acc = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    lse = tl.where(has_keys, (m_i + tl.log2(tl.where(has_keys, l_i, 1.0))) * 0.6931471805599453,
                   float("-inf"))
    s64 = pid_s.to(tl.int64)
    o_rows = qi * stride_oq + h * stride_oh
    tl.store(o_ptr + s64 * stride_os + b64 * stride_ob + o_rows[:, None] + offs_d[None, :], acc,
             mask=row_mask[:, None])
    tl.store(lse_ptr + s64 * stride_ls + b64 * stride_lb + h * stride_lh + qi, lse, mask=row_mask)


@triton.autotune(configs=_configs(BWD_KV_CONFIGS), key=["HEAD_DIM", "GROUP", "len_bucket"],
                 prune_configs_by=_pruner(BWD_KV_TILES, BWD_KV_CONFIGS))
@triton.jit(do_not_specialize=_SIZES)
def _attn_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, cu_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
    stride_qb, stride_qq, stride_qh,  # q; stride_qb = 0 for shared queries
    stride_kt, stride_kh, stride_vt, stride_vh,  # k, v; dk, dv are contiguous like k, v
    stride_dob, stride_doq, stride_doh,  # dout (B, Q, H, Dh)
    stride_lb, stride_lh,  # lse and delta (B, H, Q), contiguous
    total_k, num_q, num_kv_heads, len_bucket,
    qk_scale, sm_scale,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // num_kv_heads
    kvh = pid_bh % num_kv_heads
    offs_d = tl.arange(0, HEAD_DIM)
    start, end = _user_range(cu_ptr, b, total_k)
    num_rows = GROUP * num_q
    b64 = b.to(tl.int64)
    # Grid-stride over key blocks: correct even when a user has more keys than max_seqlen_k.
    offs_n = tl.arange(0, BLOCK_N)
    k_off = offs_n[:, None] * stride_kt + offs_d[None, :]
    v_off = offs_n[:, None] * stride_vt + offs_d[None, :]
    kvh64 = kvh.to(tl.int64)
    for n0 in range(start + pid_n * BLOCK_N, end, tl.num_programs(0) * BLOCK_N):
        k_mask = n0 + offs_n < end
        k_tile = n0 * stride_kt + kvh64 * stride_kh + k_off  # dk shares k's layout
        v_tile = n0 * stride_vt + kvh64 * stride_vh + v_off
        k = tl.load(k_ptr + k_tile, mask=k_mask[:, None], other=0.0)  # (BLOCK_N, Dh)
        v = tl.load(v_ptr + v_tile, mask=k_mask[:, None], other=0.0)
        dk = tl.zeros((BLOCK_N, HEAD_DIM), tl.float32)
        dv = tl.zeros((BLOCK_N, HEAD_DIM), tl.float32)
        for m0 in range(0, num_rows, BLOCK_M):
            rows = m0 + tl.arange(0, BLOCK_M)
            row_mask = rows < num_rows
            qi, h = _row_heads(rows, num_q, kvh, GROUP)
            q, do, lse2, delta = _bwd_rows(q_ptr, do_ptr, lse_ptr, delta_ptr, b64, qi, h, row_mask,
                                           offs_d, stride_qb, stride_qq, stride_qh, stride_dob,
                                           stride_doq, stride_doh, stride_lb, stride_lh)
            s_t = tl.dot(k, tl.trans(q), input_precision=INPUT_PRECISION) * qk_scale  # (N, M)
            p_t = tl.exp2(s_t - lse2[None, :])
            p_t = tl.where(k_mask[:, None] & row_mask[None, :], p_t, 0.0)
            dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=INPUT_PRECISION)
            dp_t = tl.dot(v, tl.trans(do), input_precision=INPUT_PRECISION)
            ds_t = p_t * (dp_t - delta[None, :])
            dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=INPUT_PRECISION)
        tl.store(dk_ptr + k_tile, dk * sm_scale, mask=k_mask[:, None])
        tl.store(dv_ptr + v_tile, dv, mask=k_mask[:, None])


@triton.autotune(configs=_configs(BWD_Q_CONFIGS), key=["HEAD_DIM", "GROUP", "len_bucket"],
                 prune_configs_by=_pruner(BWD_Q_TILES, BWD_Q_CONFIGS))
@triton.jit(do_not_specialize=_SIZES)
def _attn_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, cu_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
    stride_qb, stride_qq, stride_qh,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_dob, stride_doq, stride_doh,
    stride_lb, stride_lh,
    stride_dqb, stride_dqq, stride_dqh,  # dq (B or user groups, Q, H, Dh)
    total_k, num_users, num_q, num_kv_heads, users_per_group, len_bucket,
    qk_scale, sm_scale,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_gh = tl.program_id(1)
    grp = pid_gh // num_kv_heads
    kvh = pid_gh % num_kv_heads
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < GROUP * num_q
    qi, h = _row_heads(rows, num_q, kvh, GROUP)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_n = tl.arange(0, BLOCK_N)
    kt_off = offs_n[None, :] * stride_kt + offs_d[:, None]  # (Dh, BLOCK_N)
    vt_off = offs_n[None, :] * stride_vt + offs_d[:, None]
    k_base = k_ptr + kvh.to(tl.int64) * stride_kh
    v_base = v_ptr + kvh.to(tl.int64) * stride_vh
    dq = tl.zeros((BLOCK_M, HEAD_DIM), tl.float32)
    u0 = grp * users_per_group
    u1 = tl.minimum(u0 + users_per_group, num_users)
    for b in range(u0, u1):
        b64 = tl.cast(b, tl.int64)  # a plain int in the interpreter
        q, do, lse2, delta = _bwd_rows(q_ptr, do_ptr, lse_ptr, delta_ptr, b64, qi, h, row_mask,
                                       offs_d, stride_qb, stride_qq, stride_qh, stride_dob,
                                       stride_doq, stride_doh, stride_lb, stride_lh)
        start, end = _user_range(cu_ptr, b, total_k)
        for n0 in range(start, end, BLOCK_N):
            k_mask = n0 + offs_n < end
            kt = tl.load(k_base + n0 * stride_kt + kt_off, mask=k_mask[None, :], other=0.0)
            vt = tl.load(v_base + n0 * stride_vt + vt_off, mask=k_mask[None, :], other=0.0)
            s = tl.dot(q, kt, input_precision=INPUT_PRECISION) * qk_scale
            p = tl.exp2(s - lse2[:, None])
            p = tl.where(row_mask[:, None] & k_mask[None, :], p, 0.0)
            dp = tl.dot(do, vt, input_precision=INPUT_PRECISION)
            ds = p * (dp - delta[:, None])
            dq = tl.dot(ds.to(kt.dtype), tl.trans(kt), dq, input_precision=INPUT_PRECISION)
    dq_rows = qi * stride_dqq + h * stride_dqh
    tl.store(dq_ptr + grp.to(tl.int64) * stride_dqb + dq_rows[:, None] + offs_d[None, :],
             dq * sm_scale, mask=row_mask[:, None])


@triton.jit(do_not_specialize=_SIZES)
def _combine_kernel(
    o_buf_ptr, l_buf_ptr, out_ptr, lse_ptr, num_splits, num_q, num_heads,
    stride_os, stride_ob, stride_oq, stride_oh,  # o_buf (S, B, Q, H, Dh) fp32
    stride_ls, stride_lb, stride_lh,  # l_buf (S, B, H, Q) fp32, unit stride over Q
    stride_b, stride_q, stride_h,  # out (B, Q, H, Dh)
    stride_lse_b, stride_lse_h,  # lse (B, H, Q)
    HEAD_DIM: tl.constexpr, BLOCK_Q: tl.constexpr,
):
    """lse = logsumexp_s lse_s, out = sum_s exp(lse_s - lse) out_s for BLOCK_Q queries of one
    (user, head). A row with no keys in any split keeps lse = -inf and out = 0."""
    pid_bh = tl.program_id(0)
    b = (pid_bh // num_heads).to(tl.int64)
    h = pid_bh % num_heads
    qs = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_mask = qs < num_q
    offs_d = tl.arange(0, HEAD_DIM)
    l_rows = l_buf_ptr + b * stride_lb + h * stride_lh + qs
    m = tl.full((BLOCK_Q,), float("-inf"), tl.float32)
    for s in range(num_splits):
        m = tl.maximum(m, tl.load(l_rows + s * stride_ls, mask=q_mask, other=float("-inf")))
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    total = tl.zeros((BLOCK_Q,), tl.float32)
    acc = tl.zeros((BLOCK_Q, HEAD_DIM), tl.float32)
    o_rows = o_buf_ptr + b * stride_ob + qs[:, None] * stride_oq + h * stride_oh + offs_d[None, :]
    for s in range(num_splits):
        w = tl.exp(tl.load(l_rows + s * stride_ls, mask=q_mask, other=float("-inf")) - m_safe)
        total += w
        acc += w[:, None] * tl.load(o_rows + s * stride_os, mask=q_mask[:, None], other=0.0)
    has_keys = total > 0.0
    safe_total = tl.where(has_keys, total, 1.0)
    out_rows = out_ptr + b * stride_b + qs[:, None] * stride_q + h * stride_h + offs_d[None, :]
    tl.store(out_rows, acc / safe_total[:, None], mask=q_mask[:, None])
    tl.store(lse_ptr + b * stride_lse_b + h * stride_lse_h + qs,
             tl.where(has_keys, m_safe + tl.log(safe_total), float("-inf")), mask=q_mask)


@functools.lru_cache(maxsize=None)
def _num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _sm_count(device: torch.device) -> int:
    # The interpreter has no SMs; a small number still lets the tests reach the split path.
    return _num_sms(device.index if device.index is not None else torch.cuda.current_device()) \
        if device.type == "cuda" else 4


def _len_bucket(max_seqlen_k: int) -> int:
    return 1 << max(int(max_seqlen_k) - 1, 0).bit_length()


def choose_num_splits(num_units: int, max_seqlen_k: int, num_sms: int, min_split_len: int = 256) -> int:
    """How many key ranges per user: enough programs for ~2 waves when B * H_kv * row blocks
    would leave SMs idle, each range at least min_split_len keys (shorter ones lose more to the
    combine than they gain). 1 when the grid already fills the GPU."""
    if num_units >= num_sms or max_seqlen_k < 2 * min_split_len:
        return 1
    return max(1, min(triton.cdiv(2 * num_sms, num_units), max_seqlen_k // min_split_len, 32))


def _q_strides(q: torch.Tensor):
    """(user, query, head) strides; the user stride is 0 for shared (Q, H, Dh) queries."""
    if q.dim() == 3:
        return 0, q.stride(0), q.stride(1)
    return q.stride(0), q.stride(1), q.stride(2)


def varlen_attention_fwd_triton(q, k, v, cu_seqlens_k, max_seqlen_k: int, softmax_scale: float,
                                num_splits: int = 0):
    """Forward launch. q (B, Q, H, Dh) or (Q, H, Dh), k/v (total_k, H_kv, Dh), all with unit
    last stride; cu_seqlens_k (B + 1,) int32 on q's device. num_splits: 0 = choose (see
    choose_num_splits), else force that many key ranges. Returns out (B, Q, H, Dh) in q's
    dtype and lse (B, H, Q) fp32 (natural log; -inf for rows without keys)."""
    num_users = cu_seqlens_k.shape[0] - 1
    num_q, num_heads, head_dim = q.shape[-3:]
    num_kv_heads = k.shape[1]
    group = num_heads // num_kv_heads
    rows = group * num_q
    if num_splits <= 0:
        units = num_users * num_kv_heads * triton.cdiv(rows, 128)
        num_splits = choose_num_splits(units, max_seqlen_k, _sm_count(q.device))
    # Multiple of every BLOCK_N, so split boundaries fall on tile boundaries.
    split_len = triton.cdiv(triton.cdiv(max(max_seqlen_k, 1), num_splits), 128) * 128
    out = q.new_empty((num_users, num_q, num_heads, head_dim))
    lse = torch.empty((num_users, num_heads, num_q), dtype=torch.float32, device=q.device)
    if num_users == 0:
        return out, lse
    if num_splits > 1:
        o_buf = torch.empty((num_splits, *out.shape), dtype=torch.float32, device=q.device)
        l_buf = torch.empty((num_splits, *lse.shape), dtype=torch.float32, device=q.device)
    else:
        o_buf, l_buf = out.unsqueeze(0), lse.unsqueeze(0)
    grid = lambda meta: (triton.cdiv(rows, meta["BLOCK_M"]), num_users * num_kv_heads, num_splits)  # noqa: E731
    _attn_fwd_kernel[grid](
        q, k, v, cu_seqlens_k, o_buf, l_buf,
        *_q_strides(q), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        o_buf.stride(0), o_buf.stride(1), o_buf.stride(2), o_buf.stride(3),
        l_buf.stride(0), l_buf.stride(1), l_buf.stride(2),
        k.shape[0], num_q, num_kv_heads, split_len, _len_bucket(max_seqlen_k),
        softmax_scale * LOG2E,
        GROUP=group, HEAD_DIM=head_dim, SPLIT=num_splits > 1,
        INPUT_PRECISION=dot_input_precision(q.dtype),
    )
    if num_splits > 1:
        _combine(o_buf, l_buf, out, lse)
    return out, lse


def _combine(o_buf, l_buf, out, lse) -> None:
    """Merge split partials (one launch: several torch ops would cost more in launches than
    the merge itself at the few-user shapes that split)."""
    num_splits, num_users, num_q, num_heads, head_dim = o_buf.shape
    block_q = 32
    grid = (num_users * num_heads, triton.cdiv(num_q, block_q))
    _combine_kernel[grid](o_buf, l_buf, out, lse, num_splits, num_q, num_heads,
                          o_buf.stride(0), o_buf.stride(1), o_buf.stride(2), o_buf.stride(3),
                          l_buf.stride(0), l_buf.stride(1), l_buf.stride(2),
                          out.stride(0), out.stride(1), out.stride(2),
                          lse.stride(0), lse.stride(1),
                          HEAD_DIM=head_dim, BLOCK_Q=block_q, num_warps=4)


def dq_user_groups(num_users: int, shared: bool, num_units: int, num_sms: int) -> int:
    """Users per dQ program: 1 for per-user queries (each writes its own dq rows); for shared
    queries enough groups for ~4 programs per SM, each summing its users into one partial."""
    if not shared:
        return 1
    groups = max(1, min(num_users, triton.cdiv(4 * num_sms, max(num_units, 1))))
    return triton.cdiv(num_users, groups)


def varlen_attention_bwd_triton(dout, q, k, v, out, lse, cu_seqlens_k, max_seqlen_k: int,
                                softmax_scale: float):
    """Backward launch: returns dq (q's shape and dtype; for shared queries summed over users),
    dk, dv (k's shape and dtype). dout/out (B, Q, H, Dh), lse (B, H, Q) from the forward."""
    num_users = cu_seqlens_k.shape[0] - 1
    num_q, num_heads, head_dim = q.shape[-3:]
    num_kv_heads = k.shape[1]
    group = num_heads // num_kv_heads
    rows = group * num_q
    shared = q.dim() == 3
    # dk/dv are written with k/v's strides: make those dense (a view such as a slice of a fused
    # KV projection would otherwise give dk a different layout from k).
    k, v = k.contiguous(), v.contiguous()
    dk = torch.zeros_like(k)  # keys outside every user (cu[B] < total_k) get no gradient
    dv = torch.zeros_like(v)
    if num_users == 0:
        return torch.zeros_like(q, memory_format=torch.contiguous_format), dk, dv
    dout = dout if dout.stride(-1) == 1 else dout.contiguous()
    delta = (dout.float() * out.float()).sum(-1).transpose(1, 2).contiguous()  # (B, H, Q)
    lse = lse.contiguous()
    precision = dot_input_precision(q.dtype)
    qk_scale = softmax_scale * LOG2E
    bucket = _len_bucket(max_seqlen_k)
    common = (*_q_strides(q), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
              dout.stride(0), dout.stride(1), dout.stride(2), lse.stride(0), lse.stride(1))

    grid_kv = lambda meta: (max(triton.cdiv(max_seqlen_k, meta["BLOCK_N"]), 1),  # noqa: E731
                            num_users * num_kv_heads)
    _attn_bwd_dkdv_kernel[grid_kv](
        q, k, v, cu_seqlens_k, dout, lse, delta, dk, dv, *common,
        k.shape[0], num_q, num_kv_heads, bucket, qk_scale, softmax_scale,
        GROUP=group, HEAD_DIM=head_dim, INPUT_PRECISION=precision)

    per_group = dq_user_groups(num_users, shared, num_kv_heads * triton.cdiv(rows, 64),
                               _sm_count(q.device))
    num_groups = triton.cdiv(num_users, per_group)
    if shared:
        dq = torch.empty((num_groups, num_q, num_heads, head_dim), dtype=torch.float32, device=q.device)
    else:
        dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    grid_q = lambda meta: (triton.cdiv(rows, meta["BLOCK_M"]), num_groups * num_kv_heads)  # noqa: E731
    _attn_bwd_dq_kernel[grid_q](
        q, k, v, cu_seqlens_k, dout, lse, delta, dq, *common,
        dq.stride(0), dq.stride(1), dq.stride(2),
        k.shape[0], num_users, num_q, num_kv_heads, per_group, bucket, qk_scale, softmax_scale,
        GROUP=group, HEAD_DIM=head_dim, INPUT_PRECISION=precision)
    if shared:
        dq = dq.sum(dim=0).to(q.dtype)
    return dq, dk, dv


# ---------------------------------------------------------------- ahead-of-time compile specs
_DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def aot_specs(dtype: torch.dtype = torch.bfloat16, head_dims=(32, 64, 128), group: int = 4,
              all_configs: bool = False, input_precision: str | None = None):
    """Everything needed to compile each (kernel, config) for a GPU without one, e.g.
    `triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", 90, 32),
    options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})`. Yields dicts with
    name, fn (the JIT function), signature, constexprs, config and divisible_by_16 (argument names
    to give the attribute tt.divisibility=16, as the runtime does). The configs are those the
    autotuner may pick at each (Dh, dtype) (allowed_configs over FWD_TILES, BWD_KV_TILES,
    BWD_Q_TILES); all_configs=True compiles every candidate (to re-derive the Dh limits).
    fp16 compiles like bf16. input_precision: the tl.dot precision (default "tf32" for fp32,
    what allow_tf32 gives; "ieee" is torch's default for fp32, see dot_input_precision)."""
    elem = _DTYPE_NAMES[dtype]
    precision = input_precision or ("tf32" if dtype == torch.float32 else "ieee")
    combine = [triton.Config({"BLOCK_Q": 32}, num_warps=4)]  # what _combine launches
    kernels = [  # name, kernel, (tiles, configs) or configs, constexprs, fp32 pointers
        ("attn_fwd", _attn_fwd_kernel, (FWD_TILES, FWD_CONFIGS), {"SPLIT": False}, ("lse_ptr",)),
        ("attn_fwd_split", _attn_fwd_kernel, (FWD_TILES, FWD_CONFIGS), {"SPLIT": True},
         ("o_ptr", "lse_ptr")),
        ("attn_combine", _combine_kernel, combine, {}, ("o_buf_ptr", "l_buf_ptr", "lse_ptr")),
        ("attn_bwd_dkdv", _attn_bwd_dkdv_kernel, (BWD_KV_TILES, BWD_KV_CONFIGS), {},
         ("lse_ptr", "delta_ptr")),
        ("attn_bwd_dq", _attn_bwd_dq_kernel, (BWD_Q_TILES, BWD_Q_CONFIGS), {},
         ("lse_ptr", "delta_ptr")),  # per-user dq; shared queries store an fp32 partial
    ]
    # Strides that are not multiples of 16 in general (they count queries, not features).
    odd_strides = ("stride_ls", "stride_lb", "stride_lh", "stride_lse_b", "stride_lse_h")
    for name, kernel, table, extra, fp32_ptrs in kernels:
        fn = kernel.fn if hasattr(kernel.fn, "arg_names") else kernel  # autotuned or plain
        for head_dim in head_dims:
            if isinstance(table, tuple):
                tiles, configs = table
                table_configs = configs if all_configs else allowed_configs(
                    tiles, configs, head_dim, operand_kind(dtype, precision))
            else:
                table_configs = table
            for cfg in table_configs:
                constexprs = {"GROUP": group, "HEAD_DIM": head_dim, "INPUT_PRECISION": precision,
                              **extra, **cfg.kwargs}
                constexprs = {k: v for k, v in constexprs.items() if k in fn.arg_names}
                signature = {}
                for arg in fn.arg_names:
                    if arg in constexprs:
                        signature[arg] = "constexpr"
                    elif arg.endswith("_ptr"):
                        signature[arg] = ("*i32" if arg == "cu_ptr" else
                                          "*fp32" if arg in fp32_ptrs else f"*{elem}")
                    elif arg in ("qk_scale", "sm_scale"):
                        signature[arg] = "fp32"
                    else:
                        signature[arg] = "i32"
                # What the runtime specializes for real calls: 16-byte aligned tensors and
                # feature strides that are multiples of 16 (multiples of Dh), which is what
                # lets loads vectorize and pipeline.
                aligned = [arg for arg in fn.arg_names if arg.endswith("_ptr") or (
                    arg.startswith("stride_") and arg not in odd_strides)]
                yield {"name": f"{name}_d{head_dim}", "fn": fn, "signature": signature,
                       "constexprs": constexprs, "config": cfg, "divisible_by_16": aligned}


# The --quick subset of scripts/triton_aot.py (CI): per dtype label, the kernels whose first
# Dh 128 config is compiled: every kernel in bf16; with TF32 and with exact fp32 the ones nearest
# the register limit (the combine kernel and the split forward barely differ by dtype).
_AOT_QUICK = {"bf16": ("attn_fwd", "attn_fwd_split", "attn_combine", "attn_bwd_dkdv", "attn_bwd_dq"),
              "fp32-tf32": ("attn_fwd", "attn_bwd_dkdv", "attn_bwd_dq"),
              "fp32": ("attn_fwd", "attn_bwd_dkdv", "attn_bwd_dq")}


def _registry_specs():
    """Compile list of scripts/triton_aot.py: bf16, fp16, fp32 with exact "ieee" dot products
    (torch's default, allow_tf32 False) and fp32 with TF32 tensor cores ("fp32-tf32"), at Dh
    128 / 64 / 32, every config the autotuner may pick there. fp16 compiles like bf16 and is
    left to the full list."""
    variants = [(torch.bfloat16, "ieee", "bf16"), (torch.float16, "ieee", "fp16"),
                (torch.float32, "ieee", "fp32"), (torch.float32, "tf32", "fp32-tf32")]
    for dtype, precision, label in variants:
        for spec in aot_specs(dtype, head_dims=(128, 64, 32), input_precision=precision):
            kernel, dim = spec["name"].rsplit("_", 1)
            cfg = spec["config"]
            tile = "x".join(str(v) for v in cfg.kwargs.values())
            yield {**spec, "name": kernel, "dtype": label,
                   "quick": kernel in _AOT_QUICK.get(label, ()),
                   "config_name": f"{dim} {tile} w{cfg.num_warps} s{cfg.num_stages}"}


register_aot_specs("attention", _registry_specs)

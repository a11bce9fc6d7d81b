"""MoE in Triton: fused routing and the grouped expert GEMMs of the forward and backward.

Layout (from `moe_align`): the T*k slots (token t, choice j; flat s = t*k + j) sorted by expert,
each expert's run padded to BLOCK_M, so every BLOCK_M-row block belongs to one expert
(`block_expert_ids`). The GEMMs gather their A rows on the fly (row = slot // A_DIV: x and the
output gradient are indexed by token, per-slot tensors by slot), so no permuted copy of the
activations is ever written, and write their results by slot id. Kernels:

- `_moe_route_kernel`: score (softmax | sigmoid), + bias for selection, k rounds of argmax
  (lowest id on ties), weights from the unbiased scores, renormalize. One pass over the logits.
- `_moe_align_{count,scan,scatter}_kernel`: the sorted, block-padded layout (see below).
- `_moe_gemm_kernel` (EPILOGUE selects the tail):
    ACT:   z = x[t] @ w1[e]; a = act(z) stored per slot (and z for the backward). SwiGLU keeps two
           accumulators (gate, up columns n and h + n) over one A load, so the activation is
           computed in registers and only a (h wide) is written.
    SCALE: out[s] = w[s] * (a[s] @ w2[e]): the routing weight fused in; the per-slot rows are
           then summed over the k choices of each token (deterministic, unlike fp32 atomics).
    PLAIN: out[s] = dz[s] @ w1[e]^T (the x gradient, per slot, summed like SCALE).
    ACT_BWD: g = gy[t] @ w2[e]^T; dweight partials sum_n g * a, and dz = w * g * act'(z).
- `_moe_wgrad_kernel`: per expert, dW[e] = sum over its slots of A[row]^T (scale * B[row]);
  the reduction runs over the expert's slots (K dimension = tokens), read from the same
  sorted layout.

FLOPs (active only): forward 2*T*k*d*(c + 1)*h with c = 2 for SwiGLU, 1 for GELU; backward
twice that. Tile configs are data (`TILE_TABLE` below); see `pick_tiles` and the retune notes.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .._backend import triton_interpret
from ..rq.triton_kernels import dot_input_precision

EPI_ACT, EPI_SCALE, EPI_PLAIN, EPI_ACT_BWD = 0, 1, 2, 3
ACT_CODES = {"swiglu": 0, "gelu": 1}

# ---------------------------------------------------------------------------------------------
# Tile configs: data, chosen on the host from shapes only (no sync). Regime by the average
# slots per expert, m = T*k/E: "decode" (m <= 32: a beam step for one user, most experts get a
# handful of rows, so BLOCK_M = 16 wastes little on padding), "mid" (m <= 512), "train".
# Per kernel: gemm_up (x @ w1, activation epilogue), gemm_down (a @ w2, also the x-gradient
# GEMM), act_bwd (gy @ w2^T), wgrad (per-expert weight gradients; its BLOCK_K runs over slots).
# GEMM entries: (BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages); BLOCK_M is per regime (it
# is also the alignment padding, so one value for the three slot-blocked kernels). wgrad
# entries: (BLOCK_M, BLOCK_N, BLOCK_K over slots, num_warps, num_stages). The SwiGLU forward
# runs gemm_up at half the entry's BLOCK_N: it keeps two accumulators (gate and up), so the same
# entry covers the same 2 * BLOCK_N weight columns and register budget as the GELU kernel (at
# full width it spilled: 255 registers + 52 bytes in the AOT check). act_bwd stays at 64
# columns: its epilogue holds z (gate, up) and a besides the accumulator (568 bytes of spills at
# 128).
# The "default" values are untuned starting points (chosen by tile-size reasoning: a 128 x 128
# output tile per 8 warps in "train", sm_90 shared memory <= 227 KB with the SwiGLU kernel's two
# B tiles, no register spills per the AOT check); no GPU timing stands behind them yet.
#
# Retune: on the target GPU run `python benchmarks/bench_moe.py --tune [--activation swiglu]`
# (tune_tiles there): per regime it times BLOCK_M and then each kernel's candidates on a
# representative shape of the grid and prints a table to paste here under the GPU's key
# (a torch.cuda.get_device_name() substring, e.g. "H200"); "default" serves any GPU without an
# entry. Every entry must then compile for sm_90 without spills (AOT_CONFIGS below is the list
# scripts/triton_aot.py compiles).
# ---------------------------------------------------------------------------------------------
TILE_TABLE = {
    "default": {
        "decode": {"BLOCK_M": 16,
                   "gemm_up": (64, 128, 1, 4, 4), "gemm_down": (64, 128, 1, 4, 4),
                   "act_bwd": (64, 128, 1, 4, 4), "wgrad": (64, 64, 32, 4, 3)},
        "mid": {"BLOCK_M": 64,
                "gemm_up": (128, 64, 8, 4, 4), "gemm_down": (128, 64, 8, 4, 4),
                "act_bwd": (64, 64, 8, 4, 4), "wgrad": (128, 64, 64, 8, 3)},
        "train": {"BLOCK_M": 128,
                  "gemm_up": (128, 64, 8, 8, 3), "gemm_down": (128, 64, 8, 8, 3),
                  "act_bwd": (64, 64, 8, 8, 3), "wgrad": (128, 128, 64, 8, 3)},
    },
}
# The interpreter runs each program in Python: few, large-enough tiles keep the tests fast.
_INTERPRET_TILES = {"BLOCK_M": 32, "gemm_up": (64, 64, 1, 4, 1), "gemm_down": (64, 64, 1, 4, 1),
                    "act_bwd": (64, 64, 1, 4, 1), "wgrad": (64, 64, 64, 4, 1)}


def route_block_t(num_experts: int) -> int:
    """Token rows per routing program: 32, fewer for wide expert counts so the (rows x
    next_pow2(E)) tiles stay at <= 16 values per thread (E = 256 with 32 rows spilled)."""
    return max(1, min(32, 2048 // triton.next_power_of_2(num_experts)))


def regime(num_slots: int, num_experts: int) -> str:
    per_expert = num_slots / max(num_experts, 1)
    return "decode" if per_expert <= 32 else ("mid" if per_expert <= 512 else "train")


def pick_tiles(num_slots: int, num_experts: int, device: torch.device) -> dict:
    """The tile config for this call: the interpreter's, or TILE_TABLE[gpu][regime]; the
    environment variable ONEREC_MOE_TILES=<regime> forces a regime (tests, tuning)."""
    if triton_interpret() or device.type != "cuda":
        return _INTERPRET_TILES
    name = torch.cuda.get_device_name(device)
    table = next((v for key, v in TILE_TABLE.items() if key != "default" and key in name),
                 TILE_TABLE["default"])
    forced = os.environ.get("ONEREC_MOE_TILES")
    return table[forced if forced in table else regime(num_slots, num_experts)]


def _meta(entry, halve_n: bool = False) -> dict:
    bn, bk, gm, warps, stages = entry
    return {"BLOCK_N": max(bn // 2, 16) if halve_n else bn, "BLOCK_K": bk, "GROUP_M": gm,
            "num_warps": warps, "num_stages": stages}


# ---------------------------------------------------------------------------------------------
# Routing
# ---------------------------------------------------------------------------------------------
@triton.jit
def _moe_route_kernel(logits_ptr, bias_ptr, w_ptr, ids_ptr, T, E, stride_t, top_k,
                      SOFTMAX: tl.constexpr, HAS_BIAS: tl.constexpr, RENORM: tl.constexpr,
                      BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, BLOCK_E)
    row_mask = rows < T
    col_mask = cols < E
    m2 = row_mask[:, None] & col_mask[None, :]
    logits = tl.load(logits_ptr + rows.to(tl.int64)[:, None] * stride_t + cols[None, :], mask=m2,
                     other=float("-inf")).to(tl.float32)
    is_nan = logits != logits
    logits = tl.where(is_nan, float("-inf"), logits)
    logits = tl.where(row_mask[:, None] & ~col_mask[None, :], float("-inf"), logits)
    logits = tl.where(row_mask[:, None], logits, 0.0)  # rows past T: no -inf - -inf
    if SOFTMAX:
        # Same steps as reference.route_scores (an all -inf row gives NaN scores there too).
        e = tl.exp(logits - tl.max(logits, axis=1)[:, None])
        scores = e / tl.sum(e, axis=1)[:, None]
    else:
        scores = tl.sigmoid(logits)
    sel = scores
    if HAS_BIAS:
        sel = sel + tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    bad = is_nan | (sel != sel) | (sel == float("-inf"))
    sel = tl.where(bad, -3.4028234663852886e38, sel)  # reference.SELECT_FLOOR
    sel = tl.where(col_mask[None, :], sel, float("-inf"))  # padding columns: never chosen
    kcols = tl.arange(0, BLOCK_K)
    w = tl.zeros((BLOCK_T, BLOCK_K), tl.float32)
    ids = tl.zeros((BLOCK_T, BLOCK_K), tl.int32)
    for j in range(top_k):
        best = tl.argmax(sel, axis=1, tie_break_left=True)  # (BLOCK_T,)
        hit = cols[None, :] == best[:, None]
        wj = tl.sum(tl.where(hit, scores, 0.0), axis=1)
        wj = tl.where(wj != wj, 0.0, wj)
        w = tl.where(kcols[None, :] == j, wj[:, None], w)
        ids = tl.where(kcols[None, :] == j, best[:, None], ids)
        sel = tl.where(hit, float("-inf"), sel)  # taken: below SELECT_FLOOR
    if RENORM:
        total = tl.sum(w, axis=1)
        w = w / tl.where(total > 0, total, 1.0)[:, None]
    out_mask = row_mask[:, None] & (kcols < top_k)[None, :]
    offs = rows.to(tl.int64)[:, None] * top_k + kcols[None, :]
    tl.store(w_ptr + offs, w, mask=out_mask)
    tl.store(ids_ptr + offs, ids.to(tl.int64), mask=out_mask)


def moe_route_triton(router_logits: torch.Tensor, top_k: int, softmax: bool,
                     bias: torch.Tensor | None, renormalize: bool
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """router_logits (T, E) with unit column stride, T >= 1; bias (E,) contiguous or None."""
    num_tokens, num_experts = router_logits.shape
    w = torch.empty((num_tokens, top_k), dtype=torch.float32, device=router_logits.device)
    ids = torch.empty((num_tokens, top_k), dtype=torch.int64, device=router_logits.device)
    block_t = route_block_t(num_experts)
    grid = (triton.cdiv(num_tokens, block_t),)
    _moe_route_kernel[grid](router_logits, bias if bias is not None else w, w, ids, num_tokens,
                            num_experts, router_logits.stride(0), top_k,
                            SOFTMAX=softmax, HAS_BIAS=bias is not None, RENORM=renormalize,
                            BLOCK_T=block_t, BLOCK_E=triton.next_power_of_2(num_experts),
                            BLOCK_K=triton.next_power_of_2(top_k))
    return w, ids


# ---------------------------------------------------------------------------------------------
# Alignment: the layout of moe_align_reference (identical output) in three launches instead of
# the ~20 small ones of the PyTorch version (scatter_add, cumsums, a radix sort, gathers, a
# scatter, searchsorted), which would cost more than the whole routing step at T = 4096.
#   count:   one program per chunk of CHUNK slots: per-expert counts of the chunk
#   scan:    one program: per-expert exclusive prefix over chunks, totals, padded starts,
#            each block's expert
#   scatter: one program per chunk: slot -> start[e] + (earlier chunks' e) + (earlier in chunk)
# Within an expert, slots stay in ascending order (the stable sort of the reference).
# ---------------------------------------------------------------------------------------------
@triton.jit
def _chunk_onehot(ids_ptr, chunk, n, num_experts, CHUNK: tl.constexpr, BLOCK_E: tl.constexpr):
    slots = chunk * CHUNK + tl.arange(0, CHUNK)
    ids = tl.load(ids_ptr + slots, mask=slots < n, other=-1)
    experts = tl.arange(0, BLOCK_E)
    onehot = (ids[:, None] == experts[None, :]) & (experts[None, :] < num_experts)
    return slots, onehot.to(tl.int32)


@triton.jit
def _moe_align_count_kernel(ids_ptr, chunk_counts_ptr, bad_ptr, n, num_experts,
                            CHUNK: tl.constexpr, BLOCK_E: tl.constexpr):
    """Per-expert counts of one chunk; ids outside [0, E) are counted into bad_ptr[chunk] (the
    range check rides along instead of costing its own launches)."""
    chunk = tl.program_id(0)
    slots, onehot = _chunk_onehot(ids_ptr, chunk, n, num_experts, CHUNK, BLOCK_E)
    experts = tl.arange(0, BLOCK_E)
    tl.store(chunk_counts_ptr + chunk * num_experts + experts, tl.sum(onehot, axis=0),
             mask=experts < num_experts)
    valid = tl.sum(onehot, axis=1)
    tl.store(bad_ptr + chunk, tl.sum(tl.where(slots < n, 1 - valid, 0), axis=0))


@triton.jit
def _moe_align_scan_kernel(chunk_counts_ptr, chunk_offsets_ptr, starts_ptr, counts_ptr,
                           block_expert_ptr, num_chunks, num_experts, num_blocks, block_m,
                           SCAN_C: tl.constexpr, BLOCK_E: tl.constexpr,
                           BLOCK_B: tl.constexpr):
    experts = tl.arange(0, BLOCK_E)
    e_mask = experts < num_experts
    total = tl.zeros((BLOCK_E,), tl.int32)
    rows = tl.arange(0, SCAN_C)
    for c0 in range(0, num_chunks, SCAN_C):
        m = ((c0 + rows) < num_chunks)[:, None] & e_mask[None, :]
        offs = (c0 + rows)[:, None] * num_experts + experts[None, :]
        cnt = tl.load(chunk_counts_ptr + offs, mask=m, other=0)
        incl = tl.cumsum(cnt, axis=0)
        tl.store(chunk_offsets_ptr + offs, total[None, :] + incl - cnt, mask=m)
        total += tl.sum(cnt, axis=0)
    padded = (total + block_m - 1) // block_m * block_m
    padded_end = tl.cumsum(padded, axis=0)
    tl.store(counts_ptr + experts, total.to(tl.int64), mask=e_mask)
    tl.store(starts_ptr + experts, padded_end - padded, mask=e_mask)
    # block b belongs to the first expert whose padded run ends after b * block_m (E past the end)
    ends = tl.where(e_mask, padded_end, 2147483647)
    blocks = tl.arange(0, BLOCK_B)
    for b0 in range(0, num_blocks, BLOCK_B):
        pos = (b0 + blocks) * block_m
        owner = tl.sum((ends[None, :] <= pos[:, None]).to(tl.int32), axis=1)
        tl.store(block_expert_ptr + b0 + blocks, owner, mask=(b0 + blocks) < num_blocks)


@triton.jit
def _moe_align_scatter_kernel(ids_ptr, chunk_offsets_ptr, starts_ptr, sorted_ptr, n,
                              num_experts, CHUNK: tl.constexpr, BLOCK_E: tl.constexpr):
    chunk = tl.program_id(0)
    slots, onehot = _chunk_onehot(ids_ptr, chunk, n, num_experts, CHUNK, BLOCK_E)
    experts = tl.arange(0, BLOCK_E)
    e_mask = experts < num_experts
    base = (tl.load(starts_ptr + experts, mask=e_mask, other=0)
            + tl.load(chunk_offsets_ptr + chunk * num_experts + experts, mask=e_mask, other=0))
    earlier = tl.cumsum(onehot, axis=0) - onehot  # same-expert slots before this one in the chunk
    dest = tl.sum(onehot * (base[None, :] + earlier), axis=1)
    valid = tl.sum(onehot, axis=1) > 0
    tl.store(sorted_ptr + dest, slots, mask=valid)


def _align_chunk(block_e: int) -> int:
    """Slots per count/scatter program: the (CHUNK x BLOCK_E) one-hot stays at 8K values."""
    return max(16, min(256, 8192 // block_e))


def _align_rows(block_e: int, most: int) -> int:
    return max(1, min(most, 8192 // block_e))


def moe_align_triton(topk_ids: torch.Tensor, num_experts: int, block_m: int):
    """moe_align_reference's outputs (bit-identical) in three kernels; topk_ids contiguous.
    Also returns the number of ids outside [0, E) as a (1,) int32 device tensor (no sync)."""
    n = topk_ids.numel()
    dev = topk_ids.device
    num_blocks = (n + num_experts * (block_m - 1)) // block_m
    block_e = triton.next_power_of_2(num_experts)
    chunk = _align_chunk(block_e)
    num_chunks = triton.cdiv(n, chunk)
    ids = topk_ids.reshape(-1)
    sorted_ids = torch.full((num_blocks * block_m,), n, dtype=torch.int32, device=dev)
    block_expert = torch.empty((num_blocks,), dtype=torch.int32, device=dev)
    starts = torch.empty((num_experts,), dtype=torch.int32, device=dev)
    counts = torch.empty((num_experts,), dtype=torch.int64, device=dev)
    chunk_counts = torch.empty((max(num_chunks, 1), num_experts), dtype=torch.int32, device=dev)
    chunk_offsets = torch.empty_like(chunk_counts)
    bad = torch.zeros((max(num_chunks, 1),), dtype=torch.int32, device=dev)
    if num_chunks:
        _moe_align_count_kernel[(num_chunks,)](ids, chunk_counts, bad, n, num_experts,
                                              CHUNK=chunk, BLOCK_E=block_e)
    _moe_align_scan_kernel[(1,)](chunk_counts, chunk_offsets, starts, counts, block_expert,
                                 num_chunks, num_experts, num_blocks, block_m,
                                 SCAN_C=_align_rows(block_e, 64), BLOCK_E=block_e,
                                 BLOCK_B=_align_rows(block_e, 128))
    if num_chunks:
        _moe_align_scatter_kernel[(num_chunks,)](ids, chunk_offsets, starts, sorted_ids, n,
                                                num_experts, CHUNK=chunk, BLOCK_E=block_e)
    return sorted_ids, block_expert, starts, counts, bad.sum(dtype=torch.int32).view(1)


# ---------------------------------------------------------------------------------------------
# Grouped GEMMs over the sorted slot layout
# ---------------------------------------------------------------------------------------------
@triton.jit
def _silu_parts(g):
    sig = 1.0 / (1.0 + tl.exp(-g))
    return sig, g * sig


@triton.jit
def _gelu_parts(z):
    """(gelu(z), gelu'(z)) with the exact erf form."""
    cdf = 0.5 * (1.0 + tl.math.erf(z * 0.7071067811865476))
    pdf = tl.exp(-0.5 * z * z) * 0.3989422804014327
    return z * cdf, cdf + z * pdf


@triton.jit
def _moe_gemm_kernel(
    a_ptr,  # rows gathered by slot // A_DIV, unit column stride, row stride stride_am
    b_ptr,  # (E, K, N) read through strides (so w1^T / w2^T cost nothing)
    out_ptr,  # (num_slots, N) per slot (EPILOGUE ACT: (num_slots, H) activations)
    aux_ptr,  # ACT: z out (num_slots, N_B) | ACT_BWD: z in
    aux2_ptr,  # ACT_BWD: saved activations a (num_slots, N)
    weight_ptr,  # (num_slots,) routing weights (SCALE, ACT_BWD)
    part_ptr,  # ACT_BWD: (num_n_tiles, num_slots) fp32 partial dweight sums
    sorted_ptr, block_expert_ptr,
    num_slots, N, K, H_OFF, num_experts, A_DIV,
    stride_am, stride_be, stride_bk, stride_bn, stride_om, stride_xm,
    EPILOGUE: tl.constexpr, ACT: tl.constexpr, STORE_Z: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    NUM_BLOCKS_M, EVEN_K: tl.constexpr,
):
    """One (BLOCK_M slots of one expert) x (BLOCK_N output columns) tile. N is the number of
    output columns (h for ACT and ACT_BWD, else the B width); H_OFF the column offset of the
    SwiGLU up half in b (and in z). stride_xm: row stride of z / a for the ACT epilogues."""
    pid = tl.program_id(0)
    num_n = tl.cdiv(N, BLOCK_N)
    # Grouped ordering: GROUP_M row blocks sweep the column tiles together, so one expert's
    # weight tiles are reused from L2 by consecutive programs.
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    group_size = tl.minimum(NUM_BLOCKS_M - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_size
    pid_n = (pid % per_group) // group_size

    expert = tl.load(block_expert_ptr + pid_m)
    if expert >= num_experts:
        return
    slots = tl.load(sorted_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
    m_mask = slots < num_slots
    slots64 = slots.to(tl.int64)
    a_rows = a_ptr + (slots64 // A_DIV)[:, None] * stride_am
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    op_dtype = b_ptr.dtype.element_ty
    # Pointers advance by BLOCK_K per step (rather than being rebuilt from 64-bit offsets), so
    # the loop carries two pointer tiles and the compiler can pipeline the loads.
    a_ptrs = a_rows + offs_k[None, :]
    b_ptrs = (b_ptr + expert.to(tl.int64) * stride_be + offs_k[:, None] * stride_bk
              + offs_n[None, :] * stride_bn)

    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:  # K a multiple of BLOCK_K (d, h = 1024, 4096): no per-k predicates
            a_mask = m_mask[:, None]
            b_mask = n_mask[None, :]
        else:
            k_mask = offs_k < K - k0
            a_mask = m_mask[:, None] & k_mask[None, :]
            b_mask = k_mask[:, None] & n_mask[None, :]
        a = tl.load(a_ptrs, mask=a_mask, other=0.0).to(op_dtype)
        b = tl.load(b_ptrs, mask=b_mask, other=0.0)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        if EPILOGUE == 0 and ACT == 0:  # SwiGLU forward: the up half over the same A tile
            b_up = tl.load(b_ptrs + H_OFF * stride_bn, mask=b_mask, other=0.0)
            acc_up = tl.dot(a, b_up, acc_up, input_precision=INPUT_PRECISION)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K * stride_bk

    mn_mask = m_mask[:, None] & n_mask[None, :]
    out_dtype = out_ptr.dtype.element_ty
    if EPILOGUE == 0:  # activation in registers; z kept only when a backward will need it
        x_rows = slots64[:, None] * stride_xm + offs_n[None, :]
        if ACT == 0:
            _, silu = _silu_parts(acc)
            act = silu * acc_up
            if STORE_Z:
                tl.store(aux_ptr + x_rows, acc.to(out_dtype), mask=mn_mask)
                tl.store(aux_ptr + x_rows + H_OFF, acc_up.to(out_dtype), mask=mn_mask)
        else:
            act, _ = _gelu_parts(acc)
            if STORE_Z:
                tl.store(aux_ptr + x_rows, acc.to(out_dtype), mask=mn_mask)
        tl.store(out_ptr + slots64[:, None] * stride_om + offs_n[None, :], act.to(out_dtype),
                 mask=mn_mask)
    elif EPILOGUE == 3:  # backward through the activation and the routing weight
        x_rows = slots64[:, None] * stride_xm + offs_n[None, :]
        zg = tl.load(aux_ptr + x_rows, mask=mn_mask, other=0.0).to(tl.float32)
        a_saved = tl.load(aux2_ptr + slots64[:, None] * N + offs_n[None, :], mask=mn_mask,
                          other=0.0).to(tl.float32)
        # d y / d weight[s] = gy[t] . (a_s @ w2[e]) = sum_n (gy[t] @ w2[e]^T)[n] * a_s[n]
        part = tl.sum(acc * a_saved, axis=1)
        tl.store(part_ptr + pid_n.to(tl.int64) * num_slots + slots64, part, mask=m_mask)
        w = tl.load(weight_ptr + slots64, mask=m_mask, other=0.0)
        ga = acc * w[:, None]
        if ACT == 0:
            zu = tl.load(aux_ptr + x_rows + H_OFF, mask=mn_mask, other=0.0).to(tl.float32)
            sig, silu = _silu_parts(zg)
            d_gate = ga * zu * sig * (1.0 + zg * (1.0 - sig))
            tl.store(out_ptr + x_rows, d_gate.to(out_dtype), mask=mn_mask)
            tl.store(out_ptr + x_rows + H_OFF, (ga * silu).to(out_dtype), mask=mn_mask)
        else:
            _, dgelu = _gelu_parts(zg)
            tl.store(out_ptr + x_rows, (ga * dgelu).to(out_dtype), mask=mn_mask)
    else:
        if EPILOGUE == 1:
            acc = acc * tl.load(weight_ptr + slots64, mask=m_mask, other=0.0)[:, None]
        tl.store(out_ptr + slots64[:, None] * stride_om + offs_n[None, :], acc.to(out_dtype),
                 mask=mn_mask)


@triton.jit
def _moe_wgrad_kernel(
    a_ptr,  # (rows, M) rows gathered by slot // A_DIV, unit column stride
    b_ptr,  # (rows, N) rows gathered by slot // B_DIV, unit column stride
    out_ptr,  # (E, M, N) contiguous
    scale_ptr,  # (num_slots,) per-slot scale of the B rows (HAS_SCALE)
    sorted_ptr, starts_ptr, counts_ptr,
    M, N, A_DIV, B_DIV, stride_am, stride_bm,
    HAS_SCALE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """out[e] = sum over expert e's slots s of A[s // A_DIV]^T (scale[s] * B[s // B_DIV]).
    Grid (tiles of M x N, E); an expert without slots writes zeros."""
    pid = tl.program_id(0)
    expert = tl.program_id(1)
    num_n = tl.cdiv(N, BLOCK_N)
    offs_m = (pid // num_n) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = (pid % num_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    start = tl.load(starts_ptr + expert)
    count = tl.load(counts_ptr + expert).to(tl.int32)
    offs_k = tl.arange(0, BLOCK_K)
    op_dtype = a_ptr.dtype.element_ty
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(0, count, BLOCK_K):
        k_mask = k0 + offs_k < count
        slots = tl.load(sorted_ptr + start + k0 + offs_k, mask=k_mask, other=0).to(tl.int64)
        a = tl.load(a_ptr + (slots // A_DIV)[None, :] * stride_am + offs_m[:, None],
                    mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        b = tl.load(b_ptr + (slots // B_DIV)[:, None] * stride_bm + offs_n[None, :],
                    mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        if HAS_SCALE:
            s = tl.load(scale_ptr + slots, mask=k_mask, other=0.0)
            b = (b.to(tl.float32) * s[:, None]).to(op_dtype)
        acc = tl.dot(a.to(op_dtype), b.to(op_dtype), acc, input_precision=INPUT_PRECISION)
    out = out_ptr + expert.to(tl.int64) * M * N + offs_m[:, None].to(tl.int64) * N + offs_n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------
def _gemm(a, b, out, *, sorted_ids, block_expert, num_slots, n_cols, k_dim, a_div,
          b_strides, epilogue, tiles, kernel_key, act=0, store_z=False, h_off=0, aux=None,
          aux2=None, weight=None, part=None, stride_xm=0):
    meta = _meta(tiles[kernel_key], halve_n=epilogue == EPI_ACT and act == ACT_CODES["swiglu"])
    block_m = tiles["BLOCK_M"]
    num_blocks_m = block_expert.numel()
    num_experts = b.shape[0]
    grid = (num_blocks_m * triton.cdiv(n_cols, meta["BLOCK_N"]),)
    if grid[0] == 0:
        return
    dummy = out
    _moe_gemm_kernel[grid](
        a, b, out, aux if aux is not None else dummy, aux2 if aux2 is not None else dummy,
        weight if weight is not None else dummy, part if part is not None else dummy,
        sorted_ids, block_expert, num_slots, n_cols, k_dim, h_off, num_experts, a_div,
        a.stride(0), b.stride(0), b_strides[0], b_strides[1], out.stride(0), stride_xm,
        EPILOGUE=epilogue, ACT=act, STORE_Z=store_z,
        INPUT_PRECISION=dot_input_precision(a.dtype), BLOCK_M=block_m,
        NUM_BLOCKS_M=num_blocks_m, EVEN_K=k_dim % meta["BLOCK_K"] == 0, **meta)


def _wgrad(a, b, out, *, scale, a_div, b_div, sorted_ids, starts, counts, tiles):
    bm, bn, bk, warps, stages = tiles["wgrad"]
    num_experts, m, n = out.shape
    grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn), num_experts)
    _moe_wgrad_kernel[grid](a, b, out, scale if scale is not None else out, sorted_ids, starts,
                            counts, m, n, a_div, b_div, a.stride(0), b.stride(0),
                            HAS_SCALE=scale is not None,
                            INPUT_PRECISION=dot_input_precision(a.dtype),
                            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps,
                            num_stages=stages)


def fused_moe_fwd_triton(x, w1, w2, topk_weights, sorted_ids, block_expert, activation: str,
                         top_k: int, store_z: bool, tiles: dict):
    """x (T, d), w1 (E, d, c*h), w2 (E, h, d) contiguous, same dtype; topk_weights (T, k) fp32
    contiguous; sorted_ids / block_expert from moe_align with block_m = tiles["BLOCK_M"].
    Returns y (T, d), the activations a (T*k, h) and, when store_z, the pre-activations
    z (T*k, c*h) (else an empty tensor)."""
    num_tokens, d = x.shape
    h = w2.shape[1]
    n = num_tokens * top_k
    swiglu = activation == "swiglu"
    act = x.new_empty((n, h))
    z = x.new_empty((n, w1.shape[2]) if store_z else (0, w1.shape[2]))
    _gemm(x, w1, act, sorted_ids=sorted_ids, block_expert=block_expert, num_slots=n,
          n_cols=h, k_dim=d, a_div=top_k, b_strides=(w1.stride(1), w1.stride(2)),
          epilogue=EPI_ACT, act=ACT_CODES[activation], store_z=store_z,
          h_off=h if swiglu else 0, aux=z, stride_xm=w1.shape[2], tiles=tiles,
          kernel_key="gemm_up")
    # Slots an out-of-range id left out (CUDA, asserted asynchronously) must read as 0.
    out = torch.zeros((n, d), dtype=x.dtype, device=x.device)
    _gemm(act, w2, out, sorted_ids=sorted_ids, block_expert=block_expert, num_slots=n,
          n_cols=d, k_dim=h, a_div=1, b_strides=(w2.stride(1), w2.stride(2)),
          epilogue=EPI_SCALE, weight=topk_weights, tiles=tiles, kernel_key="gemm_down")
    y = out.view(num_tokens, top_k, d)
    # torch reduces low-precision sums in fp32 internally: one pass, one rounding
    y = y[:, 0] if top_k == 1 else y.sum(dim=1)
    return y, act, z


def fused_moe_bwd_triton(gy, x, w1, w2, topk_weights, act, z, sorted_ids, block_expert,
                         starts, counts, activation: str, top_k: int, tiles: dict):
    """Gradients of y with respect to x, w1, w2 and topk_weights (see the module docstring).
    gy (T, d) contiguous in x's dtype; act, z as saved by the forward."""
    num_tokens, d = x.shape
    h = w2.shape[1]
    n = num_tokens * top_k
    c_h = w1.shape[2]
    swiglu = activation == "swiglu"
    bn = tiles["act_bwd"][0]
    num_n = triton.cdiv(h, bn)
    dz = torch.zeros((n, c_h), dtype=x.dtype, device=x.device)
    part = torch.zeros((num_n, n), dtype=torch.float32, device=x.device)
    # g = gy[t] @ w2[e]^T: B[e, kk, n] = w2[e, n, kk]
    _gemm(gy, w2, dz, sorted_ids=sorted_ids, block_expert=block_expert, num_slots=n,
          n_cols=h, k_dim=d, a_div=top_k, b_strides=(w2.stride(2), w2.stride(1)),
          epilogue=EPI_ACT_BWD, act=ACT_CODES[activation], h_off=h if swiglu else 0, aux=z,
          aux2=act, weight=topk_weights, part=part, stride_xm=c_h, tiles=tiles,
          kernel_key="act_bwd")
    grad_weights = part.sum(dim=0).view(num_tokens, top_k)
    # dx[t] = sum_j dz[s] @ w1[e]^T: B[e, kk, n] = w1[e, n, kk]
    gx_slots = torch.zeros((n, d), dtype=x.dtype, device=x.device)
    _gemm(dz, w1, gx_slots, sorted_ids=sorted_ids, block_expert=block_expert, num_slots=n,
          n_cols=d, k_dim=c_h, a_div=1, b_strides=(w1.stride(2), w1.stride(1)),
          epilogue=EPI_PLAIN, tiles=tiles, kernel_key="gemm_down")
    gx = gx_slots.view(num_tokens, top_k, d)
    gx = gx[:, 0] if top_k == 1 else gx.sum(dim=1)
    gw1 = torch.empty_like(w1)
    _wgrad(x, dz, gw1, scale=None, a_div=top_k, b_div=1, sorted_ids=sorted_ids, starts=starts,
           counts=counts, tiles=tiles)
    gw2 = torch.empty_like(w2)
    _wgrad(act, gy, gw2, scale=topk_weights, a_div=1, b_div=top_k, sorted_ids=sorted_ids,
           starts=starts, counts=counts, tiles=tiles)
    return gx, gw1, gw2, grad_weights


def flops_forward(num_tokens: int, top_k: int, d: int, h: int, activation: str) -> float:
    """Active-expert FLOPs of the forward: 2*T*k*d*(c + 1)*h (c = 2 for SwiGLU, 1 for GELU)."""
    c = 2 if activation == "swiglu" else 1
    return 2.0 * num_tokens * top_k * d * (c + 1) * h


# ---------------------------------------------------------------------------------------------
# Ahead-of-time compile list (scripts/triton_aot.py): every (kernel, signature, constexprs)
# the table above can launch, for bf16 / fp16 operands, specialized the way the JIT does on the
# issue's shapes: unit strides become the constant 1, and pointers and the sizes / strides named
# in "divisible_by_16" carry tt.divisibility=16 (d, h multiples of 16). The checker compiles each
# for sm_90 and reads the registers and spills from ptxas -v.
# ---------------------------------------------------------------------------------------------
_GEMM_SCALARS = ("num_slots", "N", "K", "H_OFF", "num_experts", "A_DIV", "stride_am",
                 "stride_be", "stride_bk", "stride_bn", "stride_om", "stride_xm", "NUM_BLOCKS_M")
_GEMM_POINTERS = ("a_ptr", "b_ptr", "out_ptr", "aux_ptr", "aux2_ptr", "weight_ptr", "part_ptr",
                  "sorted_ptr", "block_expert_ptr")
_WGRAD_SCALARS = ("M", "N", "A_DIV", "B_DIV", "stride_am", "stride_bm")
_WGRAD_POINTERS = ("a_ptr", "b_ptr", "out_ptr", "scale_ptr", "sorted_ptr", "starts_ptr",
                   "counts_ptr")
_POINTER_TYPES = {"weight_ptr": "*fp32", "part_ptr": "*fp32", "scale_ptr": "*fp32",
                  "chunk_counts_ptr": "*i32", "chunk_offsets_ptr": "*i32", "bad_ptr": "*i32",
                  "bias_ptr": "*fp32", "w_ptr": "*fp32", "ids_ptr": "*i64",
                  "sorted_ptr": "*i32", "block_expert_ptr": "*i32", "starts_ptr": "*i32",
                  "counts_ptr": "*i64"}


def _aot_entry(name, fn, pointers, scalars, dtype, constexprs, unit, div16, warps, stages):
    sig = {p: _POINTER_TYPES.get(p, f"*{dtype}") for p in pointers}
    sig.update({a: "i32" for a in scalars if a not in unit})
    return {"name": name, "fn": fn, "signature": sig,
            "constexprs": {**constexprs, **{a: 1 for a in unit}},
            "divisible_by_16": list(pointers) + [a for a in div16
                                                  if a in scalars and a not in unit],
            "num_warps": warps, "num_stages": stages}


def _aot_configs() -> list[dict]:
    out = []
    # (kernel key, epilogue, activation, store_z, the stride that is 1 at run time)
    variants = [("gemm_up", EPI_ACT, a, z, "stride_bn") for a in (0, 1) for z in (False, True)]
    variants += [("gemm_down", EPI_SCALE, 0, False, "stride_bn"),
                 ("gemm_down", EPI_PLAIN, 0, False, "stride_bk"),
                 ("act_bwd", EPI_ACT_BWD, 0, False, "stride_bk"),
                 ("act_bwd", EPI_ACT_BWD, 1, False, "stride_bk")]
    div16 = ("N", "K", "H_OFF", "stride_am", "stride_be", "stride_bk", "stride_bn", "stride_om",
             "stride_xm", "M", "stride_bm")
    for gpu, table in TILE_TABLE.items():
        for reg, tiles in table.items():
            for dtype in ("bf16", "fp16", "fp32"):
                precision = "tf32" if dtype == "fp32" else "ieee"
                for key, epi, act, store_z, unit in variants:
                    meta = _meta(tiles[key], halve_n=epi == EPI_ACT and act == 0)
                    out.append(_aot_entry(
                        f"moe_{key}_{gpu}_{reg}_{dtype}_epi{epi}_act{act}_z{int(store_z)}",
                        _moe_gemm_kernel, _GEMM_POINTERS, _GEMM_SCALARS, dtype,
                        {"EPILOGUE": epi, "ACT": act, "STORE_Z": store_z,
                         "INPUT_PRECISION": precision, "BLOCK_M": tiles["BLOCK_M"],
                         "BLOCK_N": meta["BLOCK_N"], "BLOCK_K": meta["BLOCK_K"],
                         "GROUP_M": meta["GROUP_M"], "EVEN_K": True},
                        (unit,), div16, meta["num_warps"], meta["num_stages"]))
                bm, bn, bk, warps, stages = tiles["wgrad"]
                for has_scale in (False, True):
                    out.append(_aot_entry(
                        f"moe_wgrad_{gpu}_{reg}_{dtype}_scale{int(has_scale)}", _moe_wgrad_kernel,
                        _WGRAD_POINTERS, _WGRAD_SCALARS, dtype,
                        {"HAS_SCALE": has_scale, "INPUT_PRECISION": precision, "BLOCK_M": bm,
                         "BLOCK_N": bn, "BLOCK_K": bk}, (), div16, warps, stages))
    for dtype in ("fp32", "bf16"):  # router logits
        for num_experts, top_k in ((8, 2), (24, 2), (24, 4), (256, 8)):
            for softmax in (True, False):
                out.append(_aot_entry(
                    f"moe_route_{dtype}_E{num_experts}_k{top_k}_"
                    f"{'softmax' if softmax else 'sigmoid'}",
                    _moe_route_kernel, ("logits_ptr", "bias_ptr", "w_ptr", "ids_ptr"),
                    ("T", "E", "stride_t", "top_k"), dtype,
                    {"SOFTMAX": softmax, "HAS_BIAS": True, "RENORM": True,
                     "BLOCK_T": route_block_t(num_experts),
                     "BLOCK_E": triton.next_power_of_2(num_experts),
                     "BLOCK_K": triton.next_power_of_2(top_k)}, (), (), 4, 1))
    for num_experts in (8, 24, 256):  # alignment (int64 ids from moe_route)
        block_e = triton.next_power_of_2(num_experts)
        chunk = _align_chunk(block_e)
        out.append(_aot_entry(f"moe_align_count_E{num_experts}", _moe_align_count_kernel,
                              ("ids_ptr", "chunk_counts_ptr", "bad_ptr"), ("n", "num_experts"),
                              "i64",
                              {"CHUNK": chunk, "BLOCK_E": block_e}, (), (), 4, 1))
        out.append(_aot_entry(f"moe_align_scan_E{num_experts}", _moe_align_scan_kernel,
                              ("chunk_counts_ptr", "chunk_offsets_ptr", "starts_ptr",
                               "counts_ptr", "block_expert_ptr"),
                              ("num_chunks", "num_experts", "num_blocks", "block_m"), "i32",
                              {"SCAN_C": _align_rows(block_e, 64), "BLOCK_E": block_e,
                               "BLOCK_B": _align_rows(block_e, 128)}, (), (), 4, 1))
        out.append(_aot_entry(f"moe_align_scatter_E{num_experts}", _moe_align_scatter_kernel,
                              ("ids_ptr", "chunk_offsets_ptr", "starts_ptr", "sorted_ptr"),
                              ("n", "num_experts"), "i64",
                              {"CHUNK": chunk, "BLOCK_E": block_e}, (), (), 4, 1))
    return out


AOT_CONFIGS = _aot_configs()

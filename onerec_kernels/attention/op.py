"""`varlen_cross_attention`: public function, custom ops, fake kernels and autograd.

Layering (FlashAttention's pattern): a private custom op per raw kernel
(`onerec::varlen_attn_fwd_triton` returning the output and its log-sum-exp,
`onerec::varlen_attn_bwd_triton` returning dq, dk, dv), each with a fake kernel so torch.compile
can trace it; autograd registered on the forward op calls the backward op; one public function
validates, picks the backend and dispatches. The "torch" backend is the reference (plain autograd).
"""
from __future__ import annotations

import math
import os

import torch

from .. import _backend
from .._checks import FLOATS, check_same, check_tensor
from .reference import varlen_cross_attention_reference

OP = "varlen_cross_attention"
SUPPORTED = ("torch", "triton")
DEFAULT_ORDER = {"cuda": ("triton", "torch"), "cpu": ("torch",)}
HEAD_DIMS = (32, 64, 128)
# Value checks of cu_seqlens_k need its values on the host: free for CPU tensors, a device sync
# for CUDA ones, so there they run only when this variable is 1 (debugging).
DEBUG_ENV = "ONEREC_DEBUG_CHECKS"


@torch.library.custom_op("onerec::varlen_attn_fwd_triton", mutates_args=())
def _fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_k: torch.Tensor,
            max_seqlen_k: int, softmax_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    from .triton_kernels import varlen_attention_fwd_triton  # triton is imported on first use

    return varlen_attention_fwd_triton(q, k, v, cu_seqlens_k, max_seqlen_k, softmax_scale)


@_fwd_op.register_fake
def _(q, k, v, cu_seqlens_k, max_seqlen_k, softmax_scale):
    num_users = cu_seqlens_k.shape[0] - 1
    num_q, num_heads, head_dim = q.shape[-3:]
    return (q.new_empty((num_users, num_q, num_heads, head_dim)),
            q.new_empty((num_users, num_heads, num_q), dtype=torch.float32))


@torch.library.custom_op("onerec::varlen_attn_bwd_triton", mutates_args=())
def _bwd_op(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            out: torch.Tensor, lse: torch.Tensor, cu_seqlens_k: torch.Tensor, max_seqlen_k: int,
            softmax_scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from .triton_kernels import varlen_attention_bwd_triton

    return varlen_attention_bwd_triton(dout, q, k, v, out, lse, cu_seqlens_k, max_seqlen_k,
                                       softmax_scale)


@_bwd_op.register_fake
def _(dout, q, k, v, out, lse, cu_seqlens_k, max_seqlen_k, softmax_scale):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format),
            torch.empty_like(v, memory_format=torch.contiguous_format))


def _setup_context(ctx, inputs, output):
    q, k, v, cu_seqlens_k, max_seqlen_k, softmax_scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens_k)
    ctx.max_seqlen_k = max_seqlen_k
    ctx.softmax_scale = softmax_scale
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, cu_seqlens_k = ctx.saved_tensors
    if grad_out is None:
        return None, None, None, None, None, None
    dq, dk, dv = _bwd_op(grad_out, q, k, v, out, lse, cu_seqlens_k, ctx.max_seqlen_k,
                         ctx.softmax_scale)
    return dq, dk, dv, None, None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def _validate(q, k, v, cu_seqlens_k, max_seqlen_k, softmax_scale) -> None:
    check_tensor(OP, "q", q, dtypes=FLOATS)
    if q.dim() not in (3, 4):
        raise ValueError(f"{OP}: q must be (B, Q, H, Dh) per-user or (Q, H, Dh) shared queries, "
                         f"got shape {tuple(q.shape)}")
    check_tensor(OP, "k", k, ndim=3, dtypes=FLOATS)
    check_tensor(OP, "v", v, ndim=3, dtypes=FLOATS)
    check_tensor(OP, "cu_seqlens_k", cu_seqlens_k, ndim=1, dtypes=(torch.int32,))
    check_same(OP, ("q", "k", "v"), (q, k, v))
    check_same(OP, ("q", "cu_seqlens_k"), (q, cu_seqlens_k), dtype=False)
    num_heads, head_dim = q.shape[-2], q.shape[-1]
    if head_dim not in HEAD_DIMS:
        raise ValueError(f"{OP}: the head size Dh (q.shape[-1]) must be one of {HEAD_DIMS}, got "
                         f"{head_dim}")
    if v.shape != k.shape:
        raise ValueError(f"{OP}: v must have k's shape {tuple(k.shape)}, got {tuple(v.shape)}")
    if k.shape[2] != head_dim:
        raise ValueError(f"{OP}: k.shape[2] (Dh) must equal q's head size {head_dim}, got "
                         f"{k.shape[2]}")
    num_kv_heads = k.shape[1]
    if num_kv_heads < 1 or num_heads < 1 or num_heads % num_kv_heads:
        raise ValueError(f"{OP}: the query heads H (q.shape[-2] = {num_heads}) must be a positive "
                         f"multiple of the K/V heads H_kv (k.shape[1] = {num_kv_heads})")
    if cu_seqlens_k.shape[0] < 1:
        raise ValueError(f"{OP}: cu_seqlens_k must have B + 1 >= 1 entries, got shape "
                         f"{tuple(cu_seqlens_k.shape)}")
    num_users = cu_seqlens_k.shape[0] - 1
    if q.dim() == 4 and q.shape[0] != num_users:
        raise ValueError(f"{OP}: per-user q.shape[0] (B) must be len(cu_seqlens_k) - 1 = "
                         f"{num_users}, got {q.shape[0]}")
    if isinstance(max_seqlen_k, bool) or not isinstance(max_seqlen_k, int) or max_seqlen_k < 0:
        raise ValueError(f"{OP}: max_seqlen_k must be an int >= 0, got {max_seqlen_k!r}")
    if softmax_scale is not None and not (isinstance(softmax_scale, (int, float))
                                          and math.isfinite(softmax_scale)):
        raise ValueError(f"{OP}: softmax_scale must be a finite float or None, got {softmax_scale!r}")
    # Skipped while torch.compile traces (reading the values would break the graph); the
    # kernel clamps every range into k/v regardless.
    if (cu_seqlens_k.device.type == "cpu" or os.environ.get(DEBUG_ENV, "0") == "1") \
            and not torch.compiler.is_compiling():
        _check_cu_values(cu_seqlens_k, k.shape[0])


def _check_cu_values(cu: torch.Tensor, total_k: int) -> None:
    c = cu.tolist()
    if c[0] != 0:
        raise ValueError(f"{OP}: cu_seqlens_k must start at 0, got {c[0]}")
    bad = next((b for b in range(len(c) - 1) if c[b + 1] < c[b]), None)
    if bad is not None:
        raise ValueError(f"{OP}: cu_seqlens_k must be non-decreasing, but cu_seqlens_k[{bad + 1}] "
                         f"= {c[bad + 1]} < cu_seqlens_k[{bad}] = {c[bad]}")
    if c[-1] != total_k:
        raise ValueError(f"{OP}: cu_seqlens_k must end at total_k = k.shape[0] = {total_k}, got "
                         f"{c[-1]}")


def varlen_cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           cu_seqlens_k: torch.Tensor, max_seqlen_k: int, *,
                           softmax_scale: float | None = None,
                           backend: str | None = None) -> torch.Tensor:
    """Cross-attention of a few queries per user over each user's ragged, packed keys.

    Args:
        q: (B, Q, H, Dh) per-user queries, or (Q, H, Dh) queries shared by every user (read by
            every user, never expanded in memory; their gradient is the sum over users).
        k, v: (total_k, H_kv, Dh) packed keys/values, user b owning rows
            cu_seqlens_k[b]:cu_seqlens_k[b+1]. H % H_kv == 0 (grouped-query attention: query
            head h uses K/V head h // (H / H_kv)). Same dtype (float32/float16/bfloat16) and
            device as q. Dh in {32, 64, 128}.
        cu_seqlens_k: (B + 1,) int32 prefix sums: starts at 0, non-decreasing, ends at total_k.
            Checked on CPU tensors; on CUDA only with ONEREC_DEBUG_CHECKS=1 (the check needs a
            device sync), and the kernel clamps every range into k/v whatever it holds.
        max_seqlen_k: the longest user's key count (a host int: no device sync to find it).
            Used for scheduling (key splits, tuning bucket) only: a wrong value costs speed,
            never correctness.
        softmax_scale: default 1 / sqrt(Dh).
        backend: "torch" | "triton" | None (Triton on CUDA, the reference on CPU; overridable
            with ONEREC_BACKEND, see onerec_kernels._backend). The "torch" reference reads
            cu_seqlens_k on the host (a device sync on CUDA); the Triton path never syncs.

    Semantics: out[b, i, h] = softmax_j(scale * q[b, i, h] . k[j, h // G]) @ v[j, h // G] over
    user b's keys j, softmax in fp32 (online in the Triton kernel: no Q x L matrix in memory).
    A user with zero keys gets an all-zero output (and zero gradients), never NaN.

    Returns:
        out: (B, Q, H, Dh) in q's dtype, differentiable with respect to q, k and v.
    """
    _validate(q, k, v, cu_seqlens_k, max_seqlen_k, softmax_scale)
    backend = _backend.resolve(OP, backend, q.device, SUPPORTED, DEFAULT_ORDER)
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    num_users = cu_seqlens_k.shape[0] - 1
    if backend == "torch":
        return varlen_cross_attention_reference(q, k, v, cu_seqlens_k, scale)
    if num_users == 0 or q.shape[-3] == 0:
        return q.new_zeros((num_users, *q.shape[-3:]))
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    out, _ = _fwd_op(q, k, v, cu_seqlens_k, max_seqlen_k, scale)
    return out

"""Cross-attention over packed per-user memory (history, encoder output) with
`onerec_kernels.varlen_cross_attention`.

Legend: B users, Q queries per user, D model width, H / H_kv query / K/V heads, Dh head size,
total_k memory rows of all users packed (user b owns rows cu[b]:cu[b+1]).
"""
from __future__ import annotations

import torch
from torch import nn

from onerec_kernels import varlen_cross_attention


def ragged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_k: torch.Tensor,
                     max_seqlen_k: int, backend: str | None = None) -> torch.Tensor:
    """`varlen_cross_attention` that also runs under autocast: the op is not an autocast op, so
    q, k, v are brought to the autocast dtype here and the op runs with autocast off (its
    kernels and reference keep one dtype throughout)."""
    dev = q.device.type
    if torch.is_autocast_enabled(dev):
        dtype = torch.get_autocast_dtype(dev)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        with torch.autocast(dev, enabled=False):
            return varlen_cross_attention(q, k, v, cu_seqlens_k, max_seqlen_k, backend=backend)
    return varlen_cross_attention(q, k, v, cu_seqlens_k, max_seqlen_k, backend=backend)


class CrossAttention(nn.Module):
    """Queries attend to their user's packed memory.

    Args:
        d_model: query (and output) width D.
        num_heads: query heads H; D must be a multiple of H (Dh = D / H, in {32, 64, 128}).
        num_kv_heads: K/V heads H_kv (grouped-query attention), dividing H; default H.
        d_memory: memory width (default D).
        bias: biases on the projections.
        backend: passed to varlen_cross_attention (None: Triton on CUDA, reference on CPU).

    The K/V projection is its own method so that inference projects each user's memory once
    (`project_kv`) and reuses it for every decoding step and every beam: the beams of a user
    are simply that user's Q queries, with no per-beam copy of K/V.
    """

    def __init__(self, d_model: int, num_heads: int, num_kv_heads: int | None = None, *,
                 d_memory: int | None = None, bias: bool = False, backend: str | None = None):
        super().__init__()
        num_kv_heads = num_kv_heads or num_heads
        if d_model % num_heads:
            raise ValueError(f"CrossAttention: d_model ({d_model}) must be a multiple of num_heads "
                             f"({num_heads})")
        if num_heads % num_kv_heads:
            raise ValueError(f"CrossAttention: num_heads ({num_heads}) must be a multiple of "
                             f"num_kv_heads ({num_kv_heads})")
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = d_model // num_heads
        if self.head_dim not in (32, 64, 128):
            raise ValueError(f"CrossAttention: the head size d_model / num_heads must be 32, 64 or "
                             f"128 (the kernel's), got {d_model} / {num_heads} = {self.head_dim}")
        self.backend = backend
        d_memory = d_memory or d_model
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.kv_proj = nn.Linear(d_memory, 2 * num_kv_heads * self.head_dim, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def project_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """memory (total_k, d_memory) -> k, v, each (total_k, H_kv, Dh)."""
        kv = self.kv_proj(memory).view(memory.shape[0], 2, self.num_kv_heads, self.head_dim)
        return kv[:, 0], kv[:, 1]

    def forward(self, x: torch.Tensor, cu_seqlens_k: torch.Tensor, max_seqlen_k: int, *,
                memory: torch.Tensor | None = None,
                kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """x: (B, Q, D) per-user queries or (Q, D) queries shared by every user; exactly one of
        memory (total_k, d_memory) and kv (precomputed `project_kv(memory)`). cu_seqlens_k
        (B + 1,) int32, max_seqlen_k a host int. Returns (B, Q, D); users with no memory get
        zeros from the attention (so the output is the output bias, if any)."""
        if (memory is None) == (kv is None):
            raise ValueError("CrossAttention: pass exactly one of memory and kv")
        k, v = self.project_kv(memory) if kv is None else kv
        q = self.q_proj(x).unflatten(-1, (self.num_heads, self.head_dim))
        out = ragged_attention(q, k, v, cu_seqlens_k, max_seqlen_k, self.backend)
        return self.out_proj(out.flatten(-2))

"""QFormer: a fixed number of learnable queries summarise each user's (compressed) lifelong
history into Q tokens, via ragged cross-attention over the packed history.

Legend: B users, Q = num_queries, D = d_model, total_k history rows of all users packed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import CrossAttention


class SelfAttention(nn.Module):
    """Plain multi-head self-attention among a user's Q tokens (SDPA; Q is small)."""

    def __init__(self, d_model: int, num_heads: int, bias: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Q, D) -> (B, Q, D)
        q, k, v = self.qkv(x).unflatten(-1, (3, self.num_heads, -1)).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, Q, Dh)
        return self.out_proj(out.transpose(1, 2).flatten(-2))


class FeedForward(nn.Module):
    def __init__(self, d_model: int, mult: int = 4, bias: bool = False):
        super().__init__()
        self.up = nn.Linear(d_model, mult * d_model, bias=bias)
        self.down = nn.Linear(mult * d_model, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


class QFormerBlock(nn.Module):
    """Pre-RMSNorm block: cross-attention to the history, self-attention among the queries,
    FFN; each a residual branch."""

    def __init__(self, d_model: int, num_heads: int, num_kv_heads: int | None, d_memory: int,
                 ffn_mult: int, backend: str | None):
        super().__init__()
        self.norm_cross = nn.RMSNorm(d_model)
        self.cross = CrossAttention(d_model, num_heads, num_kv_heads, d_memory=d_memory,
                                    backend=backend)
        self.norm_self = nn.RMSNorm(d_model)
        self.self_attn = SelfAttention(d_model, num_heads)
        self.norm_ffn = nn.RMSNorm(d_model)
        self.ffn = FeedForward(d_model, ffn_mult)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, cu_seqlens: torch.Tensor,
                max_seqlen: int) -> torch.Tensor:
        """x: (Q, D) shared (first block) or (B, Q, D); memory (total_k, d_memory), normed."""
        # Shared queries stay (Q, D) into the kernel (never expanded per user); the residual
        # add broadcasts them to (B, Q, D).
        x = x + self.cross(self.norm_cross(x), cu_seqlens, max_seqlen, memory=memory)
        x = x + self.self_attn(self.norm_self(x))
        return x + self.ffn(self.norm_ffn(x))


class QFormer(nn.Module):
    """num_queries learnable queries over each user's packed history -> (B, Q, D).

    Args:
        d_model: width D of the queries and the output. num_heads: H (D / H in {32, 64, 128}).
        num_queries: Q (128 in OneRec). num_layers: blocks (2).
        num_kv_heads: K/V heads of the cross-attention (default H). d_memory: history width
        (default D). ffn_mult: FFN hidden = ffn_mult * D. backend: of the attention kernel.
    """

    def __init__(self, d_model: int, num_heads: int, num_queries: int = 128, num_layers: int = 2,
                 *, num_kv_heads: int | None = None, d_memory: int | None = None,
                 ffn_mult: int = 4, backend: str | None = None):
        super().__init__()
        d_memory = d_memory or d_model
        self.queries = nn.Parameter(torch.randn(num_queries, d_model) * d_model ** -0.5)
        self.memory_norm = nn.RMSNorm(d_memory)
        self.blocks = nn.ModuleList(
            QFormerBlock(d_model, num_heads, num_kv_heads, d_memory, ffn_mult, backend)
            for _ in range(num_layers))
        self.out_norm = nn.RMSNorm(d_model)

    def forward(self, memory: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> torch.Tensor:
        """memory: (total_k, d_memory) packed history; cu_seqlens (B + 1,) int32; max_seqlen a
        host int (the longest history). Returns (B, num_queries, D). A user with an empty
        history still gets Q tokens (the queries passed through the blocks without history)."""
        memory = self.memory_norm(memory)
        x = self.queries
        for block in self.blocks:
            x = block(x, memory, cu_seqlens, max_seqlen)
        if x.dim() == 2:  # no blocks: every user gets the queries
            x = x.expand(cu_seqlens.shape[0] - 1, *x.shape)
        return self.out_norm(x)

"""OneRec encoder: four pathways -> one ragged, packed token sequence per user -> fully visible
pre-RMSNorm transformer layers.

Per user b: [static (1); short-term (n_s); positive (n_p); lifelong (Q)] tokens, packed over
the batch with cu_seqlens (no padding in the projections, norms and FFNs). Sequence tokens sum
the item's semantic-ID embeddings (one table per level, shared with the decoder's inputs) with
the features the dataset has (item categorical features, time-gap / engagement / signal
buckets, positive flag); the lifelong pathway is compressed by `compress_history` and
summarised by the QFormer into Q tokens.

Legend: B users, T packed tokens, D d_model, H heads, Dh head size, L_max longest user.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .attention import ragged_attention
from .batch import EncoderBatch, SequenceFeatures
from .compress import compress_history
from .config import OneRecConfig
from .layers import EmbeddingSum, Projection, make_ffn
from .qformer import QFormer

PATHWAYS = ("static", "short_term", "positive", "lifelong")


@dataclass
class EncoderOutput:
    """memory (T, D) packed encoder output; cu_seqlens (B + 1,) int32; max_len host int
    (an upper bound of the longest user's token count)."""
    memory: torch.Tensor
    cu_seqlens: torch.Tensor
    max_len: int


@dataclass
class PackedLayout:
    """Where packed tokens sit in a (B, L_max) grid: pad_index (B, L_max) packed row of each
    grid cell (padding cells point at a valid row; their outputs are dropped), token_slot (T,)
    grid cell b * L_max + j of each packed token."""
    cu_seqlens: torch.Tensor
    max_len: int
    pad_index: torch.Tensor
    token_slot: torch.Tensor

    @staticmethod
    def build(lengths: torch.Tensor, max_len: int, total: int) -> "PackedLayout":
        cu = torch.zeros(lengths.shape[0] + 1, dtype=torch.int64, device=lengths.device)
        cu[1:] = lengths.cumsum(0)
        row = _rows(lengths, total)
        j = torch.arange(total, device=lengths.device) - cu[row]
        grid = cu[:-1, None] + torch.arange(max_len, device=lengths.device)
        pad_index = torch.minimum(grid, (cu[1:, None] - 1).clamp_min(0)).clamp(0, max(total - 1, 0))
        return PackedLayout(cu.to(torch.int32), max_len, pad_index, row * max_len + j)


def _rows(lengths: torch.Tensor, total: int) -> torch.Tensor:
    """(total,) row b of every packed element (output_size given: no device sync)."""
    return torch.repeat_interleave(torch.arange(lengths.shape[0], device=lengths.device), lengths,
                                   output_size=total)


class PackedSelfAttention(nn.Module):
    """Fully visible self-attention within each user's packed tokens, by the ragged
    cross-attention kernel: queries gathered to a (B, L_max) grid, keys/values stay packed."""

    def __init__(self, config: OneRecConfig, backend: str | None):
        super().__init__()
        self.num_heads, self.head_dim = config.num_heads, config.head_dim
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.out = nn.Linear(config.d_model, config.d_model, bias=False)
        self.backend = backend

    def forward(self, x_TD: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
        q, k, v = self.qkv(x_TD).view(x_TD.shape[0], 3, self.num_heads, self.head_dim).unbind(1)
        o = ragged_attention(q[layout.pad_index], k, v, layout.cu_seqlens, layout.max_len,
                             self.backend)  # (B, L_max, H, Dh)
        return self.out(o.flatten(0, 1)[layout.token_slot].flatten(1))


class EncoderLayer(nn.Module):
    def __init__(self, config: OneRecConfig, backend: str | None):
        super().__init__()
        self.attn_norm = nn.RMSNorm(config.d_model)
        self.attn = PackedSelfAttention(config, backend)
        self.ffn_norm = nn.RMSNorm(config.d_model)
        self.ffn = make_ffn(config, config.encoder_moe, backend)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
        x = x + self.drop(self.attn(self.attn_norm(x), layout))
        return x + self.drop(self.ffn(self.ffn_norm(x)))


class Encoder(nn.Module):
    def __init__(self, config: OneRecConfig, code_emb: nn.ModuleList, backend: str | None):
        super().__init__()
        D, nb = config.d_model, config.num_buckets
        self.config, self.backend = config, backend
        self._code_emb = [code_emb]  # owned by OneRec, shared with the decoder's inputs
        self.item_features = EmbeddingSum(config.item_cardinalities, D)
        self.buckets = EmbeddingSum([nb, nb, 2] + [nb] * len(config.signals), D)
        self.user_emb = nn.Embedding(config.num_users, D) if config.num_users else None
        self.static_features = EmbeddingSum(config.static_cardinalities, D)
        self.static_numeric = (nn.Linear(config.num_static_numeric, D)
                               if config.num_static_numeric else None)
        self.static_bias = nn.Parameter(torch.zeros(D))  # the token of a featureless profile
        self.proj = nn.ModuleDict({p: Projection(D, D) for p in PATHWAYS})
        self.qformer = QFormer(D, config.num_heads, config.num_queries, config.qformer_layers,
                               ffn_mult=max(1, config.d_ff // D), backend=backend)
        self.pathway_emb = nn.Embedding(len(PATHWAYS), D)
        self.pos_emb = nn.Embedding(max(config.short_len, config.positive_len,
                                        config.num_queries), D)
        self.layers = nn.ModuleList(EncoderLayer(config, backend)
                                    for _ in range(config.num_encoder_layers))
        self.norm = nn.RMSNorm(D)
        self.drop = nn.Dropout(config.dropout)

    def item_tokens(self, seq: SequenceFeatures) -> torch.Tensor:
        """(T, D): sum of the semantic-ID embeddings and the token's features."""
        x = sum(table(seq.codes[:, lvl]) for lvl, table in enumerate(self._code_emb[0]))
        if self.item_features.tables:
            x = x + self.item_features(seq.categorical)
        return x + self.buckets(seq.buckets)

    def _static(self, batch: EncoderBatch) -> torch.Tensor:
        x = self.static_bias.expand(batch.batch_size, -1)
        if self.user_emb is not None:
            x = x + self.user_emb(batch.users)
        if self.static_features.tables:
            x = x + self.static_features(batch.static)
        if self.static_numeric is not None:
            x = x + self.static_numeric(batch.static_numeric.to(self.static_numeric.weight.dtype))
        return self.proj["static"](x) + self.pathway_emb.weight[0]

    def _sequence(self, name: str, seq: SequenceFeatures) -> torch.Tensor:
        """(T, D) projected tokens + pathway embedding + position counted from the newest."""
        total = seq.codes.shape[0]
        row = _rows(seq.lengths, total)
        newest_first = seq.cu_seqlens[1:].long()[row] - 1 - torch.arange(total, device=row.device)
        x = self.proj[name](self.item_tokens(seq))
        return x + self.pos_emb(newest_first) + self.pathway_emb.weight[PATHWAYS.index(name)]

    def _lifelong(self, seq: SequenceFeatures) -> torch.Tensor:
        """(B, Q, D) QFormer summary of the (compressed) lifelong history."""
        x = self.item_tokens(seq)
        cu, max_len = seq.cu_seqlens, seq.max_len
        if max_len > self.config.lifelong_len:  # already short enough: skip (no host sync)
            comp = compress_history(x.detach().float(), cu, target_len=self.config.lifelong_len,
                                    backend=self.backend)
            x, cu = x[comp.index], comp.cu_seqlens.to(torch.int32)
            max_len = min(max_len, self.config.lifelong_len)
        q = self.qformer(self.proj["lifelong"](x), cu, max_len)
        pos = self.pos_emb.weight[:q.shape[1]]
        return q + pos + self.pathway_emb.weight[PATHWAYS.index("lifelong")]

    def forward(self, batch: EncoderBatch) -> EncoderOutput:
        B, Q = batch.batch_size, self.config.num_queries
        static = self._static(batch)
        short = self._sequence("short_term", batch.short_term)
        pos = self._sequence("positive", batch.positive)
        life = self._lifelong(batch.lifelong)
        n_s, n_p = batch.short_term.lengths, batch.positive.lengths
        lengths = 1 + n_s + n_p + Q
        total = B * (1 + Q) + short.shape[0] + pos.shape[0]
        max_len = 1 + batch.short_term.max_len + batch.positive.max_len + Q
        layout = PackedLayout.build(lengths, max_len, total)
        # Destination rows of each pathway's tokens in the packed [static; short; pos; life].
        start = layout.cu_seqlens[:-1].long()
        dev = start.device

        def seq_dest(seq, before):
            n = seq.codes.shape[0]
            row = _rows(seq.lengths, n)
            j = torch.arange(n, device=dev) - seq.cu_seqlens[:-1].long()[row]
            return start[row] + before[row] + j

        life_dest = (start + 1 + n_s + n_p)[:, None] + torch.arange(Q, device=dev)
        dest = torch.cat([start, seq_dest(batch.short_term, torch.ones_like(n_s)),
                          seq_dest(batch.positive, 1 + n_s), life_dest.flatten()])
        src = torch.cat([static, short, pos, life.reshape(B * Q, -1)])
        x = self.drop(src.new_empty(total, src.shape[1]).index_copy(0, dest, src))
        for layer in self.layers:
            x = layer(x, layout)
        return EncoderOutput(self.norm(x), layout.cu_seqlens, max_len)

"""OneRec decoder: [BOS, s_1, ..., s_{L-1}] -> one head per semantic-ID level.

Each pre-RMSNorm layer: causal self-attention, cross-attention to the packed encoder output (the
ragged kernel; every token of a user, and every beam of a user at inference, is one of that
user's queries, so K/V are projected once per user and never copied per beam), then the FFN
(MoE or SwiGLU). The token at position t predicts level t (position 0 is BOS), so the code s_L
is never an input: a causal decoder fed [BOS, s_1, ..., s_L] would give it no prediction.

Activations are (B, G, S, D): B users, G sequences per user (1 in training, W beams in
decoding), S positions (L in training, 1 per decoding step). KV cache: (2, B * G, L, H, Dh) per
layer, all layers in one tensor so that reordering by parent beams is one gather.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import CrossAttention
from .config import OneRecConfig
from .encoder import EncoderOutput
from .layers import make_ffn


class CausalSelfAttention(nn.Module):
    def __init__(self, config: OneRecConfig):
        super().__init__()
        self.num_heads, self.head_dim = config.num_heads, config.head_dim
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.out = nn.Linear(config.d_model, config.d_model, bias=False)

    def forward(self, x: torch.Tensor, cache: torch.Tensor | None = None, start: int = 0
                ) -> torch.Tensor:
        """x (N, S, D). Without cache: causal over the S positions. With cache (2, N, L, H, Dh):
        writes this step's K/V at [start, start + S) and attends over [0, start + S)."""
        N, S, _ = x.shape
        q, k, v = self.qkv(x).view(N, S, 3, self.num_heads, self.head_dim).unbind(2)
        if cache is None:
            o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                               v.transpose(1, 2), is_causal=True)
        else:
            cache[0, :, start:start + S] = k
            cache[1, :, start:start + S] = v
            keys, values = cache[0, :, :start + S], cache[1, :, :start + S]
            # One new position per step: it sees every cached one, so no mask.
            o = F.scaled_dot_product_attention(q.transpose(1, 2), keys.transpose(1, 2),
                                               values.transpose(1, 2), is_causal=S > 1)
        return self.out(o.transpose(1, 2).reshape(N, S, -1))


class DecoderLayer(nn.Module):
    def __init__(self, config: OneRecConfig, backend: str | None):
        super().__init__()
        D = config.d_model
        self.self_norm = nn.RMSNorm(D)
        self.self_attn = CausalSelfAttention(config)
        self.cross_norm = nn.RMSNorm(D)
        self.cross = CrossAttention(D, config.num_heads, backend=backend)
        self.ffn_norm = nn.RMSNorm(D)
        self.ffn = make_ffn(config, config.decoder_moe, backend)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, enc: EncoderOutput, cross_kv, cache=None, start: int = 0
                ) -> torch.Tensor:
        B, G, S, D = x.shape
        drop = self.drop
        x = x + drop(self.self_attn(self.self_norm(x).view(B * G, S, D), cache, start)
                     .view(B, G, S, D))
        # All G * S tokens of a user are that user's queries over its encoder output.
        x = x + drop(self.cross(self.cross_norm(x).view(B, G * S, D), enc.cu_seqlens,
                                enc.max_len, kv=cross_kv).view(B, G, S, D))
        return x + drop(self.ffn(self.ffn_norm(x)))


class Decoder(nn.Module):
    def __init__(self, config: OneRecConfig, code_emb: nn.ModuleList, backend: str | None):
        super().__init__()
        D = config.d_model
        self.config = config
        self._code_emb = [code_emb]  # owned by OneRec (not registered twice)
        self.bos = nn.Parameter(torch.randn(D) * D ** -0.5)
        self.pos_emb = nn.Embedding(config.num_levels, D)
        self.layers = nn.ModuleList(DecoderLayer(config, backend)
                                    for _ in range(config.num_decoder_layers))
        self.norm = nn.RMSNorm(D)
        self.heads = nn.ModuleList(nn.Linear(D, k, bias=False) for k in config.codebook_sizes)

    def cross_kv(self, enc: EncoderOutput) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's cross-attention K/V, projected once per user: (total_k, H, Dh) each."""
        return [layer.cross.project_kv(enc.memory) for layer in self.layers]

    def embed(self, prefix: torch.Tensor) -> torch.Tensor:
        """prefix (B, G, t) codes s_1..s_t -> (B, G, t + 1, D) inputs [BOS, s_1, ..., s_t]."""
        B, G, t = prefix.shape
        codes = self._code_emb[0]
        x = [self.bos.expand(B, G, 1, -1)] + [codes[lvl](prefix[:, :, lvl:lvl + 1])
                                               for lvl in range(t)]
        return torch.cat(x, dim=2) + self.pos_emb.weight[:t + 1]

    def hidden(self, enc: EncoderOutput, prefix: torch.Tensor, cross_kv=None) -> torch.Tensor:
        """(B, G, t + 1, D) final hidden states of [BOS, prefix] (no cache)."""
        cross_kv = cross_kv or self.cross_kv(enc)
        x = self.embed(prefix)
        for layer, kv in zip(self.layers, cross_kv):
            x = layer(x, enc, kv)
        return self.norm(x)

    def forward(self, enc: EncoderOutput, codes: torch.Tensor) -> list[torch.Tensor]:
        """codes (B, L) targets -> L logits tensors (B, K_l), teacher forced."""
        L = self.config.num_levels
        h = self.hidden(enc, codes[:, None, :L - 1])[:, 0]
        return [head(h[:, lvl]) for lvl, head in enumerate(self.heads)]

    def step(self, x: torch.Tensor, enc: EncoderOutput, cross_kv, cache: torch.Tensor, t: int
             ) -> torch.Tensor:
        """One decoding position for every beam: x (B, W, D) inputs at position t, cache
        (num_layers, 2, B * W, L, H, Dh) holding positions < t. Returns (B, W, K_t) logits."""
        x = x[:, :, None] + self.pos_emb.weight[t]
        for i, (layer, kv) in enumerate(zip(self.layers, cross_kv)):
            x = layer(x, enc, kv, cache[i], t)
        return self.heads[t](self.norm(x[:, :, 0]))

"""Small building blocks shared by the encoder and the decoder."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import OneRecConfig
from .moe import MoE


class SwiGLU(nn.Module):
    """Dense FFN: down(silu(gate(x)) * up(x)), hidden width h."""

    def __init__(self, d_model: int, d_hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * d_hidden, bias=False)
        self.down = nn.Linear(d_hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


def make_ffn(config: OneRecConfig, moe: bool, backend: str | None) -> nn.Module:
    """The FFN of one layer: MoE (loss-free balancing) or SwiGLU."""
    if moe:
        return MoE(config.d_model, config.d_ff, config.num_experts, config.top_k,
                   activation="swiglu", backend=backend)
    return SwiGLU(config.d_model, config.d_ff)


class Projection(nn.Module):
    """Dense(LeakyReLU(Dense(x))): a pathway's features to d_model."""

    def __init__(self, d_in: int, d_model: int):
        super().__init__()
        self.inner = nn.Linear(d_in, d_model)
        self.outer = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outer(F.leaky_relu(self.inner(x)))


class EmbeddingSum(nn.Module):
    """One table per column of an int (N, C) input, the C embeddings summed -> (N, D).
    With no columns the output is zeros (the feature is absent)."""

    def __init__(self, cardinalities, dim: int):
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(int(c), dim) for c in cardinalities)
        self.dim = dim

    def forward(self, ids: torch.Tensor, dtype=None) -> torch.Tensor:
        out = None
        for c, table in enumerate(self.tables):
            e = table(ids[:, c])
            out = e if out is None else out + e
        if out is None:
            ref = next(iter(self.parameters()), None)
            out = ids.new_zeros((ids.shape[0], self.dim),
                                dtype=dtype or (ref.dtype if ref is not None else torch.float32))
        return out


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, active) parameters; in an MoE layer only top_k of the num_experts experts are
    active per token, so active counts top_k / num_experts of the expert weights."""
    total = sum(p.numel() for p in model.parameters())
    inactive = 0
    for m in model.modules():
        if isinstance(m, MoE):
            per_expert = (m.w1.numel() + m.w2.numel()) // m.num_local_experts
            inactive += per_expert * (m.num_experts - m.top_k)
    return total, total - inactive

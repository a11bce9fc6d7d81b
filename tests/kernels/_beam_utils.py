"""Shared helpers of the beam-search tests: random code sets and a prefix-hashed toy model."""
from __future__ import annotations

import torch

_MIX = 1_000_003


def random_codes(num_items: int, num_levels: int, vocab: int, gen: torch.Generator,
                 skewed: bool = False) -> torch.Tensor:
    """Up to num_items distinct rows (fewer when vocab^L is smaller), in random order.
    skewed: Zipf-like code frequencies per level (a few wide nodes, many narrow ones)."""
    cap = vocab ** num_levels
    n = min(num_items, cap)
    if n == cap and cap <= 4 * num_items:  # the whole space: enumerate it
        grid = torch.cartesian_prod(*[torch.arange(vocab)] * num_levels).reshape(-1, num_levels)
        return grid[torch.randperm(cap, generator=gen)][:n]
    rows = torch.empty((0, num_levels), dtype=torch.int64)
    weights = 1.0 / torch.arange(1, vocab + 1, dtype=torch.float64) ** 1.1
    while rows.shape[0] < n:
        m = 2 * n + 16
        if skewed:
            new = torch.multinomial(weights, m * num_levels, replacement=True, generator=gen)
            new = new.reshape(m, num_levels)
        else:
            new = torch.randint(0, vocab, (m, num_levels), generator=gen)
        rows = torch.unique(torch.cat([rows, new]), dim=0)
    return rows[torch.randperm(rows.shape[0], generator=gen)][:n]


class PrefixModel:
    """A deterministic toy decoder: per user b and level t, the log-probs of the next code are a
    fixed random row chosen by a hash of the prefix. `item_scores` scores any full code rows the
    way beam search accumulates them (fp32, left to right), for brute force."""

    def __init__(self, batch: int, vocab_sizes, gen: torch.Generator, rows: int = 257,
                 dtype=torch.float32, logits: bool = False):
        self.rows = rows
        self.logits = logits
        self.tables = []
        for v in vocab_sizes:
            x = torch.randn(batch, rows, v, generator=gen) * 3
            self.tables.append(x.to(dtype) if logits else x.log_softmax(-1).to(dtype))
        self.calls = []

    def _hash(self, prefix: torch.Tensor) -> torch.Tensor:  # (..., t) -> (...)
        h = torch.zeros(prefix.shape[:-1], dtype=torch.int64, device=prefix.device)
        for i in range(prefix.shape[-1]):
            h = (h * _MIX + prefix[..., i] + 1) % self.rows
        return h

    def __call__(self, tokens_so_far: torch.Tensor, parent_beams):
        self.calls.append((tokens_so_far.clone(), None if parent_beams is None else parent_beams.clone()))
        t = tokens_so_far.shape[2]
        table = self.tables[t].to(tokens_so_far.device)  # (B, R, V)
        h = self._hash(tokens_so_far)  # (B, W)
        return table.gather(1, h[..., None].expand(-1, -1, table.shape[2]))

    def item_scores(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, N) fp32 scores of codes (N, L), accumulated like the search."""
        B = self.tables[0].shape[0]
        score = torch.zeros(B, codes.shape[0])
        for t in range(codes.shape[1]):
            h = self._hash(codes[:, :t])  # (N,)
            rows = self.tables[t].float()[:, h, :]  # (B, N, V)
            lp = rows.gather(2, codes[None, :, t, None].expand(B, -1, 1))[..., 0]
            if self.logits:
                lp = lp - torch.logsumexp(rows, dim=-1)
            score = score + lp
        return score

"""Generation: trie-constrained beam search over semantic IDs, with a model callback.

`HistoryCodePrior` is a small, honest stand-in for the OneRec decoder until the model layer
lands: a per-user n-gram over semantic-ID codes. For a beam with prefix (c_0..c_{t-1}) it scores
the next code v by how many of the user's past items (recency-weighted) share that prefix and
continue with v, smoothed by the catalogue's popularity of v at level t. It follows the
`constrained_beam_search` step_fn contract, so the decoder can replace it one-for-one.
"""
from __future__ import annotations

import numpy as np
import torch

from onerec_kernels import BeamSearchResult, SemanticIdTrie, constrained_beam_search


class HistoryCodePrior:
    """step_fn for `constrained_beam_search` (shapes: B users, H history slots, L levels).

    history_codes: (B, H, L) int64 semantic IDs of each user's past items, -1 rows = padding.
    history_weights: (B, H) float, e.g. recency weights (0 for padding).
    popularity: list of L (V_t,) float tensors: catalogue-level code frequencies per level.
    smoothing: weight of the popularity prior against the user's own counts.
    """

    def __init__(self, history_codes: torch.Tensor, history_weights: torch.Tensor,
                 popularity: list[torch.Tensor], smoothing: float = 0.5):
        if history_codes.dim() != 3:
            raise ValueError(f"history_codes must be (B, H, L), got {tuple(history_codes.shape)}")
        if history_weights.shape != history_codes.shape[:2]:
            raise ValueError(f"history_weights must be (B, H) = {tuple(history_codes.shape[:2])}, "
                             f"got {tuple(history_weights.shape)}")
        if not smoothing > 0:  # 0 would give 0/0 = NaN rows (dead beams) for users with no match
            raise ValueError(f"smoothing must be > 0, got {smoothing}")
        self.history = history_codes
        self.weights = history_weights.float() * (history_codes[..., 0] >= 0)
        self.popularity = [p.float() / p.float().sum().clamp(min=1e-12) for p in popularity]
        self.smoothing = float(smoothing)

    def __call__(self, tokens_so_far: torch.Tensor, parent_beams: torch.Tensor | None) -> torch.Tensor:
        B, W, t = tokens_so_far.shape
        hist_prefix = self.history[:, None, :, :t]  # (B, 1, H, t)
        match = (hist_prefix == tokens_so_far[:, :, None, :]).all(dim=-1)  # (B, W, H)
        w = match.float() * self.weights[:, None, :]  # (B, W, H)
        vocab = self.popularity[t].shape[0]
        nxt = self.history[:, :, t].clamp(min=0)[:, None, :].expand(B, W, -1)  # (B, W, H)
        counts = torch.zeros(B, W, vocab, device=w.device).scatter_add_(2, nxt, w)
        mass = counts.sum(-1, keepdim=True)
        probs = (counts + self.smoothing * self.popularity[t]) / (mass + self.smoothing)
        return probs.clamp(min=1e-12).log()


def recency_weights(lengths: np.ndarray, width: int, half_life: float = 10.0) -> torch.Tensor:
    """(B, width) weights 0.5 ** (age / half_life) for right-aligned histories (newest last)."""
    age = np.arange(width)[::-1][None, :].astype(np.float64)  # newest slot has age 0
    w = 0.5 ** (age / half_life) * (np.arange(width)[None, :] >= width - lengths[:, None])
    return torch.from_numpy(w.astype(np.float32))


def generate(trie: SemanticIdTrie, step_fn, batch_size: int, beam_width: int, *,
             backend: str | None = None, exclude_offsets: torch.Tensor | None = None,
             exclude_items: torch.Tensor | None = None) -> BeamSearchResult:
    """Thin wrapper: the top `beam_width` items per user, legal by construction; with the
    packed exclusion set (exclude_offsets (B + 1,), exclude_items (T,)) never one of the user's
    excluded items, still `beam_width` of them when the catalogue has enough."""
    return constrained_beam_search(step_fn, trie, batch_size, beam_width, backend=backend,
                                   exclude_offsets=exclude_offsets, exclude_items=exclude_items)

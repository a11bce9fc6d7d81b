"""HistoryCodePrior (the stand-in decoder) through constrained_beam_search."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from onerec.generate import HistoryCodePrior, generate, recency_weights
from onerec_kernels import SemanticIdTrie


def _setup(smoothing=0.5):
    gen = torch.Generator().manual_seed(3)
    codes = torch.unique(torch.randint(0, 6, (120, 3), generator=gen), dim=0)
    trie = SemanticIdTrie(codes, 6)
    B, H = 3, 5
    hist = codes[torch.randint(0, codes.shape[0], (B, H), generator=gen)]
    hist[0, :2] = -1  # user 0 has 3 items of history
    weights = recency_weights(np.array([3, 5, 5]), H)
    popularity = [torch.bincount(codes[:, t], minlength=6).float() for t in range(3)]
    return trie, hist, HistoryCodePrior(hist, weights, popularity, smoothing=smoothing)


def test_history_prior_is_normalized_and_search_returns_items():
    trie, hist, model = _setup()
    for t in range(3):
        toks = torch.randint(0, 6, (3, 4, t))
        lp = model(toks, None)
        assert lp.shape == (3, 4, 6)
        torch.testing.assert_close(lp.exp().sum(-1), torch.ones(3, 4), rtol=1e-4, atol=1e-4)
    res = generate(trie, model, 3, 8)
    assert torch.all(res.item_ids >= 0) and torch.all(trie.contains(res.codes.reshape(-1, 3)))
    # the newest history item of each user is among its top beams
    for b in range(3):
        newest = hist[b, -1]
        assert (res.codes[b] == newest).all(dim=1).any()


def test_history_prior_rejects_zero_smoothing():
    with pytest.raises(ValueError, match="smoothing must be > 0"):
        _setup(smoothing=0.0)


def test_generate_excludes_history_items_and_keeps_k():
    trie, hist, model = _setup()
    items = trie.lookup(hist.clamp(min=0).reshape(-1, 3)).reshape(hist.shape[:2])
    items[hist[..., 0] < 0] = -1  # padding rows
    rows = [items[b][items[b] >= 0] for b in range(3)]
    offsets = torch.tensor([0] + [len(r) for r in rows]).cumsum(0)
    res = generate(trie, model, 3, 8, exclude_offsets=offsets, exclude_items=torch.cat(rows))
    for b in range(3):
        assert torch.all(res.item_ids[b] >= 0)  # still 8 real items
        assert not set(res.item_ids[b].tolist()) & set(rows[b].tolist())

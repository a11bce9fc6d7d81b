"""Helpers of the training tests (a module of its own: every test folder has a conftest.py, so
importing from "conftest" would pick whichever was loaded first)."""
from __future__ import annotations

from pathlib import Path

import torch

K = 16
REPO_ROOT = Path(__file__).resolve().parents[2]
ML100K = REPO_ROOT.parent / "shared" / "data" / "ml-100k"  # ../shared/data/ml-100k


def random_codes(num_items: int, seed: int) -> torch.Tensor:
    """(num_items, 3) distinct codes in a (K, K, K) codebook."""
    flat = torch.randperm(K ** 3, generator=torch.Generator().manual_seed(seed))[:num_items]
    return torch.stack([flat // K ** 2, flat // K % K, flat % K], dim=1)

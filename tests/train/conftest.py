"""Shared fixtures of the training tests: a small synthetic world with random one-to-one
semantic IDs (no tokenizer fit: the training code only needs a code per item)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from onerec.data import load_dataset
from onerec.model.config import OneRecConfig

K = 16
REPO_ROOT = Path(__file__).resolve().parents[2]
ML100K = REPO_ROOT.parent / "shared" / "data" / "ml-100k"  # ../shared/data/ml-100k


def random_codes(num_items: int, seed: int) -> torch.Tensor:
    """(num_items, 3) distinct codes in a (K, K, K) codebook."""
    flat = torch.randperm(K ** 3, generator=torch.Generator().manual_seed(seed))[:num_items]
    return torch.stack([flat // K ** 2, flat // K % K, flat % K], dim=1)


@pytest.fixture(scope="session")
def world():
    """(dataset, item_codes, tiny config) on 30 users / 120 items."""
    ds = load_dataset("synthetic", num_users=30, num_items=120, num_interactions=2500, seed=3)
    return ds, random_codes(ds.num_items, 0), OneRecConfig.preset("tiny").for_data((K, K, K), ds)

"""Shared fixtures of the training tests: a small synthetic world with random one-to-one
semantic IDs (no tokenizer fit: the training code only needs a code per item)."""
from __future__ import annotations

import pytest
from _train_helpers import K, random_codes

from onerec.data import load_dataset
from onerec.model.config import OneRecConfig


@pytest.fixture(scope="session")
def world():
    """(dataset, item_codes, tiny config) on 30 users / 120 items."""
    ds = load_dataset("synthetic", num_users=30, num_items=120, num_interactions=2500, seed=3)
    return ds, random_codes(ds.num_items, 0), OneRecConfig.preset("tiny").for_data((K, K, K), ds)

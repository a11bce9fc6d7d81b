"""Shared fixtures of the data-layer tests: small synthetic datasets and the MovieLens copy."""
from __future__ import annotations

from pathlib import Path

import pytest

from onerec.data import load_dataset

REPO_ROOT = Path(__file__).resolve().parents[2]
ML100K = REPO_ROOT.parent / "shared" / "data" / "ml-100k"  # ../shared/data/ml-100k


@pytest.fixture(scope="session")
def small_synth():
    """A small synthetic world: fast, but large enough for statistics."""
    return load_dataset("synthetic", num_users=600, num_items=900, num_interactions=30_000,
                        seed=1)


@pytest.fixture(scope="session")
def ml100k_path() -> Path:
    if not (ML100K / "u.data").is_file():
        pytest.skip(f"MovieLens-100K not found at {ML100K} (expected ../shared/data/ml-100k "
                    f"relative to the repo root)")
    return ML100K


@pytest.fixture(scope="session")
def ml100k(ml100k_path):
    return load_dataset(f"ml-100k:{ml100k_path}")

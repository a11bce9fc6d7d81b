"""Fixtures of the CLI tests."""
import pytest

import onerec.data
import onerec.pipeline


@pytest.fixture
def no_compute(monkeypatch):
    """Any of these being reached means a check came too late."""
    def forbidden(*args, **kwargs):
        pytest.fail("compute started before the arguments were checked")

    monkeypatch.setattr(onerec.data, "load_dataset", forbidden)
    monkeypatch.setattr(onerec.pipeline, "build_semantic_ids", forbidden)
    monkeypatch.setattr(onerec.pipeline, "generate_for_split", forbidden)

"""Test-wide setup. Without a GPU, Triton kernels run in the CPU interpreter: TRITON_INTERPRET
must be set before triton is first imported, which is why it happens here, at collection."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Tests check results, not speed: one tile config per kernel instead of an autotune sweep for
# every (D, K, L) the tests meet (tests/kernels/test_rq.py forces each loop shape explicitly).
os.environ.setdefault("ONEREC_TRITON_AUTOTUNE", "0")

import pytest  # noqa: E402


def devices():
    """CPU always; CUDA too where there is one (the GPU machine runs the same tests)."""
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=devices())
def device(request):
    return torch.device(request.param)


@pytest.fixture
def seed():
    """A fresh seed every run (printed on failure) so random inputs differ between runs."""
    s = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(s)
    return s

"""Test-wide setup, the one place that decides how Triton runs in the tests.

Without a GPU, Triton kernels run in the CPU interpreter: TRITON_INTERPRET must be set before
triton is first imported, which is why it happens here, at collection (no test file sets it).
With a GPU the tests must exercise *compiled* Triton on CUDA tensors: the interpreter would copy
CUDA tensors to the host and silently miscompute bf16, so a session with CUDA and
TRITON_INTERPRET=1 refuses to start."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
elif os.environ.get("TRITON_INTERPRET", "0") == "1":
    raise RuntimeError("tests/conftest.py: CUDA is available but TRITON_INTERPRET=1; the GPU run "
                       "must test compiled Triton kernels: unset TRITON_INTERPRET")
if os.environ.get("TRITON_INTERPRET", "0") == "1":
    try:
        import numpy
        import triton

        from onerec_kernels._triton_tiles import version_tuple as _version
    except ImportError:  # no triton: the Triton tests skip
        pass
    else:
        # Triton < 3.7's interpreter turns a loaded scalar into a 1-element array and calls int()
        # on it, which numpy >= 2.4 refuses: every kernel whose loop bounds are loaded from memory
        # (attention, grouped k-means) fails with "only 0-dimensional arrays can be converted".
        if _version(triton.__version__) < (3, 7) and _version(numpy.__version__) >= (2, 4):
            raise RuntimeError(
                f"tests/conftest.py: the Triton interpreter of triton {triton.__version__} cannot "
                f"run our kernels with numpy {numpy.__version__} (loop bounds loaded from memory "
                f"fail); install triton>=3.7 or numpy<2.4")
# Tests check results, not speed: one tile config per kernel instead of an autotune sweep for
# every (D, K, L) the tests meet (tests/kernels/test_rq.py forces each loop shape explicitly).
os.environ.setdefault("ONEREC_TRITON_AUTOTUNE", "0")

import pytest  # noqa: E402
from _seed import RUN_SEED  # noqa: E402


def pytest_report_header(config):
    return f"onerec test seed: {RUN_SEED} (replay with ONEREC_TEST_SEED={RUN_SEED})"


def devices():
    """CPU always; CUDA too where there is one (the GPU machine runs the same tests)."""
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=devices())
def device(request):
    return torch.device(request.param)


@pytest.fixture
def seed(request):
    """This run's seed, offset per test (random inputs differ between runs; a failure message
    that shows it, with the run seed in the header, replays the case)."""
    import zlib

    s = RUN_SEED + zlib.crc32(request.node.nodeid.encode()) % 100_000
    torch.manual_seed(s)
    return s


@pytest.fixture
def set_tf32():
    """set_tf32(on): torch's TF32 matmul switch for one test, restored afterwards. Not
    monkeypatch.setattr: the switch lives behind the module's __getattr__/__setattr__, and
    pytest >= 9.2 then records it as absent and deletes it on undo (AttributeError)."""
    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32
    yield lambda on: setattr(matmul, "allow_tf32", bool(on))
    matmul.allow_tf32 = before

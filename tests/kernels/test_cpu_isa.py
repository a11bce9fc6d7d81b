"""The C++ nearest-code search on each CPU path this machine has (sse, avx2, avx512), forced
through `torch.ops.onerec_C.cpu_isa`, against the references: rq_assign and kmeans_step.

The AVX-512 path screens in bf16 and rescores in fp32, so beyond random data it is checked where
a screen could go wrong: ties, near-duplicate codes, odd D, scale extremes, NaN."""
import pytest
import torch

import onerec_kernels as ok
from onerec_kernels import _native

pytestmark = pytest.mark.skipif(not _native.available(), reason="native extension not built")

ISAS = ["sse", "avx2", "avx512"]


@pytest.fixture(params=ISAS)
def isa(request):
    active, best = torch.ops.onerec_C.cpu_isa("")
    if ISAS.index(request.param) > ISAS.index(best):
        pytest.skip(f"this CPU's best path is {best}")
    torch.ops.onerec_C.cpu_isa(request.param)
    yield request.param
    torch.ops.onerec_C.cpu_isa(active)


def _nearest_ok(r, c, got):
    """Each row's code is the fp64 nearest up to fp32 rounding of the norm-trick scores."""
    dist = torch.cdist(r.double(), c.double()).square()
    best = dist.min(1).values
    chosen = dist.gather(1, got[:, None]).squeeze(1)
    scale = r.double().square().sum(1) + c.double().square().sum(1).max()
    assert (chosen - best <= 1e-5 * scale + 1e-30).all(), (chosen - best).max()


@pytest.mark.parametrize("n,d,k,levels", [(1, 1, 1, 1), (97, 7, 33, 2), (200, 64, 300, 3),
                                          (13, 129, 17, 2)])
def test_rq_assign_each_path(isa, seed, n, d, k, levels):
    x = torch.randn(n, d)
    cb = torch.randn(levels, k, d) * torch.tensor([0.5 ** i for i in range(levels)])[:, None, None]
    codes, residual = ok.rq_assign(x, cb, return_residual=True, backend="cpp")
    ref_codes = ok.rq_assign(x, cb, backend="torch")
    r = x.clone()
    for lvl in range(levels):  # greedy walk on our own codes: each choice nearest up to rounding
        _nearest_ok(r, cb[lvl], codes[:, lvl])
        r -= cb[lvl][codes[:, lvl]]
    torch.testing.assert_close(residual, r, rtol=0, atol=1e-4)
    assert (codes == ref_codes).all(1).float().mean() >= 0.97


def test_kmeans_step_each_path(isa, seed):
    n, d, k = 500, 40, 37
    x = torch.randn(n, d)
    c = x[torch.randperm(n)[:k]].clone()
    a, sums, counts, inertia = ok.kmeans_step(x, c, backend="cpp")
    _nearest_ok(x, c, a)
    ra, rsums, rcounts, rinertia = ok.kmeans_step_reference(x, c)
    if torch.equal(a, ra):
        assert torch.equal(counts, rcounts)
        torch.testing.assert_close(sums, rsums, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(inertia, rinertia, rtol=1e-5, atol=1e-3)


def test_ties_and_near_duplicates(isa, seed):
    d = 24
    # 40 exact copies (more than the AVX-512 candidate list): the lowest copy wins.
    cb = torch.full((45, d), 3.0)
    cb[3:43] = 0.2
    codes = ok.rq_assign(torch.full((5, d), 0.25), cb[None], backend="cpp")
    assert (codes[:, 0] == 3).all()
    # Codes closer together than bf16 resolves: the rescoring must order them.
    base = torch.randn(d)
    near = base + 1e-3 * torch.randn(48, d)
    x = base + 2e-3 * torch.randn(60, d)
    codes = ok.rq_assign(x, near[None], backend="cpp")
    _nearest_ok(x, near, codes[:, 0])


@pytest.mark.parametrize("scale", [1e-18, 1e15])
def test_scale_extremes(isa, seed, scale):
    x, c = torch.randn(50, 33) * scale, torch.randn(70, 33) * scale
    codes = ok.rq_assign(x, c[None], backend="cpp")
    _nearest_ok(x, c, codes[:, 0])


def test_nan_rows_get_zero_and_nan_codes_never_win(isa):
    c = torch.randn(20, 5)
    x = torch.randn(3, 5)
    x[1] = float("nan")
    c_nan = c.clone()
    c_nan[0] = float("nan")
    codes = ok.rq_assign(x, c_nan[None], backend="cpp")
    assert codes[1, 0] == 0
    assert codes[0, 0] != 0 and codes[2, 0] != 0


def test_unsupported_or_unknown_request_raises():
    with pytest.raises(RuntimeError, match="request must be"):
        torch.ops.onerec_C.cpu_isa("avx9000")

"""kmeans_step: every backend against the PyTorch reference (and the reference against a
float64 brute force), odd shapes, empty clusters, N == 0, bad inputs, opcheck."""

import pytest
import torch

from onerec_kernels import _backend, _native, kmeans_step, kmeans_step_reference, rq_assign
from _seed import run_gen

# (N, D, K): N = K = 1, D = 1, odd sizes, and K > N last.
SHAPES = [(1, 3, 1), (13, 1, 4), (7, 64, 5), (97, 40, 33), (1025, 17, 7), (40, 9, 100)]

BACKENDS = ["torch", "cpp", "triton"]


def _skip_unavailable(backend, device=torch.device("cpu")):
    reason = _backend.unavailable_reason(backend, device, "kmeans_step")
    if reason is not None:
        pytest.skip(reason)


def _brute(x, c):
    """float64 brute force: distances, best and second-best per row."""
    d2 = torch.cdist(x.double(), c.double()).square()
    top = d2.topk(min(2, c.shape[0]), dim=1, largest=False).values
    gap = (top[:, 1] - top[:, 0]) if c.shape[0] > 1 else torch.full((x.shape[0],), float("inf"))
    return d2, gap


def _check_against_truth(x, c, out, atol_gap):
    """Assignments are nearest up to genuine near-ties; sums/counts/inertia follow them."""
    a, sums, counts, inertia = out
    n, d = x.shape
    k = c.shape[0]
    assert a.shape == (n,) and a.dtype == torch.int64
    assert sums.shape == (k, d) and sums.dtype == torch.float32
    assert counts.shape == (k,) and counts.dtype == torch.int64
    assert inertia.shape == () and inertia.dtype == torch.float32
    assert bool(((a >= 0) & (a < k)).all())
    d2, gap = _brute(x, c)
    best = d2.argmin(dim=1)
    wrong = a != best
    # A differing choice must be (nearly) as close as the best one.
    chosen = d2.gather(1, a[:, None]).squeeze(1)
    assert bool((chosen[wrong] - d2.min(dim=1).values[wrong] <= atol_gap).all()), gap[wrong]
    xs = x.double()
    want_sums = torch.zeros((k, d), dtype=torch.float64).index_add_(0, a, xs)
    torch.testing.assert_close(sums.double(), want_sums, atol=1e-4 * (1 + n ** 0.5), rtol=1e-5)
    assert torch.equal(counts, torch.bincount(a, minlength=k))
    assert int(counts.sum()) == n
    want_inertia = (xs - c.double()[a]).square().sum()
    torch.testing.assert_close(inertia.double(), want_inertia, rtol=2e-5, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_brute_force_fp32(backend, shape):
    _skip_unavailable(backend)
    n, d, k = shape
    g = run_gen(n * 1000 + d + k)
    x = torch.randn(n, d, generator=g)
    c = torch.randn(k, d, generator=g)
    out = kmeans_step(x, c, backend=backend)
    _check_against_truth(x, c, out, atol_gap=1e-3)
    if backend != "torch":  # and agrees with the reference itself
        ref = kmeans_step_reference(x, c)
        assert (out[0] == ref[0]).float().mean() >= 0.99


@pytest.mark.parametrize("backend", ["cpp", "triton"])
@pytest.mark.parametrize("shape", [(97, 40, 33), (300, 24, 9)], ids=lambda s: "x".join(map(str, s)))
def test_fp16_matches_reference(backend, shape):
    """fp16 inputs: each backend's error judged against the fp32 truth of the fp16-rounded
    values, with the gap the reference itself needs at this precision."""
    _skip_unavailable(backend)
    n, d, k = shape
    g = run_gen(7 + n)
    x = torch.randn(n, d, generator=g).half()
    c = torch.randn(k, d, generator=g).half()
    out = kmeans_step(x, c, backend=backend)
    ref = kmeans_step(x, c, backend="torch")
    _check_against_truth(x.float(), c.float(), out, atol_gap=1e-2)
    _check_against_truth(x.float(), c.float(), ref, atol_gap=1e-2)
    assert (out[0] == ref[0]).float().mean() >= 0.98


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_clusters_and_ties(backend):
    _skip_unavailable(backend)
    g = run_gen(3)
    # Integer-valued data: exact dot products in any summation order, so the duplicate ties
    # exactly on every backend (GPU tensor cores and the interpreter's BLAS included).
    x = torch.randint(-3, 4, (50, 6), generator=g).float()
    c = torch.randint(-3, 4, (5, 6), generator=g).float()
    c[3] = 1e3  # far away: no point picks it
    c[4] = c[1]  # exact duplicate of centroid 1: ties go to the lower index
    a, sums, counts, inertia = kmeans_step(x, c, backend=backend)
    assert counts[3] == 0 and counts[4] == 0
    assert torch.equal(sums[3], torch.zeros(6)) and torch.equal(sums[4], torch.zeros(6))
    assert not bool((a == 4).any())
    _check_against_truth(x, c, (a, sums, counts, inertia), atol_gap=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_input(backend):
    _skip_unavailable(backend)
    x = torch.empty(0, 8)
    c = torch.randn(4, 8)
    a, sums, counts, inertia = kmeans_step(x, c, backend=backend)
    assert a.shape == (0,) and a.dtype == torch.int64
    assert torch.equal(sums, torch.zeros(4, 8)) and torch.equal(counts, torch.zeros(4, dtype=torch.int64))
    assert inertia.shape == () and float(inertia) == 0.0


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_deterministic(backend):
    _skip_unavailable(backend)
    g = run_gen(11)
    x = torch.randn(777, 13, generator=g)
    c = torch.randn(19, 13, generator=g)
    first = kmeans_step(x, c, backend=backend)
    second = kmeans_step(x, c, backend=backend)
    for u, v in zip(first, second):
        assert torch.equal(u, v)


def test_cpp_thread_counts_agree():
    _skip_unavailable("cpp")
    g = run_gen(12)
    x = torch.randn(2000, 10, generator=g)
    c = torch.randn(8, 10, generator=g)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kmeans_step(x, c, backend="cpp")
        torch.set_num_threads(2)
        two = kmeans_step(x, c, backend="cpp")
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one[0], two[0]) and torch.equal(one[2], two[2])
    torch.testing.assert_close(one[1], two[1], atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(one[3], two[3], rtol=1e-6, atol=0)


def test_non_contiguous_rows():
    _skip_unavailable("cpp")
    g = run_gen(5)
    big = torch.randn(60, 20, generator=g)
    x = big[::2, :9]  # row stride 40, unit column stride
    xt = torch.randn(9, 30, generator=g).T  # column stride != 1
    c = torch.randn(6, 9, generator=g)
    for inp in (x, xt):
        ref = kmeans_step_reference(inp.contiguous(), c)
        for backend in ("cpp", "triton"):
            if _backend.unavailable_reason(backend, inp.device, "kmeans_step") is None:
                out = kmeans_step(inp, c, backend=backend)
                assert torch.equal(out[0], ref[0]) and torch.equal(out[2], ref[2])


def test_same_assignment_as_rq_assign():
    """kmeans_step assigns exactly like one level of rq_assign (the shared machinery)."""
    g = run_gen(21)
    x = torch.randn(130, 24, generator=g)
    c = torch.randn(17, 24, generator=g)
    for backend in BACKENDS:
        if _backend.unavailable_reason(backend, x.device, "kmeans_step") is None:
            a = kmeans_step(x, c, backend=backend)[0]
            codes = rq_assign(x, c[None], backend=backend)
            assert torch.equal(a, codes[:, 0]), backend


def test_bad_inputs():
    x = torch.randn(5, 4)
    c = torch.randn(3, 4)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        kmeans_step(x.numpy(), c)
    with pytest.raises(ValueError, match="x must have 2 dimensions"):
        kmeans_step(x[None], c)
    with pytest.raises(ValueError, match="centroids must have 2 dimensions"):
        kmeans_step(x, c[None])
    with pytest.raises(TypeError, match="x must have dtype"):
        kmeans_step(x.long(), c)
    with pytest.raises(TypeError, match="centroids must have the same dtype"):
        kmeans_step(x, c.half())
    with pytest.raises(ValueError, match=r"centroids.shape\[1\]"):
        kmeans_step(x, torch.randn(3, 5))
    with pytest.raises(ValueError, match="K, the number of centroids"):
        kmeans_step(x, torch.randn(0, 4))
    with pytest.raises(ValueError, match="D"):
        kmeans_step(torch.randn(5, 0), torch.randn(3, 0))
    with pytest.raises(ValueError, match="backend must be one of"):
        kmeans_step(x, c, backend="cuda")
    with pytest.raises(TypeError, match="backend must be a str"):
        kmeans_step(x, c, backend=1)


def test_opcheck_triton():
    _skip_unavailable("triton")
    from onerec_kernels.kmeans.op import _kmeans_step_triton_op

    g = run_gen(9)
    for dtype in (torch.float32, torch.float16):
        x = torch.randn(19, 12, generator=g).to(dtype)
        c = torch.randn(5, 12, generator=g).to(dtype)
        torch.library.opcheck(_kmeans_step_triton_op, (x, c))


def test_opcheck_cpp():
    if not _native.has_kernel("kmeans_step", "CPU"):
        pytest.skip("native extension without onerec_C::kmeans_step")
    g = run_gen(10)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(23, 7, generator=g).to(dtype)
        c = torch.randn(4, 7, generator=g).to(dtype)
        torch.library.opcheck(torch.ops.onerec_C.kmeans_step.default, (x, c))


@pytest.mark.parametrize("backend", BACKENDS)
def test_outputs_never_require_grad(backend):
    """A Lloyd step is not differentiated: inputs that require grad give plain outputs on every
    backend (the custom ops have no autograd formula to back a graph)."""
    _skip_unavailable(backend)
    g = run_gen(13)
    x = torch.randn(9, 5, generator=g).requires_grad_()
    c = torch.randn(3, 5, generator=g).requires_grad_()
    out = kmeans_step(x, c, backend=backend)
    assert not any(t.requires_grad for t in out)
    ref = kmeans_step_reference(x.detach(), c.detach())
    assert torch.equal(out[0], ref[0]) and torch.equal(out[2], ref[2])

"""grouped_kmeans: the C++ kernel and the PyTorch reference give identical tensors (any thread
count, any CPU path); each group is k-means on its own; the result is Lloyd's (one step: the
nearest initial centroid and the means; converged: a fixed point, both checked against a float64
brute force); ties, NaN, empty groups, N == 0, bad inputs, opcheck, CUDA."""
import pytest
import torch

from onerec_kernels import _native, grouped_kmeans, grouped_kmeans_reference
from _seed import run_gen

HAS_CPP = _native.has_kernel("grouped_kmeans", "CPU")
needs_cpp = pytest.mark.skipif(not HAS_CPP, reason="native extension without grouped_kmeans")

# (rows per group, centroids per group): empty groups, k > n, k == n, one big group, k = 1.
LAYOUTS = [([5], [2]), ([0, 7, 1, 0, 40], [0, 3, 1, 2, 6]), ([3, 3], [3, 5]),
           ([97, 13, 250], [4, 1, 9])]
DIMS = [1, 7, 8, 64, 129]


def offsets(counts, device="cpu"):
    return torch.tensor([0] + torch.tensor(counts).cumsum(0).tolist(), device=device)


def make_groups(rows, ks, d, gen, device="cpu"):
    """Per group: a few blobs (so Lloyd has something to find), initial centroids drawn from its
    own rows (plus noise for k > n)."""
    xs, cs = [], []
    for n, k in zip(rows, ks):
        centres = 3 * torch.randn(max(k, 1), d, generator=gen)
        x = centres[torch.randint(0, max(k, 1), (n,), generator=gen)] + torch.randn(n, d, generator=gen)
        init = x[torch.randperm(n, generator=gen)[:k]] if n else torch.empty(0, d)
        c = torch.cat([init, torch.randn(k - init.shape[0], d, generator=gen)])
        xs.append(x)
        cs.append(c)
    return (torch.cat(xs).to(device), torch.cat(cs).to(device), offsets(rows, device),
            offsets(ks, device))


def group_of(x_off):
    return torch.repeat_interleave(torch.arange(x_off.shape[0] - 1), (x_off[1:] - x_off[:-1]).cpu())


def nearest_up_to_ties(x, c, assign, x_off, c_off, rtol=1e-5):
    """Each row's centroid is (up to fp32 rounding) the nearest of its group's, in float64."""
    g = group_of(x_off)
    for i in range(x.shape[0]):
        lo, hi = int(c_off[g[i]]), int(c_off[g[i] + 1])
        assert lo <= int(assign[i]) < hi, f"row {i} left its group"
        d2 = (x[i].double() - c[lo:hi].double()).square().sum(1)
        chosen = d2[int(assign[i]) - lo]
        assert chosen <= d2.min() * (1 + rtol) + 1e-12, (i, chosen, d2.min())


def means_of(x, assign, previous):
    """float64 means of the rows each centroid got (unassigned: `previous`), as float32."""
    k = previous.shape[0]
    sums = torch.zeros(k, x.shape[1], dtype=torch.float64).index_add_(0, assign, x.double())
    counts = torch.bincount(assign, minlength=k)
    return torch.where((counts > 0)[:, None], (sums / counts.clamp_min(1)[:, None]).float(),
                       previous.float())


@pytest.mark.parametrize("backend", ["torch", pytest.param("cpp", marks=needs_cpp)])
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda l: "-".join(map(str, l[0])))
def test_one_step_is_nearest_then_means(backend, layout):
    g = run_gen(1 + len(layout[0]))
    x, c, xo, co = make_groups(*layout, 13, g)
    assign, cent = grouped_kmeans(x, c, xo, co, iters=1, backend=backend)
    assert assign.dtype == torch.int64 and assign.shape == (x.shape[0],)
    assert cent.dtype == torch.float32 and cent.shape == c.shape
    nearest_up_to_ties(x, c, assign, xo, co)
    torch.testing.assert_close(cent, means_of(x, assign, c), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", ["torch", pytest.param("cpp", marks=needs_cpp)])
def test_converged_result_is_a_fixed_point(backend):
    """Enough steps: every row is at its nearest returned centroid and every centroid is the
    mean of its rows (Lloyd's fixed point), and more steps change nothing."""
    g = run_gen(2)
    x, c, xo, co = make_groups([120, 60, 9], [5, 3, 2], 6, g)
    assign, cent = grouped_kmeans(x, c, xo, co, iters=200, backend=backend)
    nearest_up_to_ties(x, cent, assign, xo, co)
    torch.testing.assert_close(cent, means_of(x, assign, cent), rtol=1e-6, atol=1e-6)
    again = grouped_kmeans(x, c, xo, co, iters=400, backend=backend)
    assert torch.equal(again[0], assign) and torch.equal(again[1], cent)


@needs_cpp
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda l: "-".join(map(str, l[0])))
def test_cpp_and_torch_identical(layout, d):
    g = run_gen(3 + d)
    x, c, xo, co = make_groups(*layout, d, g)
    for iters in (1, 3, 30):
        a = grouped_kmeans(x, c, xo, co, iters=iters, backend="cpp")
        b = grouped_kmeans(x, c, xo, co, iters=iters, backend="torch")
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), iters


@needs_cpp
def test_cpp_same_for_any_thread_count_and_cpu_path():
    g = run_gen(4)
    x, c, xo, co = make_groups([300, 5, 180, 77] * 4, [6, 2, 4, 3] * 4, 24, g)
    want = grouped_kmeans_reference(x, c, xo, co, 8)
    threads = torch.get_num_threads()
    active, best = torch.ops.onerec_C.cpu_isa("")
    try:
        for isa in ("sse", "avx2", "avx512"):
            if ("sse", "avx2", "avx512").index(isa) > ("sse", "avx2", "avx512").index(best):
                continue
            torch.ops.onerec_C.cpu_isa(isa)
            for n in (1, 2, 3):
                torch.set_num_threads(n)
                got = grouped_kmeans(x, c, xo, co, iters=8, backend="cpp")
                assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (isa, n)
    finally:
        torch.set_num_threads(threads)
        torch.ops.onerec_C.cpu_isa(active)


@pytest.mark.parametrize("backend", ["torch", pytest.param("cpp", marks=needs_cpp)])
def test_groups_are_independent(backend):
    """The batched call equals each group run alone, whatever the other groups hold (here one
    group sits right on top of another)."""
    g = run_gen(5)
    x, c, xo, co = make_groups([50, 0, 31, 64], [4, 1, 3, 5], 5, g)
    x[81:] = x[:50].repeat(2, 1)[:64] + 0.01  # group 3 overlaps group 0
    assign, cent = grouped_kmeans(x, c, xo, co, iters=6, backend=backend)
    zero = torch.zeros(1, dtype=torch.int64)
    for gi in range(4):
        r0, r1, c0, c1 = int(xo[gi]), int(xo[gi + 1]), int(co[gi]), int(co[gi + 1])
        a, ce = grouped_kmeans(x[r0:r1], c[c0:c1], torch.cat([zero, zero + r1 - r0]),
                               torch.cat([zero, zero + c1 - c0]), iters=6, backend=backend)
        assert torch.equal(assign[r0:r1], a + c0) and torch.equal(cent[c0:c1], ce), gi


@pytest.mark.parametrize("backend", ["torch", pytest.param("cpp", marks=needs_cpp)])
def test_ties_nan_and_unused_centroids(backend):
    # Integer data: exact distances, so the duplicate centroid ties exactly.
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [float("nan"), 1.0], [5.0, 5.0], [6.0, 5.0]])
    c = torch.tensor([[0.0, 1.0], [0.0, 1.0], [100.0, 100.0],  # group 0: a duplicate, a far one
                      [9.0, 9.0], [5.0, 5.0]])  # group 1
    xo, co = torch.tensor([0, 3, 5]), torch.tensor([0, 3, 5])
    assign, cent = grouped_kmeans(x, c, xo, co, iters=1, backend=backend)
    # rows 0, 1 tie between centroids 0 and 1: the lower wins; the NaN row gets the group's first
    assert assign.tolist() == [0, 0, 0, 4, 4]
    assert torch.isnan(cent[0, 0]) and cent[0, 1] == 1 / 3  # the NaN flows into its centroid
    assert torch.equal(cent[1:4], c[1:4])  # no rows: unchanged
    assert torch.equal(cent[4], torch.tensor([5.5, 5.0]))


@pytest.mark.parametrize("backend", ["torch", pytest.param("cpp", marks=needs_cpp)])
def test_no_rows(backend):
    c = torch.randn(3, 4)
    assign, cent = grouped_kmeans(torch.empty(0, 4), c, torch.tensor([0, 0, 0]),
                                  torch.tensor([0, 2, 3]), iters=2, backend=backend)
    assert assign.shape == (0,) and torch.equal(cent, c)
    assign, cent = grouped_kmeans(torch.empty(0, 4), torch.empty(0, 4), torch.tensor([0]),
                                  torch.tensor([0]), iters=1, backend=backend)
    assert assign.shape == (0,) and cent.shape == (0, 4)


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_is_widened(dtype):
    g = run_gen(6)
    x, c, xo, co = make_groups([40, 23], [3, 2], 9, g)
    x, c = x.to(dtype), c.to(dtype)
    want = grouped_kmeans_reference(x.float(), c.float(), xo, co, 4)
    for backend in ("cpp", "torch"):
        got = grouped_kmeans(x, c, xo, co, iters=4, backend=backend)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), backend


@pytest.mark.parametrize("backend", ["torch", pytest.param("cpp", marks=needs_cpp)])
def test_outputs_never_require_grad(backend):
    g = run_gen(7)
    x, c, xo, co = make_groups([10, 6], [2, 2], 3, g)
    out = grouped_kmeans(x.requires_grad_(), c.requires_grad_(), xo, co, iters=2, backend=backend)
    assert not any(t.requires_grad for t in out)


def test_bad_inputs():
    x, c = torch.randn(6, 3), torch.randn(3, 3)
    xo, co = torch.tensor([0, 4, 6]), torch.tensor([0, 2, 3])
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        grouped_kmeans(x.numpy(), c, xo, co, iters=1)
    with pytest.raises(ValueError, match=r"centroids.shape\[1\]"):
        grouped_kmeans(x, torch.randn(3, 4), xo, co, iters=1)
    with pytest.raises(TypeError, match="x_offsets must have dtype"):
        grouped_kmeans(x, c, xo.float(), co, iters=1)
    with pytest.raises(ValueError, match="centroid_offsets.shape"):
        grouped_kmeans(x, c, xo, torch.tensor([0, 3]), iters=1)
    with pytest.raises(ValueError, match="x_offsets must start at 0, not decrease and end at 6"):
        grouped_kmeans(x, c, torch.tensor([0, 4, 5]), co, iters=1)
    with pytest.raises(ValueError, match="x_offsets must start at 0"):
        grouped_kmeans(x, c, torch.tensor([0, 8, 6]), co, iters=1)  # decreasing
    with pytest.raises(ValueError, match="centroid_offsets must start at 0, not decrease and end at 3"):
        grouped_kmeans(x, c, xo, torch.tensor([0, 2, 2]), iters=1)
    with pytest.raises(ValueError, match="group 1 has 2 rows of x but no centroid"):
        grouped_kmeans(x, c, xo, torch.tensor([0, 3, 3]), iters=1)
    with pytest.raises(ValueError, match="iters"):
        grouped_kmeans(x, c, xo, co, iters=0)
    with pytest.raises(TypeError, match="iters must be an int"):
        grouped_kmeans(x, c, xo, co, iters=2.0)
    with pytest.raises(ValueError, match="backend must be one of"):
        grouped_kmeans(x, c, xo, co, iters=1, backend="triton")


@needs_cpp
def test_opcheck_cpp():
    g = run_gen(8)
    for dtype in (torch.float32, torch.bfloat16):
        x, c, xo, co = make_groups([9, 0, 14], [2, 1, 3], 5, g)
        torch.library.opcheck(torch.ops.onerec_C.grouped_kmeans.default,
                              (x.to(dtype), c.to(dtype), xo, co, 3))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    """The PyTorch path on CUDA: the same assignments as on CPU (its float64 index_add_ may
    differ in a centroid's last bit, which can move a genuine near-tie only), and by default
    the backend that runs there."""
    g = run_gen(9)
    x, c, xo, co = make_groups([400, 3, 250, 120] * 8, [7, 2, 6, 4] * 8, 64, g)
    cpu = grouped_kmeans_reference(x, c, xo, co, 8)
    got = grouped_kmeans(x.cuda(), c.cuda(), xo.cuda(), co.cuda(), iters=8)  # backend None
    assert got[0].is_cuda and got[1].is_cuda
    assert (got[0].cpu() == cpu[0]).float().mean() >= 0.999
    torch.testing.assert_close(got[1].cpu(), cpu[1], rtol=1e-4, atol=1e-4)

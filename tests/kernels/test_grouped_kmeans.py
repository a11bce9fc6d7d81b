"""grouped_kmeans: the C++ kernel, the Triton kernel (the interpreter on CPU, compiled on CUDA)
and the PyTorch reference give identical tensors (any thread count, any CPU path, any Triton
tile config); each group is k-means on its own; the result is Lloyd's (one step: the nearest
initial centroid and the means; converged: a fixed point, both checked against a float64 brute
force); ties, NaN and inf, empty groups, N == 0, bad inputs, opcheck, CUDA."""
import pytest
import torch

from onerec_kernels import _backend, _native, grouped_kmeans, grouped_kmeans_reference
from _seed import run_gen

HAS_CPP = _native.has_kernel("grouped_kmeans", "CPU")
needs_cpp = pytest.mark.skipif(not HAS_CPP, reason="native extension without grouped_kmeans")
# The Triton kernel on CPU tensors: the interpreter (tests/conftest.py sets it without CUDA); on
# a CUDA machine the CPU-tensor cases skip and the CUDA ones below run compiled.
_TRITON_CPU = _backend.unavailable_reason("triton", torch.device("cpu"))
needs_triton_cpu = pytest.mark.skipif(_TRITON_CPU is not None, reason=str(_TRITON_CPU))
BACKENDS = ["torch", pytest.param("cpp", marks=needs_cpp),
            pytest.param("triton", marks=needs_triton_cpu)]
# Where the Triton kernel runs in this session: compiled on CUDA, else the interpreter on CPU.
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
_TRITON = _backend.unavailable_reason("triton", torch.device(TRITON_DEVICE))
needs_triton = pytest.mark.skipif(_TRITON is not None, reason=str(_TRITON))

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


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda l: "-".join(map(str, l[0])))
def test_one_step_is_nearest_then_means(backend, layout):
    g = run_gen(1 + len(layout[0]))
    x, c, xo, co = make_groups(*layout, 13, g)
    assign, cent = grouped_kmeans(x, c, xo, co, iters=1, backend=backend)
    assert assign.dtype == torch.int64 and assign.shape == (x.shape[0],)
    assert cent.dtype == torch.float32 and cent.shape == c.shape
    nearest_up_to_ties(x, c, assign, xo, co)
    torch.testing.assert_close(cent, means_of(x, assign, c), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
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


@pytest.mark.parametrize("backend", BACKENDS)
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


@pytest.mark.parametrize("backend", BACKENDS)
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


@pytest.mark.parametrize("backend", BACKENDS)
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


@pytest.mark.parametrize("backend", BACKENDS)
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
        grouped_kmeans(x, c, xo, co, iters=1, backend="cuda")


@needs_cpp
def test_opcheck_cpp():
    g = run_gen(8)
    for dtype in (torch.float32, torch.bfloat16):
        x, c, xo, co = make_groups([9, 0, 14], [2, 1, 3], 5, g)
        torch.library.opcheck(torch.ops.onerec_C.grouped_kmeans.default,
                              (x.to(dtype), c.to(dtype), xo, co, 3))


def assert_identical(got, want):
    """Bit for bit, NaN where the reference has NaN."""
    assert torch.equal(got[0].cpu(), want[0].cpu())
    torch.testing.assert_close(got[1].cpu(), want[1].cpu(), rtol=0, atol=0, equal_nan=True)


# Triton cases: one group; empty groups, k > n, k == 1; 7 groups (1 row, k > n, no rows but
# centroids, k = 9 > the centroid block of 8, 130 rows = 2 tiles); 97 groups of 0..6 rows.
ROWS_97 = [(5 * i) % 7 for i in range(97)]
TRITON_LAYOUTS = {
    "g1": ([5], [2]),
    "g5": LAYOUTS[1],
    "g7": ([1, 3, 0, 9, 2, 130, 4], [1, 5, 2, 9, 2, 12, 3]),
    "g97": (ROWS_97, [1 + i % 3 if r else i % 2 for i, r in enumerate(ROWS_97)]),
}
# Every D with G = 1, 5, 7; G = 97 (slow in the interpreter: a program per group) at one D.
TRITON_CASES = ([(torch.float32, d, name) for d in (1, 7, 64, 129) for name in ("g1", "g5", "g7")]
                + [(torch.float32, 7, "g97"), (torch.float16, 7, "g5"),
                   (torch.float16, 129, "g7"), (torch.float16, 7, "g97")])


@needs_triton
@pytest.mark.parametrize("dtype,d,layout", TRITON_CASES,
                         ids=lambda v: str(v).replace("torch.", ""))
def test_triton_identical_to_reference(dtype, d, layout):
    """Bit-identical distances (same lane order, no FMA contraction) and exact fp64 sums: the
    Triton kernel returns the reference's tensors, after one step and after several (some
    groups converge and stop early, others keep going)."""
    g = run_gen(10 + d)
    x, c, xo, co = make_groups(*TRITON_LAYOUTS[layout], d, g)
    x, c = x.to(dtype), c.to(dtype)
    for iters in (1, 6):
        want = grouped_kmeans_reference(x.float(), c.float(), xo, co, iters)
        dev = TRITON_DEVICE
        got = grouped_kmeans(x.to(dev), c.to(dev), xo.to(dev).int(), co.to(dev), iters=iters,
                             backend="triton")
        assert got[0].device.type == dev and got[1].dtype == torch.float32
        assert_identical(got, want)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_triton_f64_hop_changes_nothing(monkeypatch, dtype):
    """The no-op unit-axis reduction that 16-bit inputs take on Triton < 3.9 (a Triton 3.6
    compile failure of the fp64 sums' dot) gives the reference's tensors too, whatever the
    dtype; and the rule takes it exactly for 16-bit inputs on those versions."""
    from onerec_kernels.kmeans import triton_kernels as tk

    for version, bits, want in [("3.6.0", 16, True), ("3.8.1+git", 16, True),
                                ("3.9.0", 16, False), ("3.6.0", 32, False)]:
        monkeypatch.setattr(tk.triton, "__version__", version)
        assert tk._needs_f64_hop(bits) is want
    monkeypatch.undo()
    g = run_gen(14)
    x, c, xo, co = make_groups([150, 1, 0, 70], [40, 1, 2, 20], 9, g)
    x, c = x.to(dtype), c.to(dtype)
    monkeypatch.setattr(tk, "_needs_f64_hop", lambda bits: True)
    dev = TRITON_DEVICE
    for iters in (1, 3):
        got = tk.grouped_kmeans_triton(x.to(dev), c.to(dev), xo.to(dev), co.to(dev), iters, 40,
                                       config={"BLOCK_N": 16, "BLOCK_D": 32})
        assert_identical(got, grouped_kmeans_reference(x.float(), c.float(), xo, co, iters))


@needs_triton
@pytest.mark.parametrize("config", [{"BLOCK_N": 16, "BLOCK_D": 32},
                                    {"BLOCK_N": 32, "BLOCK_D": 16}], ids=str)
def test_triton_tile_shapes(config):
    """Forced small tiles: several row blocks per tile, groups of more centroids than a
    distance block (8) and than a one-hot block of the sums (16), rows spread over > 16
    centroids in one block."""
    from onerec_kernels.kmeans.triton_kernels import grouped_kmeans_triton

    g = run_gen(11)
    x, c, xo, co = make_groups([150, 1, 2, 70], [40, 1, 5, 20], 9, g)
    dev = TRITON_DEVICE
    for iters in (1, 3):
        got = grouped_kmeans_triton(x.to(dev), c.to(dev), xo.to(dev), co.to(dev), iters, 40,
                                    config=config)
        assert_identical(got, grouped_kmeans_reference(x, c, xo, co, iters))


@needs_triton
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_triton_non_finite_values():
    """NaN and inf reach only their own row's centroid (the one-hot product of the sums leaves
    them out and adds them apart), as in the reference: NaN rows, a row with one inf
    coordinate, +inf and -inf in one cluster (NaN mean)."""
    g = run_gen(12)
    x, c, xo, co = make_groups([40, 33, 9], [3, 4, 2], 10, g)
    x[3] = float("nan")
    x[5, 2] = float("nan")
    x[41, 7] = float("inf")
    x[75, 0], x[76, 0] = float("inf"), float("-inf")  # group 2, 2 centroids: may share one
    dev = TRITON_DEVICE
    for iters in (1, 4):
        want = grouped_kmeans_reference(x, c, xo, co, iters)
        assert torch.isnan(want[1]).any() and torch.isinf(want[1]).any()
        got = grouped_kmeans(x.to(dev), c.to(dev), xo.to(dev), co.to(dev), iters=iters,
                             backend="triton")
        assert_identical(got, want)


@needs_triton
def test_opcheck_triton():
    from onerec_kernels.kmeans.op import _grouped_kmeans_triton_op

    g = run_gen(13)
    x, c, xo, co = make_groups([9, 0, 14], [2, 1, 3], 5, g, device=TRITON_DEVICE)
    torch.library.opcheck(_grouped_kmeans_triton_op, (x, c, xo, co, 3, 3))


@pytest.mark.parametrize("backend", ["torch", None], ids=["torch", "default"])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(backend):
    """On CUDA, the PyTorch path and the default (the Triton kernel): the same assignments and
    centroids as the reference on CPU (the float64 atomics can differ in a centroid's last bit
    only for sums that are not exact, which randn data do not make)."""
    g = run_gen(9)
    x, c, xo, co = make_groups([400, 3, 250, 120] * 8, [7, 2, 6, 4] * 8, 64, g)
    cpu = grouped_kmeans_reference(x, c, xo, co, 8)
    got = grouped_kmeans(x.cuda(), c.cuda(), xo.cuda(), co.cuda(), iters=8, backend=backend)
    assert got[0].is_cuda and got[1].is_cuda
    assert (got[0].cpu() == cpu[0]).float().mean() >= 0.999
    torch.testing.assert_close(got[1].cpu(), cpu[1], rtol=1e-4, atol=1e-4)


def production_like(seed, d=256, device="cuda"):
    """One compress_history-like round: ~1500 groups, a few of thousands of rows with
    cbrt(n) centroids, many of a few to hundreds of rows with 2..7."""
    g = torch.Generator().manual_seed(seed)
    big = torch.randint(1500, 5000, (16,), generator=g)
    small = torch.exp(torch.rand(1500, generator=g) * 5.5).long() + 1  # 2 .. ~250 rows
    rows = torch.cat([big, small])[torch.randperm(1516, generator=g)]
    ks = rows.double().pow(1 / 3).round().long().clamp(2, 64).minimum(rows)
    x, c, xo, co = make_groups(rows.tolist(), ks.tolist(), d, g)
    return x.to(device), c.to(device), xo.to(device), co.to(device)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_triton_production_shape(dtype):
    """The production-like round on the GPU against the PyTorch reference (on the GPU too):
    the same assignments and centroids, and the centroids the float64 means of the rows they
    got (Lloyd's update, checked independently)."""
    x, c, xo, co = production_like(run_gen(14).initial_seed())
    x, c = x.to(dtype), c.to(dtype)
    want = grouped_kmeans_reference(x.float(), c.float(), xo, co, 8)
    got = grouped_kmeans(x, c, xo, co, iters=8, backend="triton")
    same_rows = (got[0] == want[0]).float().mean().item()
    same_cents = (got[1] == want[1]).all(dim=1).float().mean().item()
    assert same_rows >= 0.999 and same_cents >= 0.999, (same_rows, same_cents)
    k = c.shape[0]
    sums = torch.zeros(k, x.shape[1], dtype=torch.float64, device="cuda").index_add_(
        0, got[0], x.double())
    counts = torch.bincount(got[0], minlength=k)
    used = counts > 0
    torch.testing.assert_close(got[1][used].double(), sums[used] / counts[used, None],
                               rtol=1e-6, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_triton_no_host_sync():
    """The Triton launcher (everything after the op's validation) never waits for the GPU."""
    from onerec_kernels.kmeans.triton_kernels import grouped_kmeans_triton

    x, c, xo, co = production_like(run_gen(15).initial_seed(), d=64)
    grouped_kmeans_triton(x, c, xo, co, 2, 64)  # compile outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        grouped_kmeans_triton(x, c, xo, co, 8, 64)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("d", [129, 256])
def test_cuda_triton_every_config(d):
    """Every autotune config, forced once (the tests' default run meets only the first)."""
    from onerec_kernels._triton_tiles import grouped_kmeans_configs
    from onerec_kernels.kmeans.triton_kernels import grouped_kmeans_triton

    g = run_gen(16)
    x, c, xo, co = make_groups([700, 1, 0, 33, 250, 5] * 5, [9, 1, 1, 40, 6, 2] * 5, d, g)
    want = grouped_kmeans_reference(x, c, xo, co, 5)
    x, c, xo, co = x.cuda(), c.cuda(), xo.cuda(), co.cuda()
    for cfg in grouped_kmeans_configs("1"):
        assert_identical(grouped_kmeans_triton(x, c, xo, co, 5, 40, config=cfg), want)

"""rq_assign: every backend against an fp64 walk of its own codes and against the reference."""
import pytest
import torch

import onerec_kernels as ok
from onerec_kernels import _backend, _native

HAS_NATIVE = _native.available()
# Where the Triton kernel runs in the single-device tests: the GPU when there is one.
TRITON_DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _backends(device):
    """Backends runnable on `device` here (Triton on CPU tensors only in the interpreter)."""
    out = ["torch"]
    if device.type == "cuda" or _backend.triton_interpret():
        out.append("triton")
    if device.type == "cpu" and HAS_NATIVE:
        out.append("cpp")
    return out


RTOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def _check_greedy(x, codebooks, codes, rtol, residual=None):
    """Walk the levels with the returned codes in fp64: at each level the chosen code must be
    the nearest up to rounding (genuine near-ties only); the residual must match the codes.
    Returns the fraction of (row, level) choices that are exactly the fp64 argmin."""
    x64, cb64 = x.double().cpu(), codebooks.double().cpu()
    codes = codes.cpu()
    n, num_levels = codes.shape
    assert codes.dtype == torch.int64
    assert ((codes >= 0) & (codes < codebooks.shape[1])).all()
    r = x64.clone()
    exact = 0
    for level in range(num_levels):
        dist = torch.cdist(r, cb64[level]).square()  # (N, K)
        best = dist.min(dim=1).values
        chosen = dist.gather(1, codes[:, level:level + 1]).squeeze(1)
        scale = r.square().sum(1) + cb64[level].square().sum(1).max()
        excess = chosen - best
        assert (excess <= rtol * scale + 1e-9).all(), (
            f"level {level}: chosen code is {excess.max().item():.3g} worse than the best "
            f"(allowed {rtol} x scale)")
        exact += (dist.argmin(dim=1) == codes[:, level]).sum().item()
        r = r - cb64[level][codes[:, level]]
    if residual is not None:
        scale = x64.abs().max().item() + 1.0
        torch.testing.assert_close(residual.double().cpu(), r, rtol=0, atol=rtol * 10 * scale)
    return exact / max(n * num_levels, 1)


def _mostly(fraction: float, total: int, slack: float) -> bool:
    """fraction of `total` choices is exact up to `slack` of them, and always up to one: a
    single genuine near-tie (already checked to be within rounding) must not fail a tiny case."""
    return (1.0 - fraction) * total <= max(1.0, slack * total) + 1e-9


SHAPES = [  # (N, D, K, L): the grid, sampled so every value appears with the others
    (1, 3, 1, 1), (7, 64, 5, 2), (1000, 100, 300, 3), (7, 3, 300, 3), (1000, 64, 5, 1),
    (1, 100, 300, 2), (97, 64, 300, 3), (1000, 3, 1, 2), (7, 100, 1, 3), (33, 17, 47, 2),
]


@pytest.mark.parametrize("n,d,k,num_levels", SHAPES)
def test_matches_reference_fp32(device, seed, n, d, k, num_levels):
    x = torch.randn(n, d, device=device)
    codebooks = torch.randn(num_levels, k, d, device=device)
    ref_codes, _ = ok.rq_assign_reference(x, codebooks)
    for backend in _backends(device):
        codes, residual = ok.rq_assign(x, codebooks, return_residual=True, backend=backend)
        assert codes.shape == (n, num_levels) and residual.shape == (n, d)
        assert residual.dtype == x.dtype and codes.device == x.device
        exact = _check_greedy(x, codebooks, codes, RTOL[torch.float32], residual)
        assert _mostly(exact, n * num_levels, 0.02), f"{backend}: {exact:.3f} exact (seed {seed})"
        agree = (codes == ref_codes).all(dim=1).float().mean().item()
        assert _mostly(agree, n, 0.03), f"{backend}: {agree:.3f} rows agree (seed {seed})"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,d,k,num_levels", [(97, 64, 300, 3), (7, 100, 5, 2), (200, 40, 33, 3)])
def test_low_precision(device, seed, dtype, n, d, k, num_levels):
    x = torch.randn(n, d, device=device).to(dtype)
    codebooks = torch.randn(num_levels, k, d, device=device).to(dtype)
    backends = _backends(device)
    if dtype == torch.bfloat16 and device.type == "cpu":
        backends = [b for b in backends if b != "triton"]  # the interpreter miscomputes bf16
    for backend in backends:
        codes, residual = ok.rq_assign(x, codebooks, return_residual=True, backend=backend)
        assert residual.dtype == dtype
        exact = _check_greedy(x, codebooks, codes, RTOL[dtype])
        assert _mostly(exact, n * num_levels, 0.1), f"{backend} {dtype}: {exact:.3f} (seed {seed})"


def test_large_d_tiles_over_d(device, seed):
    """D far above one tile (the kernel loops over D chunks); K spanning many code tiles."""
    x = torch.randn(5, 4096, device=device)
    codebooks = torch.randn(2, 70, 4096, device=device)
    for backend in _backends(device):
        codes = ok.rq_assign(x, codebooks, backend=backend)
        _check_greedy(x, codebooks, codes, RTOL[torch.float32])


def test_ties_pick_lowest_index(device):
    """Integer-valued data: every dot product is exact in fp32 whatever the summation order, so
    duplicated codes tie exactly and the lowest index must win (inside a code tile and across)."""
    d, k = 8, 70
    gen = torch.Generator().manual_seed(0)
    codebooks = torch.randint(4, 9, (1, k, d), generator=gen).float().to(device)  # far from x
    target = torch.randint(-3, 4, (d,), generator=gen).float().to(device)
    for j in (5, 6, 40, 69):
        codebooks[0, j] = target
    x = target.unsqueeze(0).repeat(3, 1)
    for backend in _backends(device):
        codes = ok.rq_assign(x, codebooks, backend=backend)
        assert codes[:, 0].tolist() == [5, 5, 5], backend


def test_empty_and_noncontiguous(device):
    codebooks = torch.randn(2, 9, 6, device=device)
    for backend in _backends(device):
        codes, res = ok.rq_assign(torch.empty(0, 6, device=device), codebooks,
                                  return_residual=True, backend=backend)
        assert codes.shape == (0, 2) and res.shape == (0, 6) and codes.dtype == torch.int64
        wide = torch.randn(11, 12, device=device)
        x = wide[:, ::2]  # column stride 2
        assert not x.is_contiguous()
        torch.testing.assert_close(ok.rq_assign(x, codebooks, backend=backend),
                                   ok.rq_assign(x.contiguous(), codebooks, backend=backend))


@pytest.mark.parametrize("backend", ["torch", "triton"] + (["cpp"] if HAS_NATIVE else []))
def test_residual_gradient(backend, seed):
    """The residual is differentiable (identity for x, scatter of -grad into the chosen codes)."""
    dev = TRITON_DEV if backend == "triton" else torch.device("cpu")
    x = torch.randn(13, 10, device=dev, requires_grad=True)
    codebooks = torch.randn(2, 6, 10, device=dev, requires_grad=True)
    codes, residual = ok.rq_assign(x, codebooks, return_residual=True, backend=backend)
    weight = torch.randn_like(residual)
    gx, gc = torch.autograd.grad((residual * weight).sum(), (x, codebooks))
    x2, c2 = x.detach().clone().requires_grad_(), codebooks.detach().clone().requires_grad_()
    chosen = c2[torch.arange(2, device=dev), codes]
    ((x2 - chosen.sum(1)) * weight).sum().backward()
    torch.testing.assert_close(gx, x2.grad)
    torch.testing.assert_close(gc, c2.grad)


BAD_INPUTS = [
    (lambda: (torch.randn(4), torch.randn(1, 3, 4)), ValueError, "x"),
    (lambda: (torch.randn(4, 5), torch.randn(3, 5)), ValueError, "codebooks"),
    (lambda: (torch.randn(4, 5), torch.randn(1, 3, 6)), ValueError, "D"),
    (lambda: (torch.randn(4, 5), torch.randn(1, 3, 5).double()), TypeError, "dtype"),
    (lambda: (torch.randn(4, 5).half(), torch.randn(1, 3, 5)), TypeError, "dtype"),
    (lambda: (torch.randint(0, 3, (4, 5)), torch.randn(1, 3, 5)), TypeError, "x"),
    (lambda: (torch.randn(4, 5), torch.randn(0, 3, 5)), ValueError, "L"),
    (lambda: (torch.randn(4, 5), torch.randn(2, 0, 5)), ValueError, "K"),
    (lambda: (torch.randn(4, 0), torch.randn(2, 3, 0)), ValueError, "D"),
    (lambda: ([[1.0]], torch.randn(1, 1, 1)), TypeError, "x"),
]


@pytest.mark.parametrize("make,exc,word", BAD_INPUTS)
def test_bad_inputs(make, exc, word):
    x, codebooks = make()
    with pytest.raises(exc, match=word):
        ok.rq_assign(x, codebooks)


def test_bad_backend_requests(monkeypatch):
    x, codebooks = torch.randn(3, 4), torch.randn(1, 2, 4)
    with pytest.raises(ValueError, match="backend"):
        ok.rq_assign(x, codebooks, backend="cuda")  # rq_assign has no native CUDA kernel
    with pytest.raises(ValueError, match="backend"):
        ok.rq_assign(x, codebooks, backend="fast")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        ok.rq_assign(x, codebooks, backend="triton")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_mismatch():
    with pytest.raises(ValueError, match="device"):
        ok.rq_assign(torch.randn(3, 4, device="cuda"), torch.randn(1, 2, 4))


def test_opcheck_triton_op():
    x, codebooks = torch.randn(19, 12, device=TRITON_DEV), torch.randn(2, 7, 12, device=TRITON_DEV)
    for flag in (True, False):
        torch.library.opcheck(torch.ops.onerec.rq_assign_triton.default, (x, codebooks, flag))


@pytest.mark.skipif(not HAS_NATIVE, reason="native extension not built")
def test_opcheck_native_op():
    x, codebooks = torch.randn(19, 12), torch.randn(2, 7, 12)
    for flag in (True, False):
        torch.library.opcheck(torch.ops.onerec_C.rq_assign.default, (x, codebooks, flag))


@pytest.mark.parametrize("backend", ["triton"] + (["cpp"] if HAS_NATIVE else []))
@pytest.mark.parametrize("num_levels", [1, 3])
def test_no_n_by_d_buffer_without_residual(backend, num_levels, monkeypatch):
    """return_residual=False allocates nothing of N x D (the Triton kernel keeps the residual in
    per-program scratch rows, the C++ core in per-block buffers); True allocates the output."""
    dev = TRITON_DEV if backend == "triton" else torch.device("cpu")
    if dev.type == "cpu" and backend == "triton" and not _backend.triton_interpret():
        pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1")
    n, d = 300, 16
    if dev.type == "cuda":  # more rows than one launch's chunk (the scratch's size)
        from onerec_kernels.rq.triton_kernels import scratch_rows

        n = 2 * scratch_rows(10 ** 9, dev) + 5
    x, codebooks = torch.randn(n, d, device=dev), torch.randn(num_levels, 5, d, device=dev)
    want = ok.rq_assign(x, codebooks, backend="torch")
    # Tune outside the window: the autotuner's first call allocates its own benchmarking buffers
    # (Triton's 256 MB L2-flush buffer on the GPU), which are not the op's.
    ok.rq_assign(x, codebooks, return_residual=True, backend=backend)
    ok.rq_assign(x, codebooks, backend=backend)
    sizes = []
    real_empty = torch.empty

    def spy(*args, **kwargs):
        out = real_empty(*args, **kwargs)
        sizes.append(out.numel())
        return out

    monkeypatch.setattr(torch, "empty", spy)  # the Triton launcher's allocations
    if backend == "cpp":  # ATen allocates inside the op: look at what it returns instead
        codes, residual = torch.ops.onerec_C.rq_assign(x, codebooks, False)
        assert residual.numel() == 0
    else:
        codes = ok.rq_assign(x, codebooks, backend=backend)
        assert max(sizes) < n * d, sizes
        sizes.clear()
        _, residual = ok.rq_assign(x, codebooks, return_residual=True, backend=backend)
        assert sum(s >= n * d for s in sizes) == 1, sizes
    agree = (codes == want).all(dim=1).float().mean().item()
    assert _mostly(agree, n, 0.03)


def test_triton_scratch_rows_do_not_grow_with_n():
    from onerec_kernels.rq.triton_kernels import scratch_rows

    cpu = torch.device("cpu")
    assert scratch_rows(10, cpu) == 10
    assert scratch_rows(1000, cpu) == 64  # the interpreter's chunk (so tests run several)
    assert scratch_rows(10 ** 9, cpu) == scratch_rows(10 ** 5, cpu)
    if torch.cuda.is_available():
        cuda = torch.device("cuda")
        sms = torch.cuda.get_device_properties(cuda).multi_processor_count
        assert scratch_rows(300, cuda) == 300
        assert scratch_rows(10 ** 9, cuda) == 1024 * sms


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_triton_peak_memory_without_residual():
    """On the GPU: codes for 1M x 512 rows without the residual cost well under one fp32
    N x D buffer (the scratch is bounded: at most SMs x 1024 rows, 277 MB at D = 512 on an
    H200, whatever N is; measured 281 MB at N = 200k, which is why N is large here)."""
    n, d = 1_000_000, 512
    x = torch.randn(n, d, device="cuda", dtype=torch.float16)
    codebooks = torch.randn(3, 256, d, device="cuda", dtype=torch.float16)
    ok.rq_assign(x[:1000], codebooks, backend="triton")  # compile / tune outside the window
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    ok.rq_assign(x, codebooks, backend="triton")
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - base < n * d * 4 // 4


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_triton_on_second_device():
    """Triton launches on the current device: the launcher must switch to the tensors' one."""
    dev = torch.device("cuda", 1)
    assert torch.cuda.current_device() != 1
    x, codebooks = torch.randn(97, 64, device=dev), torch.randn(3, 300, 64, device=dev)
    codes, residual = ok.rq_assign(x, codebooks, return_residual=True, backend="triton")
    assert codes.device == dev and residual.device == dev
    _check_greedy(x, codebooks, codes, RTOL[torch.float32], residual)
    assign, sums, counts, _ = ok.kmeans_step(x, codebooks[0], backend="triton")
    want = ok.kmeans_step(x.cpu(), codebooks[0].cpu(), backend="torch")
    assert (assign.cpu() == want[0]).float().mean() > 0.97 and counts.sum().item() == 97


def test_device_guard_switches_to_the_tensors_device():
    from onerec_kernels._triton_tiles import device_guard

    guard = device_guard(torch.device("cuda", 1))  # constructing it needs no GPU
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    with device_guard(torch.device("cpu")):
        pass


@pytest.mark.parametrize("dtype,tf32,family", [
    (torch.float16, False, "fp16"), (torch.bfloat16, False, "fp16"),
    (torch.float32, False, "fp32"), (torch.float32, True, "tf32")])
def test_autotune_configs_are_pruned_to_the_operand_family(dtype, tf32, family, monkeypatch,
                                                            set_tf32):
    """Each operand family has its own tiles (fp32 FMA needs small ones, TF32 half the BLOCK_D
    of fp16); the autotuner only ever tries the call's family."""
    from onerec_kernels import _triton_tiles as tt

    monkeypatch.setattr(tt, "triton_interpret", lambda: False)
    set_tf32(tf32)
    monkeypatch.setenv("ONEREC_TRITON_AUTOTUNE", "quick")
    configs = tt.autotune_configs("rq_assign")
    precision = tt.dot_input_precision(dtype)
    assert precision == ("tf32" if tf32 else "ieee")
    kept = tt.prune_to_family(configs, {"x_ptr": torch.empty(1, dtype=dtype)},
                              INPUT_PRECISION=precision)
    want = {(c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.kwargs["BLOCK_D"], c.kwargs["FLAT"])
            for c in tt.family_configs("rq_assign", family, "quick")}
    got = {(c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.kwargs["BLOCK_D"], c.kwargs["FLAT"])
           for c in kept}
    assert got == want and len(kept) == len(want) >= 2


@pytest.mark.parametrize("backend", ["triton"] + (["cpp"] if HAS_NATIVE else []))
def test_torch_compile(backend):
    torch._dynamo.reset()

    @torch.compile(fullgraph=True)
    def quantize(x, codebooks):
        codes, residual = ok.rq_assign(x, codebooks, return_residual=True, backend=backend)
        return codes, residual.square().sum(dim=1)

    dev = TRITON_DEV if backend == "triton" else torch.device("cpu")
    x, codebooks = torch.randn(21, 8, device=dev), torch.randn(3, 10, 8, device=dev)
    codes, err = quantize(x, codebooks)
    want_codes, want_res = ok.rq_assign(x, codebooks, return_residual=True, backend=backend)
    torch.testing.assert_close(codes, want_codes)
    torch.testing.assert_close(err, want_res.square().sum(dim=1))


@pytest.mark.parametrize("flat", [False, True], ids=["nested", "flat"])
@pytest.mark.parametrize("tiles", [(16, 16, 16), (32, 64, 32)], ids=["small", "wide"])
@pytest.mark.parametrize("d,k", [(45, 70), (64, 128)], ids=["ragged", "even"])
def test_every_loop_shape_of_the_triton_kernel(flat, tiles, d, k, seed):
    """Both loop shapes of the autotune list, forced, on shapes that leave ragged tiles in N, K
    and D, and on K, D multiples of the tiles (the mask-free EVEN_K / EVEN_D path). The
    autotuner picks between them on a GPU; the interpreter has one default."""
    from onerec_kernels.rq.triton_kernels import rq_assign_triton

    bn, bk, bd = tiles
    x = torch.randn(37, d, device=TRITON_DEV)
    codebooks = torch.randn(3, k, d, device=TRITON_DEV)
    if TRITON_DEV.type == "cpu" and not _backend.triton_interpret():
        pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1")
    codes, residual = rq_assign_triton(x, codebooks, True, config={
        "BLOCK_N": bn, "BLOCK_K": bk, "BLOCK_D": bd, "FLAT": flat})
    exact = _check_greedy(x, codebooks, codes, RTOL[torch.float32], residual)
    assert _mostly(exact, 37 * 3, 0.05), f"{exact:.3f} exact choices (seed {seed})"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_triton_residual_is_the_references_fp32_walk(dtype, seed):
    """The kernel rebuilds the residual from x and the chosen codes in fp32, in the reference's
    order ((x - c_0) - c_1) - ...: given its codes, the residual is bit-identical."""
    if dtype == torch.bfloat16 and TRITON_DEV.type == "cpu":
        pytest.skip("the interpreter miscomputes bf16")
    if TRITON_DEV.type == "cpu" and not _backend.triton_interpret():
        pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1")
    x = torch.randn(150, 40, device=TRITON_DEV).to(dtype)
    codebooks = torch.randn(3, 20, 40, device=TRITON_DEV).to(dtype)
    codes, residual = ok.rq_assign(x, codebooks, return_residual=True, backend="triton")
    r = x.float()
    for level in range(3):
        r = r - codebooks[level].float()[codes[:, level]]
    assert torch.equal(residual, r.to(dtype))


def test_nan_rows_and_nan_codes_never_win(device):
    """A NaN code is never chosen and an all-NaN row gets code 0, on every backend."""
    x = torch.randn(6, 8, device=device)
    x[2] = float("nan")
    codebooks = torch.randn(2, 10, 8, device=device)
    codebooks[0, 3] = float("nan")
    for backend in _backends(device):
        codes = ok.rq_assign(x, codebooks, backend=backend)
        assert codes[2].tolist() == [0, 0], backend
        assert (codes[:, 0] != 3).all(), backend
        ok_rows = [0, 1, 3, 4, 5]
        _check_greedy(x[ok_rows], codebooks.nan_to_num(nan=1e6), codes[ok_rows], RTOL[torch.float32])

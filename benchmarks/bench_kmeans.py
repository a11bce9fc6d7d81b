"""k-means benchmarks: the fused `kmeans_step` and a full tokenizer fit against plain PyTorch in
the same run.

FLOPs of one step = 2*N*K*D (the distance GEMM; argmin is O(N*K), the sums/counts/inertia
O(N*D)). At N=1M, D=512, K=8192 a step is 8.6 TFLOP and compute bound, so the floor is the GEMM
peak. Anchors (plain PyTorch, chunked so the (rows, K) score block fits):
  - fp32: ||c||^2 - 2 x C^T in fp32 + argmin + index_add + bincount (= kmeans_step_reference),
  - bf16: the same with a bf16 GEMM (fp32 scores and sums).
The full fit is one level of K codes (k-means++ seeding on a subsample + `iters` Lloyd steps),
with `backend="triton"` against `backend="torch"` (the same algorithm on the reference step).
"""
from __future__ import annotations

import pytest
import torch

import onerec_kernels as ok
import cpu_peers
from common import (assert_assignments_exact_up_to_ties, cpu_time_ms, gpu_time_ms,
                    measured_bf16_peak_tflops, quick, record, requires_cuda, run_timed, tflops)
from onerec.tokenizer import RQKMeansTokenizer

CHUNK = 65536


def anchor_fp32(x, c):
    return ok.kmeans_step_reference(x.float(), c.float(), row_chunk=CHUNK)


def anchor_bf16(x, c):
    xb, cb = x.to(torch.bfloat16), c.to(torch.bfloat16)
    c_norm = cb.float().square().sum(1)
    k, d = c.shape
    sums = torch.zeros((k, d), dtype=torch.float32, device=x.device)
    idx = []
    for s in range(0, x.shape[0], CHUNK):
        rows = xb[s:s + CHUNK]
        a = (c_norm - 2.0 * (rows @ cb.T).float()).argmin(1)
        sums.index_add_(0, a, rows.float())
        idx.append(a)
    a = torch.cat(idx)
    return a, sums, torch.bincount(a, minlength=k)


def _data(n, d, k, device, dtype, seed=0):
    """Clustered points (so the sums see realistic contention) and centroids drawn from them."""
    g = torch.Generator(device=device).manual_seed(seed)
    centres = torch.randn(k, d, device=device, generator=g)
    labels = torch.randint(0, k, (n,), device=device, generator=g)
    x = centres[labels] + 0.5 * torch.randn(n, d, device=device, generator=g)
    c = x[torch.randperm(n, device=device, generator=g)[:k]]
    return x.to(dtype), c.to(dtype).contiguous()


def _gpu_shape():
    return ((1 << 17), 512, 2048) if quick() else ((1 << 20), 512, 8192)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_kmeans_step_gpu(benchmark, dtype):
    n, d, k = _gpu_shape()
    x, c = _data(n, d, k, "cuda", dtype)
    flops = 2.0 * n * k * d
    peak = measured_bf16_peak_tflops()
    ours = lambda: ok.kmeans_step(x, c, backend="triton")  # noqa: E731
    a, sums, counts, _ = ours()  # compile + autotune outside the timing
    ms = gpu_time_ms(ours)
    extra = {"N": n, "D": d, "K": k, "dtype": str(dtype).replace("torch.", ""), "time_ms": ms,
             "tflops": tflops(flops, ms), "pct_of_bf16_peak": 100 * tflops(flops, ms) / peak,
             "bf16_peak_tflops": peak}
    for name, fn in {"fp32": anchor_fp32, "bf16": anchor_bf16}.items():
        a_ms = gpu_time_ms(lambda: fn(x, c), rep_ms=1)
        extra[f"anchor_{name}_ms"] = a_ms
        extra[f"speedup_vs_{name}"] = a_ms / ms
    ref = anchor_bf16(x, c) if dtype == torch.bfloat16 else anchor_fp32(x, c)
    extra["assignment_agreement"] = (a == ref[0]).float().mean().item()
    extra["counts_equal"] = bool(torch.equal(counts, ref[2]))
    assert_assignments_exact_up_to_ties(x, c, a, ref[0])  # no speed recorded for a wrong answer
    record(benchmark, **extra)
    run_timed(benchmark, lambda: (ours(), torch.cuda.synchronize()), ms)


def _fit_ms(x, k, iters, backend, seed_sample):
    tok = RQKMeansTokenizer(num_levels=1, codebook_size=k, iters=iters, seed=0, backend=backend,
                            tol=0.0, seed_sample=seed_sample)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    tok.fit(x)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end), tok


@requires_cuda
def test_kmeans_fit_gpu(benchmark):
    """One level, K codes, k-means++ on 4 K points + `iters` Lloyd steps, fp32 data. Seeding
    (k-means++ plus the closing assignment: a fit with iters=0) is timed apart from the Lloyd
    iterations (the difference of the two fits), so each has its own rate."""
    n, d, k = _gpu_shape()
    iters = 3 if quick() else 10
    x, _ = _data(n, d, k, "cuda", torch.float32)
    _fit_ms(x[:4096], 64, 1, "triton", None)  # compile + autotune for this D
    extra = {"N": n, "D": d, "K": k, "iters": iters}
    for name, backend in (("", "triton"), ("reference_", "torch")):
        seed_ms, _ = _fit_ms(x, k, 0, backend, 4 * k)
        fit_ms, tok = _fit_ms(x, k, iters, backend, 4 * k)
        lloyd_ms = max(fit_ms - seed_ms, 1e-6)
        extra.update({f"{name}fit_ms": fit_ms, f"{name}seeding_ms": seed_ms,
                      f"{name}lloyd_ms_per_iter": lloyd_ms / iters,
                      f"{name}lloyd_tflops": tflops(2.0 * n * k * d * iters, lloyd_ms),
                      f"{name}inertia": tok.fit_stats_[0]["inertia"]})
    extra["speedup_vs_reference"] = extra["reference_fit_ms"] / extra["fit_ms"]
    extra["lloyd_speedup_vs_reference"] = (extra["reference_lloyd_ms_per_iter"]
                                           / extra["lloyd_ms_per_iter"])
    record(benchmark, **extra)
    run_timed(benchmark, lambda: _fit_ms(x, k, iters, "triton", 4 * k), extra["fit_ms"])


@pytest.mark.parametrize("n,d,k", [(20000, 64, 256), (4096, 256, 1024)])
def test_kmeans_step_cpu(benchmark, n, d, k):
    """CPU: the C++ kernel against the PyTorch reference (CPU BLAS GEMM + index_add)."""
    if not ok.native_available():
        pytest.skip("native extension not built")
    x, c = _data(n, d, k, "cpu", torch.float32)
    flops = 2.0 * n * k * d
    cpp_ms = cpu_time_ms(lambda: ok.kmeans_step(x, c, backend="cpp"), repeats=3)
    ref_ms = cpu_time_ms(lambda: ok.kmeans_step(x, c, backend="torch"), repeats=3)
    extra = {"N": n, "D": d, "K": k, "threads": torch.get_num_threads(), "cpp_ms": cpp_ms,
             "reference_ms": ref_ms, "cpp_gflops": flops / cpp_ms / 1e6,
             "speedup_vs_reference": ref_ms / cpp_ms}
    record(benchmark, **extra)
    run_timed(benchmark, lambda: ok.kmeans_step(x, c, backend="cpp"), cpp_ms)


def test_kmeans_fit_cpu(benchmark):
    """CPU: a small 3-level fit with the C++ step against the reference step."""
    if not ok.native_available():
        pytest.skip("native extension not built")
    n, d, k = 8192, 32, 64
    x, _ = _data(n, d, k, "cpu", torch.float32)
    fit = lambda b: RQKMeansTokenizer(num_levels=3, codebook_size=k, iters=10, seed=0,  # noqa: E731
                                      backend=b, tol=0.0).fit(x)
    cpp_ms = cpu_time_ms(lambda: fit("cpp"), repeats=1, warmup=0)
    ref_ms = cpu_time_ms(lambda: fit("torch"), repeats=1, warmup=0)
    extra = {"N": n, "D": d, "K": k, "L": 3, "iters": 10, "cpp_fit_ms": cpp_ms,
             "reference_fit_ms": ref_ms, "speedup_vs_reference": ref_ms / cpp_ms}
    record(benchmark, **extra)
    run_timed(benchmark, lambda: fit("cpp"), cpp_ms)  # times the fit


def _kmeans_peer_specs():
    if cpu_peers.full():
        return [dict(op="kmeans", n=16384, d=512, k=4096, repeats=5, reference=False)]
    return [dict(op="kmeans", n=2048, d=64, k=256, repeats=3)]


@pytest.mark.parametrize("spec", _kmeans_peer_specs(), ids=lambda s: f"D{s['d']}-K{s['k']}")
def test_kmeans_step_cpu_vs_peers(benchmark, spec):
    """CPU: one Lloyd step of the C++ kmeans_step against faiss (Kmeans(niter=1), and
    IndexFlatL2 search + a sorted numpy update), numpy BLAS + argmin + the same update and our
    PyTorch reference, at 1 and 2 threads, OpenBLAS both ways, the faster counting."""
    if not ok.native_available():
        pytest.skip("native extension not built")
    result = cpu_peers.compare(spec)
    cpu_peers.record_comparison(record, benchmark, spec, result)
    # pytest-benchmark's own row times one real call of ours (see bench_rq.py)
    x, c = _data(spec["n"], spec["d"], spec["k"], "cpu", torch.float32)
    run_timed(benchmark, lambda: ok.kmeans_step(x, c, backend="cpp"),
              result["summary"][1]["numpy_blas"]["ours_ms"])

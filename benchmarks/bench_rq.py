"""rq_assign benchmarks: our fused kernel against the plain-PyTorch anchors in the same run.

FLOPs = 2*N*K*D*L (the distance GEMMs; the argmin and residual updates are O(N*K*L) and
O(N*D*L)). Minimum bytes = read x (N*D), the codebooks (L*K*D), write codes (N*L*8): at
N=1M, K=8192 the op is compute bound, so the floor is the GEMM peak.
Anchors (../shared/ANCHORS.md): chunked fp32 ||c||^2 - 2 r C^T + argmin; torch.cdist + argmin;
bf16 GEMM + fp32 argmin. Each does the full L-level greedy walk.
"""
from __future__ import annotations

import pytest
import torch

import onerec_kernels as ok
import cpu_peers
from common import (assert_assignments_exact_up_to_ties, cpu_time_ms, gpu_time_ms,
                    measured_bf16_peak_tflops, quick, record, requires_cuda, run_timed, tflops)

CHUNK = 65536


def anchor_fp32_norm_trick(x, codebooks):
    r = x.float().clone()
    cb = codebooks.float()
    codes = []
    for level in range(cb.shape[0]):
        c = cb[level]
        c_norm = (c * c).sum(1)
        idx = torch.cat([(c_norm - 2.0 * (r[s:s + CHUNK] @ c.T)).argmin(1)
                         for s in range(0, r.shape[0], CHUNK)])
        r -= c[idx]
        codes.append(idx)
    return torch.stack(codes, 1)


def anchor_cdist(x, codebooks):
    r = x.float().clone()
    cb = codebooks.float()
    codes = []
    for level in range(cb.shape[0]):
        idx = torch.cat([torch.cdist(r[s:s + CHUNK], cb[level]).argmin(1)
                         for s in range(0, r.shape[0], CHUNK)])
        r -= cb[level][idx]
        codes.append(idx)
    return torch.stack(codes, 1)


def anchor_bf16_gemm(x, codebooks):
    r = x.to(torch.bfloat16).clone()
    cb = codebooks.to(torch.bfloat16)
    codes = []
    for level in range(cb.shape[0]):
        c = cb[level]
        c_norm = (c.float() ** 2).sum(1)
        idx = torch.cat([(c_norm - 2.0 * (r[s:s + CHUNK] @ c.T).float()).argmin(1)
                         for s in range(0, r.shape[0], CHUNK)])
        r -= c[idx]
        codes.append(idx)
    return torch.stack(codes, 1)


def _data(n, d, k, num_levels, device, dtype, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(n, d, device=device, generator=g)
    scales = torch.tensor([0.5 ** level for level in range(num_levels)], device=device)
    codebooks = torch.randn(num_levels, k, d, device=device, generator=g) * scales[:, None, None]
    return x.to(dtype), codebooks.to(dtype)


@requires_cuda
@pytest.mark.parametrize("d", [512, 2048])
def test_rq_assign_gpu(benchmark, d):
    n = (1 << 20) if (d == 512 or not quick()) else (1 << 18)
    k, num_levels = 8192, 3
    x, codebooks = _data(n, d, k, num_levels, "cuda", torch.bfloat16)
    flops = 2.0 * n * k * d * num_levels
    peak = measured_bf16_peak_tflops()

    ours = lambda: ok.rq_assign(x, codebooks, backend="triton")  # noqa: E731
    ours()  # compile + autotune outside the timing
    ms = gpu_time_ms(ours)
    anchors = {"fp32_norm_trick": anchor_fp32_norm_trick, "cdist": anchor_cdist,
               "bf16_gemm": anchor_bf16_gemm}
    extra = {"N": n, "D": d, "K": k, "L": num_levels, "dtype": "bfloat16", "time_ms": ms,
             "tflops": tflops(flops, ms), "pct_of_bf16_peak": 100 * tflops(flops, ms) / peak,
             "bf16_peak_tflops": peak}
    codes = ours()
    # No speed for a wrong answer: level 0 (same input on both sides) must match the bf16 anchor
    # up to rounding ties; later levels follow from it (greedy), so only their agreement is kept.
    ref_codes = anchor_bf16_gemm(x, codebooks)
    assert_assignments_exact_up_to_ties(x, codebooks[0], codes[:, 0], ref_codes[:, 0])
    for name, fn in anchors.items():
        a_ms = gpu_time_ms(lambda: fn(x, codebooks), rep_ms=1)
        extra[f"anchor_{name}_ms"] = a_ms
        extra[f"speedup_vs_{name}"] = a_ms / ms
    extra["row_agreement_vs_bf16_anchor"] = (codes == ref_codes).all(1).float().mean().item()
    extra["level0_agreement_vs_bf16_anchor"] = (codes[:, 0] == ref_codes[:, 0]).float().mean().item()
    record(benchmark, **extra)
    run_timed(benchmark, lambda: (ours(), torch.cuda.synchronize()), ms)


@pytest.mark.parametrize("n,d,k", [(20000, 64, 256), (4096, 256, 1024)])
def test_rq_assign_cpu(benchmark, n, d, k):
    """CPU: the C++ kernel against the PyTorch reference (which uses the CPU BLAS GEMM)."""
    if not ok.native_available():
        pytest.skip("native extension not built")
    num_levels = 3
    x, codebooks = _data(n, d, k, num_levels, "cpu", torch.float32)
    flops = 2.0 * n * k * d * num_levels
    cpp_ms = cpu_time_ms(lambda: ok.rq_assign(x, codebooks, backend="cpp"), repeats=3)
    ref_ms = cpu_time_ms(lambda: ok.rq_assign(x, codebooks, backend="torch"), repeats=3)
    extra = {"N": n, "D": d, "K": k, "L": num_levels, "threads": torch.get_num_threads(),
             "cpp_ms": cpp_ms, "reference_ms": ref_ms, "cpp_gflops": flops / cpp_ms / 1e6,
             "speedup_vs_reference": ref_ms / cpp_ms}
    record(benchmark, **extra)
    run_timed(benchmark, lambda: ok.rq_assign(x, codebooks, backend="cpp"), cpp_ms)


def _rq_peer_specs():
    if cpu_peers.full():
        return [dict(op="rq", n=8192, d=512, k=8192, levels=3, repeats=5, reference=False),
                dict(op="rq", n=100_000, d=64, k=1024, levels=3, repeats=5)]
    return [dict(op="rq", n=2048, d=64, k=256, levels=3, repeats=3)]


@pytest.mark.parametrize("spec", _rq_peer_specs(), ids=lambda s: f"D{s['d']}-{s['levels']}x{s['k']}")
def test_rq_assign_cpu_vs_peers(benchmark, spec):
    """CPU: the C++ rq_assign against faiss IndexFlatL2 per level, numpy BLAS + argmin and our
    PyTorch reference, at 1 and 2 threads, each peer with OpenBLAS's own kernel choice and with
    its SkylakeX (AVX-512) kernels, the faster counting (see cpu_peers.py)."""
    if not ok.native_available():
        pytest.skip("native extension not built")
    result = cpu_peers.compare(spec)
    cpu_peers.record_comparison(record, benchmark, spec, result)
    # pytest-benchmark's own row times one real call of ours (the compared figures ran in the
    # peers' child processes and are in the summary table)
    x, codebooks = _data(spec["n"], spec["d"], spec["k"], spec["levels"], "cpu", torch.float32)
    run_timed(benchmark, lambda: ok.rq_assign(x, codebooks, backend="cpp"),
              result["summary"][1]["numpy_blas"]["ours_ms"])

"""Shared benchmark plumbing: device timing, the measured peak, and how results are recorded.

- GPU times come from CUDA events via `triton.testing.do_bench` (median, L2 flushed between
  runs); small launches can be timed under a CUDA graph (`graph=True`). Never wall clock.
- CPU times: median of repeated perf_counter runs (CPU benchmarks are small and exist to compare
  our C++ paths with the references in the same run, not to report absolute speed).
- Every benchmark records in `benchmark.extra_info`: time, TFLOP/s and/or GB/s, percent of the
  peak measured *in the same run*, and the ratio to each anchor measured in the same run.
- `--quick` (or ONEREC_BENCH_QUICK=1) shrinks shapes and repetitions (device_check.sh uses it).
"""
from __future__ import annotations

import functools
import os
import statistics
import time
from typing import Callable

import pytest
import torch

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                   reason="GPU benchmark: no CUDA device on this machine")


def quick() -> bool:
    return os.environ.get("ONEREC_BENCH_QUICK", "0") == "1"


def gpu_time_ms(fn: Callable[[], object], *, graph: bool = False, rep_ms: int | None = None) -> float:
    """Median device time of fn() in ms (CUDA events, L2 flushed)."""
    import triton.testing

    rep = rep_ms if rep_ms is not None else (30 if quick() else 100)
    if graph:
        return float(triton.testing.do_bench_cudagraph(fn, rep=rep, return_mode="median"))
    return float(triton.testing.do_bench(fn, warmup=max(rep // 4, 5), rep=rep, return_mode="median"))


def cpu_time_ms(fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of fn() in ms on the CPU."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


@functools.lru_cache(maxsize=None)
def measured_bf16_peak_tflops() -> float:
    """bf16 dense GEMM rate measured now on this GPU at 8192^3, also in quick mode: a 4096^3
    GEMM reads low and would inflate every "% of peak"."""
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = gpu_time_ms(lambda: a @ b)
    return 2.0 * n ** 3 / (ms * 1e-3) / 1e12


def assert_assignments_exact_up_to_ties(x, c, ours, ref):
    """Every assignment equals the reference's, except where the two chosen centroids are tied
    within the input precision's rounding (checked in float64 on the rounded inputs): a kernel
    that accumulates in another order may break such a tie the other way, nothing else."""
    diff = (ours != ref).nonzero().flatten()
    if diff.numel() == 0:
        return
    xd, cd = x[diff].double(), c.double()
    d_ours = (xd - cd[ours[diff]]).square().sum(1)
    d_ref = (xd - cd[ref[diff]]).square().sum(1)
    # the anchors round their GEMM output to the input dtype (bf16: 2^-8 relative)
    eps = torch.finfo(x.dtype).eps if x.dtype != torch.float32 else 1e-5
    scale = xd.square().sum(1) + cd[ref[diff]].square().sum(1)
    gap = (d_ours - d_ref).abs() / scale
    assert (gap <= eps).all(), f"non-tie disagreement: relative gap {gap.max().item():.3g}"


def tflops(flops: float, ms: float) -> float:
    return flops / (ms * 1e-3) / 1e12


def record(benchmark, **extra) -> None:
    """Put the numbers in pytest-benchmark's extra_info (floats rounded for the JSON) and, when
    ONEREC_BENCH_OUT is set, one row for the device script's table (see emit)."""
    for key, value in extra.items():
        benchmark.extra_info[key] = round(value, 4) if isinstance(value, float) else value
    emit(getattr(benchmark, "name", "benchmark"), **extra)


def run_timed(benchmark, fn: Callable[[], object], ms: float) -> None:
    """Let pytest-benchmark own a (short) run of fn for its table, while the reported device time
    is `ms`, measured with CUDA events / the CPU timer above."""
    benchmark.pedantic(fn, rounds=1, iterations=1, warmup_rounds=0)
    benchmark.extra_info["time_ms"] = round(ms, 4)


def emit(name: str, **fields) -> None:
    """Append one result row (JSON lines) to $ONEREC_BENCH_OUT/results.jsonl when set; the
    device script turns these rows into its closing table."""
    import json

    out = os.environ.get("ONEREC_BENCH_OUT")
    if not out:
        return
    os.makedirs(out, exist_ok=True)
    row = {"name": name, **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in fields.items()}}
    with open(os.path.join(out, "results.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")

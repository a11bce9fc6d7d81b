"""Shared benchmark plumbing: device timing, the measured peak, and how results are recorded.

- GPU times come from CUDA events via `triton.testing.do_bench` (median, L2 flushed between
  runs); small launches can be timed under a CUDA graph (`graph=True`). Never wall clock.
- CPU times: median of many perf_counter runs (at least 5 and 1 s of runs) with the
  interquartile spread (CPU benchmarks are small and exist to compare our C++ paths with the
  references in the same run, not to report absolute speed); `cpu_times_ms` times ours and the
  anchors interleaved, which keeps their ratio steady on a loaded machine.
- Every benchmark records in `benchmark.extra_info`: time, TFLOP/s and/or GB/s, percent of the
  peak measured *in the same run*, and the ratio to each anchor measured in the same run.
- `--quick` (or ONEREC_BENCH_QUICK=1) shrinks shapes and repetitions (device_check.sh uses it).
- `pytest benchmarks/` ends with our own summary table of the recorded rows (benchmarks/summary.py,
  printed by the terminal-summary hook in benchmarks/conftest.py).
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


class Timing(float):
    """A median time in ms (usable as a float) that also carries its spread: `spread_pct`, the
    interquartile range as a percent of the median, and `samples`. `record` stores the spread
    beside the time (key + "_spread_pct") for the summary table."""

    def __new__(cls, median: float, q1: float, q3: float, samples: int):
        t = super().__new__(cls, median)
        t.spread_pct = 100.0 * (q3 - q1) / median if median > 0 else 0.0
        t.samples = samples
        return t


def gpu_time_ms(fn: Callable[[], object], *, graph: bool = False,
                rep_ms: int | None = None) -> Timing:
    """Median device time of fn() in ms (CUDA events, L2 flushed), with its quartiles."""
    import triton.testing

    rep = rep_ms if rep_ms is not None else (30 if quick() else 100)
    bench = (functools.partial(triton.testing.do_bench_cudagraph, fn, rep=rep) if graph else
             functools.partial(triton.testing.do_bench, fn, warmup=max(rep // 4, 5), rep=rep))
    try:
        q1, med, q3 = (float(v) for v in bench(quantiles=[0.25, 0.5, 0.75]))
    except TypeError:  # a triton without `quantiles`: the median alone, spread unknown (0)
        q1 = med = q3 = float(bench(return_mode="median"))
    return Timing(med, q1, q3, samples=0)  # do_bench does not say how many runs it made


def cpu_time_ms(fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1,
                min_time_s: float | None = None, max_repeats: int = 200) -> Timing:
    """Median wall time of fn() in ms on the CPU, with its quartiles (cpu_times_ms of one)."""
    return cpu_times_ms({"fn": fn}, repeats=repeats, warmup=warmup, min_time_s=min_time_s,
                        max_repeats=max_repeats)["fn"]


def cpu_times_ms(fns: dict[str, Callable[[], object]], *, repeats: int = 5, warmup: int = 1,
                 min_time_s: float | None = None, max_repeats: int = 200) -> dict[str, Timing]:
    """Median wall time in ms of each fn, measured interleaved, with quartiles.

    A loaded machine makes single runs swing widely, so this samples at least
    max(repeats, MIN_CPU_SAMPLES) rounds and keeps going until min_time_s of timed runs
    (default 1 s, 0.3 s with --quick) or max_repeats rounds. Each round runs every fn once, in
    a rotating order, so a change of load hits ours and the anchors alike and their ratio stays
    put (timing ours, then the anchor, puts any drift straight into the ratio).
    """
    min_time_s = (0.3 if quick() else 1.0) if min_time_s is None else min_time_s
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    total, rounds = 0.0, 0
    while rounds < max(repeats, MIN_CPU_SAMPLES) or (total < min_time_s * 1e3
                                                     and rounds < max_repeats):
        for name in names[rounds % len(names):] + names[:rounds % len(names)]:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append((time.perf_counter() - t0) * 1e3)
            total += times[name][-1]
        rounds += 1
    out = {}
    for name, ts in times.items():
        q1, med, q3 = statistics.quantiles(ts, n=4, method="inclusive")
        out[name] = Timing(med, q1, q3, samples=len(ts))
    return out


MIN_CPU_SAMPLES = 5


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


# Rows recorded in this process, for the terminal summary (benchmarks/conftest.py).
ROWS: list[dict] = []


def record(benchmark, **extra) -> None:
    """Put the numbers in pytest-benchmark's extra_info (floats rounded for the JSON), with the
    spread of every Timing as key + "_spread_pct"; keep the row for the closing summary and,
    when ONEREC_BENCH_OUT is set, write it to this run's results file (see emit)."""
    fields = {}
    for key, value in extra.items():
        fields[key] = value
        if isinstance(value, Timing):
            fields[f"{key}_spread_pct"] = value.spread_pct
            if value.samples:
                fields[f"{key}_samples"] = value.samples
    for key, value in fields.items():
        benchmark.extra_info[key] = round(value, 4) if isinstance(value, float) else value
    name = getattr(benchmark, "name", "benchmark")
    ROWS.append({"name": name, **{k: (float(v) if isinstance(v, Timing) else v)
                                  for k, v in fields.items()}})
    emit(name, **fields)


def run_timed(benchmark, fn: Callable[[], object], ms: float) -> None:
    """Let pytest-benchmark own a (short) run of fn for its table, while the reported device time
    is `ms`, measured with CUDA events / the CPU timer above."""
    benchmark.pedantic(fn, rounds=1, iterations=1, warmup_rounds=0)
    benchmark.extra_info["time_ms"] = round(ms, 4)


_RUN_FILE: list[str] = []


def results_file(out: str) -> str:
    """This run's own results file in folder `out`: results-<UTC time>-<pid>.jsonl (one file per
    pytest run, so nothing accumulates across runs; scripts/results_table.py reads a folder's
    newest)."""
    if not _RUN_FILE:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        _RUN_FILE.append(f"results-{stamp}-{os.getpid()}.jsonl")
    return os.path.join(out, _RUN_FILE[0])


def emit(name: str, **fields) -> None:
    """Append one result row (JSON lines) to this run's file in $ONEREC_BENCH_OUT when set; the
    device script turns these rows into its closing table."""
    import json

    out = os.environ.get("ONEREC_BENCH_OUT")
    if not out:
        return
    os.makedirs(out, exist_ok=True)
    row = {"name": name, **{k: (round(float(v), 4) if isinstance(v, float) else v)
                            for k, v in fields.items()}}
    with open(results_file(out), "a") as f:
        f.write(json.dumps(row) + "\n")

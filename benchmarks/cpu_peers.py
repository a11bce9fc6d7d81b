"""Our C++ CPU kernels against what a CPU user would pick, run in a clean child process.

Peers (each does the same greedy walk / Lloyd step, fp32):
  - `faiss_flat`: faiss `IndexFlatL2.search(k=1)` per level (OpenBLAS SGEMM + fused argmin);
  - `faiss_kmeans`: faiss `Kmeans(niter=1)` from the same initial centroids (k-means only);
  - `numpy_blas`: numpy `||c||^2 - 2 r @ c.T` + `argmin` per row chunk (OpenBLAS SGEMM);
  - `torch_ref`: our plain-PyTorch reference (the package's `backend="torch"`); left out of the
    D=512 shapes of the full run (spec "reference": False), where it is the slowest by far and
    would take most of the run.
faiss is optional (`pip install faiss-cpu`, the `bench` extra); without it those peers are
skipped and say so.

Why a child process per configuration: OpenBLAS reads OPENBLAS_CORETYPE (which kernels it uses)
and its thread count when it loads, so each (OpenBLAS setting, thread count) pair gets a fresh
interpreter. Inside one child every contender runs interleaved (round-robin, the order rotated
each round), after a first call whose results are checked against ours, so a ratio is never
taken between runs far apart in time (the dev machines are shared).

`run_child(...)` is the parent side; `python cpu_peers.py '<json spec>'` the child, which prints
one JSON object.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# OpenBLAS settings benchmarked: left to its own detection, and told to use its AVX-512
# (SkylakeX) kernels. The faster one is the peer we compare against.
OPENBLAS_SETTINGS = {"auto": None, "skylakex": "SkylakeX"}


def child_env(openblas_coretype: str | None, threads: int) -> dict:
    env = dict(os.environ)
    # Set together on some machines for old OpenBLAS builds; unset both, then set what we test.
    env.pop("OPENBLAS_CORETYPE", None)
    env.pop("OPENBLAS_L2_SIZE", None)
    if openblas_coretype:
        env["OPENBLAS_CORETYPE"] = openblas_coretype
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def run_child(spec: dict, openblas_coretype: str | None, threads: int, timeout: float = 1800) -> dict:
    """Runs one configuration in a fresh interpreter and returns its JSON result."""
    spec = dict(spec, threads=threads)
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), json.dumps(spec)],
                          env=child_env(openblas_coretype, threads), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"cpu_peers child failed ({spec}, OPENBLAS_CORETYPE="
                           f"{openblas_coretype}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(spec: dict, thread_counts=(1, 2)) -> dict:
    """Every (OpenBLAS setting, thread count) child; per thread count and peer, the faster
    OpenBLAS setting, and our time from that same child (interleaved with it). Outside
    full() only OpenBLAS's own choice runs (each child costs seconds of start-up in CI)."""
    out = {"children": {}, "summary": {}}
    settings = OPENBLAS_SETTINGS if full() else {"auto": OPENBLAS_SETTINGS["auto"]}
    for threads in thread_counts:
        per_setting = {name: run_child(spec, core, threads) for name, core in settings.items()}
        out["children"][threads] = per_setting
        summary = {}
        peers = {p for r in per_setting.values() for p in r["median_ms"] if p != "ours"}
        for peer in sorted(peers):
            best = min((r for r in per_setting.values() if peer in r["median_ms"]),
                       key=lambda r: r["median_ms"][peer])
            setting = next(n for n, r in per_setting.items() if r is best)
            summary[peer] = {"openblas": setting, "peer_ms": best["median_ms"][peer],
                             "cpu_ratio": best["cpu_median_ms"][peer] / best["cpu_median_ms"]["ours"],
                             "ours_ms": best["median_ms"]["ours"],
                             "ratio": best["median_ms"][peer] / best["median_ms"]["ours"],
                             "peer_gflops": best["gflops"][peer],
                             "ours_gflops": best["gflops"]["ours"]}
        out["summary"][threads] = summary
    return out


# ---- child side ------------------------------------------------------------------------------
def _rq_data(n, d, k, levels, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d), dtype=np.float32)
    scales = (0.5 ** np.arange(levels, dtype=np.float32))[:, None, None]
    cb = (rng.standard_normal((levels, k, d), dtype=np.float32) * scales).astype(np.float32)
    return x, cb


def _kmeans_data(n, d, k, seed=0):
    """Clustered points and centroids drawn from them (as bench_kmeans.py)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d), dtype=np.float32)
    x = centres[rng.integers(0, k, n)] + 0.5 * rng.standard_normal((n, d), dtype=np.float32)
    c = x[rng.permutation(n)[:k]].copy()
    return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(c, dtype=np.float32)


def _numpy_nearest(r, c, c_norm, chunk=2048):
    import numpy as np

    return np.concatenate([(c_norm - 2.0 * (r[s:s + chunk] @ c.T)).argmin(1)
                           for s in range(0, r.shape[0], chunk)])


def _sorted_update(x, a, k):
    """Per-centroid sums and counts from assignments, via one sort (numpy has no fast
    scatter-add)."""
    import numpy as np

    counts = np.bincount(a, minlength=k)
    order = np.argsort(a, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    nonempty = counts > 0
    sums = np.zeros((k, x.shape[1]), dtype=np.float32)
    sums[nonempty] = np.add.reduceat(x[order], starts[nonempty], axis=0)
    return sums, counts


def _near_tie_ok(r, c, got, want, rel=1e-5):
    """Rows where two contenders chose different codes must be genuine near-ties in double."""
    import numpy as np

    rows = np.nonzero(got != want)[0]
    if rows.size == 0:
        return 0
    rr = r[rows].astype(np.float64)
    d_got = ((rr - c[got[rows]].astype(np.float64)) ** 2).sum(1)
    d_want = ((rr - c[want[rows]].astype(np.float64)) ** 2).sum(1)
    scale = (rr ** 2).sum(1) + d_want
    bad = np.abs(d_got - d_want) > rel * scale
    if bad.any():
        raise AssertionError(f"{int(bad.sum())} rows differ by more than rounding "
                             f"(first: row {int(rows[bad][0])})")
    return int(rows.size)


def _check_rq(x, cb, codes, ref):
    """Same greedy codes as ours, level by level, up to near-ties (a tie then lets the two walks
    part, so a row is compared only up to its first differing level)."""
    import numpy as np

    ties = 0
    alive = np.ones(x.shape[0], dtype=bool)
    r = x.astype(np.float32).copy()
    for lvl in range(cb.shape[0]):
        sel = np.nonzero(alive)[0]
        ties += _near_tie_ok(r[sel], cb[lvl], codes[sel, lvl], ref[sel, lvl])
        alive[sel[codes[sel, lvl] != ref[sel, lvl]]] = False
        r -= cb[lvl][ref[:, lvl]]
    return ties


def _rq_contenders(x, cb, have_faiss, with_reference):
    import numpy as np
    import torch

    import onerec_kernels as ok

    levels = cb.shape[0]
    xt, cbt = torch.from_numpy(x), torch.from_numpy(cb)
    norms = [(cb[lvl] ** 2).sum(1) for lvl in range(levels)]

    def ours():
        return ok.rq_assign(xt, cbt, backend="cpp").numpy()

    def torch_ref():
        return ok.rq_assign(xt, cbt, backend="torch").numpy()

    def numpy_blas():
        r = x.copy()
        codes = np.empty((x.shape[0], levels), dtype=np.int64)
        for lvl in range(levels):
            codes[:, lvl] = _numpy_nearest(r, cb[lvl], norms[lvl])
            r -= cb[lvl][codes[:, lvl]]
        return codes

    contenders = {"ours": ours, "numpy_blas": numpy_blas, "torch_ref": torch_ref}
    if not with_reference:
        del contenders["torch_ref"]
    if have_faiss:
        import faiss

        indexes = []
        for lvl in range(levels):  # built once, outside the timing (in the peer's favour)
            index = faiss.IndexFlatL2(cb.shape[2])
            index.add(cb[lvl])
            indexes.append(index)

        def faiss_flat():
            r = x.copy()
            codes = np.empty((x.shape[0], levels), dtype=np.int64)
            for lvl in range(levels):
                codes[:, lvl] = indexes[lvl].search(r, 1)[1][:, 0]
                r -= cb[lvl][codes[:, lvl]]
            return codes

        contenders["faiss_flat"] = faiss_flat
    return contenders


def _kmeans_contenders(x, c, have_faiss, with_reference):
    import numpy as np
    import torch

    import onerec_kernels as ok

    k, d = c.shape
    xt, ct = torch.from_numpy(x), torch.from_numpy(c)
    c_norm = (c ** 2).sum(1)

    def ours():
        a, sums, counts, _ = ok.kmeans_step(xt, ct, backend="cpp")
        return a.numpy(), sums.numpy(), counts.numpy()

    def torch_ref():
        a, sums, counts, _ = ok.kmeans_step(xt, ct, backend="torch")
        return a.numpy(), sums.numpy(), counts.numpy()

    def numpy_blas():
        a = _numpy_nearest(x, c, c_norm)
        return (a, *_sorted_update(x, a, k))

    contenders = {"ours": ours, "numpy_blas": numpy_blas, "torch_ref": torch_ref}
    if not with_reference:
        del contenders["torch_ref"]
    if have_faiss:
        import faiss

        def faiss_search_update():
            index = faiss.IndexFlatL2(d)
            index.add(c)
            a = index.search(x, 1)[1][:, 0]
            return (a, *_sorted_update(x, a, k))

        def faiss_kmeans():
            # One Lloyd iteration from our centroids: assignment + centroid update (faiss
            # returns new centroids, not sums; same work plus a division).
            km = faiss.Kmeans(d, k, niter=1, verbose=False, seed=0, max_points_per_centroid=1 << 30)
            km.train(x, init_centroids=c)
            return km.centroids

        contenders["faiss_search_update"] = faiss_search_update
        contenders["faiss_kmeans"] = faiss_kmeans
    return contenders


def _check_kmeans(x, c, name, got, ref):
    import numpy as np

    a_ref, sums_ref, counts_ref = ref
    if name == "faiss_kmeans":
        # New centroids: sums / counts wherever ours is non-empty, except that faiss refills
        # each empty cluster by splitting a large one (moving that one too), so at most one
        # non-empty centroid per empty cluster may differ.
        nonempty = counts_ref > 0
        want = sums_ref[nonempty] / counts_ref[nonempty, None]
        off = (np.abs(got[nonempty] - want) > 1e-4 * (1 + np.abs(want))).any(1)
        if off.sum() > (~nonempty).sum():
            raise AssertionError(f"faiss_kmeans: {int(off.sum())} centroids differ from ours "
                                 f"({int((~nonempty).sum())} empty clusters)")
        return 0
    a, sums, counts = got
    ties = _near_tie_ok(x, c, a.astype(np.int64), a_ref.astype(np.int64))
    if ties == 0:
        if not np.array_equal(counts, counts_ref):
            raise AssertionError(f"{name}: counts differ")
        if not np.allclose(sums, sums_ref, rtol=1e-4, atol=1e-3):
            raise AssertionError(f"{name}: sums differ")
    return ties


def child_main(spec: dict) -> dict:
    import numpy as np
    import torch

    threads = int(spec["threads"])
    torch.set_num_threads(threads)
    try:
        import faiss

        faiss.omp_set_num_threads(threads)
        have_faiss = True
    except ImportError:
        have_faiss = False

    if spec["op"] == "rq":
        n, d, k, levels = spec["n"], spec["d"], spec["k"], spec["levels"]
        x, cb = _rq_data(n, d, k, levels)
        flops = 2.0 * n * d * k * levels
        contenders = _rq_contenders(x, cb, have_faiss, spec.get("reference", True))
        ref = contenders["ours"]()
        check = lambda name, got: _check_rq(x, cb, got, ref)  # noqa: E731
    else:
        n, d, k = spec["n"], spec["d"], spec["k"]
        x, c = _kmeans_data(n, d, k)
        flops = 2.0 * n * d * k
        contenders = _kmeans_contenders(x, c, have_faiss, spec.get("reference", True))
        ref = contenders["ours"]()
        check = lambda name, got: _check_kmeans(x, c, name, got, ref)  # noqa: E731

    near_ties = {}
    for name, fn in contenders.items():  # first call: warm-up and the agreement check
        if name != "ours":
            near_ties[name] = check(name, fn())

    names = list(contenders)
    times = {name: [] for name in names}
    cpu_times = {name: [] for name in names}
    for rep in range(int(spec["repeats"])):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            c0, t0 = time.process_time(), time.perf_counter()
            contenders[name]()
            times[name].append((time.perf_counter() - t0) * 1e3)
            cpu_times[name].append((time.process_time() - c0) * 1e3)

    median = {name: statistics.median(ts) for name, ts in times.items()}
    # Process CPU time: on a shared machine a 1-thread run's CPU time barely moves when other
    # jobs take the core away (its wall time does); at 2 threads it adds both threads' time.
    cpu_median = {name: statistics.median(ts) for name, ts in cpu_times.items()}
    blas = {}
    try:
        from threadpoolctl import threadpool_info

        blas = [{k: v for k, v in info.items() if k in ("internal_api", "version", "architecture",
                                                          "num_threads", "filepath")}
                for info in threadpool_info()]
    except ImportError:
        blas = "threadpoolctl not installed"
    import onerec_kernels as ok

    return {"spec": spec, "threads": threads, "flops": flops, "have_faiss": have_faiss,
            "cpu_isa": torch.ops.onerec_C.cpu_isa("")[0] if ok.native_available() else None,
            "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
            "times_ms": times, "median_ms": median,
            "spread_ms": {name: [min(ts), max(ts)] for name, ts in times.items()},
            "cpu_median_ms": cpu_median,
            "gflops": {name: flops / m / 1e6 for name, m in median.items()},
            "near_tie_rows": near_ties, "blas": blas,
            "numpy": np.__version__, "torch": torch.__version__,
            "faiss": __import__("faiss").__version__ if have_faiss else None}


if __name__ == "__main__":
    print(json.dumps(child_main(json.loads(sys.argv[1]))))


def full() -> bool:
    """ONEREC_BENCH_CPU_FULL=1: the issue's shapes (minutes on 2 shared cores); otherwise small
    shapes that keep `pytest benchmarks` quick in CI."""
    return os.environ.get("ONEREC_BENCH_CPU_FULL", "0") == "1"


def record_comparison(record, benchmark, spec: dict, result: dict) -> None:
    """One extra_info row: per thread count and peer, the faster OpenBLAS setting's median and
    our median from the same child, their ratio (peer time / our time: > 1 means we are
    faster), GFLOP/s, and the slowest-peer-setting too so both are on record."""
    extra = {k: v for k, v in spec.items() if k != "repeats"}
    extra["repeats"] = spec["repeats"]
    for threads, summary in result["summary"].items():
        for peer, s in summary.items():
            tag = f"{peer}_t{threads}"
            extra[f"{tag}_ratio"] = s["ratio"]
            extra[f"{tag}_cpu_time_ratio"] = s["cpu_ratio"]
            extra[f"{tag}_openblas"] = s["openblas"]
            extra[f"{tag}_gflops"] = s["peer_gflops"]
            extra[f"ours_vs_{tag}_gflops"] = s["ours_gflops"]
        for setting, child in result["children"][threads].items():
            for name, (lo, hi) in child["spread_ms"].items():
                extra[f"{name}_t{threads}_{setting}_ms"] = child["median_ms"][name]
                extra[f"{name}_t{threads}_{setting}_spread_ms"] = f"{lo:.1f}-{hi:.1f}"
        any_child = next(iter(result["children"][threads].values()))
        extra["cpu_isa"] = any_child["cpu_isa"]
        extra["faiss"] = any_child["faiss"] or "not installed (pip install faiss-cpu)"
    record(benchmark, **extra)

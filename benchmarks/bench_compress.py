"""Lifelong-history compression (`compress_history`, the hierarchical k-means in front of the
QFormer): one training batch's worth, ours against two anchors in the same run.

Shapes: a batch of ML-100K-like contexts for the `tiny` preset (lifelong_len = 64, D = 64):
B = 64 users, history lengths drawn log-normally with mean ~106 and clipped to ML-100K's
[20, 737] ratings per user, items of a 1682-item catalogue whose embeddings lie around 32
topics (so items repeat and clusters exist); on CPU and on the GPU. GPU also: the production
target lifelong_len = 2000 with 64 users of 500..8000 items (mean ~3000), D = 256 (--quick: 16
users), against the PyTorch grouped k-means only (the grid anchor's dense k-means is out of
reach there: ~1e10 item x centroid pairs per Lloyd step in the late rounds).

Work per call on the ML-100K shape (counted on training batches, iters = 8): the split rounds
need ~6e5 (item, centroid) distance evaluations of D = 64 (sum over rounds of cluster size x k x
steps; ~3.6e5 after the per-cluster early stop); the previous implementation compared every
item with every centroid of every cluster of the round (one dense kmeans_step over grid-
separated clusters, D + 8 = 72), ~1.2e8 evaluations, 200x the floor.

Reported (`speedup_vs_*` = anchor time / ours):
  - ours: compress_history with the default backend (C++ grouped_kmeans on CPU, the Triton
    kernel on CUDA);
  - anchor "torch": the same algorithm with the plain PyTorch grouped_kmeans reference;
  - anchor "grid": the previous per-round k-means, every cluster in one dense `kmeans_step`
    call per Lloyd step after moving each cluster to its own point of an 8-dim grid (patched
    in for grouped_kmeans; the round bookkeeping is today's, so this ratio is the k-means part's
    gain, a lower bound on the whole change's).
CPU times: wall clock, interleaved (common.cpu_times_ms). GPU: CUDA events around whole calls
(they include the host syncs of the split rounds).

The grouped k-means alone (GPU): every round's grouped_kmeans call of the production batch,
captured from compress_history, timed with the Triton kernel and with the PyTorch reference
in the same run (sums over the rounds). Work, counted on the captured calls: pairs =
sum over groups of n_g x k_g per step; 3 x pairs x D FLOPs per step (difference, square, add).
The per-group early stop makes the steps actually run fewer than `iters`, so
`tflops_if_all_steps` (3 x pairs x D x iters / time) and `gbps_if_all_steps` (x read twice per
step) are upper bounds of the rates achieved.
"""
from __future__ import annotations

import math
from unittest import mock

import pytest
import torch

from common import cpu_times_ms, gpu_time_ms, quick, record, requires_cuda, run_timed, tflops
from onerec.model import compress as compress_mod
from onerec.model.compress import compress_history
from onerec_kernels import grouped_kmeans, kmeans_step, native_available

GRID_DIMS = 8


def history_batch(num_users, mean_len, min_len, max_len, dim, num_items=1682, topics=32,
                  device="cpu", seed=0):
    """(T, D) item embeddings and (B + 1,) cu_seqlens of a batch of lifelong histories."""
    g = torch.Generator().manual_seed(seed)
    sigma = 0.9  # log-normal: mean = exp(mu + sigma^2 / 2)
    mu = math.log(mean_len) - sigma ** 2 / 2
    lengths = torch.exp(mu + sigma * torch.randn(num_users, generator=g)).round().long()
    lengths = lengths.clamp(min_len, max_len)
    table = (3 * torch.randn(topics, dim, generator=g))[torch.randint(0, topics, (num_items,),
                                                                      generator=g)]
    table += torch.randn(num_items, dim, generator=g)
    ids = torch.randint(0, num_items, (int(lengths.sum()),), generator=g)
    cu = torch.zeros(num_users + 1, dtype=torch.int32)
    cu[1:] = lengths.cumsum(0)
    return table[ids].to(device), cu.to(device)


def grid_grouped_kmeans(x, centroids, x_offsets, centroid_offsets, *, iters, backend):
    """Anchor: grouped k-means the previous way. kmeans_step compares every row with every
    centroid, so each group is centred on its mean and moved to its own grid point in 8 extra
    dimensions, 4x the largest group radius apart: rows then stay with their own group's
    centroids, and one dense call per Lloyd step serves all groups."""
    dev = x.device
    rows = x_offsets[1:] - x_offsets[:-1]
    ks = centroid_offsets[1:] - centroid_offsets[:-1]
    num_groups = rows.shape[0]
    group = torch.repeat_interleave(torch.arange(num_groups, device=dev), rows)
    c_group = torch.repeat_interleave(torch.arange(num_groups, device=dev), ks)
    mean = torch.zeros(num_groups, x.shape[1], device=dev).index_add_(0, group, x)
    mean /= rows.clamp_min(1)[:, None]
    xc = x - mean[group]
    radius = float(xc.norm(dim=1).max()) if xc.numel() else 0.0
    base = max(2, math.ceil(num_groups ** (1.0 / GRID_DIMS)) + 1)
    gi = torch.arange(num_groups, device=dev)
    digits = torch.stack([(gi // base ** j) % base for j in range(GRID_DIMS)], dim=1)
    grid = (digits.float() - (base - 1) / 2) * (4.0 * radius + 1e-6)
    x_aug = torch.cat([xc, grid[group]], dim=1)
    c = centroids - mean[c_group]
    for _ in range(iters):
        assign, sums, cnt, _ = kmeans_step(x_aug, torch.cat([c, grid[c_group]], dim=1))
        c = torch.where((cnt > 0)[:, None], sums[:, :c.shape[1]] / cnt.clamp_min(1)[:, None], c)
    return assign, c + mean[c_group]


def _calls(emb, cu, target_len, anchors):
    """compress_history with the default backend ("ours") and the named anchors."""
    calls = {"ours": lambda: compress_history(emb, cu, target_len=target_len)}
    if "torch" in anchors:
        calls["torch"] = lambda: compress_history(emb, cu, target_len=target_len, backend="torch")
    if "grid" in anchors:
        def grid():
            with mock.patch.object(compress_mod, "grouped_kmeans", grid_grouped_kmeans):
                return compress_history(emb, cu, target_len=target_len)
        calls["grid"] = grid
    return calls


def _check_and_record(benchmark, emb, cu, target_len, times, extra):
    out = compress_history(emb, cu, target_len=target_len)
    kept = out.cu_seqlens[1:] - out.cu_seqlens[:-1]
    lengths = (cu[1:] - cu[:-1]).long()
    assert bool((kept <= target_len).all()) and int(out.cluster_size.sum()) == emb.shape[0]
    long_users = lengths > target_len
    extra.update({"users": int(lengths.shape[0]), "items": emb.shape[0], "D": emb.shape[1],
                  "target_len": target_len, "long_users": int(long_users.sum()),
                  "mean_kept_of_long": float(kept[long_users].float().mean()),
                  "time_ms": times["ours"], "items_per_s": emb.shape[0] / times["ours"] * 1e3})
    for name, ms in times.items():
        if name != "ours":
            extra[f"anchor_{name}_ms"] = ms
            extra[f"speedup_vs_{name}"] = ms / times["ours"]
    record(benchmark, **extra)


def test_compress_history_cpu(benchmark):
    """ML-100K-like batch for the tiny preset, on CPU (C++ grouped_kmeans)."""
    if not native_available():
        pytest.skip("native extension not built")
    emb, cu = history_batch(64, 106, 20, 737, 64)
    calls = _calls(emb, cu, 64, ("torch", "grid"))
    times = cpu_times_ms(calls, repeats=3 if quick() else 5)
    _check_and_record(benchmark, emb, cu, 64, times, {"threads": torch.get_num_threads()})
    run_timed(benchmark, calls["ours"], times["ours"])


def _gpu_run(benchmark, emb, cu, target_len, anchors):
    calls = _calls(emb, cu, target_len, anchors)
    for fn in calls.values():
        fn()  # Triton compile / autotune outside the timing
    times = {name: gpu_time_ms(fn, rep_ms=200) for name, fn in calls.items()}
    _check_and_record(benchmark, emb, cu, target_len, times, {})
    run_timed(benchmark, lambda: (calls["ours"](), torch.cuda.synchronize()), times["ours"])


@requires_cuda
def test_compress_history_ml100k_gpu(benchmark):
    """The ML-100K training batch on the GPU: the Triton grouped k-means against the PyTorch
    one and the grid-trick Triton kmeans_step."""
    emb, cu = history_batch(64, 106, 20, 737, 64, device="cuda")
    _gpu_run(benchmark, emb, cu, 64, ("torch", "grid"))


def production_batch():
    """The production target: 64 users (--quick: 16) of 500..8000 items (mean ~3000), D = 256,
    compressed to 2000 items."""
    return history_batch(16 if quick() else 64, 3000, 500, 8000, 256, num_items=200_000,
                         topics=512, device="cuda")


@requires_cuda
def test_compress_history_production_gpu(benchmark):
    """Production target: long histories compressed to 2000 items, the Triton grouped k-means
    against the PyTorch one."""
    emb, cu = production_batch()
    _gpu_run(benchmark, emb, cu, 2000, ("torch",))


def captured_rounds(emb, cu, target_len):
    """The (x, centroids, x_offsets, centroid_offsets, iters) of every grouped_kmeans call of
    one compress_history run, in round order."""
    calls = []
    real = compress_mod.grouped_kmeans

    def spy(x, c, x_off, c_off, *, iters, backend):
        calls.append((x.clone(), c.clone(), x_off.clone(), c_off.clone(), iters))
        return real(x, c, x_off, c_off, iters=iters, backend=backend)

    with mock.patch.object(compress_mod, "grouped_kmeans", spy):
        compress_history(emb, cu, target_len=target_len)
    return calls


@requires_cuda
def test_grouped_kmeans_rounds_gpu(benchmark):
    """The grouped k-means of the production batch's split rounds alone: Triton against the
    PyTorch reference on the same captured calls, same run. Each round's result is checked
    against the reference's before timing (assignments equal up to the rare last-bit cases
    grouped_kmeans documents)."""
    rounds = captured_rounds(*production_batch(), 2000)
    times = {"ours": 0.0, "torch": 0.0}
    pairs_steps = bytes_steps = 0.0
    max_groups = 0
    for x, c, xo, co, iters in rounds:
        ours = grouped_kmeans(x, c, xo, co, iters=iters, backend="triton")  # compile, autotune
        ref = grouped_kmeans(x, c, xo, co, iters=iters, backend="torch")
        agree = (ours[0] == ref[0]).float().mean().item()
        assert agree >= 0.999, agree
        for name, backend in (("ours", "triton"), ("torch", "torch")):
            times[name] += gpu_time_ms(lambda: grouped_kmeans(x, c, xo, co, iters=iters,
                                                               backend=backend), rep_ms=100)
        n_g, k_g = (xo[1:] - xo[:-1]).double(), (co[1:] - co[:-1]).double()
        pairs_steps += float((n_g * k_g).sum()) * x.shape[1] * iters
        bytes_steps += 2.0 * x.numel() * x.element_size() * iters
        max_groups = max(max_groups, xo.shape[0] - 1)
    flops = 3.0 * pairs_steps
    record(benchmark, rounds=len(rounds), max_groups=max_groups, D=rounds[0][0].shape[1],
           time_ms=times["ours"], anchor_torch_ms=times["torch"],
           speedup_vs_torch=times["torch"] / times["ours"],
           tflops_if_all_steps=tflops(flops, times["ours"]),
           gbps_if_all_steps=bytes_steps / (times["ours"] * 1e-3) / 1e9)
    x, c, xo, co, iters = rounds[0]
    run_timed(benchmark, lambda: (grouped_kmeans(x, c, xo, co, iters=iters),
                                  torch.cuda.synchronize()), times["ours"])

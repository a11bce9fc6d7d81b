"""MoE FFN benchmarks: our fused route + grouped GEMMs against the plain-PyTorch anchors, in
the same run.

FLOPs count active experts only (torchtitan's rule): forward 2*T*k*d*(c + 1)*h, c = 1 for GELU
(the anchors' activation, ../shared/ANCHORS.md), 2 for SwiGLU; forward + backward 3x that.
Anchors (all bf16, same routing):
  expert_loop    for each expert: index its tokens, two matmuls, index_add (syncs per expert)
  grouped_mm     argsort by expert, gather, torch._grouped_mm x2 with per-expert offsets, weight,
                 index_add (the best plain-PyTorch pipeline)
  dense_pair     (T*k, d) @ (d, h) -> gelu -> @ (h, d): the same FLOPs as one dense GEMM pair, a
                 ceiling no routed layer beats
Also: routing + alignment alone (its share of the layer's time). `--quick` keeps T in
{256, 16384} at h = 4096, k = 2 (the device check's time box).
CPU: the reference (one matmul per expert after a sort) against the expert loop, small shapes.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import onerec_kernels as ok
from common import (cpu_time_ms, gpu_time_ms, measured_bf16_peak_tflops, quick, record,
                    requires_cuda, run_timed, tflops)

D, E = 1024, 24


def _layer(num_tokens, d, h, num_experts, top_k, device, dtype, activation="gelu", seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    c = 2 if activation == "swiglu" else 1
    x = torch.randn(num_tokens, d, device=device, generator=g).to(dtype)
    w1 = (torch.randn(num_experts, d, c * h, device=device, generator=g) / d ** 0.5).to(dtype)
    w2 = (torch.randn(num_experts, h, d, device=device, generator=g) / h ** 0.5).to(dtype)
    logits = torch.randn(num_tokens, num_experts, device=device, generator=g)
    return x, w1, w2, logits


def anchor_expert_loop(x, w1, w2, topk_weights, topk_ids):
    y = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for e in range(w1.shape[0]):
        token, slot = torch.where(topk_ids == e)
        if token.numel():
            o = F.gelu(x[token] @ w1[e]) @ w2[e]
            y.index_add_(0, token, o.float() * topk_weights[token, slot].unsqueeze(1))
    return y.to(x.dtype)


def anchor_grouped_mm(x, w1, w2, topk_weights, topk_ids):
    top_k = topk_ids.shape[1]
    flat = topk_ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=w1.shape[0])
    offs = torch.cumsum(counts, 0).to(torch.int32)
    token = order // top_k
    xs = x[token]
    a = F.gelu(torch._grouped_mm(xs, w1, offs=offs))
    o = torch._grouped_mm(a, w2, offs=offs)
    o = o.float() * topk_weights.reshape(-1)[order].unsqueeze(1)
    return torch.zeros(x.shape, dtype=torch.float32, device=x.device).index_add_(0, token, o).to(x.dtype)


def anchor_dense_pair(x_rows, w1_dense, w2_dense):
    return F.gelu(x_rows @ w1_dense) @ w2_dense


def _fwd_bwd(fn, inputs, grad):
    """A closure running fn forward and backward (gradients of every input that wants one)."""
    def run():
        out = fn(*inputs)
        torch.autograd.grad(out, [t for t in inputs if t.requires_grad], grad)
    return run


def _shapes():
    if quick():
        return [(256, 4096, 2), (16384, 4096, 2)]
    return [(t, h, k) for t in (256, 4096, 16384, 32768) for h in (2048, 4096) for k in (2, 4)]


@requires_cuda
@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("num_tokens,h,top_k", _shapes())
def test_fused_moe_gpu(benchmark, num_tokens, h, top_k, mode):
    x, w1, w2, logits = _layer(num_tokens, D, h, E, top_k, "cuda", torch.bfloat16)
    tw, ids = ok.moe_route(logits, top_k, backend="triton")
    flops = 2.0 * num_tokens * top_k * D * 2 * h * (3 if mode == "fwd_bwd" else 1)
    peak = measured_bf16_peak_tflops()
    train = mode == "fwd_bwd"
    for t in (x, w1, w2, tw):
        t.requires_grad_(train)
    gy = torch.randn_like(x)

    def wrap(fn, inputs):
        return _fwd_bwd(fn, inputs, gy if fn is not anchor_dense_pair else dense_grad) if train \
            else (lambda: fn(*inputs))

    rows = num_tokens * top_k
    x_rows = torch.randn(rows, D, device="cuda", dtype=torch.bfloat16, requires_grad=train)
    w1_dense = w1[0].detach().clone().requires_grad_(train)
    w2_dense = w2[0].detach().clone().requires_grad_(train)
    dense_grad = torch.randn(rows, D, device="cuda", dtype=torch.bfloat16)
    ours = wrap(lambda *t: ok.fused_moe(*t, ids, activation="gelu", backend="triton"),
                (x, w1, w2, tw))
    ours()  # compile outside the timing
    ms = gpu_time_ms(ours)
    extra = {"T": num_tokens, "d": D, "h": h, "E": E, "k": top_k, "mode": mode,
             "dtype": "bfloat16", "time_ms": ms, "tflops": tflops(flops, ms),
             "pct_of_bf16_peak": 100 * tflops(flops, ms) / peak, "bf16_peak_tflops": peak}
    anchors = {"grouped_mm": wrap(anchor_grouped_mm, (x, w1, w2, tw, ids)),
               "dense_pair": wrap(anchor_dense_pair, (x_rows, w1_dense, w2_dense))}
    if not quick() or num_tokens <= 4096:
        anchors["expert_loop"] = wrap(anchor_expert_loop, (x, w1, w2, tw, ids))
    for name, fn in anchors.items():
        try:
            fn()
        except RuntimeError as err:  # an anchor this torch build cannot run must not hide ours
            extra[f"anchor_{name}_error"] = str(err).splitlines()[0][:200]
            continue
        a_ms = gpu_time_ms(fn, rep_ms=20 if quick() else 50)
        extra[f"anchor_{name}_ms"] = a_ms
        extra[f"anchor_{name}_tflops"] = tflops(flops, a_ms)
        extra[f"speedup_vs_{name}"] = a_ms / ms
    with torch.no_grad():
        got = ok.fused_moe(x, w1, w2, tw, ids, activation="gelu", backend="triton")
        want = ok.fused_moe(x, w1, w2, tw, ids, activation="gelu", backend="torch")
    extra["max_abs_diff_vs_reference"] = (got.float() - want.float()).abs().max().item()
    record(benchmark, **extra)
    run_timed(benchmark, lambda: (ours(), torch.cuda.synchronize()), ms)


@requires_cuda
@pytest.mark.parametrize("num_tokens", [256, 16384] if quick() else [256, 4096, 16384, 32768])
def test_route_align_gpu(benchmark, num_tokens):
    """Routing + alignment alone, and its share of the forward layer time (target < 5 % at
    T >= 4096)."""
    from onerec_kernels.moe.triton_kernels import pick_tiles

    top_k, h = 2, 4096
    x, w1, w2, logits = _layer(num_tokens, D, h, E, top_k, "cuda", torch.bfloat16)
    block_m = pick_tiles(num_tokens * top_k, E, x.device)["BLOCK_M"]

    def route_align():
        tw, ids = ok.moe_route(logits, top_k, backend="triton")
        return ok.moe_align(ids, E, block_m)

    route_align()
    ms = gpu_time_ms(route_align)  # launch overhead included: that is what a step pays
    tw, ids = ok.moe_route(logits, top_k, backend="triton")
    layer = lambda: ok.fused_moe(x, w1, w2, tw, ids, activation="gelu", backend="triton")  # noqa: E731
    layer()
    layer_ms = gpu_time_ms(layer)
    record(benchmark, T=num_tokens, E=E, k=top_k, time_ms=ms, layer_fwd_ms=layer_ms,
           pct_of_layer=100 * ms / (ms + layer_ms))
    run_timed(benchmark, lambda: (route_align(), torch.cuda.synchronize()), ms)


@pytest.mark.parametrize("num_tokens,d,h,num_experts,top_k", [(1024, 128, 256, 8, 2)])
def test_fused_moe_cpu(benchmark, num_tokens, d, h, num_experts, top_k):
    """CPU: the reference (sort + one matmul per expert) against the expert loop anchor."""
    x, w1, w2, logits = _layer(num_tokens, d, h, num_experts, top_k, "cpu", torch.float32)
    tw, ids = ok.moe_route(logits, top_k, backend="torch")
    flops = 2.0 * num_tokens * top_k * d * 2 * h
    repeats = 3 if quick() else 5
    ref = lambda: ok.fused_moe(x, w1, w2, tw, ids, activation="gelu", backend="torch")  # noqa: E731
    ref_ms = cpu_time_ms(ref, repeats=repeats)
    loop_ms = cpu_time_ms(lambda: anchor_expert_loop(x, w1, w2, tw, ids), repeats=repeats)
    torch.testing.assert_close(ref(), anchor_expert_loop(x, w1, w2, tw, ids), rtol=1e-4, atol=1e-4)
    record(benchmark, T=num_tokens, d=d, h=h, E=num_experts, k=top_k,
           threads=torch.get_num_threads(), reference_ms=ref_ms, expert_loop_ms=loop_ms,
           reference_gflops=flops / ref_ms / 1e6, speedup_vs_expert_loop=loop_ms / ref_ms)
    run_timed(benchmark, ref, ref_ms)


# ------------------------------------------------------------------------------------ retune
# `python benchmarks/bench_moe.py --tune` on the target GPU: per regime (a representative
# shape each), first BLOCK_M, then each kernel's (BLOCK_N, BLOCK_K, GROUP_M, warps, stages) in
# turn (the others held at their current best), timing the forward for the forward kernels and
# the backward for the others. Prints a TILE_TABLE entry to paste into
# onerec_kernels/moe/triton_kernels.py under the GPU's name (then run the AOT spill check).
TUNE_SHAPES = {"decode": (256, 4096, 2), "mid": (4096, 4096, 2), "train": (16384, 4096, 2)}
TUNE_BLOCK_M = {"decode": (16, 32), "mid": (32, 64, 128), "train": (64, 128)}
TUNE_GEMM = [(bn, bk, gm, w, s) for bn in (64, 128) for bk in (32, 64, 128) for gm in (1, 8)
             for w in (4, 8) for s in (3, 4) if not (bn == 128 and bk == 128 and s == 4)]
TUNE_WGRAD = [(bm, bn, bk, w, s) for bm in (64, 128) for bn in (64, 128) for bk in (32, 64)
              for w in (4, 8) for s in (3, 4)]


def tune_tiles(activation: str = "gelu", d: int = D, num_experts: int = E) -> dict:
    import triton

    from onerec_kernels.moe import triton_kernels as tk

    table = {}
    for reg, (num_tokens, h, top_k) in TUNE_SHAPES.items():
        x, w1, w2, logits = _layer(num_tokens, d, h, num_experts, top_k, "cuda", torch.bfloat16,
                                   activation)
        tw, ids = ok.moe_route(logits, top_k, backend="triton")
        gy = torch.randn_like(x)
        best = dict(tk.TILE_TABLE["default"][reg])

        def timed(tiles, backward):
            al = ok.moe_align(ids, num_experts, tiles["BLOCK_M"])
            fwd = lambda: tk.fused_moe_fwd_triton(  # noqa: E731
                x, w1, w2, tw, al.sorted_slot_ids, al.block_expert_ids, activation, top_k,
                backward, tiles)
            if not backward:
                return gpu_time_ms(fwd, rep_ms=30)
            _, act, z = fwd()
            return gpu_time_ms(lambda: tk.fused_moe_bwd_triton(
                gy, x, w1, w2, tw, act, z, al.sorted_slot_ids, al.block_expert_ids,
                al.expert_starts, al.tokens_per_expert, activation, top_k, tiles), rep_ms=30)

        def pick(key, candidates, backward):
            results = []
            for cand in candidates:
                tiles = {**best, key: cand}
                try:
                    results.append((timed(tiles, backward), cand))
                except triton.runtime.errors.OutOfResources:
                    continue
            ms, winner = min(results, key=lambda r: r[0])
            print(f"{reg:>6} {key:>9}: {winner} {ms:.3f} ms", flush=True)
            return winner

        best["BLOCK_M"] = pick("BLOCK_M", TUNE_BLOCK_M[reg], True)
        for key, backward in (("gemm_up", False), ("gemm_down", False), ("act_bwd", True)):
            best[key] = pick(key, TUNE_GEMM, backward)
        best["wgrad"] = pick("wgrad", TUNE_WGRAD, True)
        table[reg] = best
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"triton {triton.__version__}, {activation}, d={d}, E={num_experts}")
    print(repr(table))
    return table


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tune", action="store_true", help="retune TILE_TABLE on this GPU")
    parser.add_argument("--activation", default="gelu", choices=["gelu", "swiglu"])
    args = parser.parse_args()
    if args.tune:
        tune_tiles(args.activation)
    else:
        parser.print_help()

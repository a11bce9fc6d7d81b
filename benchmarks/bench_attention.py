"""Ragged cross-attention benchmarks: `varlen_cross_attention` (Triton) against PyTorch's
attention paths in the same run.

Useful FLOPs (only real keys count; padding is wasted work, not throughput):
  forward = 4 * sum_b(L_b) * Q * H * Dh (QK^T and PV), forward + backward = 3.5x that
  (the backward recomputes QK^T and does four more GEMMs: 2.5x the forward).
Shapes (issue 10):
  - QFormer: B users x Q = 128 queries over ragged histories (L_b uniform in [L/8, L], ~56 %
    useful) or dense (every L_b = L), L = 2048, H in {8, 16}, Dh in {64, 128}. Anchors: SDPA
    flash / cuDNN / efficient on dense padded inputs, SDPA with a padding mask on ragged inputs
    (the backend SDPA picks for a mask), torch's packed varlen attention where the installed torch
    has it, flash_attn_varlen_func where flash-attn is installed (otherwise the reason is
    recorded).
  - Beam decode: 256 users x 128 beams x 1 query over 405 encoder tokens, H = 8, Dh = 128: ours
    (the beams of a user are one query group over its K/V) vs SDPA with K/V copied per beam (a
    naive decoder), vs SDPA with a broadcast (expand) view, vs SDPA with beams as the query axis.
By default a representative subset runs (the device check is time-boxed);
ONEREC_BENCH_ATTN_FULL=1 runs the whole sweep. Targets (H200): dense >= 1.2x SDPA cuDNN,
ragged >= 1.8x masked SDPA, B = 1 with L = 2000 >= 4x SDPA flash, beam decode >= 3x per-beam
expanded SDPA.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

import onerec_kernels as ok
from common import gpu_time_ms, measured_bf16_peak_tflops, quick, record, requires_cuda, run_timed, tflops


def full() -> bool:
    return os.environ.get("ONEREC_BENCH_ATTN_FULL", "0") == "1"


def ragged_lengths(num_users: int, max_len: int, ragged: bool, gen: torch.Generator) -> list[int]:
    if not ragged:
        return [max_len] * num_users
    lens = torch.randint(max_len // 8, max_len + 1, (num_users,), generator=gen)
    lens[0] = max_len  # the longest is max_len, as the padded anchors assume
    return lens.tolist()


def make_case(num_users, num_q, num_heads, head_dim, max_len, ragged, device, dtype=torch.bfloat16,
              seed=0):
    gen = torch.Generator().manual_seed(seed)
    lengths = ragged_lengths(num_users, max_len, ragged, gen)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device=device)
    total = int(sum(lengths))
    q = torch.randn(num_users, num_q, num_heads, head_dim, device=device, dtype=dtype)
    k = torch.randn(total, num_heads, head_dim, device=device, dtype=dtype)
    v = torch.randn(total, num_heads, head_dim, device=device, dtype=dtype)
    return q, k, v, cu, lengths


def padded(k, v, cu, lengths):
    """(B, H, L, Dh) padded K/V and the (B, 1, 1, L) boolean key mask."""
    num_users, max_len = len(lengths), max(lengths)
    lens = torch.tensor(lengths, device=k.device)
    pos = torch.arange(max_len, device=k.device)
    valid = pos[None, :] < lens[:, None]
    idx = torch.where(valid, cu[:-1, None].long() + pos[None, :], 0)
    kp = torch.where(valid[:, :, None, None], k[idx], 0).transpose(1, 2).contiguous()
    vp = torch.where(valid[:, :, None, None], v[idx], 0).transpose(1, 2).contiguous()
    return kp, vp, valid[:, None, None, :]


def sdpa_with(backend_name):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, backend_name)

    def run(q, k, v, mask=None):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return run


def anchors(q, k, v, cu, lengths, ragged):
    """name -> (callable, or the reason it cannot run here). The padded copies are built once,
    outside the timing, as leaves (their backward then times the attention alone)."""
    grad = q.requires_grad
    kp, vp, mask = padded(k.detach(), v.detach(), cu, lengths)
    kp, vp = kp.requires_grad_(grad), vp.requires_grad_(grad)
    qp = q.detach().transpose(1, 2).contiguous().requires_grad_(grad)  # (B, H, Q, Dh)
    out = {}
    if ragged:
        out["sdpa_masked"] = lambda: F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask)
    else:
        for name in ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION"):
            fn = sdpa_with(name)
            out[f"sdpa_{name.split('_')[0].lower()}"] = (lambda fn=fn: fn(qp, kp, vp))
    num_users, num_q = q.shape[:2]
    q_packed = q.detach().reshape(num_users * num_q, *q.shape[2:]).requires_grad_(grad)
    cu_q = torch.arange(0, num_users * num_q + 1, num_q, dtype=torch.int32, device=q.device)
    try:
        from torch.nn.attention.varlen import varlen_attn

        out["torch_varlen"] = lambda: varlen_attn(q_packed, k, v, cu_q, cu, num_q, max(lengths))
    except ImportError as e:
        out["torch_varlen"] = f"not in this torch ({e})"
    try:
        from flash_attn import flash_attn_varlen_func

        out["flash_attn_varlen"] = lambda: flash_attn_varlen_func(q_packed, k, v, cu_q, cu, num_q,
                                                                  max(lengths))
    except ImportError as e:
        out["flash_attn_varlen"] = f"flash-attn not installed ({e})"
    return out


def time_all(ours, others, backward: bool):
    """Device times (ms) of ours and of every runnable anchor (forward, or forward + backward
    with a ones gradient); a failing anchor records why instead."""
    def step(fn):
        if not backward:
            return fn

        def fwd_bwd():
            out = fn()
            out.backward(torch.ones_like(out))
        return fwd_bwd

    times, reasons = {}, {}
    times["ours"] = gpu_time_ms(step(ours))
    for name, fn in others.items():
        if isinstance(fn, str):
            reasons[name] = fn
            continue
        try:
            fn_step = step(fn)
            fn_step()
            times[name] = gpu_time_ms(fn_step)
        except (RuntimeError, TypeError, ValueError) as e:  # unsupported by this backend/shape
            reasons[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    return times, reasons


def anchor_fields(times, reasons) -> dict:
    """Each anchor's time and our speedup over it (time_anchor / time_ours), or why it was
    skipped."""
    out = {}
    for name, t in times.items():
        if name != "ours":
            out[f"{name}_ms"] = t
            out[f"speedup_vs_{name}"] = t / times["ours"]
    for name, why in reasons.items():
        out[f"{name}_skipped"] = why
    return out


QFORMER_SUBSET = [  # (B, H, Dh, ragged, backward); B = 1 runs at L = 2000, the others at 2048
    (1, 16, 64, False, False),
    (16, 16, 64, True, False),
    (128, 16, 64, True, False),
    (512, 16, 64, True, False),
    (512, 16, 64, False, False),
    (128, 8, 128, True, False),
    (16, 16, 64, True, True),
    (512, 16, 64, True, True),
]
QFORMER_FULL = [(b, h, d, r, bw) for b in (1, 16, 128, 512) for h in (8, 16) for d in (64, 128)
                for r in (True, False) for bw in (False, True)]


@requires_cuda
@pytest.mark.parametrize("num_users,num_heads,head_dim,ragged,backward",
                         QFORMER_FULL if full() else QFORMER_SUBSET,
                         ids=lambda x: str(x))
def test_qformer_shape_gpu(benchmark, num_users, num_heads, head_dim, ragged, backward):
    num_q, max_len = 128, (2000 if num_users == 1 else 2048)  # the B = 1 target is at 2000
    if quick() and num_users == 512:
        num_users = 256
    q, k, v, cu, lengths = make_case(num_users, num_q, num_heads, head_dim, max_len, ragged, "cuda")
    if backward:
        q, k, v = (t.requires_grad_() for t in (q, k, v))
    ours = lambda: ok.varlen_cross_attention(q, k, v, cu, max_len, backend="triton")  # noqa: E731
    ref = ok.varlen_cross_attention_reference(q.detach()[:2], k.detach(), v.detach(), cu[:3])
    err = (ours().detach()[:2].float() - ref.float()).abs().max().item()  # also compiles/tunes
    others = anchors(q, k, v, cu, lengths, ragged)
    times, reasons = time_all(ours, others, backward)
    useful = 4.0 * sum(lengths) * num_q * num_heads * head_dim * (3.5 if backward else 1.0)
    peak = measured_bf16_peak_tflops()
    ms = times["ours"]
    extra = {"B": num_users, "Q": num_q, "L": max_len, "H": num_heads, "Dh": head_dim,
             "ragged": ragged, "useful_fraction": sum(lengths) / (num_users * max_len),
             "pass": "fwd+bwd" if backward else "fwd", "time_ms": ms,
             "tflops_useful": tflops(useful, ms), "pct_of_bf16_peak": 100 * tflops(useful, ms) / peak,
             "max_abs_err_vs_reference": err}
    extra.update(anchor_fields(times, reasons))
    record(benchmark, **extra)
    run_timed(benchmark, lambda: (ours(), torch.cuda.synchronize()), ms)


@requires_cuda
def test_qformer_shared_queries_gpu(benchmark):
    """The QFormer's first block: one (Q, H, Dh) query set for every user, never expanded."""
    num_users, num_q, num_heads, head_dim, max_len = (128 if quick() else 512), 128, 16, 64, 2048
    q, k, v, cu, lengths = make_case(num_users, num_q, num_heads, head_dim, max_len, True, "cuda")
    shared = q[0].contiguous()
    ours = lambda: ok.varlen_cross_attention(shared, k, v, cu, max_len, backend="triton")  # noqa: E731
    per_user = lambda: ok.varlen_cross_attention(q, k, v, cu, max_len, backend="triton")  # noqa: E731
    ours(), per_user()
    ms, pu_ms = gpu_time_ms(ours), gpu_time_ms(per_user)
    useful = 4.0 * sum(lengths) * num_q * num_heads * head_dim
    record(benchmark, B=num_users, time_ms=ms, tflops_useful=tflops(useful, ms),
           per_user_queries_ms=pu_ms, ratio_vs_per_user=pu_ms / ms)
    run_timed(benchmark, lambda: (ours(), torch.cuda.synchronize()), ms)


def beam_anchors(q, k, v, enc_len):
    """SDPA formulations of beam decoding; q (B, W, H, Dh) = W beams x 1 token per user, k/v
    (B * enc_len, H, Dh) packed encoder K/V (every user enc_len tokens)."""
    num_users, beams, num_heads, head_dim = q.shape
    k_b = k.view(num_users, enc_len, num_heads, head_dim).transpose(1, 2)  # (B, H, L, Dh)
    v_b = v.view(num_users, enc_len, num_heads, head_dim).transpose(1, 2)
    q_beam = q.reshape(num_users * beams, 1, num_heads, head_dim).transpose(1, 2)  # (B*W, H, 1, Dh)

    def per_beam_copy():  # what a naive decoder does: every beam gets its own K/V
        kk = k_b.repeat_interleave(beams, 0)
        vv = v_b.repeat_interleave(beams, 0)
        return F.scaled_dot_product_attention(q_beam, kk, vv)

    def broadcast_view():  # stride-0 expand over beams: no copy, SDPA picks what it can
        q5 = q_beam.view(num_users, beams, num_heads, 1, head_dim)
        return F.scaled_dot_product_attention(q5, k_b[:, None].expand(-1, beams, -1, -1, -1),
                                              v_b[:, None].expand(-1, beams, -1, -1, -1))

    def beams_as_queries():  # the beams of a user as its query axis (our formulation, in SDPA)
        return F.scaled_dot_product_attention(q.transpose(1, 2), k_b, v_b)

    return {"sdpa_per_beam_copy": per_beam_copy, "sdpa_broadcast_view": broadcast_view,
            "sdpa_beams_as_queries": beams_as_queries}


@requires_cuda
def test_beam_decode_gpu(benchmark):
    """256 users x 128 beams x 1 token over 405 encoder tokens, H = 8, Dh = 128 (64 users by
    default: the per-beam copy of K/V is 27 GB at 256 users; the ratio is what matters)."""
    num_users = 256 if full() else 64
    beams, enc_len, num_heads, head_dim = 128, 405, 8, 128
    q, k, v, cu, lengths = make_case(num_users, beams, num_heads, head_dim, enc_len, False, "cuda")
    ours = lambda: ok.varlen_cross_attention(q, k, v, cu, enc_len, backend="triton")  # noqa: E731
    ours()
    times, reasons = time_all(ours, beam_anchors(q, k, v, enc_len), False)
    ms = times["ours"]
    useful = 4.0 * num_users * beams * enc_len * num_heads * head_dim
    kv_bytes = 2 * k.numel() * k.element_size()
    extra = {"users": num_users, "beams": beams, "enc_len": enc_len, "time_ms": ms,
             "tflops_useful": tflops(useful, ms), "kv_gb_per_s": kv_bytes / (ms * 1e-3) / 1e9}
    extra.update(anchor_fields(times, reasons))
    record(benchmark, **extra)
    run_timed(benchmark, lambda: (ours(), torch.cuda.synchronize()), ms)

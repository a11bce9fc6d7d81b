"""MoE ops: moe_route, moe_align, fused_moe (forward and backward), every backend against an
fp64 per-token loop. The Triton kernels run in the CPU interpreter (slow: a representative
subset of the shape grid there; the full grid runs on the reference)."""
import itertools
import os
import math

import pytest
import torch

import onerec_kernels as ok
from onerec_kernels import _backend

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # NaN-routing cases
TRITON_DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
HAS_TRITON = TRITON_DEV.type == "cuda" or _backend.triton_interpret()
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="no Triton device or interpreter")
_needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 Triton needs CUDA "
                                 "(the interpreter computes bf16 wrongly)")


def gpu(test):
    return pytest.mark.gpu(_needs_cuda(test))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tests run thousands of tiny ops; on a shared 2-core machine the intra-op thread
    pool costs ~20x their compute (measured: 5.7 s vs 0.25 s for 20 small cases)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def per_token_moe(x, w1, w2, topk_weights, topk_ids, activation):
    """The definition, in fp64, one choice j at a time with each token's own expert weights
    (no sorting, no grouping: independent of every implementation's layout)."""
    x, w1, w2, tw = x.double(), w1.double(), w2.double(), topk_weights.double()
    y = torch.zeros_like(x)
    for j in range(topk_ids.shape[1]):
        e = topk_ids[:, j]
        z = torch.bmm(x.unsqueeze(1), w1[e]).squeeze(1)
        if activation == "swiglu":
            gate, up = z.chunk(2, dim=-1)
            a = torch.nn.functional.silu(gate) * up
        else:
            a = torch.nn.functional.gelu(z)
        y = y + tw[:, j:j + 1] * torch.bmm(a.unsqueeze(1), w2[e]).squeeze(1)
    return y


def make_inputs(num_tokens, d, h, num_experts, top_k, activation, device, dtype=torch.float32,
                ids=None):
    c = 2 if activation == "swiglu" else 1
    x = torch.randn(num_tokens, d, device=device).to(dtype)
    w1 = (torch.randn(num_experts, d, c * h, device=device) / math.sqrt(d)).to(dtype)
    w2 = (torch.randn(num_experts, h, d, device=device) / math.sqrt(h)).to(dtype)
    if ids is None:
        ids = torch.rand(num_tokens, num_experts, device=device).argsort(dim=1)[:, :top_k]
    tw = torch.rand(num_tokens, top_k, device=device)
    return x, w1, w2, tw, ids


def _err(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


GRID_K = [1, 2, 6]


@pytest.mark.parametrize("num_tokens", [0, 1, 33, 222])
@pytest.mark.parametrize("activation", ["swiglu", "gelu"])
def test_reference_full_grid(seed, num_tokens, activation):
    """The issue's whole grid on the torch backend (fp32) against the fp64 per-token loop."""
    for d, h, num_experts in itertools.product([8, 100, 128], [16, 96], [1, 8, 24]):
        for top_k in [k for k in GRID_K if k <= num_experts]:
            x, w1, w2, tw, ids = make_inputs(num_tokens, d, h, num_experts, top_k, activation, "cpu")
            y = ok.fused_moe(x, w1, w2, tw, ids, activation=activation, backend="torch")
            assert y.shape == (num_tokens, d) and y.dtype == torch.float32
            want = per_token_moe(x, w1, w2, tw, ids, activation)
            scale = want.abs().max().item() if num_tokens else 1.0
            assert _err(y, want) <= 1e-5 * (scale + 1), (d, h, num_experts, top_k, seed)


def _grads(fn, inputs, grad_out):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    y = fn(*leaves)
    return y, torch.autograd.grad(y, leaves, grad_out)


# (T, d, h, E, k, activation): every grid value appears, with odd sizes against the tiles.
TRITON_CASES = [
    (1, 8, 16, 1, 1, "swiglu"),
    (33, 100, 96, 8, 2, "gelu"),
    (222, 128, 16, 24, 6, "swiglu"),
    (33, 8, 96, 24, 1, "gelu"),
    (222, 100, 16, 8, 2, "gelu"),
    (33, 128, 96, 8, 6, "swiglu"),
    (7, 1, 1, 2, 2, "gelu"),  # d = h = 1
]


@needs_triton
@pytest.mark.parametrize("num_tokens,d,h,num_experts,top_k,activation", TRITON_CASES)
def test_triton_forward_backward(seed, num_tokens, d, h, num_experts, top_k, activation):
    """Triton fp32 output and gradients of x, w1, w2, topk_weights against autograd through
    the reference in fp64."""
    x, w1, w2, tw, ids = make_inputs(num_tokens, d, h, num_experts, top_k, activation, TRITON_DEV)
    g = torch.randn(num_tokens, d, device=TRITON_DEV)
    y, grads = _grads(lambda *t: ok.fused_moe(*t, ids, activation=activation, backend="triton"),
                      (x, w1, w2, tw), g)
    y_ref, grads_ref = _grads(
        lambda *t: ok.fused_moe(*t, ids, activation=activation, backend="torch"),
        (x.double(), w1.double(), w2.double(), tw.double()), g.double())
    for name, got, want in zip(("y", "x", "w1", "w2", "topk_weights"), (y, *grads),
                               (y_ref, *grads_ref)):
        assert got.shape == want.shape and got.dtype == (torch.float32), name
        tol = 2e-5 * (want.abs().max().item() + 1) if TRITON_DEV.type == "cpu" else \
            2e-2 * (want.abs().max().item() + 1)  # GPU fp32 dots run in TF32 by default
        assert _err(got, want) <= tol, f"{name}: {_err(got, want):.3g} > {tol:.3g} (seed {seed})"


def _flash_rule(got, ref, exact, names, slack=1e-3):
    """FlashAttention's rule: |ours - fp64| <= 2 |same-precision PyTorch - fp64| + slack*scale."""
    for name, a, r, e in zip(names, got, ref, exact):
        a, r, e = a.double().cpu(), r.double().cpu(), e.double().cpu()
        scale = e.abs().max().item() + 1e-6
        assert _err(a, e) <= 2 * _err(r, e) + slack * scale, \
            f"{name}: ours {_err(a, e):.3g}, torch {_err(r, e):.3g}, scale {scale:.3g}"


@needs_triton
@pytest.mark.parametrize("activation", ["swiglu", "gelu"])
def test_triton_fp16_forward_backward_flash_rule(seed, activation):
    """fp16 (the interpreter computes it correctly; bf16 is checked on the GPU below): output
    and every gradient against fp64, within 2x the error of the fp16 PyTorch reference."""
    x, w1, w2, tw, ids = make_inputs(97, 100, 48, 8, 2, activation, TRITON_DEV, torch.float16)
    g = torch.randn(97, 100, device=TRITON_DEV).half()
    fn = lambda b: lambda *t: ok.fused_moe(*t, ids.to(t[0].device), activation=activation, backend=b)  # noqa: E731
    got = _grads(fn("triton"), (x, w1, w2, tw), g)
    cpu = [t.cpu() for t in (x, w1, w2, tw)]
    ref = _grads(fn("torch"), cpu, g.cpu())
    exact = _grads(fn("torch"), [t.double() for t in cpu], g.double().cpu())
    assert got[0].dtype == torch.float16
    _flash_rule((got[0], *got[1]), (ref[0], *ref[1]), (exact[0], *exact[1]),
                ("y", "x", "w1", "w2", "topk_weights"))


@needs_triton
@pytest.mark.parametrize("case", ["one_expert", "empty_experts", "no_tokens"])
def test_triton_skewed_routing(seed, case):
    """All slots on one expert (a long run over many blocks), experts without slots, T = 0."""
    num_tokens, num_experts, top_k = (70, 8, 1) if case != "no_tokens" else (0, 8, 2)
    if case == "one_expert":
        ids = torch.full((num_tokens, top_k), 5, device=TRITON_DEV)
    elif case == "empty_experts":  # only experts 0 and 7; the six between get nothing
        ids = (torch.rand(num_tokens, top_k, device=TRITON_DEV) < 0.5).long() * 7
    else:
        ids = None
    x, w1, w2, tw, ids = make_inputs(num_tokens, 24, 16, num_experts, top_k, "swiglu",
                                     TRITON_DEV, ids=ids)
    g = torch.randn(num_tokens, 24, device=TRITON_DEV)
    y, grads = _grads(lambda *t: ok.fused_moe(*t, ids, backend="triton"), (x, w1, w2, tw), g)
    want = per_token_moe(x, w1, w2, tw, ids, "swiglu")
    assert _err(y, want) <= 1e-4 * (want.abs().max().item() if num_tokens else 1)
    if num_tokens == 0:
        assert all(t.numel() == 0 or (t == 0).all() for t in grads)
        return
    _, grads_ref = _grads(lambda *t: ok.fused_moe(*t, ids, backend="torch"), (x, w1, w2, tw), g)
    for got, ref in zip(grads, grads_ref):
        assert _err(got, ref) <= 1e-4 * (ref.abs().max().item() + 1)
    used = torch.zeros(num_experts, dtype=torch.bool)
    used[ids.reshape(-1).cpu()] = True
    assert (grads[1][~used.to(TRITON_DEV)] == 0).all()  # empty experts: exactly zero gradient


# ------------------------------------------------------------------------------------- route
def _route_backends():
    return ["torch"] + (["triton"] if HAS_TRITON else [])


@pytest.mark.parametrize("score_func", ["softmax", "sigmoid"])
@pytest.mark.parametrize("renormalize", [True, False])
def test_route_backends_agree(seed, score_func, renormalize):
    for num_tokens, num_experts, top_k in [(1, 1, 1), (97, 24, 6), (33, 5, 2), (40, 70, 4)]:
        logits = torch.randn(num_tokens, num_experts, device=TRITON_DEV)
        bias = 0.1 * torch.randn(num_experts, device=TRITON_DEV)
        results = {b: ok.moe_route(logits, top_k, score_func=score_func, bias=bias,
                                   renormalize=renormalize, backend=b) for b in _route_backends()}
        # the definition in fp64: top-k of score + bias, weights = unbiased scores
        s = logits.double().softmax(1) if score_func == "softmax" else logits.double().sigmoid()
        sel = s + bias.double()
        want_ids = sel.topk(top_k, dim=1).indices
        for b, (w, ids) in results.items():
            assert w.dtype == torch.float32 and ids.dtype == torch.int64 and w.shape == (num_tokens, top_k)
            # the same choices up to genuine near-ties (fp32 rounding of the scores)
            mismatch = (ids != want_ids).any(dim=1)
            assert mismatch.sum() <= 1, b
            torch.testing.assert_close(sel.gather(1, ids), sel.gather(1, want_ids), rtol=0, atol=1e-6)
            want_w = s.gather(1, ids)
            if renormalize:
                want_w = want_w / want_w.sum(1, keepdim=True)
            torch.testing.assert_close(w.double(), want_w, rtol=1e-5, atol=1e-7)


def test_route_bias_steers_selection_not_weights(seed):
    logits = torch.randn(64, 8, device=TRITON_DEV)
    bias = torch.zeros(8, device=TRITON_DEV)
    bias[3] = 10.0  # expert 3 always wins a slot
    for b in _route_backends():
        w0, ids0 = ok.moe_route(logits, 2, renormalize=False, backend=b)
        w, ids = ok.moe_route(logits, 2, bias=bias, renormalize=False, backend=b)
        assert (ids == 3).any(dim=1).all() and not torch.equal(ids, ids0)
        probs = logits.softmax(dim=1)
        torch.testing.assert_close(w, probs.gather(1, ids))  # unbiased scores


def test_route_ties_and_nan_same_everywhere():
    """Ties: lower id first. NaN logit: never chosen over a usable expert, weight 0; an all-NaN
    row picks ids 0..k-1 with weight 0. Identical on every backend."""
    nan = float("nan")
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0],
                           [nan, 2.0, nan, 1.0, 0.5],
                           [nan, nan, nan, nan, nan],
                           [nan, 5.0, nan, nan, nan],
                           [0.0, 0.0, 0.0, 0.0, 0.0]], device=TRITON_DEV)
    for score_func in ("softmax", "sigmoid"):
        out = [ok.moe_route(logits, 3, score_func=score_func, backend=b) for b in _route_backends()]
        for w, ids in out:
            assert ids.tolist() == [[1, 2, 4], [1, 3, 4], [0, 1, 2], [1, 0, 2], [0, 1, 2]]
            assert not w.isnan().any()
            assert (w[2] == 0).all() and (w[3, 1:] == 0).all()
            assert (w[1] > 0).all()
            torch.testing.assert_close(w[[0, 1, 4]].sum(1), torch.ones(3, device=TRITON_DEV))
        torch.testing.assert_close(out[0][0], out[-1][0])


@pytest.mark.parametrize("score_func", ["softmax", "sigmoid"])
@pytest.mark.parametrize("renormalize", [True, False])
def test_route_gradient(seed, score_func, renormalize):
    """The written-out routing backward (what the Triton op uses) equals autograd through the
    reference; the Triton op's gradient equals both."""
    logits = torch.randn(33, 7, dtype=torch.float64)
    logits[0, 2] = float("nan")
    g = torch.randn(33, 3, dtype=torch.float64)
    leaf = logits.clone().requires_grad_()
    w, ids = ok.moe_route_reference(leaf, 3, score_func, None, renormalize)
    want = torch.autograd.grad(w, leaf, g)[0]
    from onerec_kernels.moe.reference import route_weights_backward
    got = route_weights_backward(logits, ids, g, score_func, renormalize)
    assert not want[1:].isnan().any()
    torch.testing.assert_close(got[1:], want[1:])
    assert got[0, 2] == 0
    if HAS_TRITON:
        leaf32 = logits.float().to(TRITON_DEV).requires_grad_()
        w32, _ = ok.moe_route(leaf32, 3, score_func=score_func, renormalize=renormalize,
                              backend="triton")
        gt = torch.autograd.grad(w32, leaf32, g.float().to(TRITON_DEV))[0]
        torch.testing.assert_close(gt[1:].double().cpu(), want[1:], rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------- align
@pytest.mark.parametrize("num_tokens,num_experts,top_k,block_m",
                         [(0, 3, 2, 16), (1, 1, 1, 1), (97, 24, 6, 16), (33, 8, 2, 7), (50, 4, 4, 64),
                          (300, 256, 8, 16), (1500, 24, 2, 128)])
def test_align_layout(seed, num_tokens, num_experts, top_k, block_m):
    ids = torch.randint(0, max(num_experts // 2, 1), (num_tokens, top_k))  # leave experts empty
    al = ok.moe_align(ids, num_experts, block_m, backend="torch")
    if HAS_TRITON:  # the three-kernel version gives the same tensors, bit for bit
        al_t = ok.moe_align(ids.to(TRITON_DEV), num_experts, block_m, backend="triton")
        for a, b in zip(al, al_t):
            assert torch.equal(a, b.cpu())
        if ids.numel():  # an out-of-range id: left out of the layout and counted (the CUDA assert's input)
            from onerec_kernels.moe.reference import moe_align_reference
            from onerec_kernels.moe.triton_kernels import moe_align_triton

            bad_ids = ids.clone()
            bad_ids[0, 0] = -1 if num_tokens % 2 else num_experts
            *layout, num_bad = moe_align_triton(bad_ids.to(TRITON_DEV), num_experts, block_m)
            assert num_bad.item() == 1
            for a, b in zip(moe_align_reference(bad_ids, num_experts, block_m), layout):
                assert torch.equal(a, b.cpu())
    n = ids.numel()
    counts = torch.bincount(ids.reshape(-1), minlength=num_experts)
    assert torch.equal(al.tokens_per_expert, counts)
    sorted_ids = al.sorted_slot_ids.long()
    assert sorted_ids.numel() == al.block_expert_ids.numel() * block_m
    real = sorted_ids[sorted_ids < n]
    assert torch.equal(real.sort().values, torch.arange(n))  # every slot exactly once
    flat = ids.reshape(-1)
    for b, e in enumerate(al.block_expert_ids.tolist()):
        block = sorted_ids[b * block_m:(b + 1) * block_m]
        block = block[block < n]
        if e == num_experts:
            assert block.numel() == 0
        else:
            assert (flat[block] == e).all()
    for e in range(num_experts):
        start = int(al.expert_starts[e])
        run = sorted_ids[start:start + int(counts[e])]
        assert (flat[run] == e).all() and start % block_m == 0


@needs_triton
def test_int32_ids_and_noncontiguous_inputs(seed):
    x, w1, w2, tw, ids = make_inputs(19, 24, 16, 4, 2, "swiglu", TRITON_DEV)
    want = ok.fused_moe(x, w1, w2, tw, ids, backend="torch")
    w1_t = w1.transpose(1, 2).contiguous().transpose(1, 2)  # same values, other strides
    x_wide = torch.zeros(19, 48, device=TRITON_DEV)
    x_wide[:, ::2] = x  # column stride 2
    got = ok.fused_moe(x_wide[:, ::2], w1_t, w2, tw, ids.int(), backend="triton")
    assert _err(got, want) <= 1e-5 * (want.abs().max().item() + 1)


def test_tile_table_is_complete_and_regimes():
    from onerec_kernels.moe import triton_kernels as tk

    keys = {"BLOCK_M", "gemm_up", "gemm_down", "act_bwd", "wgrad"}
    for gpu_name, table in tk.TILE_TABLE.items():
        assert set(table) == {"decode", "mid", "train"}, gpu_name
        for reg, tiles in table.items():
            assert set(tiles) == keys, (gpu_name, reg)
            assert all(len(tiles[k]) == 5 for k in keys - {"BLOCK_M"})
    assert set(tk._INTERPRET_TILES) == keys
    # the shapes: a decode step for one user, training batches
    assert tk.regime(256 * 2, 24) == "decode"
    assert tk.regime(4096 * 2, 24) == "mid"
    assert tk.regime(16384 * 2, 24) == "train"
    names = [c["name"] for c in tk.AOT_CONFIGS]
    assert len(names) == len(set(names))
    for c in tk.AOT_CONFIGS:  # every argument is typed or constant
        args = set(c["signature"]) | set(c["constexprs"])
        assert args == set(c["fn"].arg_names), c["name"]


# ------------------------------------------------------------------------------------ errors
def test_bad_inputs_name_the_argument(monkeypatch):
    x, w1, w2, tw, ids = make_inputs(5, 8, 4, 3, 2, "swiglu", "cpu")
    with pytest.raises(ValueError, match="top_k"):
        ok.moe_route(torch.randn(5, 3), 4)
    with pytest.raises(ValueError, match="topk_ids"):
        ok.fused_moe(x, w1, w2, tw, ids + 3, backend="torch")
    with pytest.raises(ValueError, match="topk_ids"):
        ok.fused_moe(x, w1, w2, tw, ids - 1 - 2 * (ids == 0).long(), backend="torch")
    with pytest.raises(ValueError, match="w1"):
        ok.fused_moe(x, w1, w2, tw, ids, activation="gelu")
    with pytest.raises(ValueError, match="w2"):
        ok.fused_moe(x, w1, w2[:, :, :5], tw, ids)
    with pytest.raises(TypeError, match="w2"):
        ok.fused_moe(x, w1, w2.double(), tw, ids)
    with pytest.raises(ValueError, match="topk_weights"):
        ok.fused_moe(x, w1, w2, tw[:4], ids)
    with pytest.raises(ValueError, match=r"k = topk_ids.shape\[1\]"):
        ok.fused_moe(x, w1, w2, tw.repeat(1, 2), ids.repeat(1, 2))
    with pytest.raises(ValueError, match="activation"):
        ok.fused_moe(x, w1, w2, tw, ids, activation="relu")
    with pytest.raises(ValueError, match="bias"):
        ok.moe_route(torch.randn(5, 3), 2, bias=torch.zeros(4))
    with pytest.raises(TypeError, match="topk_ids"):
        ok.moe_align(ids.float(), 3, 16)
    if HAS_TRITON:
        # On CUDA the range check is a device-side assert (fatal to the process's CUDA context);
        # the debug flag makes it an eager ValueError there too, which is what is tested.
        monkeypatch.setenv("ONEREC_MOE_CHECKS", "1")
        with pytest.raises(ValueError, match="topk_ids"):
            ok.fused_moe(x.to(TRITON_DEV), w1.to(TRITON_DEV), w2.to(TRITON_DEV),
                         tw.to(TRITON_DEV), (ids + 3).to(TRITON_DEV), backend="triton")


# ----------------------------------------------------------------------------------- opcheck
@needs_triton
def test_opcheck():
    ids = torch.rand(9, 3, device=TRITON_DEV).argsort(dim=1)[:, :2]
    torch.library.opcheck(torch.ops.onerec.moe_align.default, (ids.cpu(), 3, 16))
    torch.library.opcheck(torch.ops.onerec.moe_align_triton.default, (ids, 3, 16))
    torch.library.opcheck(torch.ops.onerec.moe_route_triton.default,
                          (torch.randn(9, 5, device=TRITON_DEV), 2, "softmax", None, True))
    for activation in ("swiglu", "gelu"):
        x, w1, w2, tw, ids = make_inputs(9, 12, 8, 3, 2, activation, TRITON_DEV)
        args = (x, w1, w2, tw, ids, activation, True)
        torch.library.opcheck(torch.ops.onerec.fused_moe_triton.default, args)
        y, act, z, *layout = torch.ops.onerec.fused_moe_triton(*args)
        torch.library.opcheck(torch.ops.onerec.fused_moe_triton_bwd.default,
                              (torch.randn_like(y), x, w1, w2, tw, act, z, *layout, activation, 2))


# ------------------------------------------------------------------------------- GPU (bf16)
@gpu
@pytest.mark.parametrize("num_tokens,d,h,num_experts,top_k,activation",
                         [(1, 1024, 512, 24, 2, "swiglu"), (4096, 1024, 2048, 24, 2, "gelu"),
                          (333, 100, 96, 8, 6, "swiglu"), (16384, 1024, 1024, 24, 4, "swiglu")])
def test_gpu_bf16_flash_rule(seed, num_tokens, d, h, num_experts, top_k, activation):
    """bf16 on the GPU: the Triton error against fp64 (output and every gradient) is <= 2x the
    error of the bf16 PyTorch reference, + a small atol."""
    x, w1, w2, tw, ids = make_inputs(num_tokens, d, h, num_experts, top_k, activation, "cuda",
                                     torch.bfloat16)
    g = torch.randn(num_tokens, d, device="cuda", dtype=torch.bfloat16)
    got = _grads(lambda *t: ok.fused_moe(*t, ids, activation=activation, backend="triton"),
                 (x, w1, w2, tw), g)
    ref = _grads(lambda *t: ok.fused_moe(*t, ids, activation=activation, backend="torch"),
                 (x, w1, w2, tw), g)
    exact = _grads(lambda *t: ok.fused_moe(*t, ids, activation=activation, backend="torch"),
                   (x.double(), w1.double(), w2.double(), tw.double()), g.double())
    _flash_rule((got[0], *got[1]), (ref[0], *ref[1]), (exact[0], *exact[1]),
                ("y", "x", "w1", "w2", "topk_weights"))


@gpu
def test_gpu_decode_regime_small_blocks(seed):
    """A beam step for one user: few slots per expert, the decode tiles (BLOCK_M 16)."""
    from onerec_kernels.moe.triton_kernels import pick_tiles

    assert pick_tiles(256 * 2, 24, torch.device("cuda"))["BLOCK_M"] == 16
    x, w1, w2, tw, ids = make_inputs(256, 1024, 2048, 24, 2, "swiglu", "cuda")
    got = ok.fused_moe(x, w1, w2, tw, ids, backend="triton")
    want = per_token_moe(x, w1, w2, tw, ids, "swiglu")
    assert _err(got, want) <= 2e-2 * (want.abs().max().item() + 1)


def test_import_pulls_in_neither_triton_nor_dynamo():
    """The moe ops register at import without importing triton or torch._dynamo (+1 s each)."""
    import subprocess
    import sys

    code = ("import sys, onerec_kernels; "
            "print('triton' in sys.modules, 'torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
                         env={**os.environ, "TRITON_INTERPRET": "0"}, check=True)
    assert out.stdout.split() == ["False", "False"]

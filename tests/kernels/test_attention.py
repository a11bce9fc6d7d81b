"""varlen_cross_attention: the Triton kernels (CPU interpreter here, the GPU where there is one)
and the reference against float64, with FlashAttention's rule for low precision: our error
<= 2x the error of the same-precision PyTorch reference (+ a small atol)."""
import math

import pytest
import torch

import onerec_kernels as ok
from onerec_kernels import _backend
from onerec_kernels.attention import reference as attn_ref
from onerec_kernels.attention.triton_kernels import varlen_attention_fwd_triton

TRITON_DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
HAS_TRITON = TRITON_DEV.type == "cuda" or _backend.triton_interpret()
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="Triton needs CUDA or TRITON_INTERPRET=1")
ATOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def make_inputs(lengths, num_q, num_heads, num_kv_heads, head_dim, *, shared=False,
                dtype=torch.float32, device=TRITON_DEV):
    cu = torch.tensor([0] + list(torch.tensor(lengths, dtype=torch.int64).cumsum(0).tolist()),
                      dtype=torch.int32, device=device)
    total = int(sum(lengths))
    q_shape = (num_q, num_heads, head_dim) if shared else (len(lengths), num_q, num_heads, head_dim)
    q = torch.randn(q_shape, device=device).to(dtype)
    k = torch.randn(total, num_kv_heads, head_dim, device=device).to(dtype)
    v = torch.randn(total, num_kv_heads, head_dim, device=device).to(dtype)
    return q, k, v, cu, max(lengths, default=0)


def naive(q, k, v, cu, scale=None):
    """Each user on its own, in float64, K/V heads repeated for the query heads."""
    cu = cu.tolist()
    shared = q.dim() == 3
    num_q, num_heads, head_dim = q.shape[-3:]
    group = num_heads // k.shape[1]
    scale = scale if scale is not None else 1 / math.sqrt(head_dim)
    outs = []
    for b in range(len(cu) - 1):
        qb = (q if shared else q[b]).double()
        kb = k[cu[b]:cu[b + 1]].double().repeat_interleave(group, 1)
        vb = v[cu[b]:cu[b + 1]].double().repeat_interleave(group, 1)
        if kb.shape[0] == 0:
            outs.append(torch.zeros(num_q, num_heads, head_dim, dtype=torch.float64, device=q.device))
            continue
        p = (torch.einsum("qhd,khd->hqk", qb, kb) * scale).softmax(-1)
        outs.append(torch.einsum("hqk,khd->qhd", p, vb))
    return torch.stack(outs) if outs else torch.zeros(0, num_q, num_heads, head_dim, dtype=torch.float64)


def assert_fa_rule(ours, ref64, pt, dtype, what):
    err = (ours.double() - ref64).abs().max().item()
    pt_err = (pt.double() - ref64).abs().max().item()
    assert err <= 2 * pt_err + ATOL[dtype], f"{what}: error {err:.3g} > 2 x {pt_err:.3g} + {ATOL[dtype]}"


@pytest.mark.parametrize("shared", [False, True], ids=["per_user", "shared"])
@pytest.mark.parametrize("budget", [1 << 24, 1000], ids=["one_chunk", "many_chunks"])
def test_reference_matches_naive(seed, shared, budget):
    q, k, v, cu, _ = make_inputs([0, 1, 97, 33, 0, 250], 3, 8, 2, 32, shared=shared,
                                 dtype=torch.float64, device=torch.device("cpu"))
    out = ok.varlen_cross_attention_reference(q, k, v, cu, score_budget=budget)
    torch.testing.assert_close(out, naive(q, k, v, cu), rtol=1e-10, atol=1e-12)


def test_reference_chunks_stay_within_budget():
    """Memory proportional to the real keys: one long user does not pad the short ones."""
    lengths = [5] * 100 + [2000]
    chunks = list(attn_ref._chunks(lengths, per_key=10, budget=10_000))
    assert sorted(i for users, _ in chunks for i in users) == list(range(101))
    for users, max_len in chunks:
        assert max_len == max(lengths[i] for i in users)
        assert len(users) == 1 or len(users) * max_len * 10 <= 10_000
    assert [users for users, _ in chunks][-1] == [100]


# Interpreter cost grows with keys x rows: the long (1025) user appears in a few cases only.
FWD_CASES = [
    # lengths, Q, H, H_kv, Dh
    ([0, 1, 97, 1025], 3, 4, 2, 32),
    ([97, 0, 64], 5, 8, 2, 32),  # 64: whole tiles only (no masked tile) in the interpreter
    ([1025], 2, 4, 1, 64),  # B = 1
    ([7, 1], 3, 2, 2, 128),
]


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("shared", [False, True], ids=["per_user", "shared"])
@pytest.mark.parametrize("case", FWD_CASES, ids=lambda c: f"L{c[0]}-Q{c[1]}-H{c[2]}/{c[3]}-D{c[4]}")
def test_forward_triton(seed, dtype, shared, case):
    lengths, num_q, num_heads, num_kv_heads, head_dim = case
    q, k, v, cu, max_len = make_inputs(lengths, num_q, num_heads, num_kv_heads, head_dim,
                                       shared=shared, dtype=dtype)
    out = ok.varlen_cross_attention(q, k, v, cu, max_len, backend="triton")
    assert out.shape == (len(lengths), num_q, num_heads, head_dim) and out.dtype == dtype
    ref64 = naive(q, k, v, cu)
    pt = ok.varlen_cross_attention_reference(q, k, v, cu, upcast=False)
    assert_fa_rule(out, ref64, pt, dtype, f"forward (seed {seed})")
    empty = torch.tensor(lengths) == 0
    assert (out[empty] == 0).all() and torch.isfinite(out).all()


@needs_triton
@pytest.mark.parametrize("shared", [False, True], ids=["per_user", "shared"])
def test_split_kv_matches_one_pass(seed, shared):
    """Key ranges + log-sum-exp combine, including splits that get no keys (short users)."""
    q, k, v, cu, max_len = make_inputs([600, 0, 256, 1], 2, 4, 2, 32, shared=shared)
    scale = 0.3
    one, lse_one = varlen_attention_fwd_triton(q, k, v, cu, max_len, scale, num_splits=1)
    four, lse_four = varlen_attention_fwd_triton(q, k, v, cu, max_len, scale, num_splits=4)
    torch.testing.assert_close(four, one, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse_four, lse_one, rtol=1e-5, atol=1e-5)
    assert torch.isneginf(lse_one[1]).all()
    torch.testing.assert_close(one.double(), naive(q, k, v, cu, scale), rtol=0, atol=1e-5)
    # max_seqlen_k understated: the last split still runs to each user's end.
    low, _ = varlen_attention_fwd_triton(q, k, v, cu, 200, scale, num_splits=3)
    torch.testing.assert_close(low, one, rtol=1e-5, atol=1e-5)


def test_choose_num_splits():
    from onerec_kernels.attention.triton_kernels import choose_num_splits

    assert choose_num_splits(num_units=512 * 16, max_seqlen_k=2048, num_sms=132) == 1
    assert choose_num_splits(num_units=16, max_seqlen_k=100, num_sms=132) == 1
    few = choose_num_splits(num_units=16, max_seqlen_k=2000, num_sms=132)
    assert 2 <= few <= 2000 // 256


GRAD_CASES = [
    ([0, 1, 97, 70], 3, 4, 4, 32),
    ([97, 0, 1025], 2, 4, 1, 32),
]


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("shared", [False, True], ids=["per_user", "shared"])
@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: f"L{c[0]}-H{c[2]}/{c[3]}")
def test_gradients_triton(seed, dtype, shared, case):
    lengths, num_q, num_heads, num_kv_heads, head_dim = case
    q, k, v, cu, max_len = make_inputs(lengths, num_q, num_heads, num_kv_heads, head_dim,
                                       shared=shared, dtype=dtype)
    dout = torch.randn(len(lengths), num_q, num_heads, head_dim, device=q.device).to(dtype)

    def grads(fn, *inputs):
        leaves = [x.detach().clone().requires_grad_() for x in inputs]
        fn(*leaves).backward(dout.to(leaves[0].dtype))
        return [x.grad for x in leaves]

    ours = grads(lambda a, b, c: ok.varlen_cross_attention(a, b, c, cu, max_len, backend="triton"),
                 q, k, v)
    ref64 = grads(lambda a, b, c: ok.varlen_cross_attention_reference(a, b, c, cu), q.double(),
                  k.double(), v.double())
    pt = grads(lambda a, b, c: ok.varlen_cross_attention_reference(a, b, c, cu, upcast=False), q, k, v)
    for name, g, g64, gpt in zip("qkv", ours, ref64, pt):
        assert g.dtype == dtype and g.shape == g64.shape
        assert_fa_rule(g, g64, gpt, dtype, f"d{name} (seed {seed})")



@needs_triton
@pytest.mark.parametrize("per_group", [2, 5])
def test_shared_query_gradient_with_user_groups(seed, monkeypatch, per_group):
    """Shared-query dq: programs that each sum several users (and a short last group) into one
    partial, then the partials summed."""
    from onerec_kernels.attention import triton_kernels as tk

    monkeypatch.setattr(tk, "dq_user_groups", lambda *args: per_group)
    q, k, v, cu, max_len = make_inputs([9, 0, 70, 1, 33], 2, 4, 2, 32, shared=True)
    q.requires_grad_()
    out = ok.varlen_cross_attention(q, k, v, cu, max_len, backend="triton")
    dout = torch.randn_like(out)
    (dq,) = torch.autograd.grad(out, q, dout)
    q64 = q.detach().double().requires_grad_()
    ref = ok.varlen_cross_attention_reference(q64, k.double(), v.double(), cu)
    (dq64,) = torch.autograd.grad(ref, q64, dout.double())
    torch.testing.assert_close(dq.double(), dq64, rtol=1e-4, atol=1e-4)

def test_reference_gradient_of_shared_queries_sums_users(seed):
    """Shared queries == per-user copies whose gradients are then summed over users."""
    q, k, v, cu, _ = make_inputs([5, 0, 9], 2, 4, 2, 32, shared=True, dtype=torch.float64,
                                 device=torch.device("cpu"))
    q1 = q.clone().requires_grad_()
    ok.varlen_cross_attention_reference(q1, k, v, cu).sum().backward()
    q3 = q.expand(3, *q.shape).clone().requires_grad_()
    ok.varlen_cross_attention_reference(q3, k, v, cu).sum().backward()
    torch.testing.assert_close(q1.grad, q3.grad.sum(0))


@pytest.mark.parametrize("backend", ["torch"] + (["triton"] if HAS_TRITON else []))
def test_beam_groups_equal_per_beam_copies(seed, backend):
    """Beam search: the W beams of a user are one query group over that user's keys (no K/V
    copy); the same as running every beam with its own copy of its user's K/V."""
    dev = TRITON_DEV if backend == "triton" else torch.device("cpu")
    lengths, beams = [40, 0, 7], 4
    q, k, v, cu, max_len = make_inputs(lengths, beams, 4, 2, 32, device=dev)  # Q = W beams x 1 token
    grouped = ok.varlen_cross_attention(q, k, v, cu, max_len, backend=backend)
    cu_l = cu.tolist()
    k_rep = torch.cat([k[cu_l[b]:cu_l[b + 1]] for b in range(3) for _ in range(beams)])
    v_rep = torch.cat([v[cu_l[b]:cu_l[b + 1]] for b in range(3) for _ in range(beams)])
    lens_rep = [n for n in lengths for _ in range(beams)]
    cu_rep = torch.tensor([0] + torch.tensor(lens_rep).cumsum(0).tolist(), dtype=torch.int32, device=dev)
    per_beam = ok.varlen_cross_attention(q.reshape(3 * beams, 1, 4, 32), k_rep, v_rep, cu_rep,
                                         max_len, backend=backend)
    torch.testing.assert_close(grouped.reshape(3 * beams, 1, 4, 32), per_beam, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch"] + (["triton"] if HAS_TRITON else []))
def test_degenerate_batches(backend):
    dev = TRITON_DEV if backend == "triton" else torch.device("cpu")
    q, k, v, cu, _ = make_inputs([0, 0], 3, 2, 2, 32, device=dev)  # nobody has keys
    q.requires_grad_()
    out = ok.varlen_cross_attention(q, k, v, cu, 0, backend=backend)
    assert out.shape == (2, 3, 2, 32) and (out == 0).all()
    if out.requires_grad:  # the reference's zeros are constants here; the kernel's are not
        out.sum().backward()
        assert (q.grad == 0).all()
    q0 = torch.randn(0, 3, 2, 32, device=dev)  # B = 0
    out0 = ok.varlen_cross_attention(q0, k, v, torch.zeros(1, dtype=torch.int32, device=dev), 0,
                                     backend=backend)
    assert out0.shape == (0, 3, 2, 32)


def _bad(**over):
    q, k, v, cu, _ = make_inputs([3, 2], 2, 4, 2, 32, device=torch.device("cpu"))
    args = dict(q=q, k=k, v=v, cu_seqlens_k=cu, max_seqlen_k=3)
    args.update(over)
    return args


BAD_INPUTS = [
    (lambda: _bad(cu_seqlens_k=torch.tensor([1, 3, 5], dtype=torch.int32)), ValueError, "start at 0"),
    (lambda: _bad(cu_seqlens_k=torch.tensor([0, 4, 3], dtype=torch.int32)), ValueError, "non-decreasing"),
    (lambda: _bad(cu_seqlens_k=torch.tensor([0, 3, 4], dtype=torch.int32)), ValueError, "end at total_k"),
    (lambda: _bad(cu_seqlens_k=torch.tensor([0, 3, 5])), TypeError, "int32"),
    (lambda: _bad(k=torch.randn(5, 3, 32), v=torch.randn(5, 3, 32)), ValueError, "multiple"),
    (lambda: _bad(q=torch.randn(2, 2, 4, 48), k=torch.randn(5, 2, 48), v=torch.randn(5, 2, 48)),
     ValueError, "Dh"),
    (lambda: _bad(k=torch.randn(5, 2, 32, dtype=torch.float16)), TypeError, "dtype"),
    (lambda: _bad(v=torch.randn(4, 2, 32)), ValueError, "shape"),
    (lambda: _bad(q=torch.randn(3, 2, 4, 32)), ValueError, "B"),
    (lambda: _bad(q=torch.randn(4, 32)), ValueError, "q must be"),
    (lambda: _bad(max_seqlen_k=-1), ValueError, "max_seqlen_k"),
    (lambda: _bad(k=torch.randn(5, 2, 64), v=torch.randn(5, 2, 64)), ValueError, "Dh"),
]


@pytest.mark.parametrize("make,exc,word", BAD_INPUTS)
def test_bad_inputs(make, exc, word):
    args = make()
    with pytest.raises(exc, match=word):
        ok.varlen_cross_attention(args.pop("q"), args.pop("k"), args.pop("v"), **args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_device_mismatch_and_garbage_cu_seqlens_stay_inside(monkeypatch):
    q, k, v, cu, _ = make_inputs([3, 2], 2, 4, 2, 32, device=torch.device("cuda"))
    with pytest.raises(ValueError, match="device"):
        ok.varlen_cross_attention(q, k, v, cu.cpu(), 3)
    # No host check on CUDA: garbage offsets are clamped into k/v (no fault, finite output).
    bad = torch.tensor([-7, 100, 2], dtype=torch.int32, device="cuda")
    out = ok.varlen_cross_attention(q, k, v, bad, 3, backend="triton")
    torch.cuda.synchronize()
    assert torch.isfinite(out).all()
    monkeypatch.setenv("ONEREC_DEBUG_CHECKS", "1")  # the checks on demand (they sync)
    with pytest.raises(ValueError, match="start at 0"):
        ok.varlen_cross_attention(q, k, v, bad, 3, backend="triton")


@needs_triton
def test_opcheck_forward_and_backward_ops(seed):
    for shared in (False, True):
        q, k, v, cu, max_len = make_inputs([3, 0, 9], 1, 2, 1, 32, shared=shared)
        q.requires_grad_(), k.requires_grad_(), v.requires_grad_()
        torch.library.opcheck(torch.ops.onerec.varlen_attn_fwd_triton.default,
                              (q, k, v, cu, max_len, 0.2))
    out, lse = torch.ops.onerec.varlen_attn_fwd_triton(q.detach(), k.detach(), v.detach(), cu, max_len, 0.2)
    torch.library.opcheck(torch.ops.onerec.varlen_attn_bwd_triton.default,
                          (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out, lse, cu,
                           max_len, 0.2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 is wrong in the Triton interpreter")
@pytest.mark.gpu
@pytest.mark.parametrize("shared", [False, True], ids=["per_user", "shared"])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_bf16_gpu(seed, shared, head_dim):
    dtype = torch.bfloat16
    q, k, v, cu, max_len = make_inputs([0, 1, 97, 1025, 2000], 16, 8, 2, head_dim, shared=shared,
                                       dtype=dtype, device=torch.device("cuda"))
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    out = ok.varlen_cross_attention(*leaves, cu, max_len, backend="triton")
    dout = torch.randn_like(out)
    out.backward(dout)
    ref_leaves = [x.double().requires_grad_() for x in (q, k, v)]
    ref64 = ok.varlen_cross_attention_reference(*ref_leaves, cu)
    ref64.backward(dout.double())
    pt_leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    pt = ok.varlen_cross_attention_reference(*pt_leaves, cu, upcast=False)
    pt.backward(dout)
    assert_fa_rule(out, ref64, pt, dtype, "bf16 out")
    for name, a, b, c in zip("qkv", leaves, ref_leaves, pt_leaves):
        assert_fa_rule(a.grad, b.grad, c.grad, dtype, f"bf16 d{name}")


def test_every_head_dim_and_dtype_has_configs():
    """The Dh limits of the tile tables leave at least one config everywhere, the AUTOTUNE=0
    choice is one config, and the AOT specs name exactly the kernels' arguments."""
    from onerec_kernels.attention import triton_kernels as tk

    tables = [(tk.FWD_TILES, tk.FWD_CONFIGS), (tk.BWD_KV_TILES, tk.BWD_KV_CONFIGS),
              (tk.BWD_Q_TILES, tk.BWD_Q_CONFIGS)]
    for tiles, configs in tables:
        for head_dim in (32, 64, 128):
            for kind in ("16bit", "tf32", "ieee"):
                assert len(tk.allowed_configs(tiles, configs, head_dim, kind)) >= 1
                assert len(tk.allowed_configs(tiles, configs, head_dim, kind, "0")) == 1
    assert tk.operand_kind(torch.bfloat16, "ieee") == "16bit"
    assert tk.operand_kind(torch.float32, "tf32") == "tf32"
    assert tk.operand_kind(torch.float32, "ieee") == "ieee"
    specs = list(tk.aot_specs(torch.float32, head_dims=(128,)))
    assert {s["name"].rsplit("_", 1)[0] for s in specs} == {
        "attn_fwd", "attn_fwd_split", "attn_combine", "attn_bwd_dkdv", "attn_bwd_dq"}
    for spec in specs:
        assert list(spec["signature"]) == spec["fn"].arg_names
        assert set(spec["divisible_by_16"]) <= set(spec["fn"].arg_names)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
@pytest.mark.parametrize("shared", [False, True], ids=["per_user", "shared"])
def test_no_host_sync_on_the_cuda_path(shared):
    """Forward (split and not) and backward never wait for the device (after the first call,
    which compiles and tunes)."""
    for lengths in ([0, 5, 300], [2000]):  # many users / one long user (split-KV)
        q, k, v, cu, max_len = make_inputs(lengths, 8, 4, 2, 64, shared=shared,
                                           dtype=torch.float16, device=torch.device("cuda"))
        leaves = [x.requires_grad_() for x in (q, k, v)]

        def run():
            out = ok.varlen_cross_attention(*leaves, cu, max_len, backend="triton")
            return torch.autograd.grad(out, leaves, torch.ones_like(out))

        run()
        torch.cuda.set_sync_debug_mode("error")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")


@needs_triton
def test_torch_compile_forward_and_backward(seed):
    torch._dynamo.reset()

    def loss(q, k, v, cu):
        return ok.varlen_cross_attention(q, k, v, cu, 40, backend="triton").square().sum()

    q, k, v, cu, _ = make_inputs([7, 0, 40], 2, 4, 2, 32)
    leaves = [x.requires_grad_() for x in (q, k, v)]
    # aot_eager: dynamo + the fake kernels + autograd tracing, without inductor's slow CPU
    # code generation (the ops themselves are opaque to inductor anyway).
    got = torch.compile(loss, fullgraph=True, backend="aot_eager")(*leaves, cu)
    grads = torch.autograd.grad(got, leaves)
    want = loss(*leaves, cu)
    want_grads = torch.autograd.grad(want, leaves)
    torch.testing.assert_close(got, want)
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w)

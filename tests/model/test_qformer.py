"""CrossAttention and QFormer against the same modules evaluated with plain padded SDPA."""
import pytest
import torch
import torch.nn.functional as F

from onerec.model.attention import CrossAttention
from onerec.model.qformer import QFormer


def packed(lengths, width, device="cpu"):
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device=device)
    return torch.randn(int(sum(lengths)), width, device=device), cu, max(lengths)


def cross_padded(mod: CrossAttention, x, memory, cu):
    """mod(x, ...) the naive way: K/V padded to the longest user, heads repeated, boolean mask
    in SDPA; users without memory get zeros (SDPA would give NaN for an all-masked row)."""
    k, v = mod.project_kv(memory)
    lengths = (cu[1:] - cu[:-1]).long()
    num_users, max_len = lengths.shape[0], int(lengths.max())
    pos = torch.arange(max_len)
    valid = pos[None, :] < lengths[:, None]
    idx = torch.where(valid, cu[:-1, None].long() + pos[None, :], 0)
    group = mod.num_heads // mod.num_kv_heads
    kp = k[idx].repeat_interleave(group, 2).transpose(1, 2)  # (B, H, L, Dh)
    vp = v[idx].repeat_interleave(group, 2).transpose(1, 2)
    q = mod.q_proj(x).unflatten(-1, (mod.num_heads, mod.head_dim))
    q = q.expand(num_users, *q.shape) if q.dim() == 3 else q
    out = F.scaled_dot_product_attention(q.transpose(1, 2), kp, vp, attn_mask=valid[:, None, None, :])
    out = torch.where((lengths > 0)[:, None, None, None], out, 0.0).transpose(1, 2)
    return mod.out_proj(out.flatten(-2))


def qformer_padded(model: QFormer, memory, cu):
    memory = model.memory_norm(memory)
    x = model.queries
    for blk in model.blocks:
        x = x + cross_padded(blk.cross, blk.norm_cross(x), memory, cu)
        x = x + blk.self_attn(blk.norm_self(x))
        x = x + blk.ffn(blk.norm_ffn(x))
    return model.out_norm(x)


@pytest.mark.parametrize("shared", [False, True], ids=["per_user", "shared"])
def test_cross_attention_matches_padded_sdpa(seed, shared):
    mod = CrossAttention(64, 2, 1, d_memory=48, backend="torch")
    memory, cu, max_len = packed([3, 0, 11, 1], 48)
    x = torch.randn((5, 64) if shared else (4, 5, 64))
    out = mod(x, cu, max_len, memory=memory)
    torch.testing.assert_close(out, cross_padded(mod, x, memory, cu), rtol=1e-5, atol=1e-5)
    # Precomputed K/V (inference: project once per user, reuse for every step and beam).
    torch.testing.assert_close(mod(x, cu, max_len, kv=mod.project_kv(memory)), out)
    with pytest.raises(ValueError, match="exactly one"):
        mod(x, cu, max_len)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_qformer_matches_padded_sdpa(seed, backend):
    from onerec_kernels import _backend

    if backend == "triton" and not (torch.cuda.is_available() or _backend.triton_interpret()):
        pytest.skip("Triton needs CUDA or the interpreter")
    dev = "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"
    model = QFormer(64, 2, num_queries=6, num_layers=2, num_kv_heads=1, d_memory=40,
                    backend=backend).to(dev)
    memory, cu, max_len = packed([0, 9, 70, 1], 40, dev)
    memory.requires_grad_()
    out = model(memory, cu, max_len)
    assert out.shape == (4, 6, 64)
    ref = qformer_padded(model, memory, cu)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    # Gradients through the kernel (shared queries of the first block included).
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [memory, model.queries], g)
    grads_ref = torch.autograd.grad(ref, [memory, model.queries], g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_unsupported_head_size_is_refused_early():
    with pytest.raises(ValueError, match="head size"):
        CrossAttention(96, 2)  # Dh = 48
    with pytest.raises(ValueError, match="multiple"):
        CrossAttention(128, 4, 3)

"""Plain-PyTorch ragged cross-attention: the oracle of the tests, the CPU path and the
benchmark anchor.

Memory stays proportional to the real keys: users are sorted by key count and processed in
chunks whose padded score block (users x H x Q x longest-in-chunk) stays under a budget, so a
batch with one long history never pads every user to it. Zero-key users are skipped (their
output rows are zeros, never NaN). Plain autograd ops throughout, so gradients come for free.
"""
from __future__ import annotations

import math

import torch

# Upper bound on the elements of one chunk's (users, H, Q, L) score block (~64 MiB of fp32).
_SCORE_BUDGET = 1 << 24


def _chunks(lengths: list[int], per_key: int, budget: int):
    """Group user indices (sorted by length) so users * max_len * per_key <= budget (at least
    one user per chunk). Yields (users, max_len)."""
    order = sorted((i for i, n in enumerate(lengths) if n > 0), key=lambda i: lengths[i])
    chunk: list[int] = []
    for i in order:
        # Sorted ascending: adding user i makes lengths[i] the chunk's longest.
        if chunk and (len(chunk) + 1) * lengths[i] * per_key > budget:
            yield chunk, lengths[chunk[-1]]
            chunk = []
        chunk.append(i)
    if chunk:
        yield chunk, lengths[chunk[-1]]


def varlen_cross_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    softmax_scale: float | None = None,
    *,
    upcast: bool = True,
    score_budget: int = _SCORE_BUDGET,
) -> torch.Tensor:
    """out[b, i, h] = softmax_j(scale * q[b, i, h] . k[s_b + j, h // G]) @ v[s_b + j, h // G]
    over the keys j < L_b of user b (s_b = cu_seqlens_k[b], G = H / H_kv).

    q: (B, Q, H, Dh) per-user queries or (Q, H, Dh) shared by every user; k, v: (total_k, H_kv,
    Dh); cu_seqlens_k: (B + 1,) int prefix sums. upcast: compute in fp32 (fp64 for fp64 inputs);
    False keeps the two matmuls in the input dtype (softmax still fp32): the "same-precision
    PyTorch" baseline of the tests. Returns (B, Q, H, Dh) in q's dtype; zero-key users get zeros.
    Reads cu_seqlens_k on the host (this is the reference, not a hot path).
    """
    shared = q.dim() == 3
    num_q, num_heads, head_dim = q.shape[-3:]
    num_kv_heads = k.shape[1]
    group = num_heads // num_kv_heads
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(head_dim)
    cu = cu_seqlens_k.tolist()
    num_users = len(cu) - 1
    lengths = [cu[b + 1] - cu[b] for b in range(num_users)]
    work = q.dtype if not upcast else (torch.float64 if q.dtype == torch.float64 else torch.float32)
    soft = torch.float64 if q.dtype == torch.float64 else torch.float32

    # (.., Q, H, Dh) -> (.., H_kv, G*Q, Dh): the G query heads of one K/V head share its keys.
    def by_kv_head(x):
        x = x.to(work).movedim(-3, -2)  # (.., H, Q, Dh)
        return x.reshape(*x.shape[:-3], num_kv_heads, group * num_q, head_dim)

    q_all = by_kv_head(q)
    out = q.new_zeros((num_users, num_kv_heads, group * num_q, head_dim), dtype=work)
    done_users, done_out = [], []
    for users, max_len in _chunks(lengths, num_heads * num_q, score_budget):
        n = len(users)
        starts = torch.tensor([cu[b] for b in users], device=k.device)
        lens = torch.tensor([lengths[b] for b in users], device=k.device)
        pos = torch.arange(max_len, device=k.device)
        valid = pos[None, :] < lens[:, None]  # (n, L)
        idx = torch.where(valid, starts[:, None] + pos[None, :], 0)
        kc = k.to(work)[idx].permute(0, 2, 3, 1)  # (n, H_kv, Dh, L)
        vc = v.to(work)[idx].transpose(1, 2)  # (n, H_kv, L, Dh)
        qc = q_all if shared else q_all[users]
        scores = (qc @ kc).to(soft) * scale  # (n, H_kv, G*Q, L)
        scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
        p = torch.softmax(scores, dim=-1).to(work)
        done_users += users
        done_out.append(p @ vc)
    if done_users:  # one scatter (out of place: autograd) for all chunks
        out = out.index_put((torch.tensor(done_users, device=out.device),), torch.cat(done_out))
    out = out.reshape(num_users, num_kv_heads * group, num_q, head_dim).transpose(1, 2)
    return out.to(q.dtype)

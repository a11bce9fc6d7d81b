"""Plain-PyTorch MoE: routing, alignment and the expert FFN. The oracle of the tests, the CPU
path, and the semantics every other backend must match.

Shapes: T tokens, d model width, h expert hidden width, E experts, k experts per token; a
"slot" is one (token, choice) pair, flat index s = t * k + j, so there are T * k slots.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SCORE_FUNCS = ("softmax", "sigmoid")
ACTIVATIONS = ("swiglu", "gelu")
# Selection value of experts that must lose to every real score (NaN score, -inf): the lowest
# finite float, so they still rank above the "already taken" marker (-inf) in the kernels and
# fill the remaining slots in id order when fewer than k experts have a usable score.
SELECT_FLOOR = torch.finfo(torch.float32).min


def route_scores(router_logits: torch.Tensor, score_func: str) -> torch.Tensor:
    """(T, E) expert scores in fp32 (fp64 for fp64 logits). NaN logits are masked to -inf first,
    so one NaN expert does not poison its row: under softmax its score is 0, under sigmoid 0.
    Rows whose scores are still NaN (all logits NaN or -inf under softmax, or a +inf logit)
    keep the NaN; `route_selection` and the weights treat it as unusable."""
    work = torch.float64 if router_logits.dtype == torch.float64 else torch.float32
    logits = router_logits.to(work)
    logits = logits.masked_fill(logits.isnan(), -math.inf)
    if score_func == "softmax":
        # Written out (not F.softmax) so the Triton kernel can follow it operation for operation,
        # including the NaN of an all -inf row.
        e = torch.exp(logits - logits.amax(dim=1, keepdim=True))
        return e / e.sum(dim=1, keepdim=True)
    return torch.sigmoid(logits)


def route_selection(scores: torch.Tensor, router_logits: torch.Tensor,
                    bias: torch.Tensor | None) -> torch.Tensor:
    """Selection values: score + bias, with NaN logits, NaN scores and -inf mapped to
    SELECT_FLOOR (never chosen over a usable expert)."""
    sel = scores if bias is None else scores + bias.to(scores.dtype)
    bad = router_logits.isnan() | sel.isnan() | (sel == -math.inf)
    return sel.masked_fill(bad, SELECT_FLOOR)


def route_weights(scores: torch.Tensor, topk_ids: torch.Tensor, renormalize: bool) -> torch.Tensor:
    """Routing weights of the chosen experts from the unbiased scores (differentiable in
    `scores`): NaN scores give weight 0; renormalized rows sum to 1 unless all are 0."""
    w = scores.gather(1, topk_ids)
    w = torch.where(w.isnan(), torch.zeros_like(w), w)
    if renormalize:
        total = w.sum(dim=1, keepdim=True)
        w = w / torch.where(total > 0, total, torch.ones_like(total))
    return w


def moe_route_reference(router_logits: torch.Tensor, top_k: int, score_func: str = "softmax",
                        bias: torch.Tensor | None = None, renormalize: bool = True
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k expert choice per token (see `onerec_kernels.moe_route` for the contract).

    router_logits (T, E), bias (E,) or None. Returns topk_weights (T, k) float32 (float64 for
    float64 logits), differentiable in router_logits, and topk_ids (T, k) int64, best first;
    ties go to the lower expert id (a stable descending sort)."""
    scores = route_scores(router_logits, score_func)
    with torch.no_grad():
        sel = route_selection(scores, router_logits, bias)
        topk_ids = torch.sort(sel, dim=1, descending=True, stable=True).indices[:, :top_k]
    return route_weights(scores, topk_ids, renormalize), topk_ids


def moe_align_reference(topk_ids: torch.Tensor, num_experts: int, block_m: int
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Slots sorted by expert, each expert's run padded to a multiple of block_m.

    topk_ids (T, k) int. With n = T * k slots and the static bound
    num_blocks = (n + E * (block_m - 1)) // block_m (no device-to-host sync to size anything):
      sorted_slot_ids (num_blocks * block_m,) int32: flat slot ids s = t * k + j grouped by
          expert (ascending expert, ascending s inside one), each group padded with n (the
          "no slot" marker) up to a multiple of block_m; the unused tail is n too.
      block_expert_ids (num_blocks,) int32: the expert of each block_m-row block, E for blocks
          past the end (the kernels skip them).
      expert_starts (E,) int32: where each expert's group starts in sorted_slot_ids.
      tokens_per_expert (E,) int64: slots routed to each expert.
    Ids outside [0, E) are left out of every group (the public op rejects them beforehand)."""
    n = topk_ids.numel()
    dev = topk_ids.device
    flat = topk_ids.reshape(-1).long()
    key = torch.where((flat >= 0) & (flat < num_experts), flat, num_experts)  # E: dropped
    counts = torch.zeros(num_experts + 1, dtype=torch.int64, device=dev)
    counts.scatter_add_(0, key, torch.ones_like(key))
    tokens_per_expert = counts[:num_experts]
    padded = (tokens_per_expert + block_m - 1) // block_m * block_m
    padded_end = torch.cumsum(padded, 0)
    starts = padded_end - padded
    num_blocks = (n + num_experts * (block_m - 1)) // block_m
    length = num_blocks * block_m

    order = torch.argsort(key, stable=True)
    sorted_key = key[order]
    group_start = torch.cumsum(counts, 0) - counts  # unpadded start of each key's run
    rank = torch.arange(n, device=dev) - group_start[sorted_key]
    # Dropped slots go to a scratch position past the end, so no boolean indexing (no sync).
    starts_ext = torch.cat([starts, starts.new_full((1,), length)])
    dest = torch.where(sorted_key < num_experts, starts_ext[sorted_key] + rank,
                       torch.full_like(rank, length))
    sorted_ids = torch.full((length + 1,), n, dtype=torch.int32, device=dev)
    sorted_ids.scatter_(0, dest, order.to(torch.int32))
    block_pos = torch.arange(num_blocks, device=dev) * block_m
    block_expert = torch.searchsorted(padded_end, block_pos, right=True).to(torch.int32)
    return sorted_ids[:length], block_expert, starts.to(torch.int32), tokens_per_expert


def apply_activation(z: torch.Tensor, activation: str) -> torch.Tensor:
    """swiglu: z = [gate | up] (..., 2h) -> silu(gate) * up (..., h); gelu: exact (erf) GELU."""
    if activation == "swiglu":
        gate, up = z.chunk(2, dim=-1)
        return F.silu(gate) * up
    return F.gelu(z, approximate="none")


def fused_moe_reference(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
                        topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                        activation: str = "swiglu") -> torch.Tensor:
    """y[t] = sum_j topk_weights[t, j] * act(x[t] @ w1[e]) @ w2[e], e = topk_ids[t, j].

    Vectorized the way a CPU user runs it: slots sorted by expert, one (x_e @ w1[e]) and one
    (a_e @ w2[e]) matmul per expert in x's dtype, weighted rows summed per token in fp32 and
    rounded to x's dtype. Differentiable in x, w1, w2 and topk_weights by autograd. Reads the
    per-expert counts on the host (a sync on CUDA: this is the oracle, not the fast path).
    """
    num_tokens, d = x.shape
    num_experts, top_k = w1.shape[0], topk_ids.shape[1]
    flat = topk_ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    token = order // top_k
    counts = torch.bincount(flat, minlength=num_experts).tolist()
    xs = x[token]
    outs = []
    start = 0
    for e, c in enumerate(counts):
        if c:
            a = apply_activation(xs[start:start + c] @ w1[e], activation)
            outs.append(a @ w2[e])
        start += c
    if not outs:  # no slots: a zero-row product keeps y in the graph (zero gradients)
        outs.append(apply_activation(xs @ w1[0], activation) @ w2[0])
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    y = torch.zeros((num_tokens, d), dtype=acc, device=x.device)
    o = torch.cat(outs).to(acc) * topk_weights.reshape(-1)[order].to(acc).unsqueeze(1)
    return y.index_add(0, token, o).to(x.dtype)


def route_weights_backward(router_logits: torch.Tensor, topk_ids: torch.Tensor,
                           grad_weights: torch.Tensor, score_func: str, renormalize: bool
                           ) -> torch.Tensor:
    """d(topk_weights)/d(router_logits) applied to grad_weights, written out (no autograd
    inside, so torch.compile traces it as plain ops). Same formulas as route_weights: NaN
    scores carry no gradient. Returns (T, E) in the logits' dtype."""
    scores = route_scores(router_logits, score_func)
    g = grad_weights.to(scores.dtype)
    w = scores.gather(1, topk_ids)
    usable = ~w.isnan()
    w = torch.where(usable, w, torch.zeros_like(w))
    if renormalize:
        total = w.sum(dim=1, keepdim=True)
        pos = total > 0
        safe = torch.where(pos, total, torch.ones_like(total))
        # w_j / S: d/dw_i = (g_i - sum_j g_j w_j / S) / S
        g = torch.where(pos, (g - (g * w).sum(dim=1, keepdim=True) / safe) / safe, g)
    g = torch.where(usable, g, torch.zeros_like(g))
    grad_scores = torch.zeros_like(scores).scatter_add_(1, topk_ids, g)
    finite = ~scores.isnan()
    s = torch.where(finite, scores, torch.zeros_like(scores))
    if score_func == "softmax":
        grad = s * (grad_scores - (grad_scores * s).sum(dim=1, keepdim=True))
    else:
        grad = grad_scores * s * (1.0 - s)
    return torch.where(finite, grad, torch.zeros_like(grad)).to(router_logits.dtype)

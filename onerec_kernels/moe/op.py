"""`moe_route`, `moe_align`, `fused_moe`: public functions, custom ops, fake kernels, autograd.

Layering (as rq/): one private custom op per raw step (`onerec::moe_route_triton`,
`onerec::moe_align` / `onerec::moe_align_triton`, `onerec::fused_moe_triton` (alignment + the
forward GEMMs) and its backward `onerec::fused_moe_triton_bwd`), each with a fake kernel so
torch.compile traces through it (the alignment's sizes are static upper bounds, so nothing is
data dependent); the forward ops carry their autograd formulas.

Input checks that need the values of a device tensor (expert ids in range) never sync the
GPU: on CPU tensors they run eagerly (free); on CUDA tensors they are a device-side assert
(`torch._assert_async`, reported at the next synchronization), or an eager check when
ONEREC_MOE_CHECKS=1 (debugging). The kernels never read out of bounds either way: slots with an
out-of-range id are left out of the alignment and contribute nothing.
"""
from __future__ import annotations

import os
from typing import NamedTuple, Optional

import torch

from .. import _backend
from .._checks import FLOATS, check_dim, check_positive, check_same, check_tensor
from .reference import (ACTIVATIONS, SCORE_FUNCS, fused_moe_reference, moe_align_reference,
                        moe_route_reference, route_weights_backward)

SUPPORTED = ("torch", "triton")
DEFAULT_ORDER = {"cuda": ("triton", "torch"), "cpu": ("torch",)}
IDS = (torch.int32, torch.int64)


class MoeAlignment(NamedTuple):
    """The sorted, block-padded slot layout of `moe_align` (see moe_align_reference)."""
    sorted_slot_ids: torch.Tensor  # (num_blocks * block_m,) int32
    block_expert_ids: torch.Tensor  # (num_blocks,) int32, E past the end
    expert_starts: torch.Tensor  # (E,) int32
    tokens_per_expert: torch.Tensor  # (E,) int64


def _check_ids(op: str, topk_ids: torch.Tensor, num_experts: int) -> None:
    """ids in [0, E): eager on CPU or with ONEREC_MOE_CHECKS=1, a device assert on CUDA."""
    if topk_ids.numel() == 0:
        return
    if topk_ids.device.type == "cpu" or os.environ.get("ONEREC_MOE_CHECKS", "0") == "1":
        lo, hi = int(topk_ids.min()), int(topk_ids.max())
        if lo < 0 or hi >= num_experts:
            raise ValueError(f"{op}: topk_ids must lie in [0, {num_experts}) (num_experts), got "
                             f"values in [{lo}, {hi}]")
    else:
        torch._assert_async(((topk_ids >= 0) & (topk_ids < num_experts)).all(),
                            f"{op}: topk_ids outside [0, {num_experts})")


# ------------------------------------------------------------------------------------- routing
@torch.library.custom_op("onerec::moe_route_triton", mutates_args=())
def _moe_route_triton_op(router_logits: torch.Tensor, top_k: int, score_func: str,
                         bias: Optional[torch.Tensor], renormalize: bool
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    from .triton_kernels import moe_route_triton  # triton is imported on first use only

    return moe_route_triton(router_logits, top_k, score_func == "softmax", bias, renormalize)


@_moe_route_triton_op.register_fake
def _(router_logits, top_k, score_func, bias, renormalize):
    t = router_logits.shape[0]
    return (router_logits.new_empty((t, top_k), dtype=torch.float32),
            router_logits.new_empty((t, top_k), dtype=torch.int64))


def _route_setup(ctx, inputs, output):
    router_logits, _, score_func, _, renormalize = inputs
    ctx.save_for_backward(router_logits, output[1])
    ctx.score_func, ctx.renormalize = score_func, renormalize


def _route_backward(ctx, grad_weights, grad_ids):
    router_logits, topk_ids = ctx.saved_tensors
    grad = route_weights_backward(router_logits, topk_ids, grad_weights, ctx.score_func,
                                  ctx.renormalize)
    return grad, None, None, None, None


_moe_route_triton_op.register_autograd(_route_backward, setup_context=_route_setup)


def moe_route(router_logits: torch.Tensor, top_k: int, *, score_func: str = "softmax",
              bias: torch.Tensor | None = None, renormalize: bool = True,
              backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick k experts per token: score, add the balancing bias, top-k, weights, renormalize.

    Args:
        router_logits: (T, E) float32 / float16 / bfloat16 (float64 on the torch backend); T may
            be 0, E >= 1.
        top_k: experts per token, 1 <= k <= E.
        score_func: "softmax" (over the E logits) or "sigmoid" (per expert).
        bias: (E,) float or None, added to the scores for *selection only* (loss-free
            balancing); the weights come from the unbiased scores.
        renormalize: divide each token's k weights by their sum.
        backend: "torch" | "triton" | None (Triton on CUDA, torch on CPU; ONEREC_BACKEND).

    Returns:
        topk_weights: (T, k) float32 (differentiable with respect to router_logits),
        topk_ids: (T, k) int64 in [0, E), best first. Ties go to the lower expert id; ids from
        different backends may differ only at genuine near-ties (the scores' rounding).

    Non-finite logits (the same on every backend): a NaN logit is masked to -inf before scoring
    (its expert's score is 0) and is never selected over an expert with a usable score; a NaN
    score (softmax of a row that is all NaN / -inf or holds +inf) is never selected either and
    has weight 0. If fewer than k experts are usable, the remaining choices take the lowest
    unused ids with weight 0 (a renormalized row of only such choices stays all 0).
    """
    op = "moe_route"
    check_tensor(op, "router_logits", router_logits, ndim=2, dtypes=FLOATS + (torch.float64,))
    num_tokens, num_experts = router_logits.shape
    check_positive(op, "router_logits.shape[1]", num_experts, "E, the number of experts")
    if not isinstance(top_k, int) or not 1 <= top_k <= num_experts:
        raise ValueError(f"{op}: top_k must be an int in [1, {num_experts}] (E), got {top_k!r}")
    if score_func not in SCORE_FUNCS:
        raise ValueError(f"{op}: score_func must be one of {SCORE_FUNCS}, got {score_func!r}")
    if bias is not None:
        check_tensor(op, "bias", bias, ndim=1, dtypes=FLOATS + (torch.float64,))
        check_same(op, ("router_logits", "bias"), (router_logits, bias), dtype=False)
        check_dim(op, "bias", bias, 0, num_experts, "E, router_logits.shape[1]")
    backend = _backend.resolve(op, backend, router_logits.device, SUPPORTED, DEFAULT_ORDER)
    if backend == "triton" and router_logits.dtype == torch.float64:
        raise TypeError(f"{op}: the triton backend takes float32/16/bf16 router_logits, "
                        "got float64")
    if backend == "torch" or num_tokens == 0:
        w, ids = moe_route_reference(router_logits, top_k, score_func, bias, renormalize)
        return (w if router_logits.dtype == torch.float64 else w.float()), ids
    if router_logits.stride(1) != 1:
        router_logits = router_logits.contiguous()
    if bias is not None:
        bias = bias.float().contiguous()
    return _moe_route_triton_op(router_logits, top_k, score_func, bias, renormalize)


# ----------------------------------------------------------------------------------- alignment
def _align_fake(topk_ids, num_experts, block_m):
    n = topk_ids.numel()
    num_blocks = (n + num_experts * (block_m - 1)) // block_m
    new = topk_ids.new_empty
    return (new((num_blocks * block_m,), dtype=torch.int32), new((num_blocks,), dtype=torch.int32),
            new((num_experts,), dtype=torch.int32), new((num_experts,), dtype=torch.int64))


@torch.library.custom_op("onerec::moe_align", mutates_args=())
def _moe_align_op(topk_ids: torch.Tensor, num_experts: int, block_m: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_ids("moe_align", topk_ids, num_experts)
    sorted_ids, block_expert, starts, counts = moe_align_reference(topk_ids, num_experts, block_m)
    return sorted_ids.clone(), block_expert, starts, counts  # clone: not a view of scratch


@torch.library.custom_op("onerec::moe_align_triton", mutates_args=())
def _moe_align_triton_op(topk_ids: torch.Tensor, num_experts: int, block_m: int
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _align_triton(topk_ids, num_experts, block_m)


_moe_align_op.register_fake(_align_fake)
_moe_align_triton_op.register_fake(_align_fake)


def moe_align(topk_ids: torch.Tensor, num_experts: int, block_m: int, *,
              backend: str | None = None) -> MoeAlignment:
    """The slot layout the grouped kernels run on: slots (t * k + j) sorted by expert, each
    expert's run padded to a multiple of block_m, sized by static upper bounds (no sync).

    Args:
        topk_ids: (T, k) int32 / int64 in [0, E) (checked: eagerly on CPU, by a device-side
            assert on CUDA; see the module docstring).
        num_experts: E >= 1. block_m: rows per block, >= 1.
        backend: "torch" | "triton" | None (Triton on CUDA); both give identical tensors.
    Returns a MoeAlignment (fields and shapes in moe_align_reference's docstring); its
    tokens_per_expert (E,) int64 are the per-expert loads (what the balancing update reads).
    """
    op = "moe_align"
    check_tensor(op, "topk_ids", topk_ids, ndim=2, dtypes=IDS)
    check_positive(op, "num_experts", num_experts, "E")
    check_positive(op, "block_m", block_m, "the block size")
    backend = _backend.resolve(op, backend, topk_ids.device, SUPPORTED, DEFAULT_ORDER)
    align = _moe_align_triton_op if backend == "triton" else _moe_align_op
    return MoeAlignment(*align(topk_ids, num_experts, block_m))


# ------------------------------------------------------------------------------ expert FFN
def _tiles(num_slots: int, num_experts: int, device: torch.device) -> dict:
    from .triton_kernels import pick_tiles

    return pick_tiles(num_slots, num_experts, device)


def _align_triton(topk_ids: torch.Tensor, num_experts: int, block_m: int):
    from .triton_kernels import moe_align_triton

    eager = topk_ids.device.type == "cpu" or os.environ.get("ONEREC_MOE_CHECKS", "0") == "1"
    if eager:
        _check_ids("moe_align", topk_ids, num_experts)
    *layout, num_bad = moe_align_triton(topk_ids.contiguous(), num_experts, block_m)
    if not eager:  # the count kernel tallied the out-of-range ids: one compare + assert
        torch._assert_async(num_bad[0] == 0, f"moe_align: topk_ids outside [0, {num_experts})")
    return tuple(layout)


# The forward op aligns the slots itself: the block size comes from the tile table, which reads
# the GPU's name, so it must be picked inside an op (its fake kernel too runs as plain Python
# under torch.compile) rather than in the traced public function. The layout is returned for
# the backward (integer outputs: no gradient).
@torch.library.custom_op("onerec::fused_moe_triton", mutates_args=())
def _fused_moe_triton_op(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
                         topk_weights: torch.Tensor, topk_ids: torch.Tensor, activation: str,
                         store_z: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                 torch.Tensor, torch.Tensor, torch.Tensor,
                                                 torch.Tensor]:
    from .triton_kernels import fused_moe_fwd_triton

    tiles = _tiles(topk_ids.numel(), w1.shape[0], x.device)
    layout = _align_triton(topk_ids, w1.shape[0], tiles["BLOCK_M"])
    y, act, z = fused_moe_fwd_triton(x, w1, w2, topk_weights, layout[0], layout[1], activation,
                                     topk_ids.shape[1], store_z, tiles)
    return (y, act, z, *layout)


@_fused_moe_triton_op.register_fake
def _(x, w1, w2, topk_weights, topk_ids, activation, store_z):
    n = topk_ids.numel()
    h = w2.shape[1]
    block_m = _tiles(n, w1.shape[0], x.device)["BLOCK_M"]
    return (x.new_empty(x.shape), x.new_empty((n, h)),
            x.new_empty((n if store_z else 0, w1.shape[2])),
            *_align_fake(topk_ids, w1.shape[0], block_m))


@torch.library.custom_op("onerec::fused_moe_triton_bwd", mutates_args=())
def _fused_moe_triton_bwd_op(grad_y: torch.Tensor, x: torch.Tensor, w1: torch.Tensor,
                             w2: torch.Tensor, topk_weights: torch.Tensor, act: torch.Tensor,
                             z: torch.Tensor, sorted_ids: torch.Tensor,
                             block_expert: torch.Tensor, expert_starts: torch.Tensor,
                             tokens_per_expert: torch.Tensor, activation: str, top_k: int
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from .triton_kernels import fused_moe_bwd_triton

    tiles = _tiles(topk_weights.numel(), w1.shape[0], x.device)
    return fused_moe_bwd_triton(grad_y, x, w1, w2, topk_weights, act, z, sorted_ids,
                                block_expert, expert_starts, tokens_per_expert, activation,
                                top_k, tiles)


@_fused_moe_triton_bwd_op.register_fake
def _(grad_y, x, w1, w2, topk_weights, act, z, sorted_ids, block_expert, expert_starts,
      tokens_per_expert, activation, top_k):
    return (x.new_empty(x.shape), w1.new_empty(w1.shape), w2.new_empty(w2.shape),
            topk_weights.new_empty(topk_weights.shape))


def _moe_setup(ctx, inputs, output):
    x, w1, w2, topk_weights, topk_ids, activation, _ = inputs
    _, act, z, sorted_ids, block_expert, starts, counts = output
    ctx.save_for_backward(x, w1, w2, topk_weights, act, z, sorted_ids, block_expert, starts,
                          counts)
    ctx.activation, ctx.top_k = activation, topk_ids.shape[1]


def _moe_backward(ctx, grad_y, *_):
    x, w1, w2, topk_weights, act, z, sorted_ids, block_expert, starts, counts = ctx.saved_tensors
    if z.shape[0] != act.shape[0]:
        raise RuntimeError("fused_moe: backward through a forward that ran without gradients "
                           "(the pre-activations were not kept)")
    gx, gw1, gw2, gw = _fused_moe_triton_bwd_op(
        grad_y.contiguous().to(x.dtype), x, w1, w2, topk_weights, act, z, sorted_ids,
        block_expert, starts, counts, ctx.activation, ctx.top_k)
    return gx, gw1, gw2, gw, None, None, None


_fused_moe_triton_op.register_autograd(_moe_backward, setup_context=_moe_setup)


def _validate_moe(x, w1, w2, topk_weights, topk_ids, activation) -> None:
    op = "fused_moe"
    check_tensor(op, "x", x, ndim=2, dtypes=FLOATS + (torch.float64,))
    check_tensor(op, "w1", w1, ndim=3, dtypes=FLOATS + (torch.float64,))
    check_tensor(op, "w2", w2, ndim=3, dtypes=FLOATS + (torch.float64,))
    check_tensor(op, "topk_weights", topk_weights, ndim=2, dtypes=FLOATS + (torch.float64,))
    check_tensor(op, "topk_ids", topk_ids, ndim=2, dtypes=IDS)
    check_same(op, ("x", "w1", "w2"), (x, w1, w2))
    check_same(op, ("x", "topk_weights", "topk_ids"), (x, topk_weights, topk_ids), dtype=False)
    if activation not in ACTIVATIONS:
        raise ValueError(f"{op}: activation must be one of {ACTIVATIONS}, got {activation!r}")
    num_tokens, d = x.shape
    num_experts, h = w2.shape[0], w2.shape[1]
    check_positive(op, "x.shape[1]", d, "d, the model width")
    check_positive(op, "w1.shape[0]", num_experts, "E, the number of experts")
    check_positive(op, "w2.shape[1]", h, "h, the expert hidden width")
    check_dim(op, "w1", w1, 0, num_experts, "E, w2.shape[0]")
    check_dim(op, "w1", w1, 1, d, "d, x.shape[1]")
    check_dim(op, "w1", w1, 2, 2 * h if activation == "swiglu" else h,
              f"{'2h: [gate | up]' if activation == 'swiglu' else 'h'}, from w2.shape[1]")
    check_dim(op, "w2", w2, 2, d, "d, x.shape[1]")
    check_dim(op, "topk_weights", topk_weights, 0, num_tokens, "T, x.shape[0]")
    if topk_ids.shape != topk_weights.shape:
        raise ValueError(f"{op}: topk_ids must have the shape of topk_weights "
                         f"{tuple(topk_weights.shape)}, got {tuple(topk_ids.shape)}")
    top_k = topk_ids.shape[1]
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"{op}: k = topk_ids.shape[1] must be in [1, {num_experts}] (E), "
                         f"got {top_k}")
    if topk_ids.numel() >= 2 ** 31 - num_experts * 256:
        raise ValueError(f"{op}: T * k ({topk_ids.numel()}) must stay below 2^31 (int32 slot ids)")


def fused_moe(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor, *, activation: str = "swiglu",
              backend: str | None = None) -> torch.Tensor:
    """Mixture-of-experts FFN over routed tokens.

    y[t] = sum_j topk_weights[t, j] * act(x[t] @ w1[e]) @ w2[e], e = topk_ids[t, j].

    Args:
        x: (T, d) float32 / float16 / bfloat16 (float64 on the torch backend); T may be 0.
        w1: (E, d, 2h) for "swiglu" ([gate | up] along the last dim), (E, d, h) for "gelu".
        w2: (E, h, d). Same dtype and device as x.
        topk_weights: (T, k) float (float32 from moe_route), 1 <= k <= E.
        topk_ids: (T, k) int32 / int64 in [0, E) (checked without a device sync, see module).
        activation: "swiglu" (silu(gate) * up) or "gelu" (exact erf form).
        backend: "torch" | "triton" | None (Triton on CUDA, torch on CPU; ONEREC_BACKEND).

    Returns y (T, d) in x's dtype; fp32 accumulation in the GEMMs and the combine. The
    activations are rounded to x's dtype between the two GEMMs (as a PyTorch pipeline at that
    precision does). Differentiable with respect to x, w1, w2 and topk_weights (Triton: a
    custom backward of grouped GEMMs; torch: autograd through the reference).
    """
    _validate_moe(x, w1, w2, topk_weights, topk_ids, activation)
    backend = _backend.resolve("fused_moe", backend, x.device, SUPPORTED, DEFAULT_ORDER)
    num_experts = w1.shape[0]
    if backend == "torch":
        _check_ids("fused_moe", topk_ids, num_experts)
        return fused_moe_reference(x, w1, w2, topk_weights, topk_ids, activation)
    if x.dtype == torch.float64:
        raise TypeError("fused_moe: the triton backend takes float32/16/bf16 x, got float64")
    needs_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (x, w1, w2, topk_weights))
    return _fused_moe_triton_op(x.contiguous(), w1.contiguous(), w2.contiguous(),
                                topk_weights.float().contiguous(), topk_ids, activation,
                                needs_grad)[0]

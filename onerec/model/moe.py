"""Mixture-of-experts FFN layer (OneRec's decoder FFN) with loss-free load balancing, and its
expert-parallel form across ranks.

Legend: T tokens (all leading dims flattened), d model width, h expert hidden width, E experts,
k experts per token, W ranks of the expert-parallel group, E_local = E / W.

Loss-free balancing (DeepSeek-V3): a per-expert bias b is added to the router scores for
*selection only*. After each optimizer step, `update_balancing_bias` moves it by
b_e += gamma * sign(mean_load - load_e), where load_e counts the slots routed to expert e since
the last update. The bias is a buffer, so checkpoints (state_dict) carry it; the pending counts
are not (they restart from zero after loading). The counts are accumulated on the device with no
host sync; `load_stats` (for logging) is the one place that reads them to the host.

Expert parallel (`expert_group`): each rank owns E_local consecutive experts (w1, w2 hold only
those) and routes its own tokens with the replicated router. Counts go first (one
all_to_all_single of W integers, read on the host to size the exchange: the only sync), then
each slot's token row to the rank that owns its expert (all_to_all_single with uneven splits),
the owner runs `fused_moe` over what it received (k = 1 per received row, weight 1), and the
unweighted outputs travel back the same way; the home rank applies the routing weights and sums
the k choices. The backward runs the same exchanges in reverse (autograd through `_AllToAll`).

Composition with data parallel: the expert-parallel group is normally the data-parallel group
itself (every rank holds different tokens). Expert weights then get complete gradients from
the exchange (every token that used an expert sent its gradient to the owner) and must NOT be
all-reduced; every other parameter (router, shared expert, attention, embeddings) is replicated
and all-reduced as in plain data parallel, e.g. DDP over the model with the expert weights
excluded (`expert_parameter_names` lists them for DDP's `_ddp_params_and_buffers_to_ignore`
or a manual all-reduce). With EP smaller than DP (EP groups of W ranks replicated D/W times),
expert gradients are additionally all-reduced over the ranks that hold the same shard.
The balancing counts are summed over `balance_group` (default: the expert group) before the
bias update, so every rank keeps the same bias.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import onerec_kernels as ok


class MoE(nn.Module):
    """Router + `moe_route` + `fused_moe` (+ an optional shared expert).

    Args:
        d_model: d. d_hidden: h, each expert's hidden width.
        num_experts: E. top_k: k experts per token.
        activation: "swiglu" (w1 holds [gate | up]) or "gelu".
        score_func: "softmax" or "sigmoid" router scores. renormalize: top-k weights sum to 1.
        num_shared_experts: experts every token uses (one dense FFN of width
            num_shared_experts * h), added to the routed output.
        bias_update_rate: gamma of the balancing update (0 disables it).
        expert_group: torch.distributed group for expert parallelism (None: all experts here).
        backend: kernel backend for moe_route / fused_moe (None: Triton on CUDA, else torch).
    Input (..., d); output the same shape and dtype.
    """

    def __init__(self, d_model: int, d_hidden: int, num_experts: int, top_k: int, *,
                 activation: str = "swiglu", score_func: str = "softmax",
                 renormalize: bool = True, num_shared_experts: int = 0,
                 bias_update_rate: float = 1e-3, expert_group=None, balance_group=None,
                 backend: str | None = None, device=None, dtype=None):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"MoE: top_k must be in [1, {num_experts}] (num_experts), got {top_k}")
        if activation not in ("swiglu", "gelu"):
            raise ValueError(f"MoE: activation must be 'swiglu' or 'gelu', got {activation!r}")
        world = dist.get_world_size(expert_group) if expert_group is not None else 1
        rank = dist.get_rank(expert_group) if expert_group is not None else 0
        if num_experts % world:
            raise ValueError(f"MoE: num_experts ({num_experts}) must be divisible by the expert "
                             f"group size ({world})")
        self.d_model, self.d_hidden = d_model, d_hidden
        self.num_experts, self.top_k = num_experts, top_k
        self.activation, self.score_func, self.renormalize = activation, score_func, renormalize
        self.bias_update_rate = bias_update_rate
        self.expert_group = expert_group
        self.balance_group = balance_group if balance_group is not None else expert_group
        self.backend = backend
        self.num_local_experts = num_experts // world
        self.first_local_expert = rank * self.num_local_experts
        factory = {"device": device, "dtype": dtype}
        c = 2 if activation == "swiglu" else 1
        self.router = nn.Linear(d_model, num_experts, bias=False, **factory)
        self.w1 = nn.Parameter(torch.empty(self.num_local_experts, d_model, c * d_hidden,
                                           **factory))
        self.w2 = nn.Parameter(torch.empty(self.num_local_experts, d_hidden, d_model, **factory))
        self.shared = None
        if num_shared_experts > 0:
            hs = num_shared_experts * d_hidden
            self.shared = nn.ModuleDict({"up": nn.Linear(d_model, c * hs, bias=False, **factory),
                                         "down": nn.Linear(hs, d_model, bias=False, **factory)})
        # Selection-only bias (checkpointed) and the slots per expert since the last update.
        self.register_buffer("expert_bias", torch.zeros(num_experts, device=device))
        self.register_buffer("pending_load", torch.zeros(num_experts, device=device),
                             persistent=False)
        self.register_buffer("last_load", torch.zeros(num_experts, device=device),
                             persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.w1, std=1.0 / math.sqrt(self.d_model))
        nn.init.normal_(self.w2, std=1.0 / math.sqrt(self.d_hidden))
        nn.init.normal_(self.router.weight, std=1.0 / math.sqrt(self.d_model))

    def route(self, x_TD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(topk_weights (T, k) fp32, topk_ids (T, k) int64); the router runs in fp32."""
        logits_TE = F.linear(x_TD.float(), self.router.weight.float())
        return ok.moe_route(logits_TE, self.top_k, score_func=self.score_func,
                            bias=self.expert_bias, renormalize=self.renormalize,
                            backend=self.backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x_TD = x.reshape(-1, self.d_model)
        weights_TK, ids_TK = self.route(x_TD)
        if self.training:
            with torch.no_grad():
                flat = ids_TK.reshape(-1)
                load = torch.zeros_like(self.pending_load).index_add_(
                    0, flat, torch.ones_like(flat, dtype=self.pending_load.dtype))
                self.pending_load += load
                self.last_load.copy_(load)
        w1, w2 = self.w1, self.w2
        dev = x_TD.device.type
        if torch.is_autocast_enabled(dev):
            # fused_moe is not an autocast op: run the experts in the autocast dtype, as
            # autocast runs a Linear (the router above stays fp32).
            dtype = torch.get_autocast_dtype(dev)
            x_TD, w1, w2 = x_TD.to(dtype), w1.to(dtype), w2.to(dtype)
        if self.expert_group is None:
            y_TD = ok.fused_moe(x_TD, w1, w2, weights_TK, ids_TK,
                                activation=self.activation, backend=self.backend)
        else:
            y_TD = expert_parallel_moe(x_TD, w1, w2, weights_TK, ids_TK,
                                       self.num_experts, self.activation, self.expert_group,
                                       self.backend)
        if self.shared is not None:
            z = self.shared["up"](x_TD)
            if self.activation == "swiglu":
                gate, up = z.chunk(2, dim=-1)
                y_TD = y_TD + self.shared["down"](F.silu(gate) * up)
            else:
                y_TD = y_TD + self.shared["down"](F.gelu(z))
        return y_TD.reshape(shape)

    @torch.no_grad()
    def update_balancing_bias(self) -> None:
        """b_e += gamma * sign(mean_load - load_e) over the slots counted since the last call
        (summed over balance_group), then restart the count. Call after each optimizer step
        (`attach_balancing` registers it as an optimizer hook). No host sync."""
        load = self.pending_load
        if self.balance_group is not None:
            dist.all_reduce(load, group=self.balance_group)
        self.expert_bias += self.bias_update_rate * torch.sign(load.mean() - load)
        self.pending_load.zero_()

    def load_stats(self) -> dict:
        """Load of the last training forward, for logging (reads the device: a sync):
        tokens_per_expert (list of E ints), max_over_mean and min_over_mean imbalance."""
        load = self.last_load.detach().cpu()
        mean = load.mean().item()
        return {"tokens_per_expert": [int(v) for v in load.tolist()],
                "max_over_mean": (load.max().item() / mean) if mean > 0 else 0.0,
                "min_over_mean": (load.min().item() / mean) if mean > 0 else 0.0}

    def expert_parameter_names(self, prefix: str = "") -> list[str]:
        """Names of the expert-sharded parameters (not to be all-reduced by data parallel)."""
        return [f"{prefix}w1", f"{prefix}w2"] if self.expert_group is not None else []


def moe_layers(model: nn.Module) -> list[MoE]:
    return [m for m in model.modules() if isinstance(m, MoE)]


def attach_balancing(optimizer: torch.optim.Optimizer, model: nn.Module):
    """Update every MoE layer's balancing bias after each optimizer.step(); returns the hook
    handle (handle.remove() detaches it)."""
    layers = moe_layers(model)

    def _hook(opt, args, kwargs):
        for layer in layers:
            layer.update_balancing_bias()

    return optimizer.register_step_post_hook(_hook)


# ---------------------------------------------------------------------------- expert parallel
class _AllToAll(torch.autograd.Function):
    """all_to_all_single with uneven splits; the backward sends gradients back the same way."""

    @staticmethod
    def forward(ctx, x, out_splits: list[int], in_splits: list[int], group):
        ctx.out_splits, ctx.in_splits, ctx.group = out_splits, in_splits, group
        out = x.new_empty((sum(out_splits), *x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        back = _AllToAll.apply(grad.contiguous(), ctx.in_splits, ctx.out_splits, ctx.group)
        return back, None, None, None


def expert_parallel_moe(x_TD: torch.Tensor, w1_local: torch.Tensor, w2_local: torch.Tensor,
                        topk_weights: torch.Tensor, topk_ids: torch.Tensor, num_experts: int,
                        activation: str, group, backend: str | None = None) -> torch.Tensor:
    """fused_moe with the experts sharded over `group` (rank r owns experts
    [r * E_local, (r + 1) * E_local)). x_TD (T, d) this rank's tokens; topk_ids global ids.
    Returns y (T, d), equal to fused_moe over all experts on one process."""
    world = dist.get_world_size(group)
    num_tokens, d = x_TD.shape
    top_k = topk_ids.shape[1]
    e_local = num_experts // world
    flat_ids = topk_ids.reshape(-1)
    dest = flat_ids // e_local  # owner rank of each slot
    order = torch.argsort(dest, stable=True)  # slots grouped by owner (then by slot id)
    send_counts = torch.zeros(world, dtype=torch.int64, device=x_TD.device).index_add_(
        0, dest, torch.ones_like(dest))
    recv_counts = torch.empty_like(send_counts)
    dist.all_to_all_single(recv_counts, send_counts, group=group)
    # Host copies of the splits: all_to_all_single takes Python lists (the one sync).
    in_splits, out_splits = send_counts.tolist(), recv_counts.tolist()

    x_send = x_TD[order // top_k]  # a communication buffer: the rows must be contiguous per rank
    ids_send = (flat_ids[order] % e_local).unsqueeze(1)
    x_recv = _AllToAll.apply(x_send, out_splits, in_splits, group)
    ids_recv = x_recv.new_empty((sum(out_splits), 1), dtype=ids_send.dtype)
    dist.all_to_all_single(ids_recv, ids_send, out_splits, in_splits, group=group)

    ones = torch.ones((x_recv.shape[0], 1), dtype=x_TD.dtype, device=x_TD.device)
    o_recv = ok.fused_moe(x_recv, w1_local, w2_local, ones, ids_recv, activation=activation,
                          backend=backend)
    o_send = _AllToAll.apply(o_recv, in_splits, out_splits, group)  # back to the home rank
    o_slots = torch.empty_like(o_send).index_copy(0, order, o_send)  # slot order t * k + j
    y = (o_slots.view(num_tokens, top_k, d).float()
         * topk_weights.float().unsqueeze(2)).sum(dim=1)
    return y.to(x_TD.dtype)

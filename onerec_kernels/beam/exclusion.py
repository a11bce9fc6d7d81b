"""Per-user item exclusion inside the trie-constrained beam search (e.g. already-consumed items).

A post-filter would leave fewer than K items; masking only the last level's excluded leaves can
too, when the beams kept at the level before hold few unexcluded leaves. So every step masks the
children whose whole subtree is excluded for that user (at the last level a child's subtree is
the leaf itself): every live beam then still leads to at least one allowed item, and K live
beams at depth L-1 give K distinct allowed items whenever the catalogue has that many left.

Plain PyTorch on the log-probs before each step, so it works with every step backend; shapes are
static and nothing reads a value on the host (no CUDA sync): exclusions that match no beam, or
that name an item outside the trie, are routed to a dump slot instead of being filtered out.

Shapes: B users, W beams, V vocab of the step, T packed exclusions, L levels.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .._checks import check_tensor
from .trie import SemanticIdTrie


class ExclusionPlan(NamedTuple):
    """Per excluded (user, item) entry e (T entries, duplicates and unknown items dead):
    user (T,), live (T,) bool, and per depth t in [0, L): ancestor[t] (T,) the entry's depth-t
    node, token[t] (T,) the code leading from it to its depth-(t+1) node, leaves[t] (T,) the
    number of items under that depth-(t+1) node."""
    user: torch.Tensor
    live: torch.Tensor
    ancestor: list
    token: list
    leaves: list


def check_exclusion(op: str, exclude_offsets, exclude_items, batch_size: int,
                    device: torch.device) -> None:
    """Validate the packed exclusion set: offsets (B + 1,) int64, items (T,) int64, on `device`;
    on the CPU also offsets[0] == 0, non-decreasing, offsets[B] == T (a CUDA check would sync)."""
    if (exclude_offsets is None) != (exclude_items is None):
        raise ValueError(f"{op}: pass both exclude_offsets and exclude_items, or neither")
    check_tensor(op, "exclude_offsets", exclude_offsets, ndim=1, dtypes=(torch.int64,))
    check_tensor(op, "exclude_items", exclude_items, ndim=1, dtypes=(torch.int64,))
    if exclude_offsets.shape[0] != batch_size + 1:
        raise ValueError(f"{op}: exclude_offsets must be (batch_size + 1,) = ({batch_size + 1},), "
                         f"got {tuple(exclude_offsets.shape)}")
    for name, t in (("exclude_offsets", exclude_offsets), ("exclude_items", exclude_items)):
        if t.device != device:
            raise ValueError(f"{op}: {name} must be on the trie's device ({device}), "
                             f"got {t.device}")
    if device.type == "cpu":
        o = exclude_offsets
        if int(o[0]) != 0 or int(o[-1]) != exclude_items.shape[0] or bool((o[1:] < o[:-1]).any()):
            raise ValueError(f"{op}: exclude_offsets must start at 0, be non-decreasing and end at "
                             f"len(exclude_items) = {exclude_items.shape[0]}, got "
                             f"[{int(o[0])}, ..., {int(o[-1])}]")


def plan_exclusion(trie: SemanticIdTrie, exclude_offsets: torch.Tensor,
                   exclude_items: torch.Tensor) -> ExclusionPlan:
    """Locate every excluded item in the trie: its ancestors, codes and subtree sizes."""
    dev = trie.device
    L = trie.num_levels
    B = exclude_offsets.shape[0] - 1
    T = exclude_items.shape[0]
    counts = exclude_offsets[1:] - exclude_offsets[:-1]
    user = torch.repeat_interleave(torch.arange(B, device=dev), counts, output_size=T)
    # Leaf of each item: leaf_items maps leaf -> item; invert it by sorting (ids are arbitrary).
    item_sorted, leaf_of_sorted = torch.sort(trie.leaf_items)
    n = item_sorted.numel()
    pos = torch.searchsorted(item_sorted, exclude_items).clamp(max=max(n - 1, 0))
    known = (item_sorted[pos] == exclude_items) if n else \
        torch.zeros_like(exclude_items, dtype=torch.bool)
    leaf = leaf_of_sorted[pos] if n else torch.zeros_like(exclude_items)
    # Duplicates of one (user, item) would be counted twice against the subtree size.
    key = user * (n + 1) + torch.where(known, leaf, n)
    key_sorted, order = torch.sort(key)
    dup_sorted = torch.zeros_like(key_sorted, dtype=torch.bool)
    dup_sorted[1:] = key_sorted[1:] == key_sorted[:-1]
    dup = torch.empty_like(dup_sorted).scatter_(0, order, dup_sorted)
    live = known & ~dup
    # Items under each node, per depth: nodes are in lexicographic order, so a node's leaves
    # are the contiguous range first_leaf[s] .. first_leaf[s + 1].
    first = [None] * (L + 1)
    first[L] = torch.arange(n + 1, device=dev)
    for t in reversed(range(L)):
        first[t] = first[t + 1][trie.offsets[t]]
    ancestor, token, leaves = [None] * L, [None] * L, [None] * L
    node = leaf
    for t in reversed(range(L)):  # walk up: parent = the CSR range containing the child
        token[t] = trie.tokens[t][node] if node.numel() else node
        leaves[t] = first[t + 1][node + 1] - first[t + 1][node]
        node = torch.searchsorted(trie.offsets[t], node, right=True) - 1
        ancestor[t] = node
    return ExclusionPlan(user, live, ancestor, token, leaves)


def mask_excluded(log_probs: torch.Tensor, states: torch.Tensor, plan: ExclusionPlan,
                  level: int, num_nodes: int) -> torch.Tensor:
    """log_probs (B, W, V) with -inf at every child whose items are all excluded for its user.

    states: (B, W) int64 depth-`level` trie nodes of the beams (-1: dead); num_nodes: the
    number of depth-`level` nodes. Extra memory is O(T + B * W * V) int32 (the size of
    log_probs), never O(T * W)."""
    B, W, V = log_probs.shape
    dev = states.device
    dump = B * W * V
    # A user's live beams hold distinct nodes, so each entry matches at most one beam: find it
    # by binary search over the (user, node) keys of all beams.
    stride = num_nodes + 1  # node + 1 in [0, stride): dead beams (-1) take 0, nodes never do
    beam_key = (torch.arange(B, device=dev)[:, None] * stride
                + states.clamp(min=-1) + 1).reshape(-1)
    sorted_key, beam_of = torch.sort(beam_key)
    entry_key = plan.user * stride + plan.ancestor[level] + 1
    pos = torch.searchsorted(sorted_key, entry_key).clamp(max=max(B * W - 1, 0))
    found = (sorted_key[pos] == entry_key) & plan.live if B * W else plan.live & False
    slot = torch.where(found, beam_of[pos] * V + plan.token[level], dump) if B * W else \
        torch.full_like(plan.user, dump)
    hits = torch.zeros(dump + 1, dtype=torch.int32, device=dev)
    hits.scatter_add_(0, slot, torch.ones_like(slot, dtype=torch.int32))
    size = torch.zeros(dump + 1, dtype=torch.int32, device=dev)
    size.scatter_reduce_(0, slot, plan.leaves[level].to(torch.int32), "amax")
    full = ((hits >= size) & (hits > 0))[:dump].view(B, W, V)
    return log_probs.masked_fill(full, float("-inf"))

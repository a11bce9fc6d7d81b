"""Plain-PyTorch trie-constrained beam search step: the oracle of the tests and the fallback.

Vectorized in the spirit of STATIC (arXiv 2602.22647): each beam's children are a contiguous CSR
range, so the step is a padded gather (B, W_in, max_branching) of child tokens and their
log-probs, then one sort over each user's W_in * max_branching candidates -- no dense
(B, W_in, V) mask and no Python loop over beams.
"""
from __future__ import annotations

import torch


def trie_beam_step_reference(
    log_probs: torch.Tensor,
    beam_scores: torch.Tensor,
    beam_states: torch.Tensor,
    offsets: torch.Tensor,
    tokens: torch.Tensor,
    max_branching: int,
    beam_width: int,
    from_logits: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step; same contract as `trie_beam_search_step` (see its docstring).

    log_probs (B, W_in, V) float; beam_scores (B, W_in) float32; beam_states (B, W_in) int64;
    offsets (num_nodes + 1,) / tokens (num_children,) int64: the CSR of this level;
    max_branching: the largest child count of the level. Returns scores (B, K) float32, parents,
    tokens and states (B, K) int64 with K = beam_width, best first; ties go to the lower
    (parent beam, token); padding is (-inf, parent 0, token -1, state -1).
    """
    B, W, V = log_probs.shape
    K = beam_width
    dev = log_probs.device
    lp = log_probs.float()
    if from_logits:
        lp = torch.log_softmax(lp, dim=-1)
    neg_inf = float("-inf")
    num_nodes = offsets.numel() - 1
    M = max(int(max_branching), 1)
    live = (beam_states >= 0) & (beam_states < num_nodes) & ~torch.isnan(beam_scores) \
        & (beam_scores != neg_inf)
    s = torch.where(live, beam_states, 0)
    # a negative offset (corrupted level) clamps to 0, like the native child_range
    begin = offsets[s].clamp(min=0) if num_nodes > 0 else torch.zeros_like(s)
    count = torch.where(live, offsets[s + 1] - begin, 0).clamp(max=V) if num_nodes > 0 else s * 0
    j = torch.arange(M, device=dev)
    valid = j < count[..., None]  # (B, W, M)
    child = torch.where(valid, begin[..., None] + j, 0)
    if tokens.numel():
        valid &= child < tokens.numel()
        tok = tokens[child.clamp(max=tokens.numel() - 1)]
    else:
        valid &= False
        tok = torch.zeros_like(child)
    valid &= (tok >= 0) & (tok < V)
    tok = torch.where(valid, tok, 0)
    cand = beam_scores[..., None] + lp.gather(2, tok) if V else beam_scores[..., None] + 0 * tok
    cand = torch.where(valid & ~torch.isnan(cand), cand, neg_inf).reshape(B, W * M)
    # Stable descending sort: equal scores keep their (beam, child rank) order = (beam, token).
    vals, idx = torch.sort(cand, dim=1, descending=True, stable=True)
    vals, idx = vals[:, :K], idx[:, :K]
    if vals.shape[1] < K:  # fewer candidate slots than beam_width
        pad = K - vals.shape[1]
        vals = torch.cat([vals, vals.new_full((B, pad), neg_inf)], dim=1)
        idx = torch.cat([idx, idx.new_zeros((B, pad))], dim=1)
    dead = vals == neg_inf
    w = idx // M
    flat_tok = tok.reshape(B, W * M).gather(1, idx) if W else idx
    flat_child = child.reshape(B, W * M).gather(1, idx) if W else idx
    parents = torch.where(dead, 0, w)
    out_tokens = torch.where(dead, -1, flat_tok)
    states = torch.where(dead, -1, flat_child)
    return vals.contiguous(), parents, out_tokens, states

"""Trie-constrained beam search: `trie_beam_search_step` and `constrained_beam_search`.

Layering: the native op `onerec_C::trie_beam_step` (CPU kernel in csrc/torch/beam_ops.cpp,
CUDA kernels in csrc/cuda/beam_search.cu) takes the trie level as plain tensors (offsets,
tokens), so it is an ordinary custom op that opcheck checks and torch.compile traces (its fake
is registered here). The public functions validate, pick the backend and dispatch; the
plain-PyTorch `trie_beam_step_reference` is the "torch" backend and the oracle.

Step semantics (every backend): for user b, each live beam w (state >= 0, score neither NaN nor
-inf) expands over the children c of its trie node; the candidate's score is
beam_scores[b, w] + log_probs[b, w, token(c)] (fp32). NaN log-probs (and NaN sums) count as -inf,
and -inf candidates are dropped. The best `beam_width` candidates of the user are returned, best
first; ties go to the lower parent beam, then the lower token. Slots past the last candidate are
padding: score -inf, parent 0 (so a KV-cache gather with it stays in bounds), token -1, state -1.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from .. import _backend, _native
from .._checks import FLOATS, check_tensor
from .exclusion import check_exclusion, mask_excluded, plan_exclusion
from .reference import trie_beam_step_reference
from .trie import SemanticIdTrie

OP = "trie_beam_search_step"
SUPPORTED = ("torch", "cpp", "cuda")
DEFAULT_ORDER = {"cuda": ("cuda", "torch"), "cpu": ("cpp", "torch")}
NATIVE_OP = "trie_beam_step"
# The CUDA kernels keep per-beam tables and the selected keys in shared memory.
CUDA_MAX_BEAMS = 4096

if _native.available():
    @torch.library.register_fake("onerec_C::trie_beam_step")
    def _(log_probs, beam_scores, beam_states, offsets, tokens, beam_width, max_branching,
          from_logits):
        B = log_probs.shape[0]
        scores = beam_scores.new_empty((B, beam_width))
        ints = [beam_states.new_empty((B, beam_width)) for _ in range(3)]
        return (scores, *ints)

    @torch.library.register_fake("onerec_C::trie_build")
    def _(codes, vocab_sizes):
        ctx = torch.library.get_ctx()
        out = []
        for _level in range(codes.shape[1]):
            out.append(codes.new_empty((ctx.new_dynamic_size(),)))
            out.append(codes.new_empty((ctx.new_dynamic_size(),)))
        out.append(codes.new_empty((codes.shape[0],)))
        return out


def _validate_step(log_probs, beam_scores, beam_states, trie, level, beam_width) -> None:
    check_tensor(OP, "log_probs", log_probs, ndim=3, dtypes=FLOATS)
    check_tensor(OP, "beam_scores", beam_scores, ndim=2, dtypes=(torch.float32,))
    check_tensor(OP, "beam_states", beam_states, ndim=2, dtypes=(torch.int64,))
    if not isinstance(trie, SemanticIdTrie):
        raise TypeError(f"{OP}: trie must be a SemanticIdTrie, got {type(trie).__name__}")
    trie._check_level(OP, level)
    if isinstance(beam_width, bool) or not isinstance(beam_width, int):
        raise TypeError(f"{OP}: beam_width must be an int, got {type(beam_width).__name__}")
    if beam_width < 1:
        raise ValueError(f"{OP}: beam_width must be >= 1, got {beam_width}")
    B, W, V = log_probs.shape
    for name, t in (("beam_scores", beam_scores), ("beam_states", beam_states)):
        if tuple(t.shape) != (B, W):
            raise ValueError(f"{OP}: {name} must be (B, W_in) = ({B}, {W}) like log_probs, got "
                             f"{tuple(t.shape)}")
        if t.device != log_probs.device:
            raise ValueError(f"{OP}: {name} must be on log_probs' device ({log_probs.device}), "
                             f"got {t.device}")
    if trie.device != log_probs.device:
        raise ValueError(f"{OP}: trie is on {trie.device} but log_probs on {log_probs.device}; "
                         "move it with trie.to(device)")
    if V != trie.vocab_sizes[level]:
        raise ValueError(f"{OP}: log_probs.shape[2] must be the vocab size of level {level} "
                         f"({trie.vocab_sizes[level]}), got {V}")
    if W * V >= 2 ** 32 - 1:
        raise ValueError(f"{OP}: W_in * V must be < 2^32 - 1 (candidate index), got {W} * {V}")
    if log_probs.device.type == "cpu" and beam_states.numel() and not torch.compiler.is_compiling():
        # Ids outside [-1, num_nodes) are an error here; on CUDA (no host sync allowed) and
        # under torch.compile (data-dependent) the kernels treat them as dead beams, which is
        # also what the reference does.
        num_nodes = trie.num_nodes(level)
        # min/max first: nonzero() on every step cost ~1.3 ms at 64 x 128 (18 % of a search)
        lo, hi = torch.aminmax(beam_states)
        if lo < -1 or hi >= num_nodes:
            bad = ((beam_states < -1) | (beam_states >= num_nodes)).nonzero()
            b, w = bad[0].tolist()
            raise ValueError(f"{OP}: beam_states[{b}, {w}] = {int(beam_states[b, w])} is not a "
                             f"node of depth {level} (expected -1 or [0, {num_nodes}))")


def trie_beam_search_step(
    log_probs: torch.Tensor,
    beam_scores: torch.Tensor,
    beam_states: torch.Tensor,
    trie: SemanticIdTrie,
    level: int,
    beam_width: int,
    *,
    from_logits: bool = False,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of trie-constrained beam search (expand every live beam over its valid
    children only, keep each user's best `beam_width` candidates).

    Args:
        log_probs: (B, W_in, V_level) float32/float16/bfloat16 log-probs of the next code for
            each beam (or logits with from_logits=True: a log_softmax over V is fused, NaN rows
            then kill their beam). Accumulation is fp32.
        beam_scores: (B, W_in) float32 running scores (-inf: dead beam).
        beam_states: (B, W_in) int64 depth-`level` trie nodes (0 is the root at level 0;
            -1: dead). On CPU an id outside [-1, num_nodes) raises ValueError; on CUDA (and
            under torch.compile) it is treated as dead (checking it would need a host sync).
        trie: SemanticIdTrie on log_probs' device. level: 0 <= level < trie.num_levels.
        beam_width: K >= 1 beams out (<= 4096 on the cuda backend).
        backend: "torch" | "cpp" | "cuda" | None (None: cuda on CUDA tensors, cpp on CPU).

    Returns (scores (B, K) float32, parent_beams (B, K) int64 in [0, W_in),
    tokens (B, K) int64, states (B, K) int64 depth-(level+1) nodes), best first.
    Tie rule: equal scores go to the lower parent beam, then the lower token. Slots past the
    user's valid candidates are padding: score -inf, parent 0, token -1, state -1. NaN
    log-probs count as -inf; -inf candidates are never returned. Only a candidate's own score
    matters (no length normalization: all sequences have L codes).
    """
    _validate_step(log_probs, beam_scores, beam_states, trie, level, beam_width)
    backend = _backend.resolve(OP, backend, log_probs.device, SUPPORTED, DEFAULT_ORDER,
                               native_op=NATIVE_OP)
    B, W, _ = log_probs.shape
    offsets, tokens = trie.offsets[level], trie.tokens[level]
    if backend == "cuda" and (W > CUDA_MAX_BEAMS or beam_width > CUDA_MAX_BEAMS):
        raise ValueError(f"{OP}: the cuda backend supports W_in and beam_width up to "
                         f"{CUDA_MAX_BEAMS}, got W_in={W}, beam_width={beam_width}")
    if B == 0 or W == 0 or backend == "torch":
        return trie_beam_step_reference(log_probs, beam_scores, beam_states, offsets, tokens,
                                        trie.max_branching(level), beam_width, from_logits)
    if log_probs.stride(-1) != 1:
        log_probs = log_probs.contiguous()
    return torch.ops.onerec_C.trie_beam_step(log_probs, beam_scores.contiguous(),
                                             beam_states.contiguous(), offsets, tokens,
                                             beam_width, trie.max_branching(level), from_logits)


class BeamSearchResult(NamedTuple):
    """codes (B, W, L) int64 (-1 in padded beams), scores (B, W) float32 (-inf: padding),
    item_ids (B, W) int64 (-1: padding); beams sorted by score, best first."""

    codes: torch.Tensor
    scores: torch.Tensor
    item_ids: torch.Tensor


StepFn = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def constrained_beam_search(
    step_fn: StepFn,
    trie: SemanticIdTrie,
    batch_size: int,
    beam_width: int,
    *,
    from_logits: bool = False,
    backend: str | None = None,
    exclude_offsets: torch.Tensor | None = None,
    exclude_items: torch.Tensor | None = None,
) -> BeamSearchResult:
    """Beam search over the trie's L levels; every sequence with a finite score is an item.

    step_fn(tokens_so_far, parent_beams) -> log_probs is the model: tokens_so_far (B, W_in, t)
    int64, the t codes generated so far per beam (W_in = 1 and t = 0 at the first step; dead
    beams carry code 0 so an embedding lookup stays in range -- their outputs are ignored);
    parent_beams (B, W_in) int64, each beam's parent among the previous step's beams (None at
    the first step), to reorder a KV cache; it returns (B, W_in, V_t) log-probs (logits when
    from_logits) on the trie's device. W_in = beam_width after the first step.

    exclude_offsets (B + 1,) int64 / exclude_items (T,) int64 (optional, on the trie's device):
    a packed per-user set of item ids that must not be returned (user b's are
    exclude_items[exclude_offsets[b]:exclude_offsets[b + 1]]; ids absent from the trie are
    ignored). It is applied inside the search, never as a post-filter: before every step, the
    children whose items are all excluded for the user get log-prob -inf (see
    `beam/exclusion.py`), so each user still gets `beam_width` allowed items whenever the
    catalogue has that many. With from_logits the masked levels take a log_softmax first, so
    the allowed children keep their unmasked scores.

    No host synchronization happens between or inside steps on CUDA (shapes are static), so
    the whole search can be captured in a CUDA graph. Returns a BeamSearchResult.
    """
    if not isinstance(trie, SemanticIdTrie):
        raise TypeError(f"constrained_beam_search: trie must be a SemanticIdTrie, got "
                        f"{type(trie).__name__}")
    for name, v in (("batch_size", batch_size), ("beam_width", beam_width)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"constrained_beam_search: {name} must be an int, got {type(v).__name__}")
    if batch_size < 0:
        raise ValueError(f"constrained_beam_search: batch_size must be >= 0, got {batch_size}")
    if beam_width < 1:
        raise ValueError(f"constrained_beam_search: beam_width must be >= 1, got {beam_width}")
    dev = trie.device
    B = batch_size
    plan = None
    if exclude_offsets is not None or exclude_items is not None:
        check_exclusion("constrained_beam_search", exclude_offsets, exclude_items, B, dev)
        if trie.num_items and exclude_items.numel():
            plan = plan_exclusion(trie, exclude_offsets, exclude_items)
    scores = torch.zeros((B, 1), dtype=torch.float32, device=dev)
    states = torch.zeros((B, 1), dtype=torch.int64, device=dev)  # the root
    codes = torch.zeros((B, 1, 0), dtype=torch.int64, device=dev)
    parents = None
    for level in range(trie.num_levels):
        log_probs = step_fn(codes.clamp(min=0), parents)
        W = codes.shape[1]
        want = (B, W, trie.vocab_sizes[level])
        if not isinstance(log_probs, torch.Tensor) or tuple(log_probs.shape) != want:
            got = tuple(log_probs.shape) if isinstance(log_probs, torch.Tensor) else type(log_probs).__name__
            raise ValueError(f"constrained_beam_search: step_fn must return (B, W_in, V_{level}) = "
                             f"{want} log-probs at step {level}, got {got}")
        step_from_logits = from_logits
        if plan is not None:
            if from_logits:
                log_probs = torch.log_softmax(log_probs.float(), dim=-1)
                step_from_logits = False
            log_probs = mask_excluded(log_probs, states, plan, level, trie.num_nodes(level))
        scores, parents, tokens, states = trie_beam_search_step(
            log_probs, scores, states, trie, level, beam_width, from_logits=step_from_logits,
            backend=backend)
        codes = torch.cat([codes.gather(1, parents[..., None].expand(B, beam_width, level)),
                           tokens[..., None]], dim=2)
    dead = states < 0
    codes = torch.where(dead[..., None], -1, codes)
    items = trie.leaf_items[states.clamp(min=0)] if trie.num_items else states
    item_ids = torch.where(dead, -1, items)
    return BeamSearchResult(codes, scores, item_ids)

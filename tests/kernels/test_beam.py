"""Trie-constrained beam search: SemanticIdTrie, trie_beam_search_step, constrained_beam_search.

The C++ ("cpp") backend is compared against the plain-PyTorch reference (bit-exact: both add
fp32 numbers in the same order and rank by the same rule), and full searches against brute
force over every item. CUDA cases are in test_beam_cuda.py.
"""
from __future__ import annotations

import pytest
import torch

from onerec_kernels import (SemanticIdTrie, constrained_beam_search, native_available,
                            trie_beam_search_step)
from onerec_kernels.beam.trie import _build_torch

from _beam_utils import PrefixModel, random_codes
from _seed import run_gen

needs_native = pytest.mark.skipif(not native_available(), reason="native extension not built")
NEG_INF = float("-inf")


def _gen(seed):
    return run_gen(seed)


def _assert_steps_equal(got, want, *, exact=True):
    names = ("scores", "parents", "tokens", "states")
    for name, g, w in zip(names, got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, (name, g.shape, w.shape, g.dtype, w.dtype)
        if name == "scores" and not exact:
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
        else:
            assert torch.equal(g, w), f"{name} differs:\n{g}\n{w}"


def _run_levels(trie, B, W, gen, *, dtype=torch.float32, from_logits=False, backends=("torch", "cpp"),
                nan_frac=0.0, exact=True):
    """Drive every level with random log-probs from the reference's beams; compare backends."""
    scores = torch.zeros(B, 1)
    states = torch.zeros(B, 1, dtype=torch.int64)
    for level in range(trie.num_levels):
        V = trie.vocab_sizes[level]
        x = torch.randn(B, states.shape[1], V, generator=gen)
        lp = x if from_logits else x.log_softmax(-1)
        if nan_frac:
            lp[torch.rand(lp.shape, generator=gen) < nan_frac] = float("nan")
        lp = lp.to(dtype)
        outs = [trie_beam_search_step(lp, scores, states, trie, level, W, from_logits=from_logits,
                                      backend=b) for b in backends]
        for o in outs[1:]:
            _assert_steps_equal(o, outs[0], exact=exact)
        scores, parents, tokens, states = outs[0]
        _check_step_invariants(trie, level, outs[0], W)
    return scores, states


def _check_step_invariants(trie, level, out, W):
    scores, parents, tokens, states = out
    finite = scores > NEG_INF
    assert torch.all(scores[:, 1:] <= scores[:, :-1]) or scores.shape[1] == 1
    assert torch.all(tokens[~finite] == -1) and torch.all(states[~finite] == -1)
    assert torch.all(parents[~finite] == 0)
    # a finite beam's state is a real node whose token is its code
    st = states[finite]
    assert torch.all((st >= 0) & (st < trie.num_nodes(level + 1)))
    assert torch.equal(trie.tokens[level][st], tokens[finite])
    # finite beams first, then padding
    assert torch.all(finite.int()[:, 1:] <= finite.int()[:, :-1])


# ---------------------------------------------------------------------------------------------
# SemanticIdTrie
# ---------------------------------------------------------------------------------------------
TRIE_CASES = [(1, 1, 1, False), (1, 3, 3, False), (2, 3, 5, True), (3, 3, 27, False),
              (4, 3, 60, True), (2, 256, 997, True), (3, 256, 2000, False), (4, 1, 1, False)]


@pytest.mark.parametrize("num_levels,vocab,n,skewed", TRIE_CASES)
def test_trie_structure_and_queries(num_levels, vocab, n, skewed):
    gen = _gen(num_levels * 1000 + vocab + n)
    codes = random_codes(n, num_levels, vocab, gen, skewed)
    item_ids = torch.randperm(codes.shape[0], generator=gen) * 7 + 3
    trie = SemanticIdTrie(codes, vocab, item_ids=item_ids)
    assert trie.num_items == codes.shape[0] and trie.num_levels == num_levels
    # the C++ build and the torch fallback agree exactly
    if native_available():
        for a, b in zip(torch.ops.onerec_C.trie_build(codes, [vocab] * num_levels),
                        _build_torch(codes, [vocab] * num_levels)):
            assert torch.equal(a, b)
    assert torch.equal(trie.lookup(codes), item_ids)
    assert torch.all(trie.contains(codes))
    # random probes, including out-of-vocab codes, against a Python set
    probes = torch.randint(-1, vocab + 1, (300, num_levels), generator=gen)
    known = {tuple(r) for r in codes.tolist()}
    expect = torch.tensor([tuple(r) in known for r in probes.tolist()])
    assert torch.equal(trie.contains(probes), expect)
    assert torch.all(trie.lookup(probes)[~expect] == -1)
    # allowed_next and max_branching against a prefix dict
    for t in range(num_levels):
        children = {}
        for r in codes.tolist():
            children.setdefault(tuple(r[:t]), set()).add(r[t])
        assert trie.max_branching(t) == max(len(c) for c in children.values())
        assert trie.num_nodes(t + 1) == len({tuple(r[:t + 1]) for r in codes.tolist()})
        prefixes = torch.cat([codes[:20, :t], probes[:20, :t]])
        toks, counts = trie.allowed_next(prefixes)
        for p, row, c in zip(prefixes.tolist(), toks.tolist(), counts.tolist()):
            want = sorted(children.get(tuple(p), ()))
            assert c == len(want) and row[:c] == want and all(x == -1 for x in row[c:])


def test_trie_empty_and_to():
    trie = SemanticIdTrie(torch.empty((0, 3), dtype=torch.int64), [4, 5, 6])
    assert trie.num_items == 0 and trie.max_branching(0) == 0
    assert not trie.contains(torch.tensor([[0, 0, 0]])).item()
    assert trie.lookup(torch.tensor([[0, 0, 0]])).item() == -1
    t2 = SemanticIdTrie(torch.tensor([[1, 2], [0, 1]]), 3).to("cpu")
    assert torch.equal(t2.lookup(torch.tensor([[0, 1], [1, 2], [2, 2]])), torch.tensor([1, 0, -1]))


def test_trie_bad_inputs():
    with pytest.raises(ValueError, match=r"duplicate code rows: codes\[1\] == codes\[3\]"):
        SemanticIdTrie(torch.tensor([[0, 1], [2, 2], [1, 0], [2, 2]]), 3)
    with pytest.raises(ValueError, match=r"duplicate code rows: codes\[1\] == codes\[3\]"):
        _build_torch(torch.tensor([[0, 1], [2, 2], [1, 0], [2, 2]]), [3, 3])
    with pytest.raises(ValueError, match=r"codes\[1, 0\] = 3 is outside the vocabulary \[0, 3\)"):
        SemanticIdTrie(torch.tensor([[0, 1], [3, 0]]), 3)
    with pytest.raises(ValueError, match=r"codes\[0, 1\] = -2"):
        SemanticIdTrie(torch.tensor([[0, -2]]), [3, 4])
    with pytest.raises(ValueError, match="vocab_size must have L = 2"):
        SemanticIdTrie(torch.tensor([[0, 1]]), [3])
    with pytest.raises(ValueError, match="codes must have 2 dimensions"):
        SemanticIdTrie(torch.tensor([0, 1]), 3)
    with pytest.raises(TypeError, match="codes must have dtype"):
        SemanticIdTrie(torch.tensor([[0.0, 1.0]]), 3)
    with pytest.raises(ValueError, match="item_ids must be"):
        SemanticIdTrie(torch.tensor([[0, 1]]), 3, item_ids=torch.tensor([1, 2]))
    trie = SemanticIdTrie(torch.tensor([[0, 1]]), 3)
    with pytest.raises(ValueError, match="level must be in"):
        trie.max_branching(2)
    with pytest.raises(ValueError, match="codes must be"):
        trie.lookup(torch.tensor([[0, 1, 2]]))
    with pytest.raises(ValueError, match="t < L"):
        trie.allowed_next(torch.tensor([[0, 1]]))


# ---------------------------------------------------------------------------------------------
# One step: cpp vs reference
# ---------------------------------------------------------------------------------------------
# (L, vocab, items, skewed, B, W): the sweep of the issue, expensive corners kept few.
STEP_CASES = [
    (1, 1, 1, False, 1, 1), (1, 3, 3, False, 5, 7), (2, 3, 9, True, 5, 7),
    (3, 3, 20, False, 1, 128), (4, 3, 81, True, 5, 7), (2, 256, 3000, True, 5, 128),
    (3, 256, 5000, False, 1, 512), (4, 256, 4000, True, 5, 7), (3, 8192, 2000, False, 5, 7),
    (1, 8192, 8192, False, 5, 512), (2, 8192, 20000, True, 1, 128),
]


@needs_native
@pytest.mark.parametrize("num_levels,vocab,n,skewed,B,W", STEP_CASES)
def test_step_cpp_matches_reference(num_levels, vocab, n, skewed, B, W):
    gen = _gen(hash((num_levels, vocab, n, B, W)) % 2**31)
    trie = SemanticIdTrie(random_codes(n, num_levels, vocab, gen, skewed), vocab)
    scores, states = _run_levels(trie, B, W, gen)
    # 100 % of finite-score beams are items
    finite = scores > NEG_INF
    assert torch.all(trie.leaf_items[states[finite]] >= 0)
    # every trie node has a child, so each user keeps min(W, #nodes) beams at every depth
    assert torch.all(finite.sum(1) == min(W, trie.num_items))


@needs_native
@pytest.mark.slow
def test_step_100k_items():
    gen = _gen(7)
    trie = SemanticIdTrie(random_codes(100_000, 3, 8192, gen, skewed=True), 8192)
    _run_levels(trie, 5, 512, gen)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_step_low_precision(dtype):
    gen = _gen(11)
    trie = SemanticIdTrie(random_codes(500, 3, 16, gen, True), 16)
    _run_levels(trie, 5, 7, gen, dtype=dtype)


@needs_native
def test_step_from_logits():
    gen = _gen(12)
    trie = SemanticIdTrie(random_codes(700, 3, 32, gen, True), 32)
    # log_softmax is fused in C++ (double accumulation): same ranking, scores within rounding
    _run_levels(trie, 5, 7, gen, from_logits=True, exact=False)


@needs_native
def test_step_nan_and_dead_beams():
    gen = _gen(13)
    trie = SemanticIdTrie(random_codes(300, 3, 8, gen), 8)
    _run_levels(trie, 5, 7, gen, nan_frac=0.3)  # NaN log-probs behave as -inf
    # hand-made beams: dead state, -inf score, NaN score, live
    B, W, V = 2, 4, 8
    lp = torch.randn(B, W, V, generator=gen).log_softmax(-1)
    scores = torch.tensor([[0.0, NEG_INF, float("nan"), -1.0], [-2.0, -3.0, 0.0, 0.0]])
    states = torch.tensor([[-1, 0, 1, 2], [3, 3, -1, -1]])
    level1 = min(trie.num_nodes(1) - 1, 3)
    states = states.clamp(max=level1)
    outs = [trie_beam_search_step(lp, scores, states, trie, 1, 16, backend=b) for b in ("torch", "cpp")]
    _assert_steps_equal(outs[1], outs[0])
    sc, par, tok, st = outs[0]
    # user 0: only beam 3 is live
    assert torch.all(par[0][sc[0] > NEG_INF] == 3)
    nkids = trie.allowed_next(torch.tensor([[0]]))[1]  # sanity of counts API
    assert nkids.shape == (1,)
    # all-NaN log-probs: nothing survives, everything is padding
    allnan = torch.full((B, W, V), float("nan"))
    for b in ("torch", "cpp"):
        sc, par, tok, st = trie_beam_search_step(allnan, scores, states, trie, 1, 5, backend=b)
        assert torch.all(sc == NEG_INF) and torch.all(tok == -1) and torch.all(st == -1)


@needs_native
def test_step_ties_lower_beam_then_lower_token():
    # root with children 0..3; two identical beams at level 1 with equal scores everywhere
    codes = torch.tensor([[a, b] for a in range(2) for b in range(4)])
    trie = SemanticIdTrie(codes, 4)
    lp = torch.zeros(1, 3, 4)  # every candidate scores 0.0
    scores = torch.zeros(1, 3)
    states = torch.tensor([[1, 0, 1]])
    for b in ("torch", "cpp"):
        sc, par, tok, st = trie_beam_search_step(lp, scores, states, trie, 1, 12, backend=b)
        assert par.tolist() == [[0] * 4 + [1] * 4 + [2] * 4]
        assert tok.tolist() == [[0, 1, 2, 3] * 3]
        assert st.tolist() == [[4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7]]


@needs_native
def test_step_ties_negative_zero():
    # -0.0 and +0.0 are equal scores: the lower beam wins, as for any tie
    trie = SemanticIdTrie(torch.tensor([[0, 0], [1, 0]]), [2, 1])
    lp = torch.tensor([[[-0.0], [0.0]]])
    scores = torch.tensor([[-0.0, 0.0]])
    states = torch.tensor([[1, 0]])
    for b in ("torch", "cpp"):
        sc, par, tok, st = trie_beam_search_step(lp, scores, states, trie, 1, 2, backend=b)
        assert par.tolist() == [[0, 1]] and st.tolist() == [[1, 0]], b
        assert torch.all(sc == 0.0)


@needs_native
def test_step_empty_shapes():
    trie = SemanticIdTrie(torch.tensor([[0, 1], [2, 2]]), 3)
    for b in ("torch", "cpp"):
        out = trie_beam_search_step(torch.zeros(0, 1, 3), torch.zeros(0, 1),
                                    torch.zeros(0, 1, dtype=torch.int64), trie, 0, 4, backend=b)
        assert all(o.shape == (0, 4) for o in out)
        out = trie_beam_search_step(torch.zeros(2, 0, 3), torch.zeros(2, 0),
                                    torch.zeros(2, 0, dtype=torch.int64), trie, 0, 4, backend=b)
        assert torch.all(out[0] == NEG_INF) and torch.all(out[2] == -1)


def test_step_bad_inputs():
    trie = SemanticIdTrie(torch.tensor([[0, 1], [2, 2]]), [3, 4])
    lp, sc, st = torch.zeros(2, 1, 3), torch.zeros(2, 1), torch.zeros(2, 1, dtype=torch.int64)
    step = trie_beam_search_step
    with pytest.raises(ValueError, match="log_probs must have 3 dimensions"):
        step(lp[0], sc, st, trie, 0, 2)
    with pytest.raises(ValueError, match=r"beam_scores must be \(B, W_in\) = \(2, 1\)"):
        step(lp, sc[:1], st, trie, 0, 2)
    with pytest.raises(ValueError, match="beam_states must be"):
        step(lp, sc, st.reshape(1, 2), trie, 0, 2)
    with pytest.raises(TypeError, match="beam_states must have dtype"):
        step(lp, sc, st.int(), trie, 0, 2)
    with pytest.raises(TypeError, match="log_probs must have dtype"):
        step(lp.long(), sc, st, trie, 0, 2)
    with pytest.raises(ValueError, match=r"level must be in \[0, 2\)"):
        step(lp, sc, st, trie, 2, 2)
    with pytest.raises(ValueError, match="level must be in"):
        step(lp, sc, st, trie, -1, 2)
    with pytest.raises(ValueError, match=r"log_probs.shape\[2\] must be the vocab size of level 1 \(4\)"):
        step(lp, sc, st, trie, 1, 2)
    with pytest.raises(ValueError, match="beam_width must be >= 1"):
        step(lp, sc, st, trie, 0, 0)
    with pytest.raises(TypeError, match="beam_width must be an int"):
        step(lp, sc, st, trie, 0, 2.0)
    with pytest.raises(TypeError, match="trie must be a SemanticIdTrie"):
        step(lp, sc, st, "trie", 0, 2)
    with pytest.raises(ValueError, match=r"beam_states\[1, 0\] = 5 is not a node of depth 0"):
        step(lp, sc, torch.tensor([[0], [5]]), trie, 0, 2)
    with pytest.raises(ValueError, match="backend must be one of"):
        step(lp, sc, st, trie, 0, 2, backend="triton")
    with pytest.raises(RuntimeError, match="cuda backend runs on CUDA tensors"):
        step(lp, sc, st, trie, 0, 2, backend="cuda")


@needs_native
def test_native_op_guards_memory():
    """The raw op, fed a corrupted trie level, neither crashes nor reads out of bounds: bad
    states, child ranges and tokens are simply not candidates (same in the reference)."""
    from onerec_kernels.beam.reference import trie_beam_step_reference

    lp = torch.randn(2, 3, 5).log_softmax(-1)
    sc = torch.zeros(2, 3)
    st = torch.tensor([[0, 1, 7], [-5, 2, 1]])
    offsets = torch.tensor([0, 2, 9, 3])  # node 1's range runs past tokens; node 2 is empty
    tokens = torch.tensor([1, 4, 9, -1, 3])  # 9 and -1 are outside [0, 5)
    for offsets in (offsets, torch.tensor([-3, 2, 9, 3])):  # a negative first child clamps to 0
        got = torch.ops.onerec_C.trie_beam_step(lp, sc, st, offsets, tokens, 6, 7, False)
        want = trie_beam_step_reference(lp, sc, st, offsets, tokens, 7, 6)
        _assert_steps_equal(got, want)
        assert torch.all((want[3] >= -1) & (want[3] < tokens.numel()))
    with pytest.raises(ValueError, match="beam_width must be >= 1"):
        torch.ops.onerec_C.trie_beam_step(lp, sc, st, offsets, tokens, 0, 7, False)
    with pytest.raises(ValueError, match="beam_scores must be"):
        torch.ops.onerec_C.trie_beam_step(lp, sc[:1], st, offsets, tokens, 2, 7, False)


# ---------------------------------------------------------------------------------------------
# Full search
# ---------------------------------------------------------------------------------------------
def _brute_force_topk(trie_codes, item_ids, model, W):
    scores = model.item_scores(trie_codes)  # (B, N)
    k = min(W, scores.shape[1])
    vals, idx = torch.sort(scores, dim=1, descending=True, stable=True)
    return vals[:, :k], item_ids[idx[:, :k]]


SEARCH_EXACT_CASES = [(1, 3, 3, 1, 3), (2, 3, 7, 5, 7), (3, 3, 20, 5, 9), (3, 4, 40, 1, 16),
                      (4, 3, 50, 5, 27), (2, 256, 120, 5, 128), (3, 16, 300, 1, 512)]


@needs_native
@pytest.mark.parametrize("num_levels,vocab,n,B,W", SEARCH_EXACT_CASES)
@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_search_exact_vs_brute_force(num_levels, vocab, n, B, W, backend):
    gen = _gen(n * 31 + W)
    codes = random_codes(n, num_levels, vocab, gen, skewed=True)
    item_ids = torch.randperm(codes.shape[0], generator=gen) + 100
    trie = SemanticIdTrie(codes, vocab, item_ids=item_ids)
    widest = max(trie.num_nodes(t) for t in range(1, num_levels + 1))
    W = max(W, widest)  # W covers every prefix at every level: nothing is ever pruned
    model = PrefixModel(B, trie.vocab_sizes, gen)
    res = constrained_beam_search(model, trie, B, W, backend=backend)
    assert res.codes.shape == (B, W, num_levels) and res.scores.shape == (B, W)
    want_scores, want_items = _brute_force_topk(codes, item_ids, model, W)
    k = want_scores.shape[1]
    assert torch.equal(res.scores[:, :k], want_scores)
    assert torch.equal(res.item_ids[:, :k], want_items)
    # fewer items than beams: exactly the items, then padding
    assert torch.all(res.scores[:, k:] == NEG_INF) and torch.all(res.item_ids[:, k:] == -1)
    assert torch.all(res.codes[:, k:] == -1)
    assert torch.equal(trie.lookup(res.codes[:, :k].reshape(-1, num_levels)),
                       res.item_ids[:, :k].reshape(-1))


SEARCH_CASES = [(3, 256, 3000, True, 5, 7), (3, 256, 3000, False, 1, 128), (4, 3, 81, False, 5, 7),
                (2, 8192, 10000, True, 1, 512), (1, 8192, 50, False, 5, 128)]


@needs_native
@pytest.mark.parametrize("num_levels,vocab,n,skewed,B,W", SEARCH_CASES)
def test_search_cpp_matches_reference(num_levels, vocab, n, skewed, B, W):
    gen = _gen(n + W + B)
    codes = random_codes(n, num_levels, vocab, gen, skewed)
    trie = SemanticIdTrie(codes, vocab)
    model = PrefixModel(B, trie.vocab_sizes, gen, rows=31)
    res = {b: constrained_beam_search(model, trie, B, W, backend=b) for b in ("torch", "cpp")}
    for name in ("codes", "scores", "item_ids"):
        assert torch.equal(getattr(res["cpp"], name), getattr(res["torch"], name)), name
    r = res["cpp"]
    finite = r.scores > NEG_INF
    assert torch.all(trie.contains(r.codes[finite])), "a finite-score sequence is not an item"
    assert torch.equal(trie.lookup(r.codes[finite]), r.item_ids[finite])
    assert torch.all(r.scores[:, 1:] <= r.scores[:, :-1])
    assert int(finite.sum(1).min()) == min(W, trie.num_items)
    # the model saw W_in = 1 then beam_width beams, codes only in range, parents in range
    (tok0, par0), *rest = model.calls[-num_levels:]
    assert tok0.shape == (B, 1, 0) and par0 is None
    for t, (tok, par) in enumerate(rest, start=1):
        assert tok.shape == (B, W, t) and par.shape == (B, W)
        assert tok.min() >= 0 and par.min() >= 0 and par.max() < (1 if t == 1 else W)


@needs_native
def test_search_from_logits_low_precision():
    gen = _gen(21)
    codes = random_codes(400, 3, 12, gen, skewed=True)
    trie = SemanticIdTrie(codes, 12)
    model = PrefixModel(5, trie.vocab_sizes, gen, rows=17, logits=True, dtype=torch.float16)
    res = {b: constrained_beam_search(model, trie, 5, 7, from_logits=True, backend=b)
           for b in ("torch", "cpp")}
    torch.testing.assert_close(res["cpp"].scores, res["torch"].scores, rtol=1e-5, atol=1e-5)
    assert torch.equal(res["cpp"].item_ids, res["torch"].item_ids)


def test_search_bad_inputs():
    trie = SemanticIdTrie(torch.tensor([[0, 1], [2, 2]]), 3)
    good = lambda toks, par: torch.zeros(toks.shape[0], toks.shape[1], 3)  # noqa: E731
    with pytest.raises(ValueError, match="beam_width must be >= 1"):
        constrained_beam_search(good, trie, 2, 0)
    with pytest.raises(TypeError, match="batch_size must be an int"):
        constrained_beam_search(good, trie, 2.5, 3)
    with pytest.raises(ValueError, match=r"step_fn must return \(B, W_in, V_0\) = \(2, 1, 3\)"):
        constrained_beam_search(lambda t, p: torch.zeros(2, 1, 4), trie, 2, 3)
    res = constrained_beam_search(good, trie, 2, 3, backend="torch")
    assert res.item_ids.tolist() == [[0, 1, -1], [0, 1, -1]]  # ties: lower codes first
    empty = constrained_beam_search(good, trie, 0, 3)
    assert empty.codes.shape == (0, 3, 2)


# ---------------------------------------------------------------------------------------------
# opcheck and torch.compile
# ---------------------------------------------------------------------------------------------
@needs_native
def test_opcheck_trie_beam_step():
    gen = _gen(31)
    trie = SemanticIdTrie(random_codes(200, 3, 9, gen, True), 9)
    for level, W_in, K, logits in ((0, 1, 7, False), (1, 7, 5, True), (2, 5, 40, False)):
        lp = torch.randn(3, W_in, 9, generator=gen).log_softmax(-1)
        sc = torch.randn(3, W_in, generator=gen)
        st = torch.randint(-1, trie.num_nodes(level), (3, W_in), generator=gen)
        torch.library.opcheck(torch.ops.onerec_C.trie_beam_step.default,
                              (lp, sc, st, trie.offsets[level], trie.tokens[level], K,
                               trie.max_branching(level), logits))


@needs_native
def test_opcheck_trie_build():
    codes = random_codes(50, 3, 5, _gen(32))
    torch.library.opcheck(torch.ops.onerec_C.trie_build.default, (codes, [5, 5, 5]),
                          test_utils=("test_schema", "test_autograd_registration",
                                      "test_faketensor"))


@needs_native
def test_torch_compile_step():
    """Two chained public steps (validation, backend choice, native op) trace into one graph."""
    gen = _gen(33)
    trie = SemanticIdTrie(random_codes(300, 2, 16, gen, True), 16)

    def two_steps(lp0, lp1):
        B = lp0.shape[0]
        sc, par, tok, st = trie_beam_search_step(
            lp0, torch.zeros(B, 1), torch.zeros(B, 1, dtype=torch.int64), trie, 0, 6,
            backend="cpp")
        return trie_beam_search_step(lp1 * 2.0, sc, st, trie, 1, 6, from_logits=True,
                                     backend="cpp")

    lp0 = torch.randn(4, 1, 16, generator=gen).log_softmax(-1)
    lp1 = torch.randn(4, 6, 16, generator=gen)
    compiled = torch.compile(two_steps, fullgraph=True, backend="aot_eager")
    _assert_steps_equal(compiled(lp0, lp1), two_steps(lp0, lp1))

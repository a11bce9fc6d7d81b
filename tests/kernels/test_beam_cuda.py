"""CUDA backend of trie-constrained beam search against the reference (skipped without CUDA;
runs on the GPU machine via scripts/device_check.sh)."""
from __future__ import annotations

import pytest
import torch

from onerec_kernels import SemanticIdTrie, constrained_beam_search, trie_beam_search_step
from onerec_kernels._native import has_kernel

from _beam_utils import PrefixModel, random_codes
from _seed import run_gen

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(not has_kernel("trie_beam_step", "CUDA"),
                       reason="extension built without the CUDA kernels"),
]
NEG_INF = float("-inf")


def _compare(got, want):
    names = ("scores", "parents", "tokens", "states")
    for name, g, w in zip(names, got, want):
        assert torch.equal(g.cpu(), w), f"{name} differs"


def _compare_near_ties(got, want_ext, in_states, trie, level, tol=2e-5):
    """from_logits: the kernel's fused log-sum-exp (fp32, __expf) rounds differently from
    torch.log_softmax, so candidates closer than `tol` may swap places (or in/out at the cut).
    want_ext is the reference with one beam more, to see the first candidate left out. Slots
    whose score is more than 2 * tol from its neighbours' must match exactly; every returned
    candidate must be a real child of its parent beam, each at most once."""
    sc, par, tok, st = (t.cpu() for t in got)
    B, K = sc.shape
    w_sc, w_par, w_tok, w_st = want_ext
    torch.testing.assert_close(sc, w_sc[:, :K], rtol=tol, atol=tol)
    assert torch.equal(sc == NEG_INF, w_sc[:, :K] == NEG_INF)
    ext = torch.cat([torch.full((B, 1), float("inf")), w_sc], dim=1)  # (B, K + 2) with a sentinel
    mid = ext[:, 1:K + 1]
    near = ((mid - ext[:, :K]).abs() <= 2 * tol) | ((mid - ext[:, 2:]).abs() <= 2 * tol)
    iso = ~near & (sc > NEG_INF)
    for g, w in ((par, w_par), (tok, w_tok), (st, w_st)):
        assert torch.equal(g[iso], w[:, :K][iso])
    fin = sc > NEG_INF
    off = trie.offsets[level]
    node = in_states.gather(1, par)
    assert torch.all((st[fin] >= off[node[fin]]) & (st[fin] < off[node[fin] + 1]))
    assert torch.equal(trie.tokens[level][st[fin]], tok[fin])
    for b in range(B):
        kept = st[b][fin[b]]
        assert kept.unique().numel() == kept.numel(), "a candidate returned twice"


# (L, vocab, items, skewed, B, W, dtype, from_logits): W = 512 takes the two-stage path.
CASES = [
    (1, 1, 1, False, 1, 1, torch.float32, False),
    (3, 3, 27, False, 5, 7, torch.float32, False),
    (3, 256, 5000, True, 5, 128, torch.float32, False),
    (3, 256, 20000, False, 5, 512, torch.float32, False),
    (2, 8192, 50000, True, 1, 512, torch.float32, False),
    (4, 16, 3000, True, 5, 7, torch.float16, False),
    (3, 64, 4000, True, 5, 128, torch.bfloat16, False),
    (3, 8192, 100000, False, 5, 512, torch.float32, False),
    (3, 64, 4000, True, 5, 128, torch.float32, True),
    (3, 256, 20000, False, 5, 512, torch.float16, True),  # fused log_softmax + two-stage
]


@pytest.mark.parametrize("num_levels,vocab,n,skewed,B,W,dtype,from_logits", CASES)
def test_step_cuda_matches_reference(num_levels, vocab, n, skewed, B, W, dtype, from_logits):
    gen = run_gen(n + W)
    trie = SemanticIdTrie(random_codes(n, num_levels, vocab, gen, skewed), vocab)
    gtrie = trie.to("cuda")
    assert gtrie.device == torch.zeros(1, device="cuda").device  # indexed, like the tensors
    scores = torch.zeros(B, 1)
    states = torch.zeros(B, 1, dtype=torch.int64)
    for level in range(num_levels):
        x = torch.randn(B, states.shape[1], vocab, generator=gen)
        lp = (x if from_logits else x.log_softmax(-1)).to(dtype)
        if level == 1:
            lp[0, 0, :3] = float("nan")  # NaN behaves as -inf
        want = trie_beam_search_step(lp, scores, states, trie, level, W, from_logits=from_logits,
                                     backend="torch")
        got = trie_beam_search_step(lp.cuda(), scores.cuda(), states.cuda(), gtrie, level, W,
                                    from_logits=from_logits, backend="cuda")
        if from_logits:
            want_ext = trie_beam_search_step(lp, scores, states, trie, level, W + 1,
                                             from_logits=True, backend="torch")
            _compare_near_ties(got, want_ext, states, trie, level)
        else:
            _compare(got, want)
        scores, _, _, states = want


def test_step_cuda_dead_and_out_of_range_states():
    gen = run_gen(5)
    trie = SemanticIdTrie(random_codes(300, 2, 8, gen), 8)
    lp = torch.randn(2, 4, 8, generator=gen).log_softmax(-1)
    sc = torch.tensor([[0.0, NEG_INF, float("nan"), -1.0], [-2.0, -3.0, 0.0, 0.0]])
    st = torch.tensor([[-1, 0, 1, 2], [3, 99, -7, 1]])  # 99 and -7: dead on CUDA
    got = trie_beam_search_step(lp.cuda(), sc.cuda(), st.cuda(), trie.to("cuda"), 1, 16, backend="cuda")
    st_cpu = torch.where((st >= 0) & (st < trie.num_nodes(1)), st, -1)  # the CPU path raises
    want = trie_beam_search_step(lp, sc, st_cpu, trie, 1, 16, backend="torch")
    _compare(got, want)


def _select_dynamic_smem(W_in, K):
    """Dynamic shared memory of select_kernel (mirrors launch() in csrc/cuda/beam_search.cu)."""
    k_pad = 1 << (K - 1).bit_length()
    return (W_in + 1) * 8 + W_in * 8 + k_pad * 8 + 256 * 8 + W_in * 8


# (1870, 256) and (1250, 1250): dynamic shared memory just under 48 KB, so only the kernel's
# static shared memory (~1 KB) pushes the total over the default limit: the opt-in must count it.
@pytest.mark.parametrize("W_in,K", [(2048, 256), (1870, 256), (1250, 1250), (4096, 4096)])
def test_step_cuda_wide_beams(W_in, K):
    """W_in = 2048 needs > 48 KB of dynamic shared memory in the single-stage select (the
    cudaFuncSetAttribute path); 4096 x 4096 is the largest supported step (two-stage)."""
    if (W_in, K) in ((1870, 256), (1250, 1250)):
        assert 47 * 1024 < _select_dynamic_smem(W_in, K) <= 48 * 1024
    gen = run_gen(W_in + K)
    codes = random_codes(4000, 2, 64, gen)
    trie = SemanticIdTrie(codes.cuda(), 64)  # built from CUDA codes: lands on their device
    assert trie.device == codes.cuda().device
    B = 2
    states = torch.randint(-1, trie.num_nodes(1), (B, W_in), generator=gen)
    scores = -torch.rand(B, W_in, generator=gen) * 4
    lp = torch.randn(B, W_in, 64, generator=gen).log_softmax(-1)
    want = trie_beam_search_step(lp, scores, states, trie.to("cpu"), 1, K, backend="torch")
    got = trie_beam_search_step(lp.cuda(), scores.cuda(), states.cuda(), trie, 1, K, backend="cuda")
    _compare(got, want)


@pytest.mark.parametrize("B,W_in,K", [(1, 2048, 128), (3, 700, 64), (300, 256, 32)])
def test_step_cuda_any_max_branching_hint(B, W_in, K):
    """max_branching only sizes the splits and the key cache: a hint far too small (blocks whose
    candidates overflow their cache slice recompute keys every pass), exact, or far too large
    gives the reference's result. B = 1 and 3 with K < 512 take the narrow split path (few
    users, many candidates); B = 300 fills the GPU with one block per user."""
    gen = run_gen(B * W_in + K)
    trie = SemanticIdTrie(random_codes(4000, 2, 64, gen), 64)
    gtrie = trie.to("cuda")
    states = torch.randint(-1, trie.num_nodes(1), (B, W_in), generator=gen)
    scores = -torch.rand(B, W_in, generator=gen) * 4
    lp = torch.randn(B, W_in, 64, generator=gen).log_softmax(-1)
    want = trie_beam_search_step(lp, scores, states, trie, 1, K, backend="torch")
    true_hint = trie.max_branching(1)
    offsets, tokens = gtrie.offsets[1], gtrie.tokens[1]
    for hint in (1, true_hint, 10 * true_hint):
        got = torch.ops.onerec_C.trie_beam_step(lp.cuda(), scores.cuda(), states.cuda(), offsets,
                                                tokens, K, hint, False)
        _compare(got, want)


def test_search_cuda_matches_reference_and_graph_capture():
    gen = run_gen(9)
    B, W = 5, 128
    codes = random_codes(20000, 3, 256, gen, skewed=True)
    trie = SemanticIdTrie(codes, 256)
    gtrie = trie.to("cuda")
    model = PrefixModel(B, trie.vocab_sizes, gen, rows=31)
    want = constrained_beam_search(model, trie, B, W, backend="torch")
    got = constrained_beam_search(model, gtrie, B, W, backend="cuda")
    for name in ("codes", "scores", "item_ids"):
        assert torch.equal(getattr(got, name).cpu(), getattr(want, name)), name
    # the whole search (model included) captures in one CUDA graph: no host sync anywhere
    tables = [t.cuda() for t in model.tables]
    model.tables = tables
    static = {}
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        constrained_beam_search(model, gtrie, B, W, backend="cuda")  # warm-up
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        static["res"] = constrained_beam_search(model, gtrie, B, W, backend="cuda")
    g.replay()
    torch.cuda.synchronize()
    for name in ("codes", "scores", "item_ids"):
        assert torch.equal(getattr(static["res"], name).cpu(), getattr(want, name)), name

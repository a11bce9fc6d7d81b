"""CUDA backend of trie-constrained beam search against the reference (skipped without CUDA;
runs on the GPU machine via scripts/device_check.sh)."""
from __future__ import annotations

import pytest
import torch

from onerec_kernels import SemanticIdTrie, constrained_beam_search, trie_beam_search_step
from onerec_kernels._native import has_kernel

from _beam_utils import PrefixModel, random_codes

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(not has_kernel("trie_beam_step", "CUDA"),
                       reason="extension built without the CUDA kernels"),
]
NEG_INF = float("-inf")


def _compare(got, want, exact):
    names = ("scores", "parents", "tokens", "states")
    for name, g, w in zip(names, got, want):
        g = g.cpu()
        if name == "scores" and not exact:
            torch.testing.assert_close(g, w, rtol=2e-5, atol=2e-5)
        else:
            assert torch.equal(g, w), f"{name} differs"


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
]


@pytest.mark.parametrize("num_levels,vocab,n,skewed,B,W,dtype,from_logits", CASES)
def test_step_cuda_matches_reference(num_levels, vocab, n, skewed, B, W, dtype, from_logits):
    gen = torch.Generator().manual_seed(n + W)
    trie = SemanticIdTrie(random_codes(n, num_levels, vocab, gen, skewed), vocab)
    gtrie = trie.to("cuda")
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
        _compare(got, want, exact=not from_logits)
        scores, _, _, states = want


def test_step_cuda_dead_and_out_of_range_states():
    gen = torch.Generator().manual_seed(5)
    trie = SemanticIdTrie(random_codes(300, 2, 8, gen), 8)
    lp = torch.randn(2, 4, 8, generator=gen).log_softmax(-1)
    sc = torch.tensor([[0.0, NEG_INF, float("nan"), -1.0], [-2.0, -3.0, 0.0, 0.0]])
    st = torch.tensor([[-1, 0, 1, 2], [3, 99, -7, 1]])  # 99 and -7: dead on CUDA
    got = trie_beam_search_step(lp.cuda(), sc.cuda(), st.cuda(), trie.to("cuda"), 1, 16, backend="cuda")
    st_cpu = torch.where((st >= 0) & (st < trie.num_nodes(1)), st, -1)  # the CPU path raises
    want = trie_beam_search_step(lp, sc, st_cpu, trie, 1, 16, backend="torch")
    _compare(got, want, exact=True)


def test_search_cuda_matches_reference_and_graph_capture():
    gen = torch.Generator().manual_seed(9)
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

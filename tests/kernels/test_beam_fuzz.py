"""Property-based fuzz of the trie builder and the constrained beam search (hypothesis), against
brute force: random catalogues (including ones with few prefixes and many leaves each), random
item ids, widths and step functions (prefix-hashed, tie-heavy integer tables, -inf/NaN masks).

- The trie answers every query like the set of code tuples it was built from.
- The search equals a plain-Python beam search with the documented rules (fp32 sums; ties: lower
  parent beam, then lower token; -inf and NaN candidates dropped), for every width.
- When the width covers every prefix (nothing pruned) it returns the exact top items by score.

hypothesis is a test extra, not a runtime dependency: without it this file is skipped.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from onerec_kernels import SemanticIdTrie, constrained_beam_search, native_available  # noqa: E402
from onerec_kernels.beam.trie import _build_torch  # noqa: E402

BACKENDS = ["torch"] + (["cpp"] if native_available() else [])
FUZZ = settings(max_examples=40, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow])


@st.composite
def catalogues(draw):
    """(codes (N, L) int64, vocab sizes, item ids (N,)): distinct tuples, distinct ids >= 0."""
    num_levels = draw(st.integers(1, 4))
    heavy = draw(st.booleans()) and num_levels > 1
    vocab = draw(st.lists(st.integers(1, 4), min_size=num_levels, max_size=num_levels))
    if heavy:  # few prefixes with many leaves each: wide last-level nodes, shared prefixes
        vocab[-1] = draw(st.integers(4, 12))
        prefixes = draw(st.lists(st.tuples(*[st.integers(0, v - 1) for v in vocab[:-1]]),
                                 min_size=1, max_size=3, unique=True))
        rows = [p + (c,) for p in prefixes
                for c in sorted(draw(st.sets(st.integers(0, vocab[-1] - 1), min_size=1)))]
    else:
        rows = draw(st.lists(st.tuples(*[st.integers(0, v - 1) for v in vocab]),
                             min_size=0, max_size=30, unique=True))
    order = draw(st.permutations(range(len(rows))))
    rows = [rows[i] for i in order]
    ids = draw(st.lists(st.integers(0, 10 ** 6), min_size=len(rows), max_size=len(rows),
                        unique=True))
    codes = torch.tensor(rows, dtype=torch.int64).reshape(len(rows), num_levels)
    return codes, vocab, torch.tensor(ids, dtype=torch.int64)


class TableModel:
    """step_fn whose log-prob row is a per-user random row picked by a hash of the prefix.
    kind: "random" (continuous values), "ties" (small integers: many exactly equal sums),
    "masked" (random values with some -inf and NaN entries)."""

    def __init__(self, batch, vocab, seed, kind):
        gen = torch.Generator().manual_seed(seed)
        # ties: few distinct rows of 0 / -1 entries, so equal sums are the rule, not luck
        self.rows, self.tables = (3 if kind == "ties" else 61), []
        rows = self.rows
        for v in vocab:
            if kind == "ties":
                x = -torch.randint(0, 2, (batch, rows, v), generator=gen).float()
            else:
                x = torch.randn(batch, rows, v, generator=gen).log_softmax(-1)
                if kind == "masked":
                    u = torch.rand(batch, rows, v, generator=gen)
                    x[u < 0.2] = float("-inf")
                    x[u > 0.9] = float("nan")
            self.tables.append(x)

    def __call__(self, tokens_so_far, parent_beams):
        t = tokens_so_far.shape[2]
        h = torch.zeros(tokens_so_far.shape[:2], dtype=torch.int64)
        for i in range(t):
            h = (h * 1_000_003 + tokens_so_far[..., i] + 1) % self.rows
        table = self.tables[t]
        return table.gather(1, h[..., None].expand(-1, -1, table.shape[2]))


def _python_beam_search(codes, ids, vocab, model, batch, width):
    """The documented search, one candidate at a time: (scores (B, W), item ids (B, W))."""
    num_levels = len(vocab)
    children = {}
    for row in codes.tolist():
        for t in range(num_levels):
            children.setdefault(tuple(row[:t]), set()).add(row[t])
    item_of = {tuple(r): i for r, i in zip(codes.tolist(), ids.tolist())}
    beams = [[(np.float32(0.0), ())] for _ in range(batch)]  # per user: (score, prefix)
    for t in range(num_levels):
        w_in = 1 if t == 0 else width
        toks = torch.zeros((batch, w_in, t), dtype=torch.int64)
        for b in range(batch):
            for w, (_, prefix) in enumerate(beams[b]):
                if prefix is not None:
                    toks[b, w] = torch.tensor(prefix, dtype=torch.int64)
        lp = model(toks, None).float().numpy()
        new = []
        for b in range(batch):
            cand = []
            for w, (score, prefix) in enumerate(beams[b]):
                if prefix is None:
                    continue
                for c in sorted(children.get(prefix, ())):
                    s = np.float32(score + np.float32(lp[b, w, c]))
                    if np.isfinite(s):
                        cand.append((-s, w, c, s, prefix + (c,)))
            cand.sort(key=lambda x: x[:3])
            kept = [(s, p) for _, _, _, s, p in cand[:width]]
            new.append(kept + [(np.float32(-np.inf), None)] * (width - len(kept)))
        beams = new
    scores = torch.tensor([[float(s) for s, _ in row] for row in beams], dtype=torch.float32)
    items = torch.tensor([[item_of[p] if p is not None else -1 for _, p in row] for row in beams],
                         dtype=torch.int64)
    return scores.reshape(batch, width), items.reshape(batch, width)


@FUZZ
@given(cat=catalogues())
def test_trie_answers_like_the_set_of_tuples(cat):
    codes, vocab, ids = cat
    trie = SemanticIdTrie(codes, vocab, item_ids=ids)
    n, num_levels = codes.shape
    rows = [tuple(r) for r in codes.tolist()]
    assert trie.num_items == n
    # the native build and the torch build agree part for part
    ref = _build_torch(codes, vocab)
    for t in range(num_levels):
        assert torch.equal(trie.offsets[t], ref[2 * t])
        assert torch.equal(trie.tokens[t], ref[2 * t + 1])
        prefixes = sorted({r[:t] for r in rows})
        assert trie.num_nodes(t) == (len(prefixes) if n else (1 if t == 0 else 0))
        widest = max((sum(1 for c in {r[t] for r in rows if r[:t] == p}) for p in prefixes),
                     default=0)
        assert trie.max_branching(t) == widest
    # every tuple of the (small) code space: lookup / contains / allowed_next match the set
    space = torch.tensor(list(itertools.product(*[range(v) for v in vocab])), dtype=torch.int64)
    item_of = dict(zip(rows, ids.tolist()))
    want = torch.tensor([item_of.get(tuple(r), -1) for r in space.tolist()], dtype=torch.int64)
    assert torch.equal(trie.lookup(space), want)
    assert torch.equal(trie.contains(space), want >= 0)
    for t in range(num_levels):
        pre = torch.unique(space[:, :t], dim=0) if t else torch.zeros((1, 0), dtype=torch.int64)
        toks, counts = trie.allowed_next(pre)
        for p, row, cnt in zip(pre.tolist(), toks.tolist(), counts.tolist()):
            nxt = sorted({r[t] for r in rows if list(r[:t]) == p})
            assert cnt == len(nxt) and row[:cnt] == nxt and all(x == -1 for x in row[cnt:])


@FUZZ
@given(cat=catalogues(), batch=st.integers(1, 3), width=st.integers(1, 12),
       seed=st.integers(0, 2 ** 31 - 1), kind=st.sampled_from(["random", "ties", "masked"]),
       backend=st.sampled_from(BACKENDS))
def test_search_equals_the_python_beam_search(cat, batch, width, seed, kind, backend):
    codes, vocab, ids = cat
    trie = SemanticIdTrie(codes, vocab, item_ids=ids)
    model = TableModel(batch, vocab, seed, kind)
    res = constrained_beam_search(model, trie, batch, width, backend=backend)
    want_scores, want_items = _python_beam_search(codes, ids, vocab, model, batch, width)
    assert torch.equal(res.scores, want_scores), (res.scores, want_scores)
    assert torch.equal(res.item_ids, want_items), (res.item_ids, want_items)
    live = res.item_ids >= 0
    assert torch.equal(trie.lookup(res.codes[live]), res.item_ids[live])


@FUZZ
@given(cat=catalogues(), batch=st.integers(1, 3), seed=st.integers(0, 2 ** 31 - 1),
       kind=st.sampled_from(["random", "ties"]), backend=st.sampled_from(BACKENDS))
def test_unpruned_search_returns_the_exact_top_items(cat, batch, seed, kind, backend):
    """Width >= every level's node count: nothing is pruned, so the search is exhaustive."""
    codes, vocab, ids = cat
    trie = SemanticIdTrie(codes, vocab, item_ids=ids)
    n, num_levels = codes.shape
    width = max([1] + [trie.num_nodes(t) for t in range(1, num_levels + 1)])
    model = TableModel(batch, vocab, seed, kind)
    res = constrained_beam_search(model, trie, batch, width, backend=backend)
    # brute force: each item's score, summed in fp32 left to right like the search
    score = torch.zeros(batch, n)
    for t in range(num_levels):
        lp = model(codes[None, :, :t].expand(batch, -1, -1), None)  # (B, N, V_t)
        score = score + lp.gather(2, codes[None, :, t, None].expand(batch, -1, 1))[..., 0]
    for b in range(batch):
        got = {i: s for i, s in zip(res.item_ids[b].tolist(), res.scores[b].tolist()) if i >= 0}
        finite = torch.isfinite(score[b])
        assert len(got) == int(finite.sum())  # every item with a finite score, once
        for i, s in zip(ids[finite].tolist(), score[b][finite].tolist()):
            assert got[i] == s
        assert res.scores[b].tolist() == sorted(res.scores[b].tolist(), reverse=True)

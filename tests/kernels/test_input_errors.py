"""Inputs that used to give a silent wrong answer or an unclear error (issue 8, items 2, 6, 7):
each is now a clear error naming the argument, the same in every backend."""
import numpy as np
import pytest
import torch

import onerec_kernels as ok
from onerec_kernels import SemanticIdTrie

CODES = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1], [2, 0]])


def _cpu_backends(op_module):
    from onerec_kernels._backend import unavailable_reason

    native = {"rq": "rq_assign", "kmeans": "kmeans_step"}[op_module]
    return [b for b in ("torch", "cpp", "triton")
            if unavailable_reason(b, torch.device("cpu"), native) is None]


# -- item 2: item ids ---------------------------------------------------------------------
@pytest.mark.parametrize("ids,match", [
    ([7, 7, 7, 1, 9], r"item_ids must be distinct: item_ids\[0\] == item_ids\[1\] == 7"),
    ([0, 1, 2, -1, 9], r"item_ids must be >= 0 .*item_ids\[3\] = -1"),
    ([5, 3, 4, 3, 9], r"item_ids\[1\] == item_ids\[3\] == 3"),
])
def test_trie_refuses_duplicate_and_negative_item_ids(ids, match):
    with pytest.raises(ValueError, match=match):
        SemanticIdTrie(CODES, 3, item_ids=torch.tensor(ids))


def test_trie_keeps_distinct_nonnegative_item_ids():
    ids = torch.tensor([70, 0, 12, 3, 2 ** 40])
    trie = SemanticIdTrie(CODES, 3, item_ids=ids)
    assert torch.equal(trie.lookup(CODES), ids)


# -- item 7: unclear errors ---------------------------------------------------------------
@pytest.mark.parametrize("depth", [0, 1])
def test_allowed_next_on_an_empty_trie(depth):
    trie = SemanticIdTrie(torch.zeros((0, 2), dtype=torch.int64), 3)
    tokens, counts = trie.allowed_next(torch.zeros((4, depth), dtype=torch.int64))
    assert tokens.shape == (4, 0) and torch.equal(counts, torch.zeros(4, dtype=torch.int64))


@pytest.mark.parametrize("vocab,err,match", [
    ("4", TypeError, "vocab_size must be an int or a sequence of L ints, got str"),
    (b"4", TypeError, "got bytes"),
    (4.0, TypeError, "got float"),
    ([4, 2.5], TypeError, r"vocab_size\[1\] must be an int, got float"),
    (True, TypeError, "got bool"),
    (2 ** 40, ValueError, r"vocab_size\[0\] must be in \[1, 2\^24\], got 1099511627776"),
    ([3, 0], ValueError, r"vocab_size\[1\] must be in \[1, 2\^24\], got 0"),
    ([3, 3, 3], ValueError, "must have L = 2 entries, got 3"),
])
def test_trie_vocab_size_errors_are_clear(vocab, err, match):
    with pytest.raises(err, match=match):
        SemanticIdTrie(CODES, vocab)


def test_trie_vocab_size_accepts_numpy_ints():
    trie = SemanticIdTrie(CODES, [np.int64(3), np.int32(2)])
    assert trie.vocab_sizes == (3, 2)


# -- item 6: overflow, consistent across backends ------------------------------------------
@pytest.mark.parametrize("backend", _cpu_backends("kmeans"))
@pytest.mark.parametrize("scale", [1e30, float("inf")])
def test_kmeans_step_overflow_is_one_clear_error_in_every_backend(backend, scale, seed):
    x, c = torch.randn(50, 4), torch.randn(5, 4)
    x[3, 1] = scale
    with pytest.raises(ValueError, match=r"kmeans_step: x / centroids hold (values up to|an inf)"):
        ok.kmeans_step(x, c, backend=backend)
    with pytest.raises(ValueError, match="kmeans_step"):
        ok.kmeans_step(torch.randn(50, 4) * 1e30, torch.randn(5, 4) * 1e30, backend=backend)


@pytest.mark.parametrize("backend", _cpu_backends("rq"))
def test_rq_assign_overflow_is_one_clear_error_in_every_backend(backend, seed):
    x, cb = torch.randn(50, 4) * 1e30, torch.randn(2, 5, 4) * 1e30
    with pytest.raises(ValueError, match="rq_assign: x / codebooks hold values up to"):
        ok.rq_assign(x, cb, backend=backend)


@pytest.mark.parametrize("backend", _cpu_backends("kmeans"))
def test_large_but_safe_values_still_agree_with_the_reference(backend, seed):
    """The bound refuses only what overflows: values at 1e15 (squared 1e30) are computed."""
    x, c = torch.randn(64, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    x, c = (x * 1e15).float(), (c * 1e15).float()
    a, _, counts, inertia = ok.kmeans_step(x, c, backend=backend)
    d = torch.cdist(x.double(), c.double())
    assert torch.isfinite(inertia)
    assert (d.gather(1, a[:, None]).squeeze(1) <= d.min(1).values * (1 + 1e-4)).all()
    assert int(counts.sum()) == 64


def test_nan_rows_keep_their_documented_behaviour():
    """NaN is not overflow: an all-NaN row still gets code 0 (docstring), no error."""
    x = torch.randn(8, 4)
    x[2] = float("nan")
    a, _, _, _ = ok.kmeans_step(x, torch.randn(3, 4), backend="torch")
    assert int(a[2]) == 0


def test_tokenizer_fit_refuses_overflowing_embeddings():
    from onerec.tokenizer import RQKMeansTokenizer

    x = torch.randn(40, 4) * 1e30
    with pytest.raises(ValueError, match="overflow float32"):
        RQKMeansTokenizer(num_levels=1, codebook_size=4, iters=2).fit(x)


def test_semantic_id_table_refuses_negative_item_ids():
    """The table feeds the trie: -1 means "no item" in items_of and in search results."""
    from onerec.semantic_ids import SemanticIdTable

    with pytest.raises(ValueError, match=r"item_ids must be >= 0 \(-1 means no item\), got -1"):
        SemanticIdTable(CODES, torch.tensor([0, 1, 2, -1, 9]), [3, 2])
    assert len(SemanticIdTable(CODES, torch.tensor([0, 1, 2, 5, 9]), [3, 2])) == 5

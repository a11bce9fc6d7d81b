"""compress_history: length cap, real items in time order, exact pass-through, determinism,
and that the batched k-means splits clusters like per-cluster k-means would (grid trick)."""
import torch

from onerec.model.compress import _lloyd_batched, compress_history


def history(lengths, dim=8, num_items=50):
    """Clustered item embeddings (items repeat, like real histories) and item ids."""
    total = sum(lengths)
    ids = torch.randint(0, num_items, (total,))
    table = torch.randn(num_items, dim) * 3
    emb = table[ids] + 0.01 * torch.randn(total, dim)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    return emb, cu, ids


def test_lengths_order_and_real_items(seed):
    lengths = [5, 0, 130, 61, 400]
    emb, cu, _ = history(lengths)
    cont = torch.randn(emb.shape[0], 3)
    out = compress_history(emb, cu, target_len=60, continuous=cont, iters=4, seed=seed,
                           backend="torch")
    new_len = (out.cu_seqlens[1:] - out.cu_seqlens[:-1]).tolist()
    assert out.cu_seqlens[-1] == out.index.shape[0] == out.cluster_size.shape[0]
    for b, (n, m) in enumerate(zip(lengths, new_len)):
        rows = out.index[out.cu_seqlens[b]:out.cu_seqlens[b + 1]]
        sizes = out.cluster_size[out.cu_seqlens[b]:out.cu_seqlens[b + 1]]
        assert m <= 60
        assert ((rows >= cu[b]) & (rows < cu[b + 1])).all(), "items of another user"
        assert (rows[1:] > rows[:-1]).all(), "not in time order"
        assert int(sizes.sum()) == n, "every item is in exactly one cluster"
        if n <= 60:  # exact pass-through
            assert rows.tolist() == list(range(int(cu[b]), int(cu[b + 1])))
            assert (sizes == 1).all()
            assert torch.equal(out.continuous[out.cu_seqlens[b]:out.cu_seqlens[b + 1]],
                               cont[cu[b]:cu[b + 1]])
        else:
            assert m >= 60 // 2, f"user {b}: compressed to {m}, far under the target"
    assert out.continuous.shape == (out.index.shape[0], 3)


def test_deterministic_for_a_seed(seed):
    emb, cu, _ = history([300, 90, 250])
    a = compress_history(emb, cu, target_len=40, iters=3, seed=seed, backend="torch")
    b = compress_history(emb, cu, target_len=40, iters=3, seed=seed, backend="torch")
    assert torch.equal(a.index, b.index) and torch.equal(a.cluster_size, b.cluster_size)


def test_duplicate_items_terminate():
    emb = torch.ones(500, 4)  # nothing to split apart
    cu = torch.tensor([0, 500], dtype=torch.int32)
    out = compress_history(emb, cu, target_len=10, iters=2, backend="torch")
    assert 1 <= out.index.shape[0] <= 10


def test_batched_lloyd_keeps_groups_apart(seed):
    """Groups far apart or overlapping: every point is assigned to a centroid of its own group,
    as if each group ran k-means alone."""
    groups = [torch.randn(n, 6) + shift for n, shift in [(40, 0.0), (25, 0.0), (30, 50.0)]]
    x = torch.cat(groups)
    group = torch.cat([torch.full((g.shape[0],), i) for i, g in enumerate(groups)])
    ks = [3, 2, 4]
    cent = torch.cat([g[:k] for g, k in zip(groups, ks)])
    cent_group = torch.cat([torch.full((k,), i) for i, k in enumerate(ks)])
    assign = _lloyd_batched(x, group, cent, cent_group, iters=5, backend="torch")
    assert torch.equal(cent_group[assign], group)

"""compress_history: length cap, real items in time order, exact pass-through, determinism,
identical results from the torch and cpp backends, and the splits being per-cluster k-means
(the grouped_kmeans op itself is tested in tests/kernels/test_kmeans.py)."""
import pytest
import torch

from onerec.model import compress as compress_mod
from onerec.model.compress import compress_history
from onerec_kernels import _backend, _native


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


@pytest.mark.skipif(not _native.has_kernel("grouped_kmeans", "CPU"),
                    reason="native extension without onerec_C::grouped_kmeans")
def test_torch_and_cpp_backends_identical(seed):
    """Both backends compute the same distances bit for bit, so every split, kept row, size and
    feature mean is the same."""
    emb, cu, _ = history([700, 3, 65, 230, 64, 90], dim=13)
    cont = torch.randn(emb.shape[0], 2)
    a = compress_history(emb, cu, target_len=64, continuous=cont, seed=seed, backend="torch")
    b = compress_history(emb, cu, target_len=64, continuous=cont, seed=seed, backend="cpp")
    for name in ("index", "cu_seqlens", "cluster_size", "continuous"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_model_backends_without_grouped_kmeans_use_the_default(seed):
    """The model passes its one backend (e.g. "cuda") to every op; compress_history then runs
    grouped_kmeans's default for the device instead of failing."""
    emb, cu, _ = history([150, 20])
    a = compress_history(emb, cu, target_len=30, seed=seed, backend="cuda")
    b = compress_history(emb, cu, target_len=30, seed=seed, backend=None)
    assert torch.equal(a.index, b.index) and torch.equal(a.cluster_size, b.cluster_size)


def test_triton_backend_runs_the_triton_kernel(seed, monkeypatch):
    """backend="triton" selects grouped_kmeans's Triton kernel (the interpreter on CPU,
    compiled on CUDA), which splits exactly like the reference."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if _backend.unavailable_reason("triton", torch.device(dev)) is not None:
        pytest.skip(_backend.unavailable_reason("triton", torch.device(dev)))
    seen = []
    real = compress_mod.grouped_kmeans

    def spy(*args, backend, **kwargs):
        seen.append(backend)
        return real(*args, backend=backend, **kwargs)

    monkeypatch.setattr(compress_mod, "grouped_kmeans", spy)
    emb, cu, _ = history([150, 3, 70], dim=7)
    emb, cu = emb.to(dev), cu.to(dev)
    a = compress_history(emb, cu, target_len=30, iters=4, seed=seed, backend="triton")
    b = compress_history(emb, cu, target_len=30, iters=4, seed=seed, backend="torch")
    assert seen and set(seen) == {"triton", "torch"}
    for name in ("index", "cu_seqlens", "cluster_size"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_splits_are_per_cluster_kmeans(seed, monkeypatch):
    """Every round's grouped k-means equals k-means run on each cluster alone: the same initial
    centroids, each cluster's items against its own centroids only (clusters far apart and
    overlapping alike)."""
    calls = []
    real = compress_mod.grouped_kmeans

    def spy(x, c, x_off, c_off, *, iters, backend):
        out = real(x, c, x_off, c_off, iters=iters, backend=backend)
        calls.append((x, c, x_off, c_off, iters, out[0]))
        return out

    monkeypatch.setattr(compress_mod, "grouped_kmeans", spy)
    emb, cu, _ = history([300, 200, 120], dim=6)
    emb[300:500] += 50.0  # one user far from the others (no effect on per-user clusters)
    compress_history(emb, cu, target_len=20, iters=4, seed=seed, backend="torch")
    assert len(calls) >= 2, "expected several split rounds"
    zero = torch.zeros(1, dtype=torch.int64)
    for x, c, x_off, c_off, iters, assign in calls:
        for g in range(x_off.shape[0] - 1):
            r0, r1, c0, c1 = int(x_off[g]), int(x_off[g + 1]), int(c_off[g]), int(c_off[g + 1])
            alone, _ = real(x[r0:r1], c[c0:c1], torch.cat([zero, zero + r1 - r0]),
                            torch.cat([zero, zero + c1 - c0]), iters=iters, backend="torch")
            assert torch.equal(assign[r0:r1], alone + c0), f"group {g}"

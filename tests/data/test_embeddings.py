"""Item embeddings: content / collaborative / fusion, the recall report, no use of held-out
interactions, determinism and option checks."""
from __future__ import annotations

import numpy as np
import pytest

sp = pytest.importorskip("scipy.sparse")  # the embeddings are built on scipy's sparse matrices

from onerec.data import Dataset, Interactions, build_item_embeddings, generate_synthetic
from onerec.data.embeddings import (co_engaged_pairs, format_report, hashed_tfidf,
                                    neighbour_recall, randomized_svd)

FAST = dict(steps=100, batch_size=256)


@pytest.fixture(scope="module")
def fused(small_synth):
    return build_item_embeddings(small_synth, dim=32, fusion="contrastive", seed=0, **FAST)


def test_shape_dtype_unit_rows(small_synth, fused):
    emb, report = fused
    assert emb.shape == (small_synth.num_items, 32) and emb.dtype == np.float32
    assert np.all(np.isfinite(emb))
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert report["fusion"] == "contrastive" and report["dim"] == 32
    assert report["train_pairs"] > 0 and report["eval_pairs"] > 0 and report["holdout_users"] == 60
    assert report["loss_last"] < report["loss_first"]
    assert "recall@10" in format_report(report)


def test_fusion_improves_neighbour_recall(fused):
    _, report = fused
    rec = report["recall@10"]
    # content alone only knows the topic; co-engagement lives at niche level
    assert rec["contrastive"] > rec["content"] + 0.1, rec
    assert rec["contrastive"] > rec["concat"], rec
    assert report["recall_gain"] == pytest.approx(rec["contrastive"] - rec["content"])
    # sanity: every variant beats random neighbours by far (k / num_items ~ 0.011)
    assert min(rec.values()) > 0.05, rec


def test_cold_items_get_content_vectors(small_synth, fused):
    emb, report = fused
    ds = small_synth
    train = ds.split.train
    seen = np.zeros(ds.num_items, bool)
    seen[ds.interactions.item[train]] = True
    assert report["cold_items"] >= (~seen).sum()
    # Items in the same latent topic sit closer than random pairs even if never trained on.
    cold = np.flatnonzero(~seen)
    if cold.size:
        cl = ds.items.cluster
        sims = emb[cold] @ emb.T
        same = cl[cold][:, None] == cl[None, :]
        assert sims[same].mean() > sims[~same].mean() + 0.05


def test_uses_only_train_interactions(small_synth):
    ds = small_synth
    inter = ds.interactions
    held = np.flatnonzero(ds.split.role != 0)
    rng = np.random.default_rng(0)
    items = inter.item.copy()
    items[held] = rng.integers(0, ds.num_items, size=held.size)
    positive = inter.positive.copy()
    positive[held] = ~positive[held]
    changed = Dataset(name="scrambled", items=ds.items, users=ds.users,
                      interactions=Interactions(inter.user, items, inter.timestamp,
                                                inter.engagement, positive, inter.signals))
    np.testing.assert_array_equal(changed.split.role, ds.split.role)
    # the report scores content, collaborative, concat and contrastive: all must be unchanged
    a, ra = build_item_embeddings(ds, dim=16, steps=20, batch_size=64)
    b, rb = build_item_embeddings(changed, dim=16, steps=20, batch_size=64)
    np.testing.assert_array_equal(a, b)
    assert ra["recall@10"] == rb["recall@10"] and ra["train_pairs"] == rb["train_pairs"]


def test_deterministic_for_a_seed(small_synth):
    kw = dict(dim=16, steps=20, batch_size=64)
    a, _ = build_item_embeddings(small_synth, seed=3, **kw)
    b, _ = build_item_embeddings(small_synth, seed=3, **kw)
    np.testing.assert_array_equal(a, b)
    c, _ = build_item_embeddings(small_synth, seed=4, **kw)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("fusion", ["content", "collaborative", "concat"])
def test_other_fusions(small_synth, fusion):
    emb, report = build_item_embeddings(small_synth, dim=15, fusion=fusion)
    assert emb.shape == (small_synth.num_items, 15)
    assert "contrastive" not in report["recall@10"]
    assert report["recall_gain"] == pytest.approx(report["recall@10"][fusion]
                                                  - report["recall@10"]["content"])


def test_tiny_dataset_and_wide_dim():
    ds = generate_synthetic(num_users=7, num_items=13, num_interactions=300, seed=2)
    emb, report = build_item_embeddings(ds, dim=64, steps=10, holdout_fraction=0.0)
    assert emb.shape == (13, 64) and np.all(np.isfinite(emb))
    assert np.isnan(report["recall@10"]["content"])  # no held-out users, no score


def test_text_encoder_hook(small_synth):
    calls = []

    def encoder(texts):
        calls.append(len(texts))
        return np.stack([[len(t), t.count("a"), 1.0] for t in texts])

    emb, _ = build_item_embeddings(small_synth, dim=8, fusion="content", text_encoder=encoder)
    assert calls == [small_synth.num_items] and emb.shape == (small_synth.num_items, 8)
    with pytest.raises(ValueError, match="text_encoder"):
        build_item_embeddings(small_synth, fusion="content",
                              text_encoder=lambda texts: np.zeros((3, 2)))


def test_randomized_svd_matches_numpy():
    rng = np.random.default_rng(0)
    low = rng.standard_normal((120, 8)) @ rng.standard_normal((8, 900))
    noisy = sp.csr_matrix(low + 0.01 * rng.standard_normal(low.shape))
    u, s = randomized_svd(noisy, 8, seed=1)
    s_ref = np.linalg.svd(noisy.toarray(), compute_uv=False)[:8]
    np.testing.assert_allclose(s, s_ref, rtol=1e-3)
    np.testing.assert_allclose(u.T @ u, np.eye(8), atol=1e-8)
    u2, _ = randomized_svd(noisy, 8, seed=1)
    np.testing.assert_array_equal(u, u2)


def test_hashed_tfidf():
    m = hashed_tfidf(["space opera", "space operas", "garden party", ""])
    assert m.shape[0] == 4
    norms = np.sqrt(np.asarray(m.multiply(m).sum(1)).ravel())
    np.testing.assert_allclose(norms[:3], 1.0)
    assert norms[3] == 0
    sim = (m @ m.T).toarray()
    assert sim[0, 1] > 0.5 > sim[0, 2]  # character n-grams match plural forms
    # crc32 buckets: the same text always lands in the same columns (no per-process salt)
    single = hashed_tfidf(["space opera"])
    np.testing.assert_array_equal(single.indices, np.sort(m[0].indices))


def test_pairs_and_recall_helpers(small_synth):
    pairs = co_engaged_pairs(small_synth, small_synth.split.train, window=2)
    assert pairs.shape[1] == 2 and np.all(pairs[:, 0] != pairs[:, 1])
    emb = np.eye(5, dtype=np.float32)
    emb[1] = emb[0] + 0.1
    assert neighbour_recall(emb, np.array([[0, 1]]), k=1) == 1.0
    assert neighbour_recall(emb, np.array([[0, 2]]), k=1) == 0.0
    assert np.isnan(neighbour_recall(emb, np.zeros((0, 2), np.int64)))


@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(fusion="average"), ValueError, "fusion"),
    (dict(dim=0), ValueError, "dim"),
    (dict(dim=8.5), ValueError, "dim"),
    (dict(holdout_fraction=1.5), ValueError, "holdout_fraction"),
    (dict(temperature=0.0), ValueError, "temperature"),
    (dict(window=0), ValueError, "window"),
    (dict(seed=-1), ValueError, "seed"),
])
def test_bad_options(small_synth, kwargs, exc, words):
    with pytest.raises(exc, match=words):
        build_item_embeddings(small_synth, **kwargs)


def test_bad_dataset_and_no_pairs():
    with pytest.raises(TypeError, match="Dataset"):
        build_item_embeddings(np.zeros((3, 3)))
    one = generate_synthetic(num_users=1, num_items=3, num_interactions=1, seed=0)
    with pytest.raises(ValueError, match="co-engaged pairs"):
        build_item_embeddings(one, dim=4)
    emb, _ = build_item_embeddings(one, dim=4, fusion="content")
    assert emb.shape == (3, 4)


def test_movielens_smoke(ml100k):
    emb, report = build_item_embeddings(ml100k, dim=32, steps=60, batch_size=256)
    assert emb.shape == (1682, 32) and np.all(np.isfinite(emb))
    rec = report["recall@10"]
    assert rec["contrastive"] > rec["content"], rec

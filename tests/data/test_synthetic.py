"""Synthetic generator: determinism, requested sizes, realistic structure, strict split."""
from __future__ import annotations

import numpy as np
import pytest

from onerec.data import (DROPPED, TEST, TRAIN, VALID, Dataset, Split, SyntheticConfig,
                         generate_synthetic, load_dataset)

SMALL = dict(num_users=600, num_items=900, num_interactions=30_000)


def _arrays(ds: Dataset) -> dict:
    inter = ds.interactions
    out = {"user": inter.user, "item": inter.item, "timestamp": inter.timestamp,
           "engagement": inter.engagement, "positive": inter.positive,
           "genres": ds.items.genres, "categorical": ds.items.categorical,
           "features": ds.users.features, "numeric": ds.users.numeric, "role": ds.split.role}
    out.update({f"signal_{k}": v for k, v in inter.signals.items()})
    return out


def test_deterministic_for_a_seed(small_synth):
    again = load_dataset("synthetic", seed=1, **SMALL)
    a, b = _arrays(small_synth), _arrays(again)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert small_synth.items.titles == again.items.titles
    other = load_dataset("synthetic", seed=2, **SMALL)
    assert not np.array_equal(other.interactions.item, small_synth.interactions.item)
    assert other.items.titles != small_synth.items.titles


@pytest.mark.parametrize("sizes", [dict(num_users=1, num_items=1, num_interactions=1),
                                   dict(num_users=7, num_items=97, num_interactions=1025),
                                   dict(num_users=50, num_items=13, num_interactions=50)])
def test_sizes_are_honoured(sizes):
    ds = generate_synthetic(**sizes, seed=3)
    assert (ds.num_users, ds.num_items, ds.num_interactions) == (
        sizes["num_users"], sizes["num_items"], sizes["num_interactions"])
    assert np.diff(ds.user_offsets).min() >= 1  # every user has history
    assert len(ds.items.titles) == ds.num_items and all(ds.items.titles)


def test_default_size_matches_the_brief():
    cfg = SyntheticConfig()
    assert (cfg.num_users, cfg.num_items, cfg.num_interactions) == (2000, 3000, 100_000)


def test_schema_and_signal_ranges(small_synth):
    ds = small_synth
    inter = ds.interactions
    assert inter.user.dtype == inter.item.dtype == inter.timestamp.dtype == np.int64
    assert set(inter.signals) == {"play_time", "duration", "like", "follow", "comment", "share"}
    assert np.all((inter.engagement >= 0) & (inter.engagement <= 1))
    assert np.all(inter.signals["play_time"] <= inter.signals["duration"] + 0.05)
    assert np.all(inter.signals["play_time"] >= 0)
    completion = inter.signals["play_time"] / inter.signals["duration"]
    explicit = (inter.signals["like"] | inter.signals["follow"] | inter.signals["share"]) > 0
    # positive <=> near-complete view or an explicit like / follow / share
    np.testing.assert_array_equal(inter.positive[explicit], True)
    assert np.all(completion[~inter.positive] < 0.8)
    np.testing.assert_array_equal(inter.positive[completion >= 0.8], True)
    # rarer signals are rarer
    rates = {k: inter.signals[k].mean() for k in ("like", "follow", "comment", "share")}
    assert rates["like"] > rates["follow"] > 0 and rates["like"] > rates["share"] > 0
    assert ds.users.features.shape == (ds.num_users, 4)
    assert ds.items.genres.shape[0] == ds.num_items and ds.items.genres.sum(1).min() >= 0


def test_zipf_popularity(small_synth):
    counts = np.sort(np.bincount(small_synth.interactions.item,
                                 minlength=small_synth.num_items))[::-1]
    top = counts[: small_synth.num_items // 10].sum() / counts.sum()
    assert top > 0.35, f"top 10% of items hold only {top:.2f} of the interactions"


def _dominant_cluster(ds: Dataset) -> np.ndarray:
    inter, cl = ds.interactions, ds.items.cluster
    c = cl[inter.item]
    n_clusters = int(cl.max()) + 1
    hist = np.zeros((ds.num_users, n_clusters))
    np.add.at(hist, (inter.user, c), 1)
    return hist.argmax(1)


def test_engagement_follows_user_item_match(small_synth):
    ds = small_synth
    inter = ds.interactions
    dom = _dominant_cluster(ds)
    in_taste = ds.items.cluster[inter.item] == dom[inter.user]
    gap = inter.engagement[in_taste].mean() - inter.engagement[~in_taste].mean()
    assert gap > 0.08, f"engagement gap in-taste vs off-taste only {gap:.3f}"
    assert inter.positive[in_taste].mean() > inter.positive[~in_taste].mean() + 0.1


def test_static_features_correlate_with_interests(small_synth):
    chi2_contingency = pytest.importorskip("scipy.stats").chi2_contingency
    ds = small_synth
    dom = _dominant_cluster(ds)
    for col in (0, 1):  # age bucket, gender: tied to the primary topic
        table = np.zeros((dom.max() + 1, ds.users.cardinalities[col]))
        np.add.at(table, (dom, ds.users.features[:, col]), 1)
        table = table[table.sum(1) > 0][:, table.sum(0) > 0]
        assert chi2_contingency(table)[1] < 1e-6, ds.users.feature_names[col]


def _drift_gap(ds: Dataset) -> float:
    """Cluster-set overlap of interleaved halves minus overlap of first vs last third."""
    inter, off, cl = ds.interactions, ds.user_offsets, ds.items.cluster
    far, near = [], []
    for u in range(ds.num_users):
        c = cl[inter.item[off[u]:off[u + 1]]]
        n = len(c)
        if n < 30:
            continue
        f, last = set(c[: n // 3]), set(c[-(n // 3):])
        e, o = set(c[0:2 * n // 3:2]), set(c[1:2 * n // 3:2])
        far.append(len(f & last) / len(f | last))
        near.append(len(e & o) / len(e | o))
    return float(np.mean(near) - np.mean(far))


def test_interests_drift_over_time():
    still = generate_synthetic(**SMALL, seed=1, drift_per_user=0.0)
    drifting = generate_synthetic(**SMALL, seed=1, drift_per_user=3.0)
    assert _drift_gap(drifting) > _drift_gap(still) + 0.04


def test_chronological_split_is_strict_and_leaks_nothing(small_synth):
    ds = small_synth
    inter, role, off = ds.interactions, ds.split.role, ds.user_offsets
    assert ds.split.num_dropped == 0  # synthetic timestamps never tie within a user
    for u in range(ds.num_users):
        ts, r = inter.timestamp[off[u]:off[u + 1]], role[off[u]:off[u + 1]]
        assert np.all(np.diff(ts) > 0)
        if len(r) >= 3:
            assert list(r[-2:]) == [VALID, TEST] and np.all(r[:-2] == TRAIN)
            assert ts[:-2].max() < ts[-2] < ts[-1]
        else:
            assert np.all(r == TRAIN)
    assert ds.split.valid.size == ds.split.test.size == (np.diff(off) >= 3).sum()
    # every index is in exactly one split
    all_idx = np.concatenate([ds.split.train, ds.split.valid, ds.split.test])
    assert np.array_equal(np.sort(all_idx), np.arange(ds.num_interactions))
    users, items, times = ds.targets("test")
    assert np.array_equal(users, np.flatnonzero(np.diff(off) >= 3))
    assert DROPPED not in role


def test_split_of_tiny_histories():
    ds = generate_synthetic(num_users=4, num_items=5, num_interactions=6, seed=0, min_per_user=1)
    lengths = np.diff(ds.user_offsets)
    assert ds.split.test.size == (lengths >= 3).sum()


@pytest.mark.parametrize("options, exc, words", [
    (dict(num_users=0), ValueError, "num_users"),
    (dict(num_items=-3), ValueError, "num_items"),
    (dict(num_users=10, num_interactions=5), ValueError, "num_interactions"),
    (dict(num_users=1, num_interactions=True), ValueError, "num_interactions"),
    (dict(explore_prob=1.5), ValueError, "explore_prob"),
    (dict(seed="x"), TypeError, "seed"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(num_user=10), TypeError, "num_user"),
])
def test_bad_options_raise_clear_errors(options, exc, words):
    with pytest.raises(exc, match=words):
        load_dataset("synthetic", **options)


@pytest.mark.parametrize("spec, exc, words", [
    ("movielens", ValueError, "unknown spec"),
    ("ml-100k", ValueError, "ml-100k:PATH"),
    ("ml-100k:", ValueError, "ml-100k:PATH"),
    (3, TypeError, "spec"),
])
def test_bad_specs(spec, exc, words):
    with pytest.raises(exc, match=words):
        load_dataset(spec)


def test_given_split_follows_its_rows_when_interactions_are_resorted(small_synth):
    """A Dataset built from unsorted interactions and an explicit split re-sorts both together."""
    ds = small_synth
    perm = np.random.default_rng(0).permutation(ds.num_interactions)
    shuffled = Dataset(name="shuffled", items=ds.items, users=ds.users,
                       interactions=ds.interactions.take(perm),
                       split=Split(ds.split.role[perm], ds.split.ties))
    np.testing.assert_array_equal(shuffled.interactions.item, ds.interactions.item)
    np.testing.assert_array_equal(shuffled.split.role, ds.split.role)
    with pytest.raises(ValueError, match="split has 3 roles"):
        Dataset(name="bad", items=ds.items, users=ds.users, interactions=ds.interactions,
                split=Split(np.zeros(3, np.int8), "drop"))

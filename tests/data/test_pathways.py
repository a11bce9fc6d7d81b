"""Pathway builder against a per-query Python oracle: lengths, order, no future interactions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from onerec.data import TRAIN, VALID, build_pathways, generate_synthetic


def _oracle(ds, u, t, short_len, positive_len, lifelong_len, allowed):
    inter = ds.interactions
    rows = [r for r in range(ds.user_offsets[u], ds.user_offsets[u + 1])
            if inter.timestamp[r] < t and allowed[r]]  # canonical order = chronological
    pos = [r for r in rows if inter.positive[r]]
    life = rows if lifelong_len is None else rows[max(0, len(rows) - lifelong_len):]
    return (rows[max(0, len(rows) - short_len):], pos[max(0, len(pos) - positive_len):], life)


def _queries(ds, rng, n):
    """Users with times before, between (including exactly at) and after their events."""
    inter = ds.interactions
    users = rng.integers(0, ds.num_users, size=n)
    times = np.empty(n, dtype=np.int64)
    for b, u in enumerate(users):
        ts = inter.timestamp[ds.user_offsets[u]:ds.user_offsets[u + 1]]
        kind = b % 4
        if kind == 0:
            times[b] = ts[rng.integers(0, ts.size)]  # exactly at an event: excluded
        elif kind == 1:
            times[b] = ts[0] - 1  # before everything: empty
        elif kind == 2:
            times[b] = ts[-1] + 1  # after everything
        else:
            times[b] = rng.integers(ts[0], ts[-1] + 2)
    return users, times


@pytest.mark.parametrize("caps", [(20, 256, None), (3, 5, 7), (0, 1, 0)])
@pytest.mark.parametrize("pool", ["all", "train"])
def test_matches_oracle(small_synth, caps, pool):
    ds = small_synth
    rng = np.random.default_rng(sum(caps[:2]) + len(pool))
    users, times = _queries(ds, rng, 97)
    short_len, positive_len, lifelong_len = caps
    p = build_pathways(ds, users, times, short_len=short_len, positive_len=positive_len,
                       lifelong_len=lifelong_len, pool=pool)
    allowed = np.ones(ds.num_interactions, bool) if pool == "all" else ds.split.role == TRAIN
    for b, (u, t) in enumerate(zip(users, times)):
        exp_short, exp_pos, exp_life = _oracle(ds, u, t, *caps, allowed)
        assert p.short_term.row(b, "index").tolist() == exp_short
        assert p.positive.row(b, "index").tolist() == exp_pos
        assert p.lifelong.row(b, "index").tolist() == exp_life
    inter = ds.interactions
    for seqs in (p.short_term, p.positive, p.lifelong):
        idx = seqs.index.numpy()
        assert seqs.offsets[0] == 0 and seqs.offsets[-1] == idx.size
        np.testing.assert_array_equal(seqs.item.numpy(), inter.item[idx])
        np.testing.assert_array_equal(seqs.timestamp.numpy(), inter.timestamp[idx])
        row_time = np.repeat(times, seqs.lengths.numpy())
        assert np.all(seqs.timestamp.numpy() < row_time)  # nothing from the future
    assert torch.all(p.positive.positive)
    assert torch.all(p.short_term.lengths <= short_len)
    np.testing.assert_array_equal(p.static.numpy(), ds.users.features[users])


def test_default_lengths_and_chronological_order(small_synth):
    ds = small_synth
    users = np.arange(ds.num_users)
    p = build_pathways(ds, users)  # times=None: after each user's last event
    n_events = np.diff(ds.user_offsets)
    n_pos = np.add.reduceat(ds.interactions.positive.astype(np.int64), ds.user_offsets[:-1])
    np.testing.assert_array_equal(p.lifelong.lengths.numpy(), n_events)
    np.testing.assert_array_equal(p.short_term.lengths.numpy(), np.minimum(n_events, 20))
    np.testing.assert_array_equal(p.positive.lengths.numpy(), np.minimum(n_pos, 256))
    assert n_pos.max() > 256 or n_events.max() > 256  # the caps are exercised
    for seqs in (p.short_term, p.positive, p.lifelong):
        ts, off = seqs.timestamp.numpy(), seqs.offsets.numpy()
        same_row = np.ones(ts.size - 1, bool)
        same_row[off[1:-1] - 1] = False  # pairs that straddle two rows
        assert np.all(np.diff(ts)[same_row] > 0)
    # short-term is the tail of lifelong
    for b in (0, 5, ds.num_users - 1):
        assert p.short_term.row(b).tolist() == p.lifelong.row(b).tolist()[-20:]


def test_test_targets_never_see_their_target_or_later(small_synth):
    ds = small_synth
    for name in ("valid", "test"):
        users, items, times = ds.targets(name)
        p = build_pathways(ds, users, times)
        roles = ds.split.role[p.lifelong.index.numpy()]
        if name == "valid":
            assert np.all(roles == TRAIN)
        else:
            assert np.all((roles == TRAIN) | (roles == VALID))
            # exactly one valid event per row: the one just before the test target
            assert (roles == VALID).sum() == len(users)
        np.testing.assert_array_equal(p.lifelong.lengths.numpy() + (1 if name == "valid" else 0),
                                      np.diff(ds.user_offsets)[users] - 1)


def test_same_second_events_are_excluded(ml100k):
    ds = ml100k
    users, _, times = ds.targets("test")
    p = build_pathways(ds, users, times)
    row_time = np.repeat(times, p.lifelong.lengths.numpy())
    assert np.all(p.lifelong.timestamp.numpy() < row_time)
    inter = ds.interactions
    before = np.array([(inter.timestamp[ds.user_offsets[u]:ds.user_offsets[u + 1]] < t).sum()
                       for u, t in zip(users, times)])
    np.testing.assert_array_equal(p.lifelong.lengths.numpy(), before)


def test_padded_views():
    ds = generate_synthetic(num_users=7, num_items=97, num_interactions=1025, seed=5)
    p = build_pathways(ds, np.arange(7), None)
    lengths = p.lifelong.lengths
    for align in ("left", "right"):
        vals, mask = p.lifelong.padded("item", pad_value=-1, align=align)
        assert vals.shape == (7, int(lengths.max())) and vals.dtype == torch.int64
        np.testing.assert_array_equal(mask.sum(1).numpy(), lengths.numpy())
        assert torch.all(vals[~mask] == -1)
        for b in range(7):
            assert vals[b][mask[b]].tolist() == p.lifelong.row(b).tolist()
        if align == "right":
            assert torch.all(mask[:, -1])
    # truncation keeps the most recent entries
    vals, mask = p.lifelong.padded("timestamp", max_len=5, align="right")
    for b in range(7):
        assert vals[b][mask[b]].tolist() == p.lifelong.row(b, "timestamp").tolist()[-5:]
    eng, _ = p.positive.padded("engagement", max_len=0)
    assert eng.shape == (7, 0)


def test_empty_batch_and_empty_rows(small_synth):
    p = build_pathways(small_synth, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    assert p.lifelong.offsets.tolist() == [0] and p.lifelong.item.numel() == 0
    vals, mask = p.short_term.padded()
    assert vals.shape == (0, 0)
    p = build_pathways(small_synth, [0, 1], 0)  # scalar time before everything
    assert p.lifelong.lengths.tolist() == [0, 0]
    assert p.static.shape == (2, small_synth.users.features.shape[1])


def test_tensor_inputs_and_custom_pool(small_synth):
    ds = small_synth
    users = torch.tensor([3, 4, 5])
    mask = ds.interactions.positive.copy()
    a = build_pathways(ds, users, None, pool=mask)
    b = build_pathways(ds, users.numpy(), None)
    assert a.lifelong.index.tolist() == b.positive.index.tolist()


@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(users=[0, 10**6]), ValueError, "users must lie"),
    (dict(users=[-1]), ValueError, "users must lie"),
    (dict(users=[0.5]), TypeError, "users must hold integers"),
    (dict(users=[[0]]), ValueError, "1-D"),
    (dict(users=[0, 1], times=[1, 2, 3]), ValueError, "times must have 2"),
    (dict(users=[0], short_len=-1), ValueError, "short_len"),
    (dict(users=[0], lifelong_len=2.5), ValueError, "lifelong_len"),
    (dict(users=[0], pool="future"), ValueError, "pool"),
    (dict(users=[0], pool=np.ones(3, bool)), ValueError, "pool mask"),
])
def test_bad_inputs(small_synth, kwargs, exc, words):
    with pytest.raises(exc, match=words):
        build_pathways(small_synth, **kwargs)
    with pytest.raises(TypeError, match="Dataset"):
        build_pathways("synthetic", [0])
    p = build_pathways(small_synth, [0])
    with pytest.raises(ValueError, match="field"):
        p.short_term.padded("rating")
    with pytest.raises(ValueError, match="align"):
        p.short_term.padded(align="middle")

"""Training samples: every training position once per epoch, contexts from the pathway builder
cut strictly before the target, a seeded order that resumes mid-epoch."""
import numpy as np
import pytest
import torch

from onerec.data import TRAIN, build_pathways
from onerec.model.batch import encoder_batch
from onerec.train import SampleStream, training_rows


def drain(stream, n):
    return [stream.next_batch() for _ in range(n)]


def test_every_training_position_once_per_epoch(world):
    ds, codes, cfg = world
    rows = training_rows(ds, min_history=0)
    assert np.array_equal(rows, np.flatnonzero(ds.split.role == TRAIN))
    s = SampleStream(ds, codes, cfg, batch_size=97, seed=5, min_history=0)
    got = np.concatenate([b.rows.numpy() for b in drain(s, s.batches_per_epoch)])
    assert s.epoch == 1 and s.position == 0
    assert np.array_equal(np.sort(got), rows)  # each once, the last batch short
    # not the canonical order, and each user contributes more than its last position
    assert not np.array_equal(got, rows)
    assert (np.bincount(ds.interactions.user[got]) > 1).sum() == ds.num_users


def test_min_history_drops_positions_without_earlier_events(world):
    ds, _, _ = world
    inter = ds.interactions
    rows = training_rows(ds, min_history=3)
    first_t = inter.timestamp[ds.user_offsets[inter.user[rows]]]
    earlier = np.array([(inter.timestamp[ds.user_offsets[u]:r] < inter.timestamp[r]).sum()
                        for u, r in zip(inter.user[rows], rows)])
    assert (earlier >= 3).all() and (inter.timestamp[rows] > first_t).all()
    all_rows = np.flatnonzero(ds.split.role == TRAIN)
    excluded = np.setdiff1d(all_rows, rows)
    earlier_ex = np.array([(inter.timestamp[ds.user_offsets[inter.user[r]]:r]
                            < inter.timestamp[r]).sum() for r in excluded])
    assert excluded.size and (earlier_ex < 3).all()
    with pytest.raises(ValueError, match="min_history"):
        training_rows(ds, min_history=-1)


def test_batch_is_the_pathway_builders_context_of_each_target(world):
    ds, codes, cfg = world
    s = SampleStream(ds, codes, cfg, batch_size=8, seed=1, history_len=12)
    sb = s.next_batch()
    inter = ds.interactions
    rows = sb.rows.numpy()
    assert torch.equal(sb.items, torch.from_numpy(inter.item[rows]))
    assert torch.equal(sb.codes, codes[sb.items])
    paths = build_pathways(ds, inter.user[rows], inter.timestamp[rows], short_len=cfg.short_len,
                           positive_len=cfg.positive_len, lifelong_len=12)
    want = encoder_batch(paths, codes, cfg, ds)
    for name in ("short_term", "positive", "lifelong"):
        a, b = getattr(sb.batch, name), getattr(want, name)
        assert torch.equal(a.cu_seqlens, b.cu_seqlens) and torch.equal(a.codes, b.codes)
        assert torch.equal(a.buckets, b.buckets)
    # leak-free: every context event is strictly earlier than its target
    life = paths.lifelong
    row_of = torch.repeat_interleave(torch.arange(8), life.lengths)
    assert (life.timestamp < torch.from_numpy(inter.timestamp[rows])[row_of]).all()
    assert sb.num_tokens > 8 * 4


def test_order_is_seeded_and_resumes_mid_epoch(world):
    ds, codes, cfg = world
    n = SampleStream(ds, codes, cfg, batch_size=64, seed=0).batches_per_epoch
    a = SampleStream(ds, codes, cfg, batch_size=64, seed=0)
    ref = [b.rows for b in drain(a, n + 3)]  # crosses an epoch boundary
    b = SampleStream(ds, codes, cfg, batch_size=64, seed=0)
    first = drain(b, n - 2)
    state = b.state_dict()
    c = SampleStream(ds, codes, cfg, batch_size=64, seed=0)
    c.load_state_dict(state)
    rest = [x.rows for x in drain(c, 5)]
    assert all(torch.equal(x, y) for x, y in zip([x.rows for x in first] + rest, ref))
    assert not torch.equal(ref[0], ref[n])  # a new permutation each epoch
    other = SampleStream(ds, codes, cfg, batch_size=64, seed=1).next_batch().rows
    assert not torch.equal(other, ref[0])
    with pytest.raises(ValueError, match="seed"):
        SampleStream(ds, codes, cfg, batch_size=64, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="batch_size"):
        SampleStream(ds, codes, cfg, batch_size=0)

"""Baselines through the evaluator: hand-checked rankings on tiny seqrec-json datasets, SASRec
learning a deterministic next-item rule, and the side-by-side table on a small synthetic set."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from onerec.data import load_dataset
from onerec.eval import (CooccurrenceRanker, PopularityRanker, SASRecRanker, baseline_rankers,
                         compare_rankers, default_exclude_consumed, eval_queries, rank_by_scores,
                         train_sasrec)


def _seqrec(tmp_path, seqs: dict) -> object:
    folder = tmp_path / "d"
    folder.mkdir(exist_ok=True)
    (folder / "t.inter.json").write_text(json.dumps({str(u): s for u, s in seqs.items()}))
    return load_dataset(f"seqrec-json:{folder}")


def test_popularity_and_exclusion_by_hand(tmp_path):
    # train parts (all but the last two): u0 [0, 1, 1], u1 [1, 2], u2 [2] -> counts 0:1 1:3 2:2
    ds = _seqrec(tmp_path, {0: [0, 1, 1, 3, 4], 1: [1, 2, 4, 3], 2: [2, 0, 1]})
    q = eval_queries(ds, "test")
    np.testing.assert_array_equal(q.train_counts, [1, 3, 2, 0, 0])
    ranked = PopularityRanker(ds)(q, 5, False)
    np.testing.assert_array_equal(ranked, [[1, 2, 0, 3, 4]] * 3)  # ties: lower id first
    ex = PopularityRanker(ds)(q, 5, True)
    # u0 consumed 0, 1, 3 before its target 4; u1 1, 2, 4; u2 2, 0
    np.testing.assert_array_equal(ex, [[2, 4, -1, -1, -1], [0, 3, -1, -1, -1],
                                       [1, 3, 4, -1, -1]])
    assert default_exclude_consumed(ds)[0] is False  # u0 consumed item 1 twice


def test_rank_by_scores_ties_and_chunks():
    scores = torch.tensor([[0.5, 2.0, 2.0, -1.0], [float("-inf"), 0.0, 1.0, 0.0]])

    class Q:  # the attributes rank_by_scores reads
        num_users = 2
        history = type("H", (), {"offsets": torch.tensor([0, 1, 1]),
                                 "item": torch.tensor([2])})()

    got = rank_by_scores(lambda rows: scores[torch.from_numpy(rows)], Q, 4, True, chunk=1)
    np.testing.assert_array_equal(got, [[1, 0, 3, -1], [2, 1, 3, -1]])


def test_cooccurrence_scores_follow_last_item(tmp_path):
    # train: u0 [0, 1, 2], u1 [0, 1, 3], u2 [4, 2]; the test queries end with 3 / 1 / 4
    ds = _seqrec(tmp_path, {0: [0, 1, 2, 9, 3], 1: [0, 1, 3, 9, 1], 2: [4, 2, 9, 4]})
    q = eval_queries(ds, "test")
    np.testing.assert_array_equal(ds.items.ids[q.last_items()], [9, 9, 9])
    ranker = CooccurrenceRanker(ds, window=1, symmetric=False)
    # item 9 (dense 5) never occurs in train: popularity order 0, 1, 2 (2 each), then 3, 4
    np.testing.assert_array_equal(ds.items.ids[ranker(q, 5, False)],
                                  [[0, 1, 2, 3, 4]] * 3)
    q2 = eval_queries(ds, "valid")  # last items 2, 3, 2 (dense 2, 3, 2)
    top = ds.items.ids[ranker(q2, 3, False)]
    # after 2 nothing follows in train (u2: 4 -> 2): popularity; after 3: nothing either
    np.testing.assert_array_equal(top[:, 0], [0, 0, 0])
    sym = CooccurrenceRanker(ds, window=1, symmetric=True)(q2, 3, False)
    # symmetric: 2 co-occurs with 1 (u0) and 4 (u2), both weight 1 -> lower id 1 first
    np.testing.assert_array_equal(ds.items.ids[sym[0, :2]], [1, 4])
    np.testing.assert_array_equal(ds.items.ids[sym[1, :1]], [1])


def test_sasrec_learns_next_item_rule_and_is_seeded(tmp_path):
    rng = np.random.default_rng(0)
    n = 20  # item i is always followed by (i + 3) % n
    seqs = {u: [(int(s) + 3 * j) % n for j in range(10)] for u, s in
            enumerate(rng.integers(0, n, 60))}
    ds = _seqrec(tmp_path, seqs)
    ranker = SASRecRanker(ds, seed=3, dim=32, max_len=8, epochs=30, dropout=0.0, lr=5e-3)
    q = eval_queries(ds, "test")
    ranked = ranker(q, 5, False)
    assert (ranked[:, 0] == q.targets).mean() > 0.9, ranker.report["loss"][-1]
    a = train_sasrec(ds, seed=5, dim=16, max_len=8, epochs=2)[1]["loss"]
    b = train_sasrec(ds, seed=5, dim=16, max_len=8, epochs=2)[1]["loss"]
    assert a == b


@pytest.fixture(scope="module")
def small_synth():
    return load_dataset("synthetic", num_users=120, num_items=150, num_interactions=3000, seed=2)


def test_compare_rankers_table(small_synth):
    rankers = baseline_rankers(small_synth, seed=0, sasrec_options={"epochs": 2, "dim": 16})
    table = compare_rankers(small_synth, rankers)
    rows = {(r["model"], r["protocol"]): r for r in table["rows"]}
    assert set(rows) == {(m, p) for m in ("popularity", "co-occurrence", "history prior", "sasrec")
                         for p in ("exclude", "keep")}
    for (model, protocol), r in rows.items():
        assert r["legal_rate"] == 1.0 and r["users"] == table["users"] > 0
        assert r["filled_rate"] == 1.0, (model, protocol)  # every user got 20 items
        if protocol == "exclude":
            assert r["consumed_share"] == 0.0, model
        assert 0 <= r["recall@1"] <= r["recall@10"] <= r["recall@20"] <= 1
    assert rows[("history prior", "keep")]["consumed_share"] > 0
    assert table["default_protocol"] in ("exclude", "keep")
    md = table["markdown"]
    assert md.count("\n| ") == 1 + len(rows) and "history prior" in md and "(default)" in md


def test_onerec_ranker_untrained_tiny_model(small_synth):
    from onerec.model.config import OneRecConfig
    from onerec.model.model import OneRec
    from onerec.eval import OneRecRanker
    from onerec_kernels import SemanticIdTrie

    ds, K = small_synth, 8
    gen = torch.Generator().manual_seed(0)
    codes = torch.randperm(K ** 3, generator=gen)[:ds.num_items]
    item_codes = torch.stack([codes // K ** 2, codes // K % K, codes % K], dim=1)
    cfg = OneRecConfig.preset("tiny", lifelong_len=10_000).for_data((K, K, K), ds)
    torch.manual_seed(0)
    ranker = OneRecRanker(OneRec(cfg), ds, item_codes, SemanticIdTrie(item_codes, K),
                          batch_size=16)
    table = compare_rankers(ds, {"onerec": ranker}, max_users=24)
    rows = {r["protocol"]: r for r in table["rows"]}
    assert rows["exclude"]["consumed_share"] == 0.0 and rows["keep"]["users"] == 24
    for r in rows.values():
        assert r["legal_rate"] == 1.0 and r["filled_rate"] == 1.0
    # A wider search returns k items too: the best k of its beams, which are the first k of
    # the same search asked for more items.
    from onerec.eval import eval_queries
    q = eval_queries(ds, "test", 24)
    wide = OneRecRanker(ranker.model, ds, item_codes, ranker.trie, batch_size=16, beam_width=40)
    top5, top40 = wide(q, 5, True), wide(q, 40, True)
    assert top5.shape == (24, 5) and np.array_equal(top5, top40[:, :5])
    assert not np.array_equal(top5, ranker(q, 5, True))  # the narrow search prunes differently

"""Evaluator metrics against hand-computed cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from onerec.eval import evaluate_ranking

# 3 users, catalogue of 10 items, lists of 3 (ks 1, 2, 3):
#   user 0: [4, 2, 7], target 2 -> rank 1;   history {7, 1}: 7 is consumed
#   user 1: [1, 5, -1], target 8 -> absent;  empty history; one empty slot
#   user 2: [3, 3, 9], target 3 -> rank 0;   history {9}: 9 consumed; 3 repeated (illegal)
RANKED = [[4, 2, 7], [1, 5, -1], [3, 3, 9]]
TARGETS = [2, 8, 3]
KS = (1, 2, 3)


def test_hand_computed_case():
    counts = np.ones(10, dtype=np.int64)
    counts[8] = 0  # user 1's target is cold
    m = evaluate_ranking(np.arange(3), np.array(RANKED), np.array(TARGETS), num_items=10,
                         train_counts=counts, history_offsets=np.array([0, 2, 2, 3]),
                         history_items=np.array([7, 1, 9]), ks=KS)
    assert m["users"] == 3
    assert m["recall@1"] == pytest.approx(1 / 3)
    assert m["recall@2"] == pytest.approx(2 / 3) and m["recall@3"] == pytest.approx(2 / 3)
    assert m["ndcg@1"] == pytest.approx(1 / 3)
    assert m["ndcg@2"] == pytest.approx((1 + 1 / math.log2(3)) / 3)
    assert m["ndcg@3"] == pytest.approx(m["ndcg@2"])
    assert m["legal_rate"] == pytest.approx(7 / 8)  # 8 filled slots, one duplicate
    assert m["filled_rate"] == pytest.approx(8 / 9)
    assert m["consumed_share"] == pytest.approx(2 / 8)
    assert m["coverage@1"] == pytest.approx(3 / 10)  # {4, 1, 3}
    assert m["coverage@2"] == pytest.approx(5 / 10)  # + {2, 5}
    assert m["coverage@3"] == pytest.approx(7 / 10)  # + {7, 9}
    assert m["cold_targets"] == 1
    assert m["warm_recall@1"] == pytest.approx(1 / 2) and m["cold_recall@3"] == 0.0
    assert m["warm_ndcg@2"] == pytest.approx((1 + 1 / math.log2(3)) / 2)


def test_tensor_inputs_and_no_optional_parts():
    m = evaluate_ranking(torch.arange(3), torch.tensor(RANKED), torch.tensor(TARGETS),
                         num_items=10, ks=KS)
    assert math.isnan(m["consumed_share"]) and "cold_targets" not in m
    assert m["recall@2"] == pytest.approx(2 / 3)
    cold = evaluate_ranking([0], [[1, 2, 3]], [5], num_items=10, ks=KS,
                            train_counts=np.ones(10, dtype=np.int64))
    assert cold["cold_targets"] == 0 and math.isnan(cold["cold_recall@1"])


def test_rank_beyond_k_and_out_of_catalogue_slots():
    ranked = np.full((2, 20), -1)
    ranked[0, :20] = np.arange(20)  # target 19 at rank 19: only in @20
    ranked[1, 0] = 99  # not a catalogue item
    m = evaluate_ranking([0, 1], ranked, [19, 3], num_items=30)
    assert m["recall@10"] == 0.0 and m["recall@20"] == pytest.approx(0.5)
    assert m["ndcg@20"] == pytest.approx(1 / math.log2(21) / 2)
    assert m["legal_rate"] == pytest.approx(20 / 21)


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least max"):
        evaluate_ranking([0], [[1, 2]], [1], num_items=5)
    with pytest.raises(ValueError, match="same number of rows"):
        evaluate_ranking([0, 1], [[1] * 20], [1], num_items=5)
    with pytest.raises(ValueError, match="targets must lie"):
        evaluate_ranking([0], [[1] * 20], [7], num_items=5)
    with pytest.raises(TypeError, match="integer"):
        evaluate_ranking([0], [[1.5] * 20], [1], num_items=5)

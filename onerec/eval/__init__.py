"""Evaluation: full-catalogue leave-one-out metrics and the baselines they are compared with.

    q = eval_queries(dataset, "test")                          # users, targets, histories
    ranked = PopularityRanker(dataset)(q, k=20, exclude=True)  # (U, 20) item ids
    m = evaluate_ranking(q.users, ranked, q.targets, num_items=dataset.num_items, ...)
    table = compare_rankers(dataset, baseline_rankers(dataset))  # dict + markdown
"""
from __future__ import annotations

from .metrics import KS, evaluate_ranking, hit_ranks, ranking_metrics

__all__ = ["KS", "evaluate_ranking", "hit_ranks", "ranking_metrics"]

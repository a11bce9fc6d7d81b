"""Evaluation: full-catalogue leave-one-out metrics and the baselines they are compared with.

    q = eval_queries(dataset, "test")                          # users, targets, histories
    ranked = PopularityRanker(dataset)(q, k=20, exclude=True)  # (U, 20) item ids
    m = evaluate_ranking(q.users, ranked, q.targets, num_items=dataset.num_items, ...)
    table = compare_rankers(dataset, baseline_rankers(dataset))  # dict + markdown
"""
from __future__ import annotations

from .baselines import (CooccurrenceRanker, EvalQueries, HistoryPriorRanker, PopularityRanker,
                        baseline_rankers, compare_rankers, default_exclude_consumed,
                        eval_queries, format_table, rank_by_scores)
from .metrics import KS, evaluate_ranking, hit_ranks, ranking_metrics
from .model_ranker import OneRecRanker
from .sasrec import SASRec, SASRecRanker, train_sasrec

__all__ = ["KS", "evaluate_ranking", "hit_ranks", "ranking_metrics", "EvalQueries",
           "eval_queries", "rank_by_scores", "PopularityRanker", "CooccurrenceRanker",
           "HistoryPriorRanker", "OneRecRanker", "SASRec", "SASRecRanker", "train_sasrec",
           "baseline_rankers",
           "compare_rankers", "default_exclude_consumed", "format_table"]

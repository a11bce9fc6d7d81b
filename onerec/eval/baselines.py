"""Baselines and the side-by-side table, all through the same evaluator on the same split.

A ranker is a callable `ranker(queries, k, exclude) -> (U, k) int64 item ids` (best first, -1 =
empty slot); `exclude=True` means the user's earlier items must not be returned (the protocol
for datasets where nobody consumes an item twice). Score-based rankers mask them before the
top-k; the history-code prior masks them inside the constrained beam search. Every ranker is
fitted on the TRAIN split only and sees, per query, the history strictly before the target
(for the test split that includes the validation item).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..data import TRAIN, Dataset, PackedSequences, build_pathways
from .metrics import KS, evaluate_ranking

Ranker = Callable[["EvalQueries", int, bool], np.ndarray]


@dataclass
class EvalQueries:
    """The held-out queries of one split.

    users, targets, times: (U,) int64 -- user, held-out item and its timestamp.
    history: packed items each user consumed strictly before the target (oldest first).
    train_counts: (I,) int64 -- training interactions per item (0 = cold item).
    """
    split: str
    users: np.ndarray
    targets: np.ndarray
    times: np.ndarray
    history: PackedSequences
    train_counts: np.ndarray

    @property
    def num_users(self) -> int:
        return int(self.users.shape[0])

    def last_items(self) -> np.ndarray:
        """(U,) each user's most recent history item, -1 without history."""
        off = self.history.offsets.numpy()
        items = self.history.item.numpy()
        return np.where(off[1:] > off[:-1], items[np.maximum(off[1:] - 1, 0)], -1)


def eval_queries(dataset: Dataset, split: str = "test", max_users: int | None = None
                 ) -> EvalQueries:
    """The queries of `split` ('valid' | 'test'); `max_users` keeps the first ones."""
    if split not in ("valid", "test"):
        raise ValueError(f"eval_queries: split must be 'valid' or 'test', got {split!r}")
    users, targets, times = dataset.targets(split)
    if max_users is not None:
        users, targets, times = users[:max_users], targets[:max_users], times[:max_users]
    history = build_pathways(dataset, users, times, short_len=0, positive_len=0).lifelong
    train = dataset.interactions.item[dataset.split.role == TRAIN]
    counts = np.bincount(train, minlength=dataset.num_items).astype(np.int64)
    return EvalQueries(split, users.astype(np.int64), targets.astype(np.int64),
                       times.astype(np.int64), history, counts)


def rank_by_scores(score_fn: Callable[[np.ndarray], torch.Tensor], q: EvalQueries, k: int,
                   exclude: bool, *, chunk: int = 1024) -> np.ndarray:
    """Top-k of full-catalogue scores, `chunk` users at a time: score_fn(rows) -> (n, I) float
    scores of the query rows `rows`. Ties go to the lower item id; -inf scores (e.g. excluded
    items) are never returned (slot -1 when fewer than k items remain)."""
    out = np.full((q.num_users, k), -1, dtype=np.int64)
    off, items = q.history.offsets, q.history.item
    for lo in range(0, q.num_users, chunk):
        rows = np.arange(lo, min(lo + chunk, q.num_users))
        s = score_fn(rows).float().clone()
        if exclude:
            n_hist = off[rows + 1] - off[rows]
            r = torch.repeat_interleave(torch.arange(len(rows)), n_hist)
            cols = torch.cat([items[off[i]:off[i + 1]] for i in rows]) if len(rows) else items[:0]
            s[r, cols] = float("-inf")
        vals, idx = torch.sort(s, dim=1, descending=True, stable=True)
        vals, idx = vals[:, :k], idx[:, :k]
        out[rows, :idx.shape[1]] = torch.where(vals == float("-inf"), -1, idx).numpy()
    return out


class PopularityRanker:
    """The most interacted-with TRAIN items, the same list for everyone (minus exclusions)."""

    name = "popularity"

    def __init__(self, dataset: Dataset):
        train = dataset.interactions.item[dataset.split.role == TRAIN]
        self.counts = torch.from_numpy(np.bincount(train, minlength=dataset.num_items)
                                       .astype(np.float32))

    def __call__(self, q: EvalQueries, k: int, exclude: bool) -> np.ndarray:
        return rank_by_scores(lambda rows: self.counts.expand(len(rows), -1), q, k, exclude)


def train_sequences(dataset: Dataset) -> list[np.ndarray]:
    """Each user's TRAIN items, oldest first (the per-user slices of the canonical order)."""
    inter, off = dataset.interactions, dataset.user_offsets
    is_train = dataset.split.role == TRAIN
    return [inter.item[off[u]:off[u + 1]][is_train[off[u]:off[u + 1]]]
            for u in range(dataset.num_users)]


class CooccurrenceRanker:
    """Item-to-item co-occurrence from the user's last item: C[a, b] sums 1 / distance over
    TRAIN pairs where b follows a within `window` positions (plus the reverse direction with
    `symmetric`); a user is scored by the row of its last history item, popularity breaking
    ties and filling in (scaled below any co-occurrence weight)."""

    name = "co-occurrence"

    def __init__(self, dataset: Dataset, *, window: int = 3, symmetric: bool = True):
        import scipy.sparse as sp

        rows, cols, vals = [], [], []
        for seq in train_sequences(dataset):
            for d in range(1, window + 1):
                if seq.shape[0] > d:
                    rows.append(seq[:-d])
                    cols.append(seq[d:])
                    vals.append(np.full(seq.shape[0] - d, 1.0 / d, dtype=np.float32))
        I = dataset.num_items
        r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
        v = np.concatenate(vals) if vals else np.zeros(0, np.float32)
        if symmetric:
            r, c, v = np.r_[r, c], np.r_[c, r], np.r_[v, v]
        self.matrix = sp.csr_matrix((v, (r, c)), shape=(I, I), dtype=np.float32)
        pop = PopularityRanker(dataset).counts
        self.prior = pop / (pop.max().clamp(min=1) * (window + 1) * 1000.0)

    def __call__(self, q: EvalQueries, k: int, exclude: bool) -> np.ndarray:
        last = q.last_items()

        def scores(rows):
            li = last[rows]
            dense = torch.from_numpy(self.matrix[np.maximum(li, 0)].toarray())
            dense[torch.from_numpy(li < 0)] = 0.0
            return dense + self.prior

        return rank_by_scores(scores, q, k, exclude)


class HistoryPriorRanker:
    """The history-code prior of today's `onerec run` (onerec/generate.py): a per-user n-gram
    over semantic-ID codes in the trie-constrained beam search (beam width = k). Exclusion is
    applied inside the search. `sids` / `trie` may be given to reuse a tokenizer."""

    name = "history prior"

    def __init__(self, dataset: Dataset, *, sids=None, trie=None, seed: int = 0,
                 history: int = 64):
        from ..pipeline import build_semantic_ids, build_trie

        self.dataset = dataset
        self.sids = sids if sids is not None else build_semantic_ids(dataset, seed=seed)
        self.trie = trie if trie is not None else build_trie(self.sids)
        self.history = history

    def __call__(self, q: EvalQueries, k: int, exclude: bool) -> np.ndarray:
        from ..pipeline import generate_for_split

        res = generate_for_split(self.dataset, self.sids, self.trie, split=q.split, beam_width=k,
                                 history=self.history, max_users=q.num_users,
                                 exclude_history=exclude)
        if not np.array_equal(res.users, q.users):
            raise AssertionError("HistoryPriorRanker: generate_for_split scored other users")
        return res.item_ids.numpy().astype(np.int64)


def default_exclude_consumed(dataset: Dataset) -> tuple[bool, str]:
    """The default protocol of a dataset: exclude already-consumed items when no user ever
    consumes an item twice (MovieLens, the Amazon benchmarks), keep them otherwise."""
    inter = dataset.interactions
    key = inter.user * np.int64(dataset.num_items) + inter.item
    repeats = len(inter) - np.unique(key).shape[0]
    if repeats == 0:
        return True, "no user consumes an item twice: consumed items are excluded"
    return False, f"{repeats} repeat consumptions: consumed items are kept"


def baseline_rankers(dataset: Dataset, *, names=("popularity", "co-occurrence", "history prior",
                                                 "sasrec"), seed: int = 0,
                     sasrec_options: dict | None = None, sids=None, trie=None
                     ) -> dict[str, Ranker]:
    """The named baselines fitted on `dataset`'s TRAIN split (SASRec trains here)."""
    from .sasrec import SASRecRanker

    makers = {
        "popularity": lambda: PopularityRanker(dataset),
        "co-occurrence": lambda: CooccurrenceRanker(dataset),
        "history prior": lambda: HistoryPriorRanker(dataset, sids=sids, trie=trie, seed=seed),
        "sasrec": lambda: SASRecRanker(dataset, seed=seed, **(sasrec_options or {})),
    }
    unknown = [n for n in names if n not in makers]
    if unknown:
        raise ValueError(f"baseline_rankers: unknown baselines {unknown}; known {list(makers)}")
    return {n: makers[n]() for n in names}


COLUMNS = [f"{m}@{k}" for m in ("recall", "ndcg") for k in KS] + [
    "legal_rate", "consumed_share", "coverage@20", "cold_targets", "warm_recall@10",
    "cold_recall@10"]


def compare_rankers(dataset: Dataset, rankers: dict[str, Ranker], *, split: str = "test",
                    protocols=("exclude", "keep"), max_users: int | None = None) -> dict:
    """Every ranker on the same queries, under each protocol ("exclude": consumed items are
    masked; "keep": they may be returned).

    Returns {"dataset", "split", "users", "default_protocol", "default_reason",
    "rows": [{"model", "protocol", "seconds", **metrics}], "markdown"}."""
    q = eval_queries(dataset, split, max_users)
    if q.num_users == 0:
        raise ValueError(f"compare_rankers: {dataset.name} has no held-out users in {split!r}")
    k = max(KS)
    default, reason = default_exclude_consumed(dataset)
    rows = []
    for protocol in protocols:
        if protocol not in ("exclude", "keep"):
            raise ValueError(f"compare_rankers: protocol must be 'exclude' or 'keep', "
                             f"got {protocol!r}")
        for name, ranker in rankers.items():
            t0 = time.perf_counter()
            ranked = ranker(q, k, protocol == "exclude")
            secs = time.perf_counter() - t0
            m = evaluate_ranking(q.users, ranked, q.targets, num_items=dataset.num_items,
                                 train_counts=q.train_counts,
                                 history_offsets=q.history.offsets.numpy(),
                                 history_items=q.history.item.numpy())
            rows.append({"model": name, "protocol": protocol, "seconds": secs, **m})
    out = {"dataset": dataset.name, "split": split, "users": q.num_users,
           "default_protocol": "exclude" if default else "keep", "default_reason": reason,
           "rows": rows}
    out["markdown"] = format_table(out)
    return out


def format_table(table: dict) -> str:
    """The markdown side-by-side table of a `compare_rankers` result."""
    head = ["model", "protocol"] + COLUMNS
    lines = [f"{table['dataset']}, split {table['split']} ({table['users']} users, full "
             f"catalogue); default protocol: {table['default_protocol']} "
             f"({table['default_reason']})", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table["rows"]:
        cells = [r["model"], r["protocol"] + (" (default)" if r["protocol"] ==
                                              table["default_protocol"] else "")]
        for c in COLUMNS:
            v = r.get(c, float("nan"))
            cells.append(str(v) if isinstance(v, int) else
                         ("-" if isinstance(v, float) and math.isnan(v) else f"{v:.4f}"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)

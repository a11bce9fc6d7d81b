"""Training samples: (a user's context before time t -> the item the user took at t), one per
training interaction of every user (not only each user's last), streamed in batches.

Only the (N,) sample index is held in memory; each batch's contexts are built on demand by the
pathway builder (strict `<` time cut, so a context never contains its target or anything later).
The order is a seeded permutation per epoch, drawn from its own generator keyed by (seed,
epoch), so it is independent of the global RNG and a run resumes mid-epoch from
`state_dict()` = {"epoch", "position"} alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from onerec.data import TRAIN, Dataset, build_pathways
from onerec.model.batch import EncoderBatch, encoder_batch
from onerec.model.config import OneRecConfig


@dataclass
class SampleBatch:
    """batch: the encoder inputs of B contexts. codes: (B, L) int64 target semantic IDs.
    items: (B,) int64 target item ids. rows: (B,) int64 rows of `Dataset.interactions`."""
    batch: EncoderBatch
    codes: torch.Tensor
    items: torch.Tensor
    rows: torch.Tensor

    @property
    def num_tokens(self) -> int:
        """Encoder input tokens (static + every pathway item) plus decoder tokens: the work."""
        b = self.batch
        seq = sum(int(getattr(b, n).cu_seqlens[-1]) for n in ("short_term", "positive",
                                                                "lifelong"))
        return b.batch_size * (1 + self.codes.shape[1]) + seq


def training_rows(dataset: Dataset, min_history: int = 1) -> np.ndarray:
    """(N,) int64 rows of the training targets: every TRAIN interaction with at least
    `min_history` earlier events of its user (strictly earlier timestamps), in canonical order."""
    if isinstance(min_history, bool) or not isinstance(min_history, (int, np.integer)) \
            or min_history < 0:
        raise ValueError(f"training_rows: min_history must be an int >= 0, got {min_history!r}")
    inter = dataset.interactions
    rows = np.flatnonzero(dataset.split.role == TRAIN)
    if min_history == 0 or rows.size == 0:
        return rows.astype(np.int64)
    # Earlier events of a row = rows of its user before the first row sharing its timestamp.
    first_same = _first_of_timestamp(inter.user, inter.timestamp)[rows]
    start = dataset.user_offsets[inter.user[rows]]
    return rows[(first_same - start) >= min_history].astype(np.int64)


def _first_of_timestamp(user: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
    """(N,) for each row (sorted by user, timestamp), the first row with its (user, timestamp)."""
    n = user.shape[0]
    new = np.ones(n, dtype=bool)
    new[1:] = (user[1:] != user[:-1]) | (timestamp[1:] != timestamp[:-1])
    return np.maximum.accumulate(np.where(new, np.arange(n), 0))


class SampleStream:
    """Batches of training samples in a seeded, resumable order.

    dataset: the Dataset. item_codes: (num_items, L) int64 semantic IDs of every item.
    config: the model's OneRecConfig (pathway lengths, features). batch_size: B contexts.
    seed: the order's seed. history_len: cap of the lifelong pathway (None: the whole earlier
    history; the model compresses it). min_history: see `training_rows`.
    Iterating yields SampleBatch forever, epoch after epoch (the caller counts steps);
    `state_dict` / `load_state_dict` save and restore the position between batches.
    """

    def __init__(self, dataset: Dataset, item_codes: torch.Tensor, config: OneRecConfig, *,
                 batch_size: int, seed: int = 0, history_len: int | None = None,
                 min_history: int = 1):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"SampleStream: batch_size must be an int >= 1, got {batch_size!r}")
        self.dataset, self.config = dataset, config
        self.item_codes = torch.as_tensor(item_codes).cpu()
        self.batch_size, self.seed, self.history_len = batch_size, int(seed), history_len
        self.rows = training_rows(dataset, min_history)
        if self.rows.size == 0:
            raise ValueError(f"SampleStream: {dataset.name} has no training samples (no train "
                             f"interaction with {min_history} earlier event(s))")
        self.epoch, self.position = 0, 0
        self._order: np.ndarray | None = None

    def __len__(self) -> int:
        """Samples per epoch."""
        return int(self.rows.size)

    @property
    def batches_per_epoch(self) -> int:
        return -(-len(self) // self.batch_size)

    def _epoch_order(self) -> np.ndarray:
        if self._order is None:
            gen = np.random.Generator(np.random.PCG64([self.seed, self.epoch]))
            self._order = self.rows[gen.permutation(self.rows.size)]
        return self._order

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "num_samples": len(self), "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        for k in ("seed", "num_samples", "batch_size"):
            if state[k] != self.state_dict()[k]:
                raise ValueError(f"SampleStream: the saved data order has {k} = {state[k]}, this "
                                 f"stream {self.state_dict()[k]}: not the same data or order")
        self.epoch, self.position, self._order = int(state["epoch"]), int(state["position"]), None

    def build(self, rows: np.ndarray) -> SampleBatch:
        """The SampleBatch of interaction `rows` (their users' contexts at their times)."""
        inter, cfg = self.dataset.interactions, self.config
        paths = build_pathways(self.dataset, inter.user[rows], inter.timestamp[rows],
                               short_len=cfg.short_len, positive_len=cfg.positive_len,
                               lifelong_len=self.history_len)
        items = torch.from_numpy(inter.item[rows].astype(np.int64))
        return SampleBatch(encoder_batch(paths, self.item_codes, cfg, self.dataset),
                           self.item_codes[items], items, torch.from_numpy(rows.astype(np.int64)))

    def next_batch(self) -> SampleBatch:
        order = self._epoch_order()
        rows = order[self.position:self.position + self.batch_size]
        self.position += rows.size
        if self.position >= order.size:  # the epoch's last (possibly short) batch
            self.epoch, self.position, self._order = self.epoch + 1, 0, None
        return self.build(rows)

    def __iter__(self) -> Iterator[SampleBatch]:
        while True:
            yield self.next_batch()

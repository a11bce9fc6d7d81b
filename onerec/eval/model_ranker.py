"""The OneRec model as a ranker of the evaluator: trie-constrained beam search per chunk of
queries (beam width max(k, beam_width): a wider beam than the cutoff finds higher-scoring items
that a narrow one prunes early), with the consumed-item exclusion applied inside the search."""
from __future__ import annotations

import numpy as np
import torch

from ..data import Dataset
from .baselines import EvalQueries


class OneRecRanker:
    """ranker(queries, k, exclude) -> (U, k) item ids from `model.recommend`.

    model: a `onerec.model.OneRec` (put in eval mode here); item_codes: (num_items, L) int64
    semantic IDs in item-id order (what `encoder_batch` takes); trie: the SemanticIdTrie of the
    recommendable items, on the model's device. batch_size: queries per beam search.
    beam_width: beams of the search (at least k; the top k of them are returned)."""

    def __init__(self, model, dataset: Dataset, item_codes: torch.Tensor, trie, *,
                 batch_size: int = 128, backend: str | None = None, name: str = "onerec",
                 beam_width: int = 0):
        self.model, self.dataset, self.item_codes, self.trie = model, dataset, item_codes, trie
        self.batch_size, self.backend, self.name = batch_size, backend, name
        self.beam_width = beam_width

    @torch.no_grad()
    def __call__(self, q: EvalQueries, k: int, exclude: bool) -> np.ndarray:
        from ..model.batch import build_batch

        self.model.eval()
        dev = self.trie.device
        out = np.full((q.num_users, k), -1, dtype=np.int64)
        off, items = q.history.offsets, q.history.item
        for lo in range(0, q.num_users, self.batch_size):
            hi = min(lo + self.batch_size, q.num_users)
            batch = build_batch(self.dataset, torch.from_numpy(q.users[lo:hi]),
                                torch.from_numpy(q.times[lo:hi]), self.item_codes,
                                self.model.config).to(dev)
            extra = {}
            if exclude:
                extra = {"exclude_offsets": (off[lo:hi + 1] - off[lo]).to(dev),
                         "exclude_items": items[int(off[lo]):int(off[hi])].to(dev)}
            res = self.model.recommend(batch, self.trie, max(k, self.beam_width),
                                       backend=self.backend, **extra)
            out[lo:hi] = res.item_ids[:, :k].cpu().numpy()
        return out

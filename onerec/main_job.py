"""The main job's training and evaluation stages (after onerec.pipeline's data -> semantic IDs ->
trie): train the `tiny` OneRec model, compare it with the baselines through onerec.eval, and
recommend for a few users. The `onerec run` CLI calls these and only prints."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from .data import Dataset
from .pipeline import SemanticIds

# SASRec settings small enough for a CPU demo (the baselines script trains it far longer).
SASREC_DEMO = {"epochs": 10, "dim": 32, "max_len": 50}


@dataclass
class TrainedModel:
    model: torch.nn.Module  # onerec.model.OneRec, on its device
    item_codes: torch.Tensor  # (num_items, L) int64 semantic IDs in item-id order (CPU)
    result: object  # onerec.train.TrainResult


def train_model(dataset: Dataset, sids: SemanticIds, trie, *, steps: int, preset: str = "tiny",
                batch_size: int = 64, seed: int = 0, device: torch.device | str = "cpu",
                out_dir: str | None = None, progress: bool = False) -> TrainedModel:
    """A fresh `preset` OneRec (shaped by the tokenizer's codebooks and the dataset's features)
    pretrained for `steps` steps with onerec.train.pretrain (no periodic validation: the
    evaluation stage scores the final model). out_dir: where pretrain writes last.pt and
    metrics.jsonl (None: nothing on disk)."""
    from .model.config import OneRecConfig
    from .model.model import OneRec
    from .train import TrainConfig, pretrain
    from .train.pretrain import as_item_codes

    config = OneRecConfig.preset(preset).for_data(sids.tokenizer.codebook_sizes, dataset)
    torch.manual_seed(seed)
    model = OneRec(config).to(device)
    item_codes = as_item_codes(sids, dataset.num_items)
    cfg = TrainConfig(max_steps=steps, warmup_steps=min(20, max(1, steps // 10)),
                      batch_size=batch_size, eval_every=0, checkpoint_every=0,
                      log_every=max(1, steps // 10), seed=seed, out_dir=out_dir,
                      progress=progress)
    result = pretrain(model, dataset, item_codes, cfg, trie=trie)
    return TrainedModel(model, item_codes, result)


def evaluate_against_baselines(dataset: Dataset, sids: SemanticIds, trie, trained: TrainedModel,
                               *, max_users: int | None = None, sasrec: bool = False,
                               seed: int = 0, beam_backend: str | None = None) -> dict:
    """compare_rankers of the trained model ("onerec") and the baselines (popularity,
    co-occurrence, history prior, and with `sasrec` a briefly trained SASRec) on the test split,
    both protocols; the history prior reuses `sids` / `trie`."""
    from .eval import OneRecRanker, baseline_rankers, compare_rankers

    names = ["popularity", "co-occurrence", "history prior"] + (["sasrec"] if sasrec else [])
    rankers = baseline_rankers(dataset, names=names, seed=seed, sids=sids, trie=trie,
                               sasrec_options=SASREC_DEMO)
    rankers["onerec"] = OneRecRanker(trained.model, dataset, trained.item_codes, trie,
                                     backend=beam_backend)
    table = compare_rankers(dataset, rankers, max_users=max_users)
    if sasrec:
        table["sasrec_train"] = rankers["sasrec"].report
    return table


def recommend_examples(dataset: Dataset, trained: TrainedModel, trie, *, num_users: int = 3,
                       k: int = 5, exclude: bool = False, beam_backend: str | None = None
                       ) -> list[dict]:
    """The trained model's top-k for the first `num_users` test users: [{"user", "target",
    "items": [(item id, semantic-ID tuple), ...]}] (exclude: consumed items masked)."""
    from .eval import OneRecRanker, eval_queries

    q = eval_queries(dataset, "test", num_users)
    ranked = OneRecRanker(trained.model, dataset, trained.item_codes, trie,
                          backend=beam_backend)(q, k, exclude)
    codes = trained.item_codes.tolist()
    return [{"user": int(u), "target": int(t),
             "items": [(int(i), tuple(codes[i])) for i in row if i >= 0]}
            for u, t, row in zip(q.users, q.targets, np.asarray(ranked))]


def train_out_dir(out) -> str:
    """The folder of an open onerec.results.ResultFolder where pretrain may write its files
    (they are published with the manifest like every other file of the run)."""
    from .train.pretrain import LAST

    return os.path.dirname(out.path(LAST))

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

# SASRec settings small enough for a CPU demo (`onerec run --sasrec`), and the recipe of the
# published baseline table (docs/evaluation.md; `onerec eval --sasrec`, scripts/eval_baselines.py).
SASREC_DEMO = {"epochs": 10, "dim": 32, "max_len": 50}
SASREC_FULL = {"epochs": 100, "dim": 64, "max_len": 100}


@dataclass
class TrainedModel:
    model: torch.nn.Module  # onerec.model.OneRec, on its device
    item_codes: torch.Tensor  # (num_items, L) int64 semantic IDs in item-id order (CPU)
    result: object  # onerec.train.TrainResult


def model_config(preset: str, sids: SemanticIds, dataset: Dataset):
    """The `preset` OneRecConfig shaped by the tokenizer's codebooks and the dataset's features."""
    from .model.config import OneRecConfig

    return OneRecConfig.preset(preset).for_data(sids.tokenizer.codebook_sizes, dataset)


def new_model(config, *, seed: int = 0, device: torch.device | str = "cpu") -> torch.nn.Module:
    """A freshly initialised OneRec of `config` (the init seeded by `seed`) on `device`."""
    from .model.model import OneRec

    torch.manual_seed(seed)
    return OneRec(config).to(device)


def default_warmup(steps: int) -> int:
    """Warmup steps of a `steps`-step schedule: a tenth of it, between 1 and 20."""
    return min(20, max(1, steps // 10))


def train_model(dataset: Dataset, sids: SemanticIds, trie, *, steps: int, preset: str = "tiny",
                batch_size: int = 64, seed: int = 0, device: torch.device | str = "cpu",
                out_dir: str | None = None, progress: bool = False) -> TrainedModel:
    """A fresh `preset` OneRec (shaped by the tokenizer's codebooks and the dataset's features)
    pretrained for `steps` steps with onerec.train.pretrain (no periodic validation: the
    evaluation stage scores the final model). out_dir: where pretrain writes last.pt and
    metrics.jsonl (None: nothing on disk)."""
    from .train import TrainConfig, pretrain
    from .train.pretrain import as_item_codes

    model = new_model(model_config(preset, sids, dataset), seed=seed, device=device)
    item_codes = as_item_codes(sids, dataset.num_items)
    cfg = TrainConfig(max_steps=steps, warmup_steps=default_warmup(steps),
                      batch_size=batch_size, eval_every=0, checkpoint_every=0,
                      log_every=max(1, steps // 10), seed=seed, out_dir=out_dir,
                      progress=progress)
    result = pretrain(model, dataset, item_codes, cfg, trie=trie)
    return TrainedModel(model, item_codes, result)


class _StopRequested(Exception):
    """Raised by train_run's step callback at `stop_after` (after that step's checkpoint)."""


def checkpoint_finished(info: dict) -> bool:
    """Whether the run that wrote a checkpoint (its plain fields: onerec.train.checkpoint_info)
    had ended there: all max_steps done, or stopped early (pretrain's rule: `patience`
    validations without gain)."""
    t = info["train_config"]
    return info["step"] >= t["max_steps"] or (t["patience"] > 0
                                              and info["bad_evals"] >= t["patience"])


def _result_from_checkpoint(state: dict, last: str, **extra) -> "TrainResult":
    """The TrainResult of the run as checkpoint `last` (loaded as `state`) recorded it: its
    histories include those of the runs it resumed."""
    from .train import TrainResult
    from .train.pretrain import BEST

    best = os.path.join(os.path.dirname(last), BEST)
    stopped_early = (checkpoint_finished(state)
                     and state["step"] < state["train_config"]["max_steps"])
    return TrainResult(state["step"], list(state["losses"]), list(state["evals"]),
                       state["best_step"], state["best_recall"], stopped_early, last,
                       best if os.path.exists(best) else None, extra=extra)


def train_run(dataset: Dataset, sids: SemanticIds, trie, config, train_config, *, seed: int = 0,
              device: torch.device | str = "cpu", resume_from: str | None = None,
              stop_after: int | None = None, on_step=None) -> TrainedModel:
    """Pretrain a fresh OneRec of `config` with `train_config` (a TrainConfig whose out_dir is
    set), optionally resuming from checkpoint `resume_from` (CheckpointError when it belongs to
    another config, semantic-ID table or schedule). A checkpoint whose run had ended (all steps,
    or stopped early) is not trained further: the model and result are read from it.

    stop_after: end after this many steps in all although the schedule spans max_steps; last.pt
    then holds exactly that step, so a later resume continues as if never stopped. The result's
    `extra["stopped_at"]` says so. on_step(step, loss): called after every step and its
    checkpoints (pretrain's callback)."""
    import math
    from dataclasses import replace

    from .train import load_checkpoint, pretrain
    from .train.checkpoint import checkpoint_info, codes_checksum
    from .train.pretrain import LAST, as_item_codes

    cfg = train_config
    if cfg.out_dir is None:
        raise ValueError("train_run: train_config.out_dir must be set (checkpoints go there)")
    model = new_model(config, seed=seed, device=device)
    item_codes = as_item_codes(sids, dataset.num_items)
    if resume_from is not None and checkpoint_finished(checkpoint_info(resume_from)):
        state = load_checkpoint(resume_from, model_config=config.to_dict(),
                                tokenizer_checksum=codes_checksum(item_codes,
                                                                  config.codebook_sizes))
        model.load_state_dict(state["model"])
        return TrainedModel(model, item_codes, _result_from_checkpoint(state, resume_from))
    hooks = [on_step] if on_step is not None else []
    if stop_after is not None and stop_after < cfg.max_steps:
        # pretrain saves last.pt at multiples of checkpoint_every (0: only at the end); saving
        # at the divisors of stop_after too puts a checkpoint exactly there. When to save is no
        # resume setting: the losses do not change.
        cfg = replace(cfg, checkpoint_every=math.gcd(cfg.checkpoint_every, stop_after))

        def stop(step: int, loss: float) -> None:
            if step >= stop_after:
                raise _StopRequested
        hooks.append(stop)

    def each_step(step: int, loss: float) -> None:
        for hook in hooks:
            hook(step, loss)

    try:
        result = pretrain(model, dataset, item_codes, cfg, trie=trie,
                          resume=resume_from if resume_from is not None else False,
                          on_step=each_step if hooks else None)
    except _StopRequested:
        # The histories live in the checkpoint just written (they include a resumed run's).
        last = os.path.join(cfg.out_dir, LAST)
        state = load_checkpoint(last)
        result = _result_from_checkpoint(state, last, stopped_at=state["step"])
    return TrainedModel(model, item_codes, result)


def evaluate_against_baselines(dataset: Dataset, sids: SemanticIds, trie, trained: TrainedModel,
                               *, max_users: int | None = None, sasrec: bool = False,
                               seed: int = 0, beam_backend: str | None = None,
                               split: str = "test", protocols=("exclude", "keep"),
                               sasrec_options: dict | None = None, beam_width: int = 0) -> dict:
    """compare_rankers of the trained model ("onerec") and the baselines (popularity,
    co-occurrence, history prior, and with `sasrec` SASRec trained with `sasrec_options`,
    default SASREC_DEMO) on `split`, under `protocols`; the history prior reuses `sids` /
    `trie`. beam_width: the model's search width (at least the largest cutoff, 20)."""
    from .eval import OneRecRanker, baseline_rankers, compare_rankers

    names = ["popularity", "co-occurrence", "history prior"] + (["sasrec"] if sasrec else [])
    rankers = baseline_rankers(dataset, names=names, seed=seed, sids=sids, trie=trie,
                               sasrec_options=sasrec_options or SASREC_DEMO)
    rankers["onerec"] = OneRecRanker(trained.model, dataset, trained.item_codes, trie,
                                     backend=beam_backend, beam_width=beam_width)
    table = compare_rankers(dataset, rankers, split=split, protocols=protocols,
                            max_users=max_users)
    if sasrec:
        table["sasrec_train"] = rankers["sasrec"].report
    return table


def recommend_examples(dataset: Dataset, trained: TrainedModel, trie, *, num_users: int = 3,
                       k: int = 5, exclude: bool = False, beam_backend: str | None = None
                       ) -> list[dict]:
    """The trained model's top-k for the first `num_users` test users: [{"user", "target",
    "items": [(item id, semantic-ID tuple), ...]}] (exclude: consumed items masked)."""
    from .eval import eval_queries

    q = eval_queries(dataset, "test", num_users)
    ranked = _rank(dataset, trained, trie, q, k, exclude, beam_backend)
    codes = trained.item_codes.tolist()
    return [{"user": int(u), "target": int(t),
             "items": [(int(i), tuple(codes[i])) for i in row if i >= 0]}
            for u, t, row in zip(q.users, q.targets, ranked)]


def _rank(dataset: Dataset, trained: TrainedModel, trie, q, k: int, exclude: bool,
          beam_backend: str | None) -> np.ndarray:
    from .eval import OneRecRanker

    return np.asarray(OneRecRanker(trained.model, dataset, trained.item_codes, trie,
                                   backend=beam_backend)(q, k, exclude))


def next_item_queries(dataset: Dataset, users) -> "EvalQueries":
    """Queries "what comes next" for `users` (dense ids): each user's whole history (every
    split) is the context, and everything in it counts as consumed; no target (-1)."""
    from .data import TRAIN, build_pathways
    from .eval import EvalQueries

    users = np.asarray(users, dtype=np.int64).reshape(-1)
    history = build_pathways(dataset, users, None, short_len=0, positive_len=0).lifelong
    train = dataset.interactions.item[dataset.split.role == TRAIN]
    return EvalQueries("next", users, np.full(users.shape, -1, dtype=np.int64),
                       np.full(users.shape, np.iinfo(np.int64).max, dtype=np.int64), history,
                       np.bincount(train, minlength=dataset.num_items).astype(np.int64))


def recommend_next(dataset: Dataset, trained: TrainedModel, trie, users, *, k: int = 10,
                   exclude: bool = True, beam_backend: str | None = None) -> list[dict]:
    """The trained model's top-k next items after each user's whole history (`users`: dense
    ids; exclude: consumed items masked inside the constrained search). Returns per user
    {"user": original id, "history": its length, "items": [{"item": original id, "index":
    dense id, "semantic_id": [codes], "title": str}, ...]}."""
    q = next_item_queries(dataset, users)
    ranked = _rank(dataset, trained, trie, q, k, exclude, beam_backend)
    codes = trained.item_codes.tolist()
    lengths = np.diff(q.history.offsets.numpy())
    items = dataset.items
    return [{"user": int(dataset.users.ids[u]), "history": int(n),
             "items": [{"item": int(items.ids[i]), "index": int(i), "semantic_id": codes[i],
                        "title": items.titles[i]} for i in row if i >= 0]}
            for u, n, row in zip(q.users, lengths, ranked)]


def train_out_dir(out) -> str:
    """The folder of an open onerec.results.ResultFolder where pretrain may write its files
    (they are published with the manifest like every other file of the run)."""
    from .train.pretrain import LAST

    return os.path.dirname(out.path(LAST))

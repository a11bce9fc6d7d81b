"""Next-token pretraining of the OneRec model on (context -> next item) samples.

    result = pretrain(model, dataset, item_codes, TrainConfig(max_steps=500, out_dir="out"))

One step = `grad_accum` micro-batches of `SampleStream` (forward under bf16 autocast on a GPU,
backward of loss / grad_accum), gradient-norm clipping, AdamW, the warmup + cosine schedule,
and the MoE balancing-bias update (an optimizer post-step hook, so it follows every step).
Every `eval_every` steps: Recall@10 of the validation targets of a fixed, capped set of users
from the trie-constrained beam search; the best is kept as `best.pt` and training stops after
`patience` evaluations without improvement. `last.pt` (every `checkpoint_every` steps and at
the end) carries everything a resume needs to continue exactly: model (with the balancing
bias, a buffer), optimizer, scheduler, RNG and data-order state, step, histories, and for the
compatibility check the model config and the semantic-ID checksum.
Files under out_dir: last.pt, best.pt, metrics.jsonl (one JSON object per log / eval event),
and `plot_metrics` draws training.png from it.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch

from onerec._progress import progress_bar
from onerec.data import Dataset, build_pathways
from onerec.model.batch import encoder_batch
from onerec.model.model import OneRec
from onerec.model.moe import attach_balancing, moe_layers
from onerec_kernels import SemanticIdTrie

from .checkpoint import (CheckpointError, codes_checksum, load_checkpoint, rng_state,
                         save_checkpoint, set_rng_state)
from .samples import SampleStream

LAST, BEST, METRICS, PLOT = "last.pt", "best.pt", "metrics.jsonl", "training.png"
# Settings that change which samples or updates a step makes: a resume must keep them.
_RESUME_KEYS = ("lr", "weight_decay", "betas", "warmup_steps", "max_steps", "min_lr_ratio",
                "batch_size", "grad_accum", "grad_clip", "seed", "history_len", "min_history")


@dataclass
class TrainConfig:
    """lr: peak AdamW learning rate, reached after `warmup_steps` (linear), then cosine down to
    lr * min_lr_ratio at max_steps. batch_size: contexts per micro-batch; grad_accum
    micro-batches per step. grad_clip: max global gradient norm (0: none).
    bf16: autocast to bfloat16 ("auto": on CUDA only). compile: torch.compile the loss.
    eval_every: steps between validations (0: never); eval_users: validation users (the first
    ones with a validation target, a fixed set); eval_k: the recall cutoff; beam_width >= eval_k.
    patience: evaluations without improvement before stopping (0: never stop early).
    checkpoint_every: steps between last.pt saves (0: only at the end). out_dir: None keeps
    nothing on disk. log_every: steps between metric lines. history_len / min_history: see
    SampleStream. progress: a tqdm bar."""
    lr: float = 3e-3
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 20
    max_steps: int = 200
    min_lr_ratio: float = 0.1
    batch_size: int = 64
    grad_accum: int = 1
    grad_clip: float = 1.0
    bf16: str | bool = "auto"
    compile: bool = False
    eval_every: int = 50
    eval_users: int = 256
    eval_k: int = 10
    beam_width: int = 10
    patience: int = 3
    checkpoint_every: int = 50
    out_dir: str | None = None
    log_every: int = 10
    history_len: int | None = None
    min_history: int = 1
    seed: int = 0
    progress: bool = False

    def __post_init__(self):
        def bad(msg):
            raise ValueError(f"TrainConfig: {msg}")
        for name in ("max_steps", "batch_size", "grad_accum", "eval_users", "eval_k",
                     "beam_width"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                bad(f"{name} must be an int >= 1, got {v!r}")
        for name in ("warmup_steps", "eval_every", "patience", "checkpoint_every", "log_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                bad(f"{name} must be an int >= 0, got {v!r}")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1 or self.grad_clip < 0:
            bad(f"need lr > 0, 0 <= min_lr_ratio <= 1, grad_clip >= 0; got {self.lr}, "
                f"{self.min_lr_ratio}, {self.grad_clip}")
        if self.beam_width < self.eval_k:
            bad(f"beam_width ({self.beam_width}) must be >= eval_k ({self.eval_k})")
        if self.bf16 not in ("auto", True, False):
            bad(f"bf16 must be 'auto', True or False, got {self.bf16!r}")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class TrainResult:
    """step: steps done. losses: the loss of every step (1-based step i -> losses[i - 1]).
    evals: [{"step", "recall", "legal_rate"}, ...]. best_step / best_recall: the best
    validation (best_step 0 and nan without validation). stopped_early: patience ran out.
    last_checkpoint / best_checkpoint: paths (None without out_dir). seconds: wall time."""
    step: int
    losses: list[float]
    evals: list[dict]
    best_step: int
    best_recall: float
    stopped_early: bool
    last_checkpoint: str | None = None
    best_checkpoint: str | None = None
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def lr_lambda(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak lr for optimizer step `step` (0-based): linear warmup, cosine."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class _Schedule:
    """A picklable LambdaLR multiplier (the scheduler's state_dict stays plain data)."""

    def __init__(self, warmup, total, min_ratio):
        self.args = (warmup, total, min_ratio)

    def __call__(self, step):
        return lr_lambda(step, *self.args)


def as_item_codes(semantic_ids, num_items: int) -> torch.Tensor:
    """(num_items, L) int64 codes from a tensor or an `onerec.pipeline.SemanticIds`."""
    table = getattr(semantic_ids, "table", None)
    if table is not None:
        codes = torch.full((num_items, table.codes.shape[1]), -1, dtype=torch.int64)
        codes[table.item_ids] = table.codes
    else:
        codes = torch.as_tensor(semantic_ids).to(torch.int64).cpu()
    if codes.dim() != 2 or codes.shape[0] != num_items or bool((codes < 0).any()):
        raise ValueError(f"pretrain: semantic_ids must give every one of the {num_items} items "
                         f"a code (a (num_items, L) table), got shape {tuple(codes.shape)}")
    return codes


class Validator:
    """Recall@k of validation targets for a fixed set of users, from model.recommend.

    The batch is built once (host) and moved to the device once; the users are the first
    `max_users` with a validation target, so every evaluation scores the same queries.
    exclude: mask each user's consumed items inside the search (None: the dataset's default
    protocol, `onerec.eval.default_exclude_consumed`, as the final evaluation does)."""

    def __init__(self, dataset: Dataset, item_codes: torch.Tensor, config, trie: SemanticIdTrie,
                 *, split: str = "valid", max_users: int = 256, k: int = 10,
                 beam_width: int = 10, history_len: int | None = None, chunk: int = 128,
                 exclude: bool | None = None, device="cpu"):
        from onerec.eval.baselines import default_exclude_consumed

        self.exclude = default_exclude_consumed(dataset)[0] if exclude is None else exclude
        users, items, times = dataset.targets(split)
        if users.size == 0:
            raise ValueError(f"Validator: {dataset.name} has no {split} targets")
        users, items, times = users[:max_users], items[:max_users], times[:max_users]
        self.targets = torch.from_numpy(items.astype(np.int64))
        self.trie, self.k, self.beam_width, self.device = trie, k, beam_width, device
        self.batches, self.excluded = [], []
        for s in range(0, users.size, chunk):
            u, t = users[s:s + chunk], times[s:s + chunk]
            paths = build_pathways(dataset, u, t, short_len=config.short_len,
                                   positive_len=config.positive_len, lifelong_len=history_len)
            self.batches.append(encoder_batch(paths, item_codes, config, dataset).to(device))
            extra = {}
            if self.exclude:  # everything before the target, however long the model's cap
                hist = paths.lifelong if history_len is None else build_pathways(
                    dataset, u, t, short_len=0, positive_len=0).lifelong
                extra = {"exclude_offsets": hist.offsets.to(device),
                         "exclude_items": hist.item.to(device)}
            self.excluded.append(extra)

    @torch.no_grad()
    def __call__(self, model: OneRec, autocast=None) -> dict:
        was_training = model.training
        model.eval()
        items, legal, total = [], 0, 0
        try:
            for b, extra in zip(self.batches, self.excluded):
                with autocast() if autocast else _null():
                    res = model.recommend(b, self.trie, self.beam_width, **extra)
                finite = torch.isfinite(res.scores)
                codes = res.codes[finite].reshape(-1, res.codes.shape[-1])
                legal += int(self.trie.contains(codes).sum()) if codes.numel() else 0
                total += int(finite.sum())
                items.append(res.item_ids[:, :self.k].cpu())
        finally:
            model.train(was_training)
        hits = (torch.cat(items) == self.targets[:, None]).any(1)
        return {"recall": hits.float().mean().item(), "legal_rate": legal / max(total, 1),
                "users": int(hits.numel()), "k": self.k,
                "protocol": "exclude" if self.exclude else "keep"}


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def _append_jsonl(path: str, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record, default=float) + "\n")


def _truncate_metrics(path: str, step: int) -> None:
    """Drop metric lines after `step` (a resumed run redoes those steps), atomically."""
    if not os.path.exists(path):
        return
    keep = []
    with open(path) as f:
        for ln in f:
            try:
                if json.loads(ln)["step"] <= step:
                    keep.append(ln)
            except (ValueError, KeyError, TypeError):  # a line cut short by a kill
                continue
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(keep)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def expert_imbalance(model: torch.nn.Module) -> float:
    """max over MoE layers of (max expert load / mean load) of the last training forward
    (1.0 = perfectly balanced; nan without MoE). Reads the device (a sync)."""
    stats = [m.load_stats()["max_over_mean"] for m in moe_layers(model)]
    return max(stats) if stats else float("nan")


def pretrain(model: OneRec, dataset: Dataset, semantic_ids, config: TrainConfig | None = None,
             *, trie: SemanticIdTrie | None = None, resume: bool | str = False,
             on_step: Callable[[int, float], None] | None = None) -> TrainResult:
    """Train `model` (already on its device) on `dataset`'s training samples.

    semantic_ids: (num_items, L) int64 codes of every item, or a pipeline SemanticIds.
    trie: the constrained-search trie (default: built from the codes). resume: True continues
    from out_dir/last.pt when it exists; a path continues from that checkpoint. A checkpoint of
    another model config, semantic-ID table or schedule raises CheckpointError.
    on_step(step, loss): called after every step (and its checkpoint); an exception there stops
    training (tests use it to simulate an interruption).
    """
    cfg = config or TrainConfig()
    device = next(model.parameters()).device
    item_codes = as_item_codes(semantic_ids, dataset.num_items)
    mcfg = model.config
    if item_codes.shape[1] != mcfg.num_levels:
        raise ValueError(f"pretrain: semantic IDs have {item_codes.shape[1]} levels, the model "
                         f"{mcfg.num_levels}")
    checksum = codes_checksum(item_codes, mcfg.codebook_sizes)
    if trie is None:
        trie = SemanticIdTrie(item_codes, mcfg.codebook_sizes,
                              item_ids=torch.arange(dataset.num_items)).to(device)
    use_bf16 = device.type == "cuda" if cfg.bf16 == "auto" else bool(cfg.bf16)

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else _null()

    stream = SampleStream(dataset, item_codes, mcfg, batch_size=cfg.batch_size, seed=cfg.seed,
                          history_len=cfg.history_len, min_history=cfg.min_history)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "emb" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "emb" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=tuple(cfg.betas))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, _Schedule(cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio))
    hook = attach_balancing(opt, model)
    loss_fn = torch.compile(model.loss, dynamic=True) if cfg.compile else model.loss
    validator = Validator(dataset, item_codes, mcfg, trie, max_users=cfg.eval_users,
                          k=cfg.eval_k, beam_width=cfg.beam_width, history_len=cfg.history_len,
                          device=device) if cfg.eval_every else None

    out = cfg.out_dir
    paths = {n: os.path.join(out, n) for n in (LAST, BEST, METRICS)} if out else {}
    if out:
        os.makedirs(out, exist_ok=True)
    step, losses, evals = 0, [], []
    best_step, best_recall, bad_evals = 0, float("nan"), 0
    resume_path = None
    if resume is True and out and os.path.exists(paths[LAST]):
        resume_path = paths[LAST]
    elif isinstance(resume, (str, os.PathLike)):
        resume_path = os.fspath(resume)
    elif resume not in (False, True):
        raise TypeError(f"pretrain: resume must be a bool or a path, got {resume!r}")
    if resume_path is not None:
        state = load_checkpoint(resume_path, model_config=mcfg.to_dict(),
                                tokenizer_checksum=checksum)
        saved = {k: state["train_config"][k] for k in _RESUME_KEYS}
        mine = {k: cfg.to_dict()[k] for k in _RESUME_KEYS}
        if saved != mine:
            diff = {k: (saved[k], mine[k]) for k in _RESUME_KEYS if saved[k] != mine[k]}
            raise CheckpointError(f"checkpoint {resume_path} was trained with other training "
                                  f"settings (saved vs now: {diff}); a resume keeps them")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        stream.load_state_dict(state["data"])
        set_rng_state(state["rng"])
        step, losses, evals = state["step"], list(state["losses"]), list(state["evals"])
        best_step, best_recall, bad_evals = (state["best_step"], state["best_recall"],
                                             state["bad_evals"])
        if out:
            _truncate_metrics(paths[METRICS], step)
    elif out and os.path.exists(paths.get(METRICS, "")):
        os.unlink(paths[METRICS])  # a fresh run starts a fresh log

    def state_now() -> dict:
        return {"model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "data": stream.state_dict(), "rng": rng_state(),
                "step": step, "losses": losses, "evals": evals, "best_step": best_step,
                "best_recall": best_recall, "bad_evals": bad_evals,
                "model_config": mcfg.to_dict(), "tokenizer_checksum": checksum,
                "train_config": cfg.to_dict()}

    model.train()
    t_start = time.perf_counter()
    bar = progress_bar(total=cfg.max_steps, initial=step, desc="pretrain", unit="step",
                       disable=not cfg.progress)
    stopped_early = False
    postfix = {}  # the bar shows the latest of each: loss, tokens/s, imbalance, val recall
    tokens, train_seconds = 0, 0.0  # since the last metric line, validation excluded
    try:
        while step < cfg.max_steps and not stopped_early:
            t_step = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            total = torch.zeros((), device=device)
            for _ in range(cfg.grad_accum):
                sb = stream.next_batch()
                tokens += sb.num_tokens
                with autocast():
                    loss = loss_fn(sb.batch.to(device), sb.codes.to(device))
                (loss / cfg.grad_accum).backward()
                total += loss.detach() / cfg.grad_accum
            gnorm = (torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                     if cfg.grad_clip > 0 else torch.zeros(()))
            lr_now = sched.get_last_lr()[0]
            opt.step()  # the balancing hook updates every MoE bias here
            sched.step()
            step += 1
            loss_v = total.item()  # the step's one host sync
            train_seconds += time.perf_counter() - t_step
            losses.append(loss_v)
            bar.update(1)
            if cfg.log_every and (step % cfg.log_every == 0 or step == cfg.max_steps):
                rec = {"step": step, "event": "train", "loss": loss_v, "lr": lr_now,
                       "grad_norm": float(gnorm),
                       "tokens_per_s": tokens / max(train_seconds, 1e-9),
                       "imbalance": expert_imbalance(model)}
                tokens, train_seconds = 0, 0.0
                postfix.update(loss=f"{loss_v:.3f}", tok_s=f"{rec['tokens_per_s']:.0f}",
                               imbalance=f"{rec['imbalance']:.2f}")
                bar.set_postfix(postfix)
                if out:
                    _append_jsonl(paths[METRICS], rec)
            if validator is not None and (step % cfg.eval_every == 0 or step == cfg.max_steps):
                m = validator(model, autocast)
                m["step"] = step
                evals.append(m)
                improved = not best_recall >= m["recall"]  # nan (no eval yet) counts as worse
                if improved:
                    best_step, best_recall, bad_evals = step, m["recall"], 0
                else:
                    bad_evals += 1
                    stopped_early = cfg.patience > 0 and bad_evals >= cfg.patience
                if out:
                    _append_jsonl(paths[METRICS], {"event": "valid", **m})
                    if improved:
                        save_checkpoint(paths[BEST], state_now())
                postfix[f"val_R@{cfg.eval_k}"] = f"{m['recall']:.3f}"
                bar.set_postfix(postfix)
            if out and ((cfg.checkpoint_every and step % cfg.checkpoint_every == 0)
                        or step == cfg.max_steps or stopped_early):
                save_checkpoint(paths[LAST], state_now())
            if on_step is not None:
                on_step(step, loss_v)
    finally:
        bar.close()
        hook.remove()
    return TrainResult(step, losses, evals, best_step, best_recall, stopped_early,
                       paths.get(LAST), paths.get(BEST) if out and best_step else None,
                       time.perf_counter() - t_start)


def load_trained(model: OneRec, path: str | os.PathLike, dataset: Dataset,
                 semantic_ids) -> dict:
    """Load the weights (and balancing bias) of checkpoint `path` (last.pt or best.pt) into
    `model`, after checking it was trained with the model's config and these semantic IDs
    (CheckpointError otherwise). Returns the checkpoint's step, evals and best_recall."""
    codes = as_item_codes(semantic_ids, dataset.num_items)
    state = load_checkpoint(path, model_config=model.config.to_dict(),
                            tokenizer_checksum=codes_checksum(codes, model.config.codebook_sizes))
    model.load_state_dict(state["model"])
    return {k: state[k] for k in ("step", "evals", "best_step", "best_recall")}


def plot_metrics(metrics_path: str | os.PathLike, png_path: str | os.PathLike) -> str:
    """Training loss and validation recall against the step, from a metrics.jsonl, as a PNG.
    matplotlib is imported here (an optional dependency)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics_path) as f:
        recs = [json.loads(ln) for ln in f if ln.strip()]
    train = [r for r in recs if r.get("event") == "train"]
    valid = [r for r in recs if r.get("event") == "valid"]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    ax[0].plot([r["step"] for r in train], [r["loss"] for r in train])
    ax[0].set(xlabel="step", ylabel="loss", title="training loss")
    if valid:
        k = valid[0].get("k", 10)
        ax[1].plot([r["step"] for r in valid], [r["recall"] for r in valid], marker="o")
        ax[1].set(xlabel="step", ylabel=f"Recall@{k}", title="validation")
    else:
        ax[1].set_axis_off()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return os.fspath(png_path)

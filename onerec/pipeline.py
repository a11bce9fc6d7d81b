"""The main job's stages, shared by the CLI and the tests: data -> item embeddings ->
semantic-ID tokenizer -> one-to-one semantic-ID table -> trie -> constrained generation."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from onerec_kernels import SemanticIdTrie

from .data import Dataset, build_item_embeddings, build_pathways
from .generate import HistoryCodePrior, generate, recency_weights
from .results import ResultFolder, verify_result_folder
from .semantic_ids import SemanticIdTable
from .tokenizer import RESULT_FILE as TOKENIZER_FILE
from .tokenizer import RQKMeansTokenizer

SEMANTIC_IDS_FILE = "semantic_ids.pt"
REPORT_FILE = "tokenizer_report.json"
PLOT_FILE = "tokenizer_report.png"


@dataclass
class SemanticIds:
    """What the tokenizer stage produces."""
    embeddings: np.ndarray  # (num_items, D) float32
    embedding_report: dict
    tokenizer: RQKMeansTokenizer
    table: SemanticIdTable
    quality: dict
    seconds: dict = field(default_factory=dict)


def build_semantic_ids(dataset: Dataset, *, dim: int = 64, fusion: str = "contrastive",
                       num_levels: int = 3, codebook_size: int = 32, balanced: bool = False,
                       iters: int = 20, seed: int = 0, backend: str | None = None,
                       device: torch.device | str = "cpu", progress: bool = False) -> SemanticIds:
    """Item embeddings (on the host) -> tokenizer fitted on `device` with `backend` -> the
    one-to-one table built from the fit's own (possibly balanced) codes -> quality report."""
    seconds = {}
    t0 = time.perf_counter()
    emb, emb_report = build_item_embeddings(dataset, dim=dim, fusion=fusion, seed=seed)
    seconds["embeddings"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    x = torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32)).to(device)
    tok = RQKMeansTokenizer(num_levels=num_levels, codebook_size=codebook_size, iters=iters,
                            seed=seed, balanced=balanced, backend=backend).fit(x, progress=progress)
    table = tok.build_table(x, item_ids=torch.arange(dataset.num_items), codes=tok.fit_codes_)
    quality = tok.quality_report(x, codes=tok.fit_codes_, table=table)
    seconds["tokenizer"] = time.perf_counter() - t0
    return SemanticIds(emb, emb_report, tok, table, quality, seconds)


def save_semantic_ids(sids: SemanticIds, out: ResultFolder, *, plot: bool = True) -> list[str]:
    """Write the tokenizer stage's files into an open ResultFolder (published with its manifest
    when the `with` block ends): tokenizer.rqk, semantic_ids.pt ({"codes": (N, L) int64,
    "item_ids": (N,) int64, "codebook_sizes": L ints}, rows sorted by code tuple),
    tokenizer_report.json and, with `plot`, tokenizer_report.png. Returns the file names."""
    import json

    sids.tokenizer.save(out.path(TOKENIZER_FILE))
    codes, item_ids = sids.table.export()
    torch.save({"codes": codes, "item_ids": item_ids,
                "codebook_sizes": list(sids.tokenizer.codebook_sizes)}, out.path(SEMANTIC_IDS_FILE))
    with open(out.path(REPORT_FILE), "w") as f:
        json.dump({"quality": sids.quality, "embeddings": sids.embedding_report}, f, indent=1,
                  default=float)
    names = [TOKENIZER_FILE, SEMANTIC_IDS_FILE, REPORT_FILE]
    if plot:
        from .profiling import plot_tokenizer_report

        plot_tokenizer_report(sids.tokenizer.fit_codes_, sids.tokenizer.codebook_sizes,
                              sids.quality, sids.embedding_report, out.path(PLOT_FILE))
        names.append(PLOT_FILE)
    return names


def load_semantic_ids(folder, backend: str | None = None) -> tuple[RQKMeansTokenizer, dict, dict]:
    """(tokenizer, semantic_ids dict as saved, manifest) from a folder written by
    save_semantic_ids; raises IncompleteResultFolder for an interrupted or mixed folder."""
    import os

    manifest = verify_result_folder(folder)
    for name in (TOKENIZER_FILE, SEMANTIC_IDS_FILE):
        if name not in manifest["files"]:
            raise FileNotFoundError(f"{folder}: {name} is not in this result folder (written by "
                                    f"{manifest.get('command')!r})")
    tok = RQKMeansTokenizer.load(os.path.join(folder, TOKENIZER_FILE), backend=backend)
    saved = torch.load(os.path.join(folder, SEMANTIC_IDS_FILE))
    return tok, saved, manifest


def build_trie(sids: SemanticIds, device: torch.device | str = "cpu") -> SemanticIdTrie:
    codes, item_ids = sids.table.export()
    return SemanticIdTrie(codes, sids.tokenizer.codebook_sizes, item_ids=item_ids).to(device)


@dataclass
class GenerationResult:
    users: np.ndarray
    targets: np.ndarray
    item_ids: torch.Tensor  # (B, W)
    recall: float  # fraction of users whose held-out item is among the W generated
    legal_fraction: float  # generated (finite-score) sequences that are real items
    seconds: float
    # Baseline beside the headline: the beam_width most frequent items of the train split, the
    # same list for every user, scored the same way (recall of the held-out item).
    popularity_recall: float = float("nan")
    # Share of generated items the user already had in the history fed to the model. Neither the
    # generation nor the baseline excludes history items (a dataset that never repeats an item,
    # like MovieLens, makes every such item a guaranteed miss).
    history_share: float = float("nan")
    excludes_history: bool = False


def generate_for_split(dataset: Dataset, sids: SemanticIds, trie: SemanticIdTrie, *,
                       split: str = "test", beam_width: int = 32, history: int = 64,
                       max_users: int | None = None, backend: str | None = None,
                       exclude_history: bool = False) -> GenerationResult:
    """Generate `beam_width` items per user of `split` from their earlier history (HistoryCodePrior)
    and measure recall@beam_width of the held-out item. exclude_history: never recommend an
    item of the user's whole earlier history (masked inside the constrained search)."""
    users, targets, times = dataset.targets(split)
    if max_users is not None:
        if isinstance(max_users, bool) or not isinstance(max_users, (int, np.integer)) \
                or max_users < 1:
            raise ValueError(f"generate_for_split: max_users must be an int >= 1 or None, "
                             f"got {max_users!r}")
        users, targets, times = users[:max_users], targets[:max_users], times[:max_users]
    if len(users) == 0:
        raise ValueError(f"generate_for_split: {dataset.name} has no held-out users in split "
                         f"{split!r} ({dataset.num_interactions} interactions): nothing to "
                         f"generate or score")
    paths = build_pathways(dataset, users, times, lifelong_len=history)
    hist_items, _ = paths.lifelong.padded("item", max_len=history, pad_value=-1, align="right")
    hist_items = hist_items.to(torch.int64)
    lengths = (hist_items >= 0).sum(1).numpy()
    codes_of = sids.table.codes.new_full((dataset.num_items + 1, sids.tokenizer.num_levels), -1)
    codes_of[sids.table.item_ids] = sids.table.codes
    hist_codes = codes_of[hist_items]  # padding (-1) indexes the last row: all -1
    weights = recency_weights(lengths, history)
    popularity = [torch.bincount(sids.table.codes[:, t], minlength=k).float()
                  for t, k in enumerate(sids.tokenizer.codebook_sizes)]
    dev = trie.device
    model = HistoryCodePrior(hist_codes.to(dev), weights.to(dev), [p.to(dev) for p in popularity])
    t0 = time.perf_counter()
    exclude = {}
    if exclude_history:
        full = build_pathways(dataset, users, times, short_len=0, positive_len=0).lifelong
        exclude = {"exclude_offsets": full.offsets.to(dev), "exclude_items": full.item.to(dev)}
    result = generate(trie, model, len(users), beam_width, backend=backend, **exclude)
    seconds = time.perf_counter() - t0
    items = result.item_ids.cpu()
    finite = torch.isfinite(result.scores.cpu())
    legal = trie.contains(result.codes[finite].reshape(-1, trie.num_levels)).float().mean().item() \
        if finite.any() else 1.0
    target_col = torch.as_tensor(targets, dtype=torch.int64)[:, None]
    recall = (items == target_col).any(1).float().mean().item()
    train_items = torch.as_tensor(dataset.interactions.item[dataset.split.train], dtype=torch.int64)
    counts = torch.bincount(train_items, minlength=dataset.num_items)
    top = torch.sort(counts, descending=True, stable=True).indices[:beam_width]  # ties: lower id
    popularity_recall = (top[None, :] == target_col).any(1).float().mean().item()
    live = items >= 0
    in_history = (items[:, :, None] == hist_items[:, None, :]).any(-1) & live
    history_share = in_history.sum().item() / max(int(live.sum()), 1)
    return GenerationResult(users, targets, items, recall, legal, seconds, popularity_recall,
                            history_share, exclude_history)

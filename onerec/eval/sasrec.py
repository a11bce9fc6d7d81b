"""SASRec (Kang & McAuley, 2018), the sequential baseline: a causal transformer over item ids,
here trained with full-softmax cross-entropy over the catalogue at every position (the
stronger objective later work settled on, rather than the original sampled BCE).

Small and CPU-fast by default (dim 64, 2 layers, 1 head, the last 50 items). Item id 0 is the
padding token, so item i is token i + 1; output scores are dot products with the same item
embeddings (tied). Training sees only the TRAIN split; each epoch takes, per user, a random
window of `max_len + 1` consecutive items (the last one for short users). Seeded: the same seed
gives the same model (on a fixed device and thread count).
"""
from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from ..data import Dataset
from ..data.embeddings import _torch_threads
from .baselines import EvalQueries, rank_by_scores, train_sequences


class SASRec(nn.Module):
    """seq (B, T) int64 tokens (0 = padding, left-padded) -> hidden (B, T, dim)."""

    def __init__(self, num_items: int, *, dim: int = 64, num_layers: int = 2, num_heads: int = 1,
                 max_len: int = 50, dropout: float = 0.2):
        super().__init__()
        self.max_len = max_len
        self.item_emb = nn.Embedding(num_items + 1, dim, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, dim)
        layer = nn.TransformerEncoderLayer(dim, num_heads, dim_feedforward=dim, dropout=dropout,
                                           batch_first=True, norm_first=True, activation="gelu")
        self.blocks = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        nn.init.normal_(self.item_emb.weight, std=dim ** -0.5)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        T = seq.shape[1]
        x = self.item_emb(seq) * self.item_emb.embedding_dim ** 0.5 \
            + self.pos_emb(torch.arange(T, device=seq.device))
        causal = nn.Transformer.generate_square_subsequent_mask(T, device=seq.device)
        x = self.blocks(self.drop(x), mask=causal, is_causal=True)
        return self.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., dim) -> (..., num_items) scores of the real items (padding dropped)."""
        return hidden @ self.item_emb.weight[1:].T


def _windows(seqs: list[np.ndarray], width: int, rng: np.random.Generator) -> np.ndarray:
    """(N, width) left-padded token windows (item + 1), one random window per user with >= 2
    items."""
    out = []
    for s in seqs:
        if s.shape[0] < 2:
            continue
        end = s.shape[0] if s.shape[0] <= width else int(rng.integers(width, s.shape[0] + 1))
        w = s[max(0, end - width):end] + 1
        out.append(np.pad(w, (width - w.shape[0], 0)))
    return np.stack(out) if out else np.zeros((0, width), dtype=np.int64)


@_torch_threads(1)  # tiny matrices: 2 threads measured ~7x slower on a loaded 2-core box
def train_sasrec(dataset: Dataset, *, dim: int = 64, num_layers: int = 2, num_heads: int = 1,
                 max_len: int = 50, dropout: float = 0.2, epochs: int = 40,
                 batch_size: int = 128, lr: float = 1e-3, weight_decay: float = 0.0,
                 seed: int = 0, device: str | torch.device = "cpu") -> tuple[SASRec, dict]:
    """A SASRec fitted on the TRAIN split of `dataset`; returns (model in eval mode, report with
    the per-epoch mean loss and seconds)."""
    seqs = train_sequences(dataset)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SASRec(dataset.num_items, dim=dim, num_layers=num_layers, num_heads=num_heads,
                       max_len=max_len, dropout=dropout).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.98),
                               weight_decay=weight_decay)
        losses = []
        for _ in range(epochs):
            win = torch.from_numpy(_windows(seqs, max_len + 1, rng)).to(device)
            win = win[torch.from_numpy(rng.permutation(win.shape[0])).to(device)]
            model.train()
            total, count = 0.0, 0
            for lo in range(0, win.shape[0], batch_size):
                b = win[lo:lo + batch_size]
                inp, tgt = b[:, :-1], b[:, 1:]
                keep = (tgt > 0) & (inp > 0)
                h = model(inp)[keep]
                loss = nn.functional.cross_entropy(model.logits(h), tgt[keep] - 1)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * int(keep.sum())
                count += int(keep.sum())
            losses.append(total / max(count, 1))
    model.eval()
    return model, {"epochs": epochs, "loss": losses, "seconds": time.perf_counter() - t0}


class SASRecRanker:
    """SASRec trained here (its own short training), ranking the full catalogue from each
    query's last `max_len` history items."""

    name = "sasrec"

    def __init__(self, dataset: Dataset, *, seed: int = 0, device: str = "cpu", **options):
        self.model, self.report = train_sasrec(dataset, seed=seed, device=device, **options)
        self.device = device

    @torch.no_grad()
    @_torch_threads(1)
    def __call__(self, q: EvalQueries, k: int, exclude: bool) -> np.ndarray:
        T = self.model.max_len
        off, items = q.history.offsets.numpy(), q.history.item.numpy()
        seq = np.zeros((q.num_users, T), dtype=np.int64)
        for r in range(q.num_users):
            h = items[max(off[r], off[r + 1] - T):off[r + 1]] + 1
            if h.shape[0]:
                seq[r, T - h.shape[0]:] = h
        seq_t = torch.from_numpy(seq).to(self.device)

        def scores(rows):
            hidden = self.model(seq_t[torch.from_numpy(rows).to(self.device)])[:, -1]
            return self.model.logits(hidden).cpu()

        return rank_by_scores(scores, q, k, exclude, chunk=256)

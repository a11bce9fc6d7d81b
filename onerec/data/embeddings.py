"""Item embeddings: content features, collaborative features, and their fusion.

The tokenizer (RQ-KMeans) quantizes these vectors into semantic IDs, so items that people
engage with together should sit close. Three ingredients, all offline and CPU-fast:

- content: titles -> hashed word + character n-gram TF-IDF (crc32 buckets, so deterministic
  across processes), plus genre multi-hot and categorical one-hots, reduced by a truncated
  randomized SVD (LSA). An optional `text_encoder` callable (e.g. a locally installed sentence
  transformer) may replace the TF-IDF block; nothing here touches the network.
- collaborative: item-item co-occurrence of positive interactions within a sliding window of
  each user's chronological TRAIN history -> shifted positive PMI (context smoothing 0.75) ->
  truncated SVD.
- fusion: "contrastive" trains a small projection of [content, collaborative] with a symmetric
  InfoNCE loss over co-engaged item pairs (in-batch negatives), OneRec's item-to-item alignment
  in spirit; the collaborative input is randomly dropped during training so items without
  training interactions (cold items) still get a meaningful vector from content alone.
  "concat" L2-normalizes each part and concatenates (half the dims each); "content" and
  "collaborative" return one part alone.

The report measures what fusion buys: a random `holdout_fraction` of users is left out of the
co-occurrence statistics and of the contrastive pairs; their co-engaged pairs are the test set,
scored by nearest-neighbour recall@k (is b among a's k nearest items, cosine, a excluded) for
every variant. The returned embeddings are the ones fitted without those users, so the report
describes exactly what is returned.
"""
from __future__ import annotations

import contextlib
import math
import re
import time
import zlib
from typing import Callable, Sequence

import numpy as np
import torch

from .dataset import TRAIN, Dataset

# scipy.sparse is imported inside the functions that use it: importing the package (and the
# kernel layer, and its tests) must not need scipy, which a bare GPU image may lack.

FUSIONS = ("contrastive", "concat", "content", "collaborative")
_TOKEN = re.compile(r"[0-9a-z]+")


# ---------------------------------------------------------------------------------------------
# linear algebra helpers
# ---------------------------------------------------------------------------------------------
def _l2n(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def randomized_svd(matrix, k: int, *, seed: int = 0, oversample: int = 10, n_iter: int = 4
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Top-k left singular vectors and values of a dense or scipy-sparse (m, n) matrix
    (Halko et al. range finder with power iterations). Returns U (m, k') and s (k',) with
    k' = min(k, m, n); signs are fixed (largest-|entry| of each column positive) so the result
    is deterministic for a seed."""
    import scipy.sparse as sp
    m, n = matrix.shape
    k = min(k, m, n)
    if k == 0:
        return np.zeros((m, 0)), np.zeros(0)
    # Dense steps go through torch (float64, the caller pins one thread): numpy's threaded
    # OpenBLAS QR measured 10-50x slower than torch's on a busy 2-core box.
    if min(m, n) <= 2 * (k + oversample):
        dense = matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix, dtype=np.float64)
        u, s, _ = torch.linalg.svd(torch.from_numpy(np.ascontiguousarray(dense, np.float64)),
                                   full_matrices=False)
        u, s = u[:, :k].numpy(), s[:k].numpy()
    else:
        # Power iterations re-orthonormalize only the m-side (k + p) block, and the small
        # (k + p, n) projection is decomposed through its (k + p)^2 Gram matrix: no QR or SVD
        # of an n-long dense block (n = 32k hash buckets).
        def orth(x: np.ndarray) -> np.ndarray:
            return torch.linalg.qr(torch.from_numpy(np.ascontiguousarray(x, np.float64)))[0].numpy()

        rng = np.random.default_rng(seed)
        q = orth(matrix @ rng.standard_normal((n, k + oversample)))
        for _ in range(n_iter):
            q = orth(matrix @ np.asarray(matrix.T @ q))
        bt = torch.from_numpy(np.ascontiguousarray(matrix.T @ q, np.float64))  # (Q^T A)^T
        evals, evecs = torch.linalg.eigh(bt.T @ bt)
        order = torch.argsort(evals, descending=True)[:k]
        s = torch.sqrt(torch.clamp(evals[order], min=0.0)).numpy()
        u = (torch.from_numpy(q) @ evecs[:, order]).numpy()
    flip = np.sign(u[np.argmax(np.abs(u), axis=0), np.arange(u.shape[1])])
    flip[flip == 0] = 1.0
    return u * flip, s


def _pad_cols(x: np.ndarray, dim: int) -> np.ndarray:
    if x.shape[1] >= dim:
        return x[:, :dim]
    return np.hstack([x, np.zeros((x.shape[0], dim - x.shape[1]), dtype=x.dtype)])


# ---------------------------------------------------------------------------------------------
# content
# ---------------------------------------------------------------------------------------------
def hashed_tfidf(texts: Sequence[str], *, num_buckets: int = 1 << 15,
                 char_ngrams: tuple[int, int] = (3, 5)) -> sp.csr_matrix:
    """(len(texts), num_buckets) row-normalized TF-IDF of word unigrams and character n-grams
    (of each word padded with spaces), hashed with crc32. Sublinear tf, smoothed idf."""
    import scipy.sparse as sp
    bucket_of: dict[str, int] = {}
    rows, cols = [], []
    lo, hi = char_ngrams
    for r, text in enumerate(texts):
        feats = []
        for tok in _TOKEN.findall(text.lower()):
            feats.append("w:" + tok)
            padded = f" {tok} "
            for n in range(lo, hi + 1):
                feats.extend(padded[i:i + n] for i in range(len(padded) - n + 1))
        for f in feats:
            b = bucket_of.get(f)
            if b is None:
                b = bucket_of[f] = zlib.crc32(f.encode("utf-8")) % num_buckets
            rows.append(r)
            cols.append(b)
    n_docs = len(texts)
    counts = sp.csr_matrix((np.ones(len(rows), dtype=np.float64), (rows, cols)),
                           shape=(n_docs, num_buckets))
    counts.sum_duplicates()
    counts.data = 1.0 + np.log(counts.data)
    df = np.bincount(counts.indices, minlength=num_buckets)
    idf = np.log((1.0 + n_docs) / (1.0 + df)) + 1.0
    tfidf = counts @ sp.diags(idf)
    return _row_normalize_sparse(tfidf)


def _row_normalize_sparse(m: sp.spmatrix) -> sp.csr_matrix:
    import scipy.sparse as sp
    m = sp.csr_matrix(m, dtype=np.float64)
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
    return sp.diags(1.0 / np.maximum(norms, 1e-12)) @ m


def content_features(dataset: Dataset, dim: int, *, seed: int = 0,
                     text_encoder: Callable[[list[str]], np.ndarray] | None = None,
                     weights: tuple[float, float, float] = (1.0, 0.7, 0.5)) -> np.ndarray:
    """(num_items, dim) float32 unit rows: LSA of [text, genres, categorical one-hots], each block
    row-normalized and weighted by `weights` (text, genre, categorical)."""
    import scipy.sparse as sp
    items = dataset.items
    n = items.num_items
    if text_encoder is not None:
        text = np.asarray(text_encoder(list(items.titles)), dtype=np.float64)
        if text.shape[0] != n or text.ndim != 2:
            raise ValueError(f"build_item_embeddings: text_encoder must return ({n}, d), "
                             f"got {text.shape}")
        text = sp.csr_matrix(_l2n(text).astype(np.float64))
    else:
        text = hashed_tfidf(items.titles)
    genres = _row_normalize_sparse(sp.csr_matrix(items.genres.astype(np.float64)))
    blocks = [weights[0] * text, weights[1] * genres]
    if items.categorical.shape[1]:
        cat_cols, start = [], 0
        for c, card in enumerate(items.categorical_cardinalities):
            cat_cols.append(items.categorical[:, c] + start)
            start += card
        cols = np.stack(cat_cols, 1).ravel()
        onehot = sp.csr_matrix((np.ones(cols.shape[0]), (np.repeat(np.arange(n), len(cat_cols)),
                                                         cols)), shape=(n, start))
        blocks.append(weights[2] * _row_normalize_sparse(onehot))
    x = sp.hstack(blocks, format="csr")
    u, s = randomized_svd(x, dim, seed=seed)
    return _l2n(_pad_cols(u * s, dim))


# ---------------------------------------------------------------------------------------------
# collaborative
# ---------------------------------------------------------------------------------------------
def co_engaged_pairs(dataset: Dataset, rows: np.ndarray, *, window: int = 10) -> np.ndarray:
    """(P, 2) int64 item pairs (a, b), a != b, of positive interactions at most `window` apart
    in the same user's chronological sequence, restricted to interaction rows `rows`."""
    inter = dataset.interactions
    rows = np.sort(rows)
    rows = rows[inter.positive[rows]]
    users, items = inter.user[rows], inter.item[rows]
    out = []
    for d in range(1, window + 1):
        same = users[:-d] == users[d:]
        if not same.any():
            break
        out.append(np.stack([items[:-d][same], items[d:][same]], 1))
    if not out:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.concatenate(out)
    return pairs[pairs[:, 0] != pairs[:, 1]].astype(np.int64)


def collaborative_features(pairs: np.ndarray, num_items: int, dim: int, *, seed: int = 0,
                           alpha: float = 0.75) -> np.ndarray:
    """(num_items, dim) float32: SVD of the positive PMI of symmetric co-occurrence counts,
    rows scaled by sqrt(singular value) then unit-normalized; items with no pair get zeros."""
    import scipy.sparse as sp
    if pairs.shape[0] == 0:
        return np.zeros((num_items, dim), dtype=np.float32)
    a = np.concatenate([pairs[:, 0], pairs[:, 1]])
    b = np.concatenate([pairs[:, 1], pairs[:, 0]])
    counts = sp.csr_matrix((np.ones(a.shape[0]), (a, b)), shape=(num_items, num_items))
    counts.sum_duplicates()
    total = counts.data.sum()
    row = np.asarray(counts.sum(axis=1)).ravel()
    ctx = row ** alpha
    ctx /= ctx.sum()
    coo = counts.tocoo()
    pmi = np.log(coo.data / total) - np.log(row[coo.row] / total) - np.log(ctx[coo.col])
    keep = pmi > 0
    ppmi = sp.csr_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=counts.shape)
    u, s = randomized_svd(ppmi, dim, seed=seed + 1)
    emb = _pad_cols(u * np.sqrt(s), dim)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    return np.where(norms > 1e-12, emb / np.maximum(norms, 1e-12), 0.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# fusion
# ---------------------------------------------------------------------------------------------
class FusionProjection(torch.nn.Module):
    """x = [content, collaborative] (2 * dim) -> unit vector (dim): an MLP plus a linear skip."""

    def __init__(self, in_dim: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.mlp = torch.nn.Sequential(torch.nn.Linear(in_dim, hidden), torch.nn.GELU(),
                                       torch.nn.Linear(hidden, dim))
        self.skip = torch.nn.Linear(in_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.mlp(x) + self.skip(x), dim=-1)


def info_nce(za: torch.Tensor, zb: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of positive pairs (za[i], zb[i]); every other row of the
    batch is a negative. za, zb: (B, D) unit rows."""
    logits = za @ zb.T / temperature
    target = torch.arange(za.shape[0])
    return 0.5 * (torch.nn.functional.cross_entropy(logits, target)
                  + torch.nn.functional.cross_entropy(logits.T, target))


@contextlib.contextmanager
def _torch_threads(n: int):
    """Temporarily cap torch's intra-op threads (also usable as a decorator): every matrix here
    is small (512 x 128 projection batches, (k + p)-wide SVD blocks), so thread hand-off costs
    more than it saves (measured ~8x slower with 2 threads on a loaded 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train_fusion(content: np.ndarray, collab: np.ndarray, pairs: np.ndarray, *, dim: int,
                  seed: int, steps: int, batch_size: int, lr: float, temperature: float,
                  hidden: int, collab_dropout: float) -> tuple[np.ndarray, list[float]]:
    rng = np.random.default_rng(seed + 2)
    x = torch.from_numpy(np.hstack([content, collab]).astype(np.float32))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FusionProjection(x.shape[1], dim, hidden)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    split = content.shape[1]
    losses = []
    batch_size = min(batch_size, pairs.shape[0])
    for _ in range(steps):
        pick = rng.integers(0, pairs.shape[0], size=batch_size)
        a, b = pairs[pick, 0], pairs[pick, 1]
        xa, xb = x[a].clone(), x[b].clone()
        if collab_dropout > 0:
            for xs in (xa, xb):
                drop = torch.from_numpy(rng.random(batch_size) < collab_dropout)
                xs[drop, split:] = 0.0
        loss = info_nce(model(xa), model(xb), temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    with torch.no_grad():
        out = model(x).numpy()
    return out.astype(np.float32), losses


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------
def neighbour_recall(emb: np.ndarray, pairs: np.ndarray, k: int = 10) -> float:
    """Fraction of pairs (a, b), scored in both directions, with b among the k nearest items of
    a by cosine (a itself excluded). NaN when there are no pairs."""
    if pairs.shape[0] == 0:
        return float("nan")
    both = np.concatenate([pairs, pairs[:, ::-1]])
    anchors, inv = np.unique(both[:, 0], return_inverse=True)
    e = torch.from_numpy(_l2n(emb))
    k = min(k, e.shape[0] - 1)
    if k <= 0:
        return float("nan")
    hits = 0
    for lo in range(0, anchors.shape[0], 2048):  # bound the (anchors x items) score block
        chunk = torch.from_numpy(anchors[lo:lo + 2048])
        sims = e[chunk] @ e.T
        sims[torch.arange(chunk.shape[0]), chunk] = -float("inf")
        top = sims.topk(k, dim=1).indices.numpy()  # (chunk, k)
        sel = (inv >= lo) & (inv < lo + chunk.shape[0])
        hits += int((top[inv[sel] - lo] == both[sel, 1][:, None]).any(1).sum())
    return hits / both.shape[0]


# ---------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------
def _check_int(name: str, v, lo: int) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"build_item_embeddings: {name} must be an int >= {lo}, got {v!r}")


@_torch_threads(1)
def build_item_embeddings(dataset: Dataset, *, dim: int = 64, fusion: str = "contrastive",
                          seed: int = 0, holdout_fraction: float = 0.1, window: int = 10,
                          k: int = 10, steps: int = 200, batch_size: int = 256,
                          lr: float = 3e-3, temperature: float = 0.05, hidden: int = 256,
                          collab_dropout: float = 0.2,
                          text_encoder: Callable[[list[str]], np.ndarray] | None = None
                          ) -> tuple[np.ndarray, dict]:
    """Item embeddings (num_items, dim) float32 with unit rows, and a report dict.

    Only the TRAIN split of `dataset` is used (never valid/test), minus a `holdout_fraction` of
    users whose co-engaged pairs evaluate recall@k of every variant (see the module docstring).
    fusion: "contrastive" (default) | "concat" | "content" | "collaborative".
    window: co-engagement window (positions in a user's positive sequence).
    steps, batch_size, lr, temperature, hidden, collab_dropout: the contrastive projection.
    text_encoder: optional callable list[str] -> (num_items, d) replacing hashed TF-IDF.

    Report keys: fusion, dim, recall@k {content, collaborative, concat[, contrastive]},
    recall_gain (chosen minus content), train_pairs, eval_pairs, holdout_users, cold_items
    (items with no training pair), loss_first / loss_last (contrastive), seconds.
    """
    t0 = time.perf_counter()
    if not isinstance(dataset, Dataset):
        raise TypeError(f"build_item_embeddings: dataset must be a Dataset, "
                        f"got {type(dataset).__name__}")
    if fusion not in FUSIONS:
        raise ValueError(f"build_item_embeddings: fusion must be one of {FUSIONS}, got {fusion!r}")
    _check_int("dim", dim, 2)
    for name, v, lo in (("seed", seed, 0), ("window", window, 1), ("k", k, 1),
                        ("steps", steps, 0), ("batch_size", batch_size, 2), ("hidden", hidden, 1)):
        _check_int(name, v, lo)
    for name, v, lo, hi in (("holdout_fraction", holdout_fraction, 0.0, 0.9),
                            ("collab_dropout", collab_dropout, 0.0, 1.0),
                            ("lr", lr, 1e-12, 10.0), ("temperature", temperature, 1e-4, 10.0)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not lo <= v <= hi \
                or math.isnan(v):
            raise ValueError(f"build_item_embeddings: {name} must be a number in [{lo}, {hi}], "
                             f"got {v!r}")
    if dataset.num_items < 2:
        raise ValueError(f"build_item_embeddings: need at least 2 items, got {dataset.num_items}")
    if not dataset.items.has_content:
        # No item metadata (seqrec-json without its item file): nothing to fuse.
        if fusion == "content":
            raise ValueError(f"build_item_embeddings: {dataset.name} has no item content; "
                             f"fusion='content' is impossible, use 'collaborative'")
        fusion = "collaborative"

    inter = dataset.interactions
    rng = np.random.default_rng(seed)
    n_hold = int(round(holdout_fraction * dataset.num_users))
    held = np.zeros(dataset.num_users, dtype=bool)
    held[rng.permutation(dataset.num_users)[:n_hold]] = True
    train_rows = np.flatnonzero(dataset.split.role == TRAIN)
    fit_rows = train_rows[~held[inter.user[train_rows]]]
    eval_rows = train_rows[held[inter.user[train_rows]]]
    fit_pairs = co_engaged_pairs(dataset, fit_rows, window=window)
    eval_pairs = np.unique(co_engaged_pairs(dataset, eval_rows, window=window), axis=0)

    collab = collaborative_features(fit_pairs, dataset.num_items, dim, seed=seed)
    if dataset.items.has_content:
        content = content_features(dataset, dim, seed=seed, text_encoder=text_encoder)
        half = dim // 2
        concat = np.hstack([_l2n(content[:, :half]), _l2n(collab[:, :dim - half])]) / np.sqrt(2.0)
        variants = {"content": content, "collaborative": collab,
                    "concat": concat.astype(np.float32)}
    else:
        variants = {"collaborative": collab}
    report: dict = {"fusion": fusion, "dim": dim, "k": k, "train_pairs": int(fit_pairs.shape[0]),
                    "eval_pairs": int(eval_pairs.shape[0]), "holdout_users": n_hold,
                    "cold_items": int(dataset.num_items - np.unique(fit_pairs).shape[0])}
    if fusion == "contrastive":
        if fit_pairs.shape[0] < 2:
            raise ValueError("build_item_embeddings: fusion='contrastive' needs co-engaged pairs "
                             f"in the training interactions, found {fit_pairs.shape[0]}; "
                             "use fusion='content' or more data")
        fused, losses = _train_fusion(content, collab, fit_pairs, dim=dim, seed=seed, steps=steps,
                                      batch_size=batch_size, lr=lr, temperature=temperature,
                                      hidden=hidden, collab_dropout=collab_dropout)
        variants["contrastive"] = fused
        report["loss_first"] = losses[0] if losses else float("nan")
        report["loss_last"] = float(np.mean(losses[-20:])) if losses else float("nan")
    recall = {name: neighbour_recall(v, eval_pairs, k) for name, v in variants.items()}
    report[f"recall@{k}"] = recall
    report["recall_gain"] = recall[fusion] - recall.get("content", float("nan"))
    report["seconds"] = time.perf_counter() - t0
    return _l2n(variants[fusion]), report


def format_report(report: dict) -> str:
    """One human-readable paragraph of a `build_item_embeddings` report."""
    k = report["k"]
    rec = report[f"recall@{k}"]
    parts = ", ".join(f"{name} {v:.3f}" for name, v in rec.items())
    return (f"item embeddings: fusion={report['fusion']} dim={report['dim']} "
            f"({report['seconds']:.1f} s); co-engaged pairs train {report['train_pairs']} / "
            f"eval {report['eval_pairs']} (held-out users {report['holdout_users']}), cold items "
            f"{report['cold_items']}; neighbour recall@{k}: {parts}; gain over content "
            f"{report['recall_gain']:+.3f}")

"""RQ-KMeans semantic-ID tokenizer: item embedding -> L-level code tuple.

Shapes: N items, D embedding size, L levels, K_l codes at level l (legend: x_ND, codes_NL).

Fitting (`RQKMeansTokenizer.fit`) is level by level: level l runs k-means on the residuals left
by levels < l, then subtracts each item's chosen centroid. Each k-means is
  - seeded by k-means++ (vectorized over the points; on a random subsample of
    `seed_sample` points, default min(N, max(16 K, 4096)), since each of the K sequential seeding
    steps costs a pass over the sample),
  - refined by Lloyd iterations whose assignment and statistics come from the fused
    `onerec_kernels.kmeans_step` (one pass: nearest centroid, per-centroid sums and counts,
    inertia), stopping early when the relative inertia gain falls below `tol`,
  - optionally balanced (`balanced=True`): after each assignment no centroid keeps more than
    capacity = ceil(capacity_factor * N / K) points. An overfull centroid keeps its capacity's
    worth of closest points; the evicted points are placed by capacity-limited greedy
    assignment: in rounds, each unplaced point proposes to its next-nearest centroid (from its
    32 nearest), and each centroid accepts the closest proposers up to its free capacity;
    points left after those rounds go to the nearest centroid that still has room,
  - repaired when a cluster empties: the empty centroid is re-seeded at the point farthest from
    its own centroid (distinct points for several empty clusters).
Everything random comes from one torch.Generator seeded with `seed`, so a fit is deterministic
for a seed on the torch and cpp backends (cpp for a given torch.get_num_threads()); the Triton
kernel's atomics make the GPU sums' last bits, and so possibly later choices, vary.

Per-level codebook sizes: `rq_assign` takes one (L, K, D) codebook tensor, so when the sizes
differ `encode` runs `rq_assign` level by level (one level per call, carrying the residual)
instead of padding smaller levels with never-chosen rows (a padding row would have to be
finite in every dtype yet never win the argmin, which no fixed value guarantees).

Balanced fits: `fit_codes_` holds the (balanced) codes the training items got; `encode` always
returns the unconstrained nearest codes (greedy RQ via `rq_assign`), which is what a new item
gets. Build the semantic-ID table from `fit_codes_` to keep the balanced assignment.

File format (`save` / `load`), version 1, all integers little-endian:
    bytes 0..7    magic b"ONERECRQ"
    bytes 8..11   uint32 format version (1)
    bytes 12..15  uint32 header length H
    next H bytes  UTF-8 JSON header: {"num_levels", "codebook_sizes", "dim", "dtype": "float32",
                  "config": {iters, seed, balanced, capacity_factor, tol, seed_sample},
                  "payload_bytes", "payload_sha256"}
    payload       the codebooks, level 0 first, each (K_l, D) float32 row-major little-endian;
                  the file ends exactly there.
A file with another magic or version, a malformed header, a wrong length or a payload whose
SHA-256 does not match raises `TokenizerFormatError` (a ValueError) naming the file.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import tempfile
from typing import Sequence

import numpy as np
import torch

from onerec_kernels import kmeans_step, rq_assign

from ._progress import progress_bar

FORMAT_MAGIC = b"ONERECRQ"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sII")  # magic, version, header length
RESULT_FILE = "tokenizer.rqk"  # its name inside a result folder (onerec tokenize --out)

# Candidates per evicted point in the balanced assignment's proposal rounds.
_BALANCE_CANDIDATES = 32
# Rows per distance block in the tokenizer's own (N, K) computations.
_ROW_CHUNK = 4096


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


class TokenizerFormatError(ValueError):
    """A tokenizer file that is not a valid file of this format version."""


def _as_embeddings(name: str, x, dim: int | None = None, allow_empty: bool = False) -> torch.Tensor:
    """Validate an (N, D) finite float embedding matrix; returns it as float32 (same device)."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {x.dtype}")
    if x.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}): need at least one item")
    if x.shape[1] == 0:
        raise ValueError(f"{name} must have D >= 1 columns, got shape {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} must have D = {dim} columns (the fitted embedding size), got "
                         f"shape {tuple(x.shape)}")
    x = x.detach().to(torch.float32)
    bad = ~torch.isfinite(x).all(dim=1)
    if bool(bad.any()):
        rows = bad.nonzero().flatten()
        raise ValueError(f"{name} has {rows.numel()} row(s) with NaN or infinite values (first: "
                         f"row {int(rows[0])})")
    return x.contiguous()


def _sq_dist_to(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """(N,) squared distances of each row of x to the matching row of c (both (N, D))."""
    return (x - c).square().sum(dim=1)


def _rank_in_groups(groups: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort (M,) elements by (group, value, position) and rank them within their group.

    Returns order (M,) int64, the element indices in that sort order, and rank (M,) int64,
    rank[i] = 0-based rank of element order[i] among the elements of its group (0: the smallest
    value, ties: the earlier position)."""
    order = torch.sort(values, stable=True).indices
    order = order[torch.sort(groups[order], stable=True).indices]
    g_sorted = groups[order]
    rank = torch.arange(order.numel(), device=groups.device) - torch.searchsorted(g_sorted, g_sorted)
    return order, rank


def _scores(x: torch.Tensor, c: torch.Tensor, c_norm: torch.Tensor) -> torch.Tensor:
    """(rows, K) ranking scores ||c||^2 - 2 x.c (distance minus the row's constant ||x||^2)."""
    return c_norm - 2.0 * (x @ c.T)


class RQKMeansTokenizer:
    """Residual-quantization k-means tokenizer (see the module docstring for the algorithm).

    Args:
        num_levels: L >= 1, the code tuple length.
        codebook_size: K codes per level (int), or one int per level.
        iters: Lloyd iterations per level (>= 0; 0 keeps the k-means++ seeds).
        seed: seed of every random choice (seeding subsample and draws).
        balanced: cap each cluster at ceil(capacity_factor * N / K) items during fitting.
        backend: backend of `kmeans_step` / `rq_assign` (None: the default for the device).
        capacity_factor: >= 1, the balanced cap relative to N / K.
        tol: stop a level's Lloyd loop when the relative inertia gain is below this.
        seed_sample: points used by k-means++ (None: min(N, max(16 K, 4096))).

    After `fit`: `codebooks` (list of L (K_l, D) float32 tensors), `dim` (D), `fit_codes_`
    ((N, L) int64 codes of the training items), `fit_stats_` (per-level iterations, inertia).
    """

    def __init__(self, num_levels: int = 3, codebook_size: int | Sequence[int] = 256,
                 iters: int = 20, seed: int = 0, balanced: bool = False,
                 backend: str | None = None, *, capacity_factor: float = 1.25,
                 tol: float = 1e-4, seed_sample: int | None = None):
        if not _is_int(num_levels) or num_levels < 1:
            raise ValueError(f"num_levels must be an int >= 1, got {num_levels!r}")
        num_levels = int(num_levels)
        if _is_int(codebook_size):
            sizes = [int(codebook_size)] * num_levels
        elif isinstance(codebook_size, (list, tuple)):
            sizes = list(codebook_size)
            if len(sizes) != num_levels:
                raise ValueError(f"codebook_size has {len(sizes)} entries, expected one per level "
                                 f"(num_levels={num_levels})")
        else:
            raise TypeError(f"codebook_size must be an int or a list of ints, got "
                            f"{type(codebook_size).__name__}")
        for s in sizes:
            if not _is_int(s) or s < 1:
                raise ValueError(f"codebook_size entries must be ints >= 1, got {codebook_size!r}")
        if not _is_int(iters) or iters < 0:
            raise ValueError(f"iters must be an int >= 0, got {iters!r}")
        if not _is_int(seed):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        # A finite real number: an infinite factor would make the cap ceil(inf) at fit time.
        if not isinstance(capacity_factor, (int, float)) or isinstance(capacity_factor, bool) \
                or not 1.0 <= capacity_factor < math.inf:
            raise ValueError(f"capacity_factor must be a finite number >= 1, got {capacity_factor!r}")
        if not isinstance(tol, (int, float)) or isinstance(tol, bool) or not tol >= 0.0:
            raise ValueError(f"tol must be a number >= 0, got {tol!r}")
        if seed_sample is not None and (not _is_int(seed_sample) or seed_sample < 1):
            raise ValueError(f"seed_sample must be None or an int >= 1, got {seed_sample!r}")
        self.num_levels = num_levels
        self.codebook_sizes = [int(s) for s in sizes]
        self.iters = int(iters)
        self.seed = int(seed)
        self.balanced = bool(balanced)
        self.backend = backend
        self.capacity_factor = float(capacity_factor)
        self.tol = float(tol)
        self.seed_sample = None if seed_sample is None else int(seed_sample)
        self.codebooks: list[torch.Tensor] | None = None
        self.dim: int | None = None
        self.fit_codes_: torch.Tensor | None = None
        self.fit_stats_: list[dict] = []

    def __repr__(self) -> str:
        state = f"fitted, D={self.dim}" if self.codebooks is not None else "not fitted"
        return (f"RQKMeansTokenizer(num_levels={self.num_levels}, codebook_size="
                f"{self.codebook_sizes}, iters={self.iters}, seed={self.seed}, "
                f"balanced={self.balanced}; {state})")

    @property
    def is_fitted(self) -> bool:
        return self.codebooks is not None

    def _require_fitted(self, what: str) -> None:
        if self.codebooks is None:
            raise RuntimeError(f"RQKMeansTokenizer.{what}: the tokenizer is not fitted; call "
                               "fit(item_embeddings) or RQKMeansTokenizer.load(path) first")

    # ---------------------------------------------------------------- fitting
    def fit(self, item_embeddings, *, progress: bool = False) -> "RQKMeansTokenizer":
        """Fit the L codebooks on item_embeddings: (N, D) float, finite, N >= max K_l.

        progress: show a tqdm bar over the Lloyd iterations of every level (production fits,
        3 x 8192 codes on millions of items, take minutes).
        Returns self; sets `codebooks`, `dim`, `fit_codes_` (N, L) int64 and `fit_stats_`.
        """
        x_ND = _as_embeddings("item_embeddings", item_embeddings)
        n = x_ND.shape[0]
        for level, k in enumerate(self.codebook_sizes):
            if k > n:
                raise ValueError(f"codebook_size at level {level} is {k}, larger than the number "
                                 f"of items N={n}; use at most N codes per level")
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        residual = x_ND.clone()
        codebooks, codes, stats = [], [], []
        bar = progress_bar(total=self.num_levels * self.iters, disable=not progress, unit="iter",
                           desc="RQ-KMeans fit")
        for level, k in enumerate(self.codebook_sizes):
            bar.set_postfix(level=level, K=k)
            c_KD, a_N, level_stats = self._kmeans(residual, k, gen, bar)
            bar.update(self.iters * (level + 1) - bar.n)  # early stops skip ahead
            level_stats["level"] = level
            codebooks.append(c_KD)
            codes.append(a_N)
            stats.append(level_stats)
            residual -= c_KD[a_N]
        bar.close()
        self.codebooks = codebooks
        self.dim = x_ND.shape[1]
        self.fit_codes_ = torch.stack(codes, dim=1)
        self.fit_stats_ = stats
        return self

    def _kmeans_pp(self, x_ND: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
        """k-means++ seeds (K, D): each next seed drawn with probability proportional to its
        squared distance to the nearest seed so far; vectorized over the (subsampled) points and
        free of host syncs (inverse-CDF draws with searchsorted on pre-drawn uniforms)."""
        n = x_ND.shape[0]
        s = self.seed_sample if self.seed_sample is not None else max(16 * k, 4096)
        s = max(min(n, s), k)
        if s < n:
            pick = torch.randperm(n, generator=gen)[:s].sort().values.to(x_ND.device)
            pts = x_ND[pick]
        else:
            pts = x_ND
        u = torch.rand(k, generator=gen, dtype=torch.float64)
        first = min(int(float(u[0]) * s), s - 1)  # read on the host, before the copy
        u = u.to(x_ND.device)
        seeds = torch.empty((k, x_ND.shape[1]), dtype=x_ND.dtype, device=x_ND.device)
        seeds[0] = pts[first]
        min_d2 = _sq_dist_to(pts, seeds[0:1].expand_as(pts)).double()
        for j in range(1, k):
            cdf = min_d2.cumsum(0)
            target = (u[j] * cdf[-1]).reshape(1)
            idx = torch.searchsorted(cdf, target, right=True).clamp_(max=s - 1)
            seeds[j:j + 1] = pts.index_select(0, idx)  # a tensor index: no host sync
            min_d2 = torch.minimum(min_d2, _sq_dist_to(pts, seeds[j:j + 1].expand_as(pts)).double())
        return seeds

    def _capacity(self, n: int, k: int) -> int:
        return max(1, math.ceil(self.capacity_factor * n / k))

    def _balance(self, x_ND: torch.Tensor, c_KD: torch.Tensor, a_N: torch.Tensor,
                 counts_K: torch.Tensor) -> torch.Tensor:
        """Capacity-limited reassignment of the nearest assignment a_N (see the module doc)."""
        n, k = x_ND.shape[0], c_KD.shape[0]
        cap = self._capacity(n, k)
        if int(counts_K.max()) <= cap:
            return a_N
        d_own = _sq_dist_to(x_ND, c_KD[a_N])
        # Rank every point within its cluster by distance; ranks >= cap are evicted.
        order, rank = _rank_in_groups(a_N, d_own)
        evicted = order[rank >= cap]
        a_N = a_N.clone()
        free_K = cap - torch.bincount(a_N, minlength=k).clamp(max=cap)
        c_norm = c_KD.square().sum(dim=1)
        m = min(k, _BALANCE_CANDIDATES)
        cand_val, cand_idx = [], []
        for start in range(0, evicted.numel(), _ROW_CHUNK):
            sc = _scores(x_ND[evicted[start:start + _ROW_CHUNK]], c_KD, c_norm)
            v, i = sc.topk(m, dim=1, largest=False, sorted=True)
            cand_val.append(v)
            cand_idx.append(i)
        cand_val = torch.cat(cand_val)
        cand_idx = torch.cat(cand_idx)
        pending = torch.arange(evicted.numel(), device=x_ND.device)
        for rnd in range(m):
            if pending.numel() == 0:
                break
            targets = cand_idx[pending, rnd]
            ok = self._accept(targets, cand_val[pending, rnd], free_K)
            a_N[evicted[pending[ok]]] = targets[ok]
            pending = pending[~ok]
        while pending.numel() > 0:  # rare: all 32 candidates were full
            pts = x_ND[evicted[pending]]
            sc = _scores(pts, c_KD, c_norm).masked_fill(free_K[None, :] <= 0, float("inf"))
            v, targets = sc.min(dim=1)
            ok = self._accept(targets, v, free_K)
            a_N[evicted[pending[ok]]] = targets[ok]
            pending = pending[~ok]
        return a_N

    @staticmethod
    def _accept(targets: torch.Tensor, dists: torch.Tensor, free_K: torch.Tensor) -> torch.Tensor:
        """Each target accepts its closest proposers up to free_K (updated in place). Returns
        the accepted mask over the proposals."""
        order, rank = _rank_in_groups(targets, dists)
        ok_sorted = rank < free_K[targets[order]]
        ok = torch.zeros_like(targets, dtype=torch.bool)
        ok[order[ok_sorted]] = True
        free_K -= torch.bincount(targets[ok], minlength=free_K.numel())
        return ok

    def _assign(self, x_ND, c_KD):
        """One assignment (balanced when asked) with its statistics."""
        a_N, sums_KD, counts_K, inertia = kmeans_step(x_ND, c_KD, backend=self.backend)
        if self.balanced:
            a_bal = self._balance(x_ND, c_KD, a_N, counts_K)
            if a_bal is not a_N:
                a_N = a_bal
                sums_KD = torch.zeros_like(sums_KD).index_add_(0, a_N, x_ND)
                counts_K = torch.bincount(a_N, minlength=c_KD.shape[0])
                inertia = _sq_dist_to(x_ND, c_KD[a_N]).sum(dtype=torch.float64).float()
        return a_N, sums_KD, counts_K, inertia

    def _kmeans(self, x_ND: torch.Tensor, k: int, gen: torch.Generator, bar=None):
        c_KD = self._kmeans_pp(x_ND, k, gen)
        prev = math.inf
        history, repaired, it = [], 0, 0
        for it in range(1, self.iters + 1):
            a_N, sums_KD, counts_K, inertia = self._assign(x_ND, c_KD)
            inertia = float(inertia)
            if math.isinf(inertia):  # finite inputs (checked): float32 distances overflowed
                raise ValueError(f"RQKMeansTokenizer.fit: the k-means inertia overflows float32 "
                                 f"(embeddings up to {float(x_ND.abs().amax()):.3g} in "
                                 f"magnitude): scale the embeddings down")
            history.append(inertia)
            if bar is not None:
                bar.update(1)
            nonempty = counts_K > 0
            c_new = c_KD.clone()
            c_new[nonempty] = sums_KD[nonempty] / counts_K[nonempty, None].to(sums_KD.dtype)
            empty = (~nonempty).nonzero().flatten()
            if empty.numel() > 0:
                # Re-seed each empty centroid at a distinct point farthest from its centroid.
                far = _sq_dist_to(x_ND, c_new[a_N]).topk(min(empty.numel(), x_ND.shape[0])).indices
                c_new[empty[:far.numel()]] = x_ND[far]
                repaired += int(empty.numel())
            c_KD = c_new
            if empty.numel() == 0 and prev - inertia <= self.tol * max(inertia, 1e-30):
                break
            prev = inertia
        a_N, _, counts_K, inertia = self._assign(x_ND, c_KD)
        stats = {"codebook_size": k, "iterations": it, "inertia": float(inertia),
                 "inertia_history": history, "empty_repaired": repaired,
                 "empty_final": int((counts_K == 0).sum())}
        return c_KD, a_N, stats

    # ---------------------------------------------------------------- encode / decode
    def encode(self, embeddings) -> torch.Tensor:
        """Greedy RQ codes of embeddings (N, D) float (finite; N may be 0): (N, L) int64, level
        l's code in [0, K_l). Runs `rq_assign` (one call when all K_l are equal, one per level
        otherwise), on the embeddings' device."""
        self._require_fitted("encode")
        x_ND = _as_embeddings("embeddings", embeddings, dim=self.dim, allow_empty=True)
        cbs = [c.to(x_ND.device) for c in self.codebooks]
        if len(set(self.codebook_sizes)) == 1:
            return rq_assign(x_ND, torch.stack(cbs), backend=self.backend)
        codes, r = [], x_ND
        for c in cbs:
            code, r = rq_assign(r, c[None], return_residual=True, backend=self.backend)
            codes.append(code[:, 0])
        return torch.stack(codes, dim=1)

    def _check_codes(self, codes) -> torch.Tensor:
        if not isinstance(codes, torch.Tensor):
            raise TypeError(f"codes must be a torch.Tensor, got {type(codes).__name__}")
        if codes.dim() != 2 or codes.shape[1] != self.num_levels:
            raise ValueError(f"codes must be (N, {self.num_levels}) (one column per level), got "
                             f"shape {tuple(codes.shape)}")
        if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
            raise TypeError(f"codes must be an integer tensor, got {codes.dtype}")
        codes = codes.long()
        for level, k in enumerate(self.codebook_sizes):
            col = codes[:, level]
            bad = (col < 0) | (col >= k)
            if bool(bad.any()):
                i = int(bad.nonzero()[0])
                raise ValueError(f"codes[{i}, {level}] = {int(col[i])} is out of range for level "
                                 f"{level} (codebook size {k})")
        return codes

    def decode(self, codes) -> torch.Tensor:
        """Reconstructions (N, D) float32 = sum_l codebooks[l][codes[:, l]] for codes (N, L)
        integer, on the codes' device."""
        self._require_fitted("decode")
        codes = self._check_codes(codes)
        out = torch.zeros((codes.shape[0], self.dim), dtype=torch.float32, device=codes.device)
        for level, c in enumerate(self.codebooks):
            out += c.to(codes.device)[codes[:, level]]
        return out

    # ---------------------------------------------------------------- quality
    def quality_report(self, embeddings, codes=None, table=None) -> dict:
        """Quality of the codes of `embeddings` (N, D) (default codes: `encode(embeddings)`).

        Returns a dict:
            num_items, num_levels, codebook_sizes;
            per_level: one dict per level: used (codes with >= 1 item), utilization
                (used / K), perplexity (exp of the code-usage entropy, in [1, K]),
                perplexity_ratio (perplexity / K), largest_cluster_share (largest code's item
                share at that level), relative_error_after (reconstruction relative error using
                levels 0..l);
            reconstruction_mse: mean over items and dimensions of (x - decode(codes))^2;
            relative_error: ||x - decode(codes)||_F / ||x||_F;
            raw_collision_rate: (N - number of distinct code tuples) / N, the share of items
                that must move for the tuples to be one-to-one;
            largest_cluster_share: the largest per-level share (max over levels);
            largest_leaf_share: the largest share of one full code tuple;
            and, when a SemanticIdTable is given: collision_rate_after (0.0 by construction),
            num_reassigned.
        """
        self._require_fitted("quality_report")
        x_ND = _as_embeddings("embeddings", embeddings, dim=self.dim)
        codes = self.encode(x_ND) if codes is None else self._check_codes(codes)
        if codes.shape[0] != x_ND.shape[0]:
            raise ValueError(f"codes has {codes.shape[0]} rows, embeddings {x_ND.shape[0]}")
        n = x_ND.shape[0]
        x_norm = float(x_ND.double().square().sum().sqrt())
        per_level, recon = [], torch.zeros_like(x_ND)
        for level, (k, c) in enumerate(zip(self.codebook_sizes, self.codebooks)):
            counts = torch.bincount(codes[:, level].cpu(), minlength=k).double()
            p = counts / n
            nz = p[p > 0]
            perplexity = float(torch.exp(-(nz * nz.log()).sum()))
            recon += c.to(x_ND.device)[codes[:, level]]
            err = float((x_ND - recon).double().square().sum().sqrt())
            per_level.append({
                "codebook_size": k,
                "used": int((counts > 0).sum()),
                "utilization": float((counts > 0).double().mean()),
                "perplexity": perplexity,
                "perplexity_ratio": perplexity / k,
                "largest_cluster_share": float(p.max()),
                "relative_error_after": err / max(x_norm, 1e-30),
            })
        diff = (x_ND - recon).double()
        _, leaf_counts = torch.unique(codes.cpu(), dim=0, return_counts=True)
        report = {
            "num_items": n,
            "num_levels": self.num_levels,
            "codebook_sizes": list(self.codebook_sizes),
            "per_level": per_level,
            "reconstruction_mse": float(diff.square().mean()),
            "relative_error": float(diff.square().sum().sqrt()) / max(x_norm, 1e-30),
            "raw_collision_rate": (n - leaf_counts.numel()) / n,
            "largest_cluster_share": max(lv["largest_cluster_share"] for lv in per_level),
            "largest_leaf_share": float(leaf_counts.max()) / n,
        }
        if table is not None:
            report["collision_rate_after"] = table.collision_rate
            report["num_reassigned"] = table.num_reassigned
        return report

    def build_table(self, item_embeddings, item_ids=None, codes=None):
        """The one-to-one SemanticIdTable of these items (see onerec.semantic_ids). codes: the
        raw codes to start from (default: `encode(item_embeddings)`; pass `fit_codes_` to keep
        a balanced fit's assignment)."""
        from .semantic_ids import SemanticIdTable

        return SemanticIdTable.build(self, item_embeddings, item_ids=item_ids, codes=codes)

    # ---------------------------------------------------------------- persistence
    def _config(self) -> dict:
        return {"iters": self.iters, "seed": self.seed, "balanced": self.balanced,
                "capacity_factor": self.capacity_factor, "tol": self.tol,
                "seed_sample": self.seed_sample}

    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted codebooks in the versioned format of the module docstring."""
        self._require_fitted("save")
        payload = b"".join(c.detach().cpu().to(torch.float32).contiguous().numpy()
                           .astype("<f4", copy=False).tobytes() for c in self.codebooks)
        header = json.dumps({
            "num_levels": self.num_levels,
            "codebook_sizes": self.codebook_sizes,
            "dim": self.dim,
            "dtype": "float32",
            "config": self._config(),
            "payload_bytes": len(payload),
            "payload_sha256": hashlib.sha256(payload).hexdigest(),
        }, sort_keys=True).encode("utf-8")
        # Written whole under a name unique to this call, then renamed: no half-written file,
        # and two concurrent saves to one path never share (and interleave in) a temp file.
        folder, base = os.path.split(os.path.abspath(os.fspath(path)))
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=folder)
        umask = os.umask(0)
        os.umask(umask)
        try:
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; a saved file is not private
            with os.fdopen(fd, "wb") as f:
                f.write(_PREFIX.pack(FORMAT_MAGIC, FORMAT_VERSION, len(header)))
                f.write(header)
                f.write(payload)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike, backend: str | None = None) -> "RQKMeansTokenizer":
        """Read a file written by `save` (format version 1). Raises TokenizerFormatError for
        another format or version, or a truncated / corrupt file. `path` may also be a result
        folder (`onerec tokenize --out`); a result folder's manifest is checked first
        (onerec.results), and an incomplete or mixed folder raises IncompleteResultFolder."""
        from .results import verify_result_file

        name = os.fspath(path)
        if os.path.isdir(name):
            name = os.path.join(name, RESULT_FILE)
        verify_result_file(name)
        with open(name, "rb") as f:
            blob = f.read()

        def fail(msg: str):
            raise TokenizerFormatError(f"{name}: {msg}")

        if len(blob) < _PREFIX.size:
            fail(f"not an RQKMeansTokenizer file (only {len(blob)} bytes)")
        magic, version, hlen = _PREFIX.unpack_from(blob)
        if magic != FORMAT_MAGIC:
            fail(f"not an RQKMeansTokenizer file (magic {magic!r}, expected {FORMAT_MAGIC!r})")
        if version != FORMAT_VERSION:
            fail(f"tokenizer file format version {version}; this onerec reads version "
                 f"{FORMAT_VERSION} only (re-fit, or load it with the onerec that wrote it)")
        end = _PREFIX.size + hlen
        if len(blob) < end:
            fail(f"truncated: header of {hlen} bytes announced, file has {len(blob)} bytes")
        try:
            header = json.loads(blob[_PREFIX.size:end].decode("utf-8"))
            sizes = [int(s) for s in header["codebook_sizes"]]
            dim, levels = int(header["dim"]), int(header["num_levels"])
            nbytes, digest, config = int(header["payload_bytes"]), header["payload_sha256"], header["config"]
            dtype = header["dtype"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            fail(f"corrupt header ({type(exc).__name__}: {exc})")
        if dtype != "float32" or levels != len(sizes) or levels < 1 or dim < 1 or min(sizes) < 1:
            fail(f"inconsistent header (dtype={dtype!r}, num_levels={levels}, "
                 f"codebook_sizes={sizes}, dim={dim})")
        if nbytes != 4 * dim * sum(sizes) or len(blob) - end != nbytes:
            fail(f"corrupt or truncated: payload has {len(blob) - end} bytes, header says "
                 f"{nbytes}, codebooks need {4 * dim * sum(sizes)}")
        payload = blob[end:]
        if hashlib.sha256(payload).hexdigest() != digest:
            fail("corrupt: the codebook bytes do not match their SHA-256 checksum")
        try:
            tok = cls(num_levels=levels, codebook_size=sizes, iters=int(config["iters"]),
                      seed=int(config["seed"]), balanced=bool(config["balanced"]), backend=backend,
                      capacity_factor=float(config["capacity_factor"]), tol=float(config["tol"]),
                      seed_sample=config["seed_sample"])
        except (KeyError, TypeError, ValueError) as exc:
            fail(f"corrupt header config ({type(exc).__name__}: {exc})")
        flat = torch.from_numpy(np.frombuffer(payload, dtype="<f4").astype(np.float32))
        tok.codebooks = list(torch.split(flat, [k * dim for k in sizes]))
        tok.codebooks = [c.reshape(k, dim).clone() for c, k in zip(tok.codebooks, sizes)]
        tok.dim = dim
        return tok

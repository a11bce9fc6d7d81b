"""Semantic-ID table: item id <-> L-level code tuple, one-to-one.

Raw RQ codes can collide (two items, one tuple). `SemanticIdTable.build` makes the mapping
one-to-one with this documented strategy:

1. Group items by raw tuple. In each group the item closest to the tuple's reconstruction
   (smallest ||x - decode(codes)||^2; ties: earlier row) keeps it; the others move, in order of
   that same distance (closest first; ties: earlier row).
2. A moving item first tries the nearest free leaf under its own prefix: the last-level codes
   ranked by ||r_{L-1} - C_{L-1}[k]||^2, r_{L-1} being its residual before the last level.
3. When every leaf under its prefix is taken, it falls back to the nearest free prefix: going
   up from level L-2 to 0, it tries the other codes of that level in order of distance to its
   residual there, completes the deeper levels greedily (nearest code; at the last level the
   nearest free leaf) and takes the first tuple found free. If even that finds nothing (a
   nearly full table), it takes the lowest free tuple.
Since the table is checked to have room (N <= prod K_l), every item finds a tuple; the result
has zero collisions by construction (asserted). `raw_collision_rate` reports the share of items
that had to move, `num_reassigned` their count.

Export for the trie: `export()` returns the (N, L) int64 code matrix and the (N,) int64 item ids,
rows sorted by code tuple (lexicographic).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

_CANDIDATES = 64  # nearest last-level codes ranked at once per moving item


def _as_int64(name: str, value) -> torch.Tensor:
    """value as a CPU int64 tensor; floats and bools are an error, not silently truncated."""
    t = torch.as_tensor(value)
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integers, got dtype {t.dtype}")
    return t.detach().cpu().long()


def _keys(codes_NL: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Mixed-radix int64 key of each code tuple (lexicographic order = key order)."""
    key = torch.zeros(codes_NL.shape[0], dtype=torch.int64, device=codes_NL.device)
    for level, k in enumerate(sizes):
        key = key * k + codes_NL[:, level]
    return key


class SemanticIdTable:
    """One-to-one map between item ids and code tuples.

    Attributes: codes ((N, L) int64, resolved, in the items' row order), item_ids ((N,) int64),
    codebook_sizes, raw_collision_rate, num_reassigned, collision_rate (0.0).
    """

    def __init__(self, codes: torch.Tensor, item_ids: torch.Tensor, codebook_sizes: Sequence[int],
                 raw_collision_rate: float = 0.0, num_reassigned: int = 0):
        if not isinstance(codes, torch.Tensor):
            raise TypeError(f"codes must be a torch.Tensor, got {type(codes).__name__}")
        if codes.dim() != 2:
            raise ValueError(f"codes must be a 2-D (N, L) tensor, got shape {tuple(codes.shape)}")
        sizes = [int(k) for k in codebook_sizes]
        if codes.shape[1] != len(sizes):
            raise ValueError(f"codes has {codes.shape[1]} levels, codebook_sizes {len(sizes)}")
        if math.prod(sizes) >= 2 ** 62:
            raise ValueError(f"codebook_sizes {sizes}: too many tuples for int64 keys")
        codes = _as_int64("codes", codes).contiguous()
        item_ids = _as_int64("item_ids", item_ids).reshape(-1)
        if item_ids.numel() != codes.shape[0]:
            raise ValueError(f"item_ids has {item_ids.numel()} entries, codes {codes.shape[0]} rows")
        for level, k in enumerate(sizes):
            col = codes[:, level]
            if codes.shape[0] and (int(col.min()) < 0 or int(col.max()) >= k):
                raise ValueError(f"codes at level {level} must be in [0, {k})")
        if torch.unique(item_ids).numel() != item_ids.numel():
            raise ValueError("item_ids must be unique")
        if item_ids.numel() and int(item_ids.min()) < 0:  # -1 means "no item" in items_of
            raise ValueError(f"item_ids must be >= 0 (-1 means no item), got {int(item_ids.min())}")
        keys = _keys(codes, sizes)
        if torch.unique(keys).numel() != keys.numel():
            raise ValueError("codes are not one-to-one (two items share a tuple); build the table "
                             "with SemanticIdTable.build to resolve collisions")
        self.codes = codes
        self.item_ids = item_ids
        self.codebook_sizes = sizes
        self.raw_collision_rate = float(raw_collision_rate)
        self.num_reassigned = int(num_reassigned)
        self._key_sorted, self._key_order = torch.sort(keys)
        self._id_sorted, self._id_order = torch.sort(item_ids)

    @property
    def num_levels(self) -> int:
        return len(self.codebook_sizes)

    @property
    def collision_rate(self) -> float:
        """Share of items sharing a tuple after resolution: 0.0 by construction."""
        n = self.codes.shape[0]
        return 0.0 if n == 0 else (n - torch.unique(self._key_sorted).numel()) / n

    def __len__(self) -> int:
        return self.codes.shape[0]

    def export(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes (N, L) int64, item_ids (N,) int64), rows sorted by code tuple: the trie input."""
        return self.codes[self._key_order].clone(), self.item_ids[self._key_order].clone()

    def codes_of(self, item_ids) -> torch.Tensor:
        """(M, L) int64 codes of the given item ids (M,); an unknown id is a KeyError."""
        ids = _as_int64("item_ids", item_ids).reshape(-1)
        pos = torch.searchsorted(self._id_sorted, ids).clamp_(max=max(len(self) - 1, 0))
        found = self._id_sorted[pos] == ids if len(self) else torch.zeros_like(ids, dtype=torch.bool)
        if not bool(found.all()):
            raise KeyError(f"item id {int(ids[~found][0])} is not in the table")
        return self.codes[self._id_order[pos]]

    def items_of(self, codes) -> torch.Tensor:
        """(M,) int64 item ids of code tuples (M, L); -1 where no item has that tuple."""
        codes = _as_int64("codes", codes)
        if codes.dim() != 2 or codes.shape[1] != self.num_levels:
            raise ValueError(f"codes must be (M, {self.num_levels}), got shape {tuple(codes.shape)}")
        in_range = torch.ones(codes.shape[0], dtype=torch.bool)
        for level, k in enumerate(self.codebook_sizes):
            in_range &= (codes[:, level] >= 0) & (codes[:, level] < k)
        keys = _keys(codes.clamp(min=0), self.codebook_sizes)
        if len(self) == 0:
            return torch.full((codes.shape[0],), -1, dtype=torch.int64)
        pos = torch.searchsorted(self._key_sorted, keys).clamp_(max=len(self) - 1)
        found = (self._key_sorted[pos] == keys) & in_range
        out = self.item_ids[self._key_order[pos]]
        return torch.where(found, out, torch.full_like(out, -1))

    @classmethod
    def build(cls, tokenizer, item_embeddings, item_ids=None, codes=None) -> "SemanticIdTable":
        """Resolve collisions of the items' raw codes (strategy: module docstring).

        tokenizer: a fitted RQKMeansTokenizer; item_embeddings: (N, D) float; item_ids: (N,)
        unique integers (default 0..N-1); codes: (N, L) raw codes (default:
        tokenizer.encode(item_embeddings)).
        """
        from .tokenizer import _as_embeddings, _rank_in_groups

        tokenizer._require_fitted("build_table")
        x_ND = _as_embeddings("item_embeddings", item_embeddings, dim=tokenizer.dim).cpu()
        n = x_ND.shape[0]
        sizes = list(tokenizer.codebook_sizes)
        num_levels = len(sizes)
        if n > math.prod(sizes):
            raise ValueError(f"{n} items cannot have distinct tuples: the codebooks "
                             f"{sizes} hold only {math.prod(sizes)}")
        item_ids = torch.arange(n) if item_ids is None else torch.as_tensor(item_ids)
        codes = tokenizer.encode(x_ND) if codes is None else tokenizer._check_codes(codes)
        codes = codes.cpu().clone()
        if codes.shape[0] != n:
            raise ValueError(f"codes has {codes.shape[0]} rows, item_embeddings {n}")
        cbs = [c.detach().cpu().float() for c in tokenizer.codebooks]

        # Residual before each level, and the distance to the full reconstruction.
        res = [x_ND]
        for level in range(num_levels):
            res.append(res[-1] - cbs[level][codes[:, level]])
        dist = res[-1].square().sum(dim=1)
        keys = _keys(codes, sizes)
        # Keeper of each tuple: smallest distance, then earliest row (stable sorts).
        order, rank = _rank_in_groups(keys, dist)
        first = rank == 0
        movers = order[~first]
        movers = movers[torch.sort(dist[movers], stable=True).indices]  # closest move first
        raw_rate = movers.numel() / n if n else 0.0

        if movers.numel():
            occupied = set(keys[order[first]].tolist())
            leaf = sizes[-1]
            prefix_used: dict[int, int] = {}
            for key in occupied:
                prefix_used[key // leaf] = prefix_used.get(key // leaf, 0) + 1
            last_cb = cbs[-1]
            last_norm = last_cb.square().sum(dim=1)
            r_last = res[num_levels - 1][movers]
            m = min(leaf, _CANDIDATES)
            cand = (last_norm - 2.0 * r_last @ last_cb.T).topk(m, dim=1, largest=False).indices

            def take(key: int) -> None:
                occupied.add(key)
                prefix_used[key // leaf] = prefix_used.get(key // leaf, 0) + 1

            def nearest_free_leaf(prefix_key: int, r) -> int | None:
                if prefix_used.get(prefix_key, 0) >= leaf:
                    return None
                ranked = (last_norm - 2.0 * (last_cb @ r)).argsort(stable=True).tolist()
                for j in ranked:
                    if prefix_key * leaf + j not in occupied:
                        return j
                return None

            for row_pos, item in enumerate(movers.tolist()):
                prefix_key = int(keys[item]) // leaf
                chosen = None
                if prefix_used.get(prefix_key, 0) < leaf:
                    for j in cand[row_pos].tolist():
                        if prefix_key * leaf + j not in occupied:
                            chosen = prefix_key * leaf + j
                            break
                    if chosen is None:
                        j = nearest_free_leaf(prefix_key, res[num_levels - 1][item])
                        chosen = prefix_key * leaf + j
                level = num_levels - 2
                while chosen is None and level >= 0:  # nearest free prefix, bottom up
                    chosen = cls._search_up(item, level, codes, res, cbs, sizes, nearest_free_leaf)
                    level -= 1
                if chosen is None:  # greedy completions all full: the lowest free tuple
                    chosen = next(kk for kk in range(n + 1) if kk not in occupied)
                take(chosen)
                rem = chosen
                for lv in range(num_levels - 1, -1, -1):
                    codes[item, lv] = rem % sizes[lv]
                    rem //= sizes[lv]
        table = cls(codes, item_ids, sizes, raw_collision_rate=raw_rate,
                    num_reassigned=int(movers.numel()))
        assert table.collision_rate == 0.0
        return table

    @staticmethod
    def _search_up(item, level, codes, res, cbs, sizes, nearest_free_leaf):
        """Try the other codes of `level` (nearest first) for this item, completing deeper
        levels greedily; returns the first free tuple key, or None."""
        num_levels = len(sizes)
        r = res[level][item]
        cb = cbs[level]
        ranked = ((cb.square().sum(dim=1)) - 2.0 * (cb @ r)).argsort(stable=True).tolist()
        head = 0
        for lv in range(level):
            head = head * sizes[lv] + int(codes[item, lv])
        for j in ranked:
            if j == int(codes[item, level]):
                continue
            key, rr = head * sizes[level] + j, r - cb[j]
            for lv in range(level + 1, num_levels - 1):  # greedy middle levels
                c = cbs[lv]
                jj = int(((c.square().sum(dim=1)) - 2.0 * (c @ rr)).argmin())
                key, rr = key * sizes[lv] + jj, rr - c[jj]
            jl = nearest_free_leaf(key, rr)
            if jl is not None:
                return key * sizes[-1] + jl
        return None

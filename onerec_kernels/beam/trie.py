"""`SemanticIdTrie`: the set of valid semantic IDs as a compact, device-movable trie.

Layout (built in C++ by `onerec_C::trie_build`, or by `_build_torch` without the extension):
nodes of depth t (prefixes of t codes) are numbered in lexicographic order of their prefixes, so
the children of a node are contiguous. Level t (0 <= t < L) is a CSR block:

- ``offsets[t]``: (num_nodes(t) + 1,) int64; node s's children are nodes offsets[t][s] .. [s+1]-1
  of depth t + 1 (the child id *is* the CSR position);
- ``tokens[t]``: (num_nodes(t + 1),) int64, each child's code, ascending within a parent;
- ``first_level``: (V_0,) int64 dense table token -> depth-1 node (-1: no item starts with it);
- ``leaf_items``: (num_items,) int64, the item id of each depth-L node (leaf).

A beam state is a node id of the current depth (the root is node 0 of depth 0); -1 is dead.
"""
from __future__ import annotations

import operator
from typing import Sequence

import torch

from .. import _native
from .._checks import check_tensor


def _build_torch(codes: torch.Tensor, vocab: Sequence[int]) -> list[torch.Tensor]:
    """Same outputs as onerec_C::trie_build (used when the native extension is missing)."""
    n, num_levels = codes.shape
    order = torch.arange(n)
    for t in reversed(range(num_levels)):  # LSD radix sort over the columns, stable
        order = order[torch.sort(codes[order, t], stable=True).indices]
    srt = codes[order]
    if n > 1:
        dup = (srt[1:] == srt[:-1]).all(dim=1).nonzero().flatten()
        if dup.numel():
            pairs = torch.stack([order[dup], order[dup + 1]], dim=1).sort(dim=1).values
            a, b = pairs[pairs[:, 0].argmin()].tolist()
            raise ValueError(f"SemanticIdTrie: duplicate code rows: codes[{a}] == codes[{b}]; "
                             "every item needs a distinct semantic ID")
    out = []
    node_prev = torch.zeros(n, dtype=torch.int64)  # depth-t node of each sorted row
    num_nodes = 1
    for t in range(num_levels):
        fresh = torch.ones(n, dtype=torch.bool)
        if n > 1:
            fresh[1:] = (srt[1:, :t + 1] != srt[:-1, :t + 1]).any(dim=1)
        parents = node_prev[fresh]
        counts = torch.bincount(parents, minlength=num_nodes)
        offsets = torch.zeros(num_nodes + 1, dtype=torch.int64)
        offsets[1:] = counts.cumsum(0)
        out += [offsets, srt[fresh, t].clone()]
        node_prev = fresh.cumsum(0) - 1
        num_nodes = int(fresh.sum())
    out.append(order)
    return out


# The first level is a dense (V_0,) int64 table and every beam step scores a (B, W, V_t) row per
# beam, so a vocabulary beyond 2^24 codes per level (semantic-ID codebooks hold 2^8 to 2^16) is
# a mistake to report, not an allocation of terabytes to attempt.
MAX_VOCAB = 2 ** 24


def _vocab_sizes(op: str, vocab_size, num_levels: int) -> list[int]:
    """vocab_size (an int, or a sequence of L ints, each in [1, MAX_VOCAB]) as L Python ints."""
    def as_int(v, what: str) -> int:
        if isinstance(v, bool) or not hasattr(v, "__index__"):  # numpy ints pass, floats do not
            raise TypeError(f"{op}: {what} must be an int, got {type(v).__name__} ({v!r})")
        return operator.index(v)

    if isinstance(vocab_size, (str, bytes)) or not (
            isinstance(vocab_size, Sequence) or hasattr(vocab_size, "__index__")):
        raise TypeError(f"{op}: vocab_size must be an int or a sequence of L ints, got "
                        f"{type(vocab_size).__name__} ({vocab_size!r})")
    if isinstance(vocab_size, Sequence):
        vocab = [as_int(v, f"vocab_size[{t}]") for t, v in enumerate(vocab_size)]
    else:
        vocab = [as_int(vocab_size, "vocab_size")] * num_levels
    if len(vocab) != num_levels:
        raise ValueError(f"{op}: vocab_size must have L = {num_levels} entries, got {len(vocab)}")
    for t, v in enumerate(vocab):
        if not 1 <= v <= MAX_VOCAB:
            raise ValueError(f"{op}: vocab_size[{t}] must be in [1, 2^24], got {v}")
    return vocab


def _check_item_ids(op: str, ids: torch.Tensor) -> None:
    """Item ids are >= 0 (-1 marks dead beams and padding in every result) and distinct (an
    item is one leaf: a repeated id would be returned several times by one search)."""
    if ids.numel() == 0:
        return
    neg = (ids < 0).nonzero()
    if neg.numel():
        r = int(neg[0])
        raise ValueError(f"{op}: item_ids must be >= 0 (-1 marks padding and dead beams), got "
                         f"item_ids[{r}] = {int(ids[r])}")
    srt, order = torch.sort(ids, stable=True)
    dup = (srt[1:] == srt[:-1]).nonzero()
    if dup.numel():
        j = int(dup[0])
        a, b = sorted((int(order[j]), int(order[j + 1])))
        raise ValueError(f"{op}: item_ids must be distinct: item_ids[{a}] == item_ids[{b}] == "
                         f"{int(srt[j])}")


class SemanticIdTrie:
    """Trie over the semantic IDs of a catalogue, for constrained beam search.

    Args:
        codes: (num_items, L) int64 semantic IDs, one row per item; rows must be distinct and
            codes[:, t] in [0, vocab_size[t]). Any device (built on the CPU, moved back).
        vocab_size: int (same for every level) or a sequence of L ints, each in [1, 2^24]
            (a str, a float or a bool is a TypeError).
        item_ids: optional (num_items,) int64 ids returned for each row (default: the row
            index); distinct and >= 0, since -1 marks padding and dead beams.

    Raises ValueError naming the rows for duplicate rows, codes outside the vocabulary, and
    repeated or negative item ids.
    """

    def __init__(self, codes: torch.Tensor, vocab_size: int | Sequence[int],
                 item_ids: torch.Tensor | None = None):
        op = "SemanticIdTrie"
        check_tensor(op, "codes", codes, ndim=2, dtypes=(torch.int64, torch.int32))
        n, num_levels = codes.shape
        if num_levels < 1:
            raise ValueError(f"{op}: codes must have L >= 1 columns, got shape {tuple(codes.shape)}")
        vocab = _vocab_sizes(op, vocab_size, num_levels)
        device = codes.device
        cpu_codes = codes.detach().to("cpu", torch.int64).contiguous()
        if n:
            bad = ((cpu_codes < 0) | (cpu_codes >= torch.tensor(vocab))).nonzero()
            if bad.numel():
                r, t = bad[0].tolist()
                raise ValueError(f"{op}: codes[{r}, {t}] = {int(cpu_codes[r, t])} is outside the "
                                 f"vocabulary [0, {vocab[t]}) of level {t}")
        if item_ids is not None:
            check_tensor(op, "item_ids", item_ids, ndim=1, dtypes=(torch.int64, torch.int32))
            if item_ids.shape[0] != n:
                raise ValueError(f"{op}: item_ids must be (num_items,) = ({n},), got "
                                 f"{tuple(item_ids.shape)}")
            _check_item_ids(op, item_ids.detach().to("cpu", torch.int64))
        if _native.available() and _native.has_kernel("trie_build", "CPU"):
            parts = torch.ops.onerec_C.trie_build(cpu_codes, vocab)
        else:
            parts = _build_torch(cpu_codes, vocab)
        leaf_rows = parts[-1]
        ids = leaf_rows if item_ids is None else item_ids.detach().to("cpu", torch.int64)[leaf_rows]
        self._init(vocab, parts[0:-1:2], parts[1:-1:2], ids, device=torch.device("cpu"))
        if device.type != "cpu":
            self._move(device)

    # -- construction helpers --------------------------------------------------------------
    def _init(self, vocab, offsets, tokens, leaf_items, device, first_level=None, keys=None,
              max_branching=None):
        self.vocab_sizes = tuple(vocab)
        self.offsets = list(offsets)
        self.tokens = list(tokens)
        self.leaf_items = leaf_items
        self.device = device
        if max_branching is None:
            max_branching = [int((o[1:] - o[:-1]).max()) if o.numel() > 1 else 0 for o in offsets]
        self._max_branching = list(max_branching)
        if first_level is None:
            first_level = torch.full((vocab[0],), -1, dtype=torch.int64)
            first_level[self.tokens[0]] = torch.arange(self.tokens[0].numel())
        self.first_level = first_level
        if keys is None:  # parent * V_t + token: globally sorted, for vectorized lookups
            keys = []
            for t, (o, tok) in enumerate(zip(self.offsets, self.tokens)):
                parent = torch.repeat_interleave(torch.arange(o.numel() - 1), o[1:] - o[:-1])
                keys.append(parent * vocab[t] + tok)
        self._keys = keys

    def _move(self, device):
        mv = lambda t: t.to(device)  # noqa: E731
        self.offsets = [mv(t) for t in self.offsets]
        self.tokens = [mv(t) for t in self.tokens]
        self.leaf_items = mv(self.leaf_items)
        self.first_level = mv(self.first_level)
        self._keys = [mv(t) for t in self._keys]
        # The tensors' own device: to("cuda") lands on "cuda:<current>", and the steps compare
        # devices exactly (torch.device("cuda") != torch.device("cuda:0")).
        self.device = self.leaf_items.device

    def to(self, device) -> "SemanticIdTrie":
        """A copy of the trie on `device` (tensors only; no rebuild)."""
        new = object.__new__(SemanticIdTrie)
        new._init(self.vocab_sizes, self.offsets, self.tokens, self.leaf_items, self.device,
                  self.first_level, self._keys, self._max_branching)
        new._move(device)
        return new

    # -- properties ----------------------------------------------------------------------
    @property
    def num_levels(self) -> int:
        return len(self.vocab_sizes)

    @property
    def num_items(self) -> int:
        return int(self.leaf_items.numel())

    def num_nodes(self, depth: int) -> int:
        """Nodes of depth `depth` (0: the root, L: the items)."""
        if not 0 <= depth <= self.num_levels:
            raise ValueError(f"num_nodes: depth must be in [0, {self.num_levels}], got {depth}")
        return self.offsets[depth].numel() - 1 if depth < self.num_levels else self.num_items

    def max_branching(self, level: int) -> int:
        """The largest number of children of a depth-`level` node (0 <= level < L)."""
        self._check_level("max_branching", level)
        return self._max_branching[level]

    def _check_level(self, op: str, level) -> None:
        if isinstance(level, bool) or not isinstance(level, int):
            raise TypeError(f"{op}: level must be an int, got {type(level).__name__}")
        if not 0 <= level < self.num_levels:
            raise ValueError(f"{op}: level must be in [0, {self.num_levels}) for a trie of "
                             f"{self.num_levels} levels, got {level}")

    def __repr__(self) -> str:
        return (f"SemanticIdTrie(num_items={self.num_items}, vocab_sizes={self.vocab_sizes}, "
                f"max_branching={self._max_branching}, device={self.device})")

    # -- queries -------------------------------------------------------------------------
    def _walk(self, op: str, prefixes: torch.Tensor, depth: int) -> torch.Tensor:
        """Depth-`depth` node of each row of prefixes (N, depth), -1 where it is no prefix."""
        n = prefixes.shape[0]
        node = torch.zeros(n, dtype=torch.int64, device=self.device)
        ok = torch.ones(n, dtype=torch.bool, device=self.device)
        p = prefixes.to(self.device, torch.int64)
        for t in range(depth):
            tok = p[:, t]
            in_vocab = (tok >= 0) & (tok < self.vocab_sizes[t])
            tok = torch.where(in_vocab, tok, 0)
            if t == 0:
                child = self.first_level[tok]
                found = in_vocab & (child >= 0)
            else:
                keys = self._keys[t]
                if keys.numel() == 0:
                    found, child = torch.zeros_like(in_vocab), node
                else:
                    key = node * self.vocab_sizes[t] + tok
                    child = torch.searchsorted(keys, key).clamp(max=keys.numel() - 1)
                    found = in_vocab & (keys[child] == key)
            ok &= found
            node = torch.where(ok, child, 0)
        return torch.where(ok, node, -1)

    def _check_codes(self, op: str, codes, width: int | None) -> None:
        check_tensor(op, "codes" if width is None else "prefixes", codes, ndim=2,
                     dtypes=(torch.int64, torch.int32))
        if width is None and codes.shape[1] != self.num_levels:
            raise ValueError(f"{op}: codes must be (N, L) = (N, {self.num_levels}), got "
                             f"{tuple(codes.shape)}")

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Item id of each row of codes (N, L) int64; -1 where the row is not an item."""
        self._check_codes("lookup", codes, None)
        leaf = self._walk("lookup", codes, self.num_levels)
        return torch.where(leaf >= 0, self.leaf_items[leaf.clamp(min=0)] if self.num_items else leaf, -1)

    def contains(self, codes: torch.Tensor) -> torch.Tensor:
        """(N,) bool: whether each row of codes (N, L) is the semantic ID of an item."""
        self._check_codes("contains", codes, None)
        return self._walk("contains", codes, self.num_levels) >= 0

    def allowed_next(self, prefixes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Valid next codes after each prefix.

        prefixes: (N, t) int64 with 0 <= t < L. Returns tokens (N, max_branching(t)) int64,
        ascending and padded with -1, and counts (N,) int64 (0 for a prefix of no item).
        """
        self._check_codes("allowed_next", prefixes, prefixes.shape[1] if prefixes.dim() == 2 else 0)
        t = prefixes.shape[1]
        if t >= self.num_levels:
            raise ValueError(f"allowed_next: prefixes must have t < L = {self.num_levels} columns, "
                             f"got {t}")
        if self.num_nodes(t) == 0:  # an empty trie (no item): no prefix has a continuation
            n = prefixes.shape[0]
            return (torch.empty((n, 0), dtype=torch.int64, device=self.device),
                    torch.zeros((n,), dtype=torch.int64, device=self.device))
        node = self._walk("allowed_next", prefixes, t)
        live = node >= 0
        s = node.clamp(min=0)
        off = self.offsets[t]
        begin = off[s]
        counts = torch.where(live, off[s + 1] - begin, 0)
        m = self._max_branching[t]
        j = torch.arange(m, device=self.device)
        valid = j < counts[:, None]
        child = torch.where(valid, begin[:, None] + j, 0)
        toks = self.tokens[t][child] if self.tokens[t].numel() else child
        return torch.where(valid, toks, -1), counts

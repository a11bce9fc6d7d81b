"""The model's input batch: `onerec.data.Pathways` turned into the ids and buckets the encoder
embeds, still packed (ragged per user, no padding).

Built on the host, where every range check is free (no device sync): item ids against the
semantic-ID table, codes against the codebook, features against their cardinalities, pathway
lengths against the config's caps. `encoder_batch(...).to(device)` then moves it.

Legend: B users, T tokens of one pathway packed over the batch, L semantic-ID levels,
C item categorical features, S bucketized per-token signals.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields

import numpy as np
import torch

from onerec.data import Dataset, PackedSequences, Pathways, build_pathways

from .config import OneRecConfig

_NO_TIME = np.iinfo(np.int64).max


@dataclass
class SequenceFeatures:
    """One sequence pathway, packed. cu_seqlens (B + 1,) int32; max_len a host int;
    codes (T, L) int64 semantic IDs; categorical (T, C) int64; buckets (T, 3 + S) int64 =
    [time-gap bucket, engagement bucket, positive flag, one bucket per config signal]."""
    cu_seqlens: torch.Tensor
    max_len: int
    codes: torch.Tensor
    categorical: torch.Tensor
    buckets: torch.Tensor

    @property
    def lengths(self) -> torch.Tensor:
        return (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).long()

    def to(self, device) -> "SequenceFeatures":
        return SequenceFeatures(self.cu_seqlens.to(device), self.max_len, self.codes.to(device),
                                self.categorical.to(device), self.buckets.to(device))


@dataclass
class EncoderBatch:
    """users (B,) int64; static (B, F) int64; static_numeric (B, Fn) float32; short_term,
    positive, lifelong: SequenceFeatures."""
    users: torch.Tensor
    static: torch.Tensor
    static_numeric: torch.Tensor
    short_term: SequenceFeatures
    positive: SequenceFeatures
    lifelong: SequenceFeatures

    @property
    def batch_size(self) -> int:
        return int(self.users.shape[0])

    def to(self, device) -> "EncoderBatch":
        return EncoderBatch(*(getattr(self, f.name).to(device) for f in fields(self)))


def log_bucket(x: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """floor(log2(1 + max(x, 0))) clamped to [0, num_buckets): time gaps, play times."""
    return torch.log2(1 + x.double().clamp_min(0)).floor().long().clamp(0, num_buckets - 1)


def _check_range(name: str, values: torch.Tensor, high, what: str, op: str = "encoder_batch"
                 ) -> None:
    if values.numel() == 0:
        return
    high_t = torch.as_tensor(high, dtype=values.dtype)
    bad = (values < 0) | (values >= high_t)
    if bool(bad.any()):
        i = tuple(int(j) for j in bad.nonzero()[0])
        hi = int(high_t) if high_t.dim() == 0 else int(high_t[i[-1]])
        raise ValueError(f"{op}: {name}[{', '.join(map(str, i))}] = {int(values[i])} is "
                         f"outside {what} [0, {hi})")


def _sequence(name: str, seq: PackedSequences, cap: int, ref_time: torch.Tensor,
              item_codes: torch.Tensor, config: OneRecConfig, dataset: Dataset | None
              ) -> SequenceFeatures:
    lengths = seq.lengths
    if lengths.numel() and int(lengths.max()) > cap:
        b = int(lengths.argmax())
        raise ValueError(f"encoder_batch: pathway {name} of user row {b} has {int(lengths[b])} "
                         f"items, more than the config's {cap}; build the pathways with the "
                         f"config's lengths")
    _check_range(f"{name}.item", seq.item, item_codes.shape[0], "the semantic-ID table's items")
    codes = item_codes[seq.item]
    nb = config.num_buckets
    row = torch.repeat_interleave(torch.arange(lengths.shape[0]), lengths)
    cols = [log_bucket(ref_time[row] - seq.timestamp, nb),
            (seq.engagement.double().clamp(0, 1) * (nb - 1)).round().long(),
            seq.positive.long()]
    categorical = torch.zeros((codes.shape[0], 0), dtype=torch.int64)
    if config.item_cardinalities or config.signals:
        if dataset is None:
            raise ValueError("encoder_batch: the config has item features or signals; pass the "
                             "dataset they come from")
        idx = seq.index.numpy()
        if config.item_cardinalities:
            categorical = torch.from_numpy(
                dataset.items.categorical[seq.item.numpy()].astype(np.int64))
            _check_range(f"{name}.categorical", categorical, list(config.item_cardinalities),
                         "the config's item_cardinalities")
        for s in config.signals:
            if s not in dataset.interactions.signals:
                raise ValueError(f"encoder_batch: config signal {s!r} is not in the dataset's "
                                 f"signals {sorted(dataset.interactions.signals)}")
            cols.append(log_bucket(torch.from_numpy(
                np.asarray(dataset.interactions.signals[s][idx], dtype=np.float64)), nb))
    cu = seq.offsets.to(torch.int32)
    return SequenceFeatures(cu, int(lengths.max()) if lengths.numel() else 0, codes, categorical,
                            torch.stack(cols, dim=1))


def encoder_batch(pathways: Pathways, item_codes: torch.Tensor, config: OneRecConfig,
                  dataset: Dataset | None = None) -> EncoderBatch:
    """The encoder inputs of `pathways` (host tensors, as `build_pathways` returns them).

    item_codes: (num_items, L) int64 semantic IDs of every item (the tokenizer's table, rows in
    item-id order). dataset: needed when the config uses item features or signals.
    Raises ValueError naming the input for ids/codes/features outside the tables and for
    pathways longer than the config's lengths (so no kernel ever reads out of bounds)."""
    item_codes = torch.as_tensor(item_codes).cpu()
    if item_codes.dim() != 2 or item_codes.shape[1] != config.num_levels:
        raise ValueError(f"encoder_batch: item_codes must be (num_items, {config.num_levels}), "
                         f"got {tuple(item_codes.shape)}")
    _check_range("item_codes", item_codes, list(config.codebook_sizes),
                 "the config's codebook_sizes")
    users = pathways.users.cpu()
    if config.num_users:
        _check_range("users", users, config.num_users, "the model's user table")
    static = pathways.static.cpu()
    if static.shape[1] != len(config.static_cardinalities):
        raise ValueError(f"encoder_batch: static must have {len(config.static_cardinalities)} "
                         f"columns, got {pathways.static.shape[1]}")
    _check_range("static", static, list(config.static_cardinalities),
                 "the config's static_cardinalities")
    numeric = pathways.static_numeric.cpu().float()
    if numeric.shape[1] != config.num_static_numeric:
        raise ValueError(f"encoder_batch: static_numeric must have {config.num_static_numeric} "
                         f"columns, got {numeric.shape[1]}")
    # Reference time of each query: its cut time, or just after its latest event when the
    # pathways were built with times=None (no cut).
    ref = pathways.times.cpu().clone()
    open_end = ref == _NO_TIME
    if bool(open_end.any()):
        last = torch.full_like(ref, 0)
        for seq in (pathways.short_term, pathways.lifelong):
            if seq.item.numel():
                nonempty = seq.lengths > 0
                last = torch.where(nonempty, torch.maximum(
                    last, seq.timestamp[(seq.offsets[1:] - 1).clamp_min(0)]), last)
        ref = torch.where(open_end, last + 1, ref)
    caps = {"short_term": config.short_len, "positive": config.positive_len}
    seqs = {name: _sequence(name, getattr(pathways, name).to("cpu"), caps.get(name, 1 << 62),
                            ref, item_codes, config, dataset)
            for name in ("short_term", "positive", "lifelong")}
    for name, s in seqs.items():
        if s.cu_seqlens.shape[0] != users.shape[0] + 1:
            raise ValueError(f"encoder_batch: pathway {name} has {s.cu_seqlens.shape[0] - 1} "
                             f"rows, users has {users.shape[0]}")
    return EncoderBatch(users, static, numeric, **seqs)


def build_batch(dataset: Dataset, users, times, item_codes: torch.Tensor, config: OneRecConfig,
                *, pool="all") -> EncoderBatch:
    """`build_pathways` at the config's pathway lengths, then `encoder_batch` (host tensors)."""
    paths = build_pathways(dataset, users, times, short_len=config.short_len,
                           positive_len=config.positive_len, pool=pool)
    return encoder_batch(paths, item_codes, config, dataset)


def check_batch(batch: EncoderBatch, config: OneRecConfig) -> None:
    """Before any kernel runs: the shapes and host ints always; the id values when the batch is
    on the host (free) or with ONEREC_DEBUG_CHECKS=1 (on a GPU that needs a device sync).
    `encoder_batch` already checked what it built; this guards batches built by hand."""
    B = batch.batch_size
    caps = {"short_term": config.short_len, "positive": config.positive_len}
    nb = [config.num_buckets, config.num_buckets, 2] + [config.num_buckets] * len(config.signals)
    on_host = batch.users.device.type == "cpu" or os.environ.get("ONEREC_DEBUG_CHECKS") == "1"
    if batch.static.shape != (B, len(config.static_cardinalities)):
        raise ValueError(f"OneRec: batch.static must be ({B}, {len(config.static_cardinalities)}), "
                         f"got {tuple(batch.static.shape)}")
    if batch.static_numeric.shape != (B, config.num_static_numeric):
        raise ValueError(f"OneRec: batch.static_numeric must be ({B}, "
                         f"{config.num_static_numeric}), got {tuple(batch.static_numeric.shape)}")
    for name in ("short_term", "positive", "lifelong"):
        s = getattr(batch, name)
        n = s.codes.shape[0]
        if s.cu_seqlens.shape != (B + 1,) or s.codes.shape != (n, config.num_levels) \
                or s.buckets.shape != (n, len(nb)) \
                or s.categorical.shape != (n, len(config.item_cardinalities)):
            raise ValueError(
                f"OneRec: batch.{name} must have cu_seqlens ({B + 1},), codes (T, "
                f"{config.num_levels}), buckets (T, {len(nb)}), categorical (T, "
                f"{len(config.item_cardinalities)}); got {tuple(s.cu_seqlens.shape)}, "
                f"{tuple(s.codes.shape)}, {tuple(s.buckets.shape)}, {tuple(s.categorical.shape)}")
        if s.max_len > caps.get(name, s.max_len):
            raise ValueError(f"OneRec: batch.{name}.max_len = {s.max_len} exceeds the config's "
                             f"{caps[name]}")
        if on_host and n:
            host = s.to("cpu")
            if int(host.cu_seqlens[0]) != 0 or int(host.cu_seqlens[-1]) != n \
                    or bool((host.lengths < 0).any()) or int(host.lengths.max()) > s.max_len:
                raise ValueError(f"OneRec: batch.{name}.cu_seqlens must run from 0 to {n}, "
                                 f"non-decreasing, rows at most max_len = {s.max_len}")
            _check_range(f"{name}.codes", host.codes, list(config.codebook_sizes),
                         "the codebook", "OneRec")
            _check_range(f"{name}.buckets", host.buckets, nb, "the bucket tables", "OneRec")
            _check_range(f"{name}.categorical", host.categorical,
                         list(config.item_cardinalities), "the item feature tables", "OneRec")
    if on_host and B:
        if config.num_users:
            _check_range("users", batch.users.cpu(), config.num_users, "the model's user table",
                         "OneRec")
        _check_range("static", batch.static.cpu(), list(config.static_cardinalities),
                     "the config's static_cardinalities", "OneRec")

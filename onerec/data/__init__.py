"""Data layer: datasets (synthetic default, MovieLens-100K), chronological split, pathway builder
and item embeddings.

    ds = load_dataset("synthetic", num_users=500, seed=1)      # or "ml-100k:/path/to/ml-100k"
    paths = build_pathways(ds, users, times)                   # encoder inputs, packed
    emb, report = build_item_embeddings(ds, dim=64)            # content x collaborative fusion
"""
from __future__ import annotations

from .dataset import (DROPPED, TEST, TRAIN, VALID, Dataset, Interactions, Items, Split, Users,
                      leave_one_out_split)
from .embeddings import build_item_embeddings
from .movielens import MovieLensFormatError, load_movielens_100k
from .seqrec import SeqRecFormatError, load_seqrec_json
from .pathways import PackedSequences, Pathways, build_pathways
from .synthetic import SyntheticConfig, generate_synthetic

SPECS = ("synthetic", "ml-100k:PATH", "seqrec-json:DIR")


def load_dataset(spec: str, **options) -> Dataset:
    """Load a dataset by spec (the strings the CLI's `--data` takes).

    "synthetic": the seeded generator; options are `SyntheticConfig` fields (num_users,
        num_items, num_interactions, num_clusters, ..., seed).
    "ml-100k:PATH": MovieLens-100K from folder PATH; options: positive_threshold, ties.
    "seqrec-json:DIR": `DIR/<name>.inter.json` (+ optional `<name>.item.json`), see
        `onerec.data.seqrec`; options: max_categories.
    Unknown specs raise ValueError, unknown options TypeError (both list what is valid).
    """
    kind, path = parse_spec(spec)
    if kind == "synthetic":
        return generate_synthetic(**options)
    if kind == "ml-100k":
        allowed = {"positive_threshold", "ties"}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise TypeError(f"load_dataset: unknown option(s) {unknown} for ml-100k; "
                            f"valid options: {sorted(allowed)}")
        return load_movielens_100k(path, **options)
    if kind == "seqrec-json":
        allowed = {"max_categories"}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise TypeError(f"load_dataset: unknown option(s) {unknown} for seqrec-json; "
                            f"valid options: {sorted(allowed)}")
        return load_seqrec_json(path, **options)
    raise AssertionError(kind)


def parse_spec(spec: str) -> tuple[str, str | None]:
    """(kind, path) of a dataset spec: ("synthetic", None), ("ml-100k", PATH) or
    ("seqrec-json", DIR). Only the exact
    names are accepted ("ml-100k-bogus:PATH" is an error, not ml-100k); the path is not opened."""
    if not isinstance(spec, str):
        raise TypeError(f"load_dataset: spec must be a str, got {type(spec).__name__}")
    if spec == "synthetic":
        return "synthetic", None
    kind, sep, path = spec.partition(":")
    if kind in ("ml-100k", "seqrec-json"):
        if not sep or not path:
            raise ValueError(f"load_dataset: spec {spec!r} needs a folder: '{kind}:PATH'")
        return kind, path
    raise ValueError(f"load_dataset: unknown spec {spec!r}; expected one of {list(SPECS)}")


__all__ = [
    "Dataset", "Items", "Users", "Interactions", "Split", "TRAIN", "VALID", "TEST", "DROPPED",
    "leave_one_out_split", "load_dataset", "parse_spec", "SPECS", "SyntheticConfig",
    "generate_synthetic",
    "load_movielens_100k", "MovieLensFormatError", "load_seqrec_json", "SeqRecFormatError", "PackedSequences", "Pathways",
    "build_pathways", "build_item_embeddings",
]

"""Training checkpoints: one self-describing file, written atomically, refused when it does not
belong to the run that loads it.

Write protocol (why each step): the state is serialised into a temp file in the target's own
folder (same file system, so the rename below is atomic), flushed and fsync'ed (data on disk
before it becomes visible), renamed over the target with os.replace (readers see the old file
or the new one, never a mix), then the folder is fsync'ed (the rename itself survives a crash).
A writer killed at any point leaves at worst a `.<name>.tmp-*` file, which no loader opens and
the next save of the same target removes. A file truncated or corrupted by other means fails
to load with `IncompleteCheckpoint` (torch's zip container keeps its directory at the end, and
the payload carries its own format marker), and a checkpoint that a result folder's manifest
lists is also checked against it.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import random
import tempfile

import numpy as np
import torch

from onerec.results import MANIFEST, IncompleteResultFolder, fsync_dir, verify_result_file

FORMAT = "onerec-train-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used by this run (another config or tokenizer)."""


class IncompleteCheckpoint(RuntimeError):
    """A checkpoint file that is truncated, corrupted or not a checkpoint."""


def codes_checksum(item_codes: torch.Tensor, codebook_sizes) -> str:
    """sha256 of the semantic-ID table (num_items, L) int64 and the codebook shape: what the
    model's input and output vocabulary depend on (another tokenizer gives another checksum)."""
    codes = torch.as_tensor(item_codes).detach().cpu().to(torch.int64).contiguous()
    h = hashlib.sha256()
    h.update(repr((tuple(codes.shape), tuple(int(k) for k in codebook_sizes))).encode())
    h.update(codes.numpy().astype("<i8").tobytes())
    return h.hexdigest()


def rng_state() -> dict:
    """Every global RNG a training step may draw from."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write `state` (a dict of tensors / plain data) to `path` atomically (see the module)."""
    path = os.path.abspath(os.fspath(path))
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    for stale in glob.glob(os.path.join(folder, f".{name}.tmp-*")):  # left by a killed writer
        os.unlink(stale)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(folder)  # the rename is durable once the folder entry is on disk


def _listed_in_manifest(path: str) -> bool:
    """Whether the result-folder manifest beside `path` lists it. A checkpoint that training
    wrote by itself into a result folder (say `--out`, beside a published tokenizer) is not
    listed and is checked on its own (it was renamed into place whole)."""
    folder, name = os.path.split(os.path.abspath(path))
    try:
        with open(os.path.join(folder, MANIFEST)) as f:
            return name in json.load(f).get("files", {})
    except (OSError, ValueError, AttributeError):
        return False


def checkpoint_info(path: str | os.PathLike) -> dict:
    """The plain fields of checkpoint `path` (step, histories, train_config, ...) without reading
    its tensors (memory-mapped: cheap for a checkpoint of any size). No compatibility checks:
    a resume loads the file again through load_checkpoint. Raises FileNotFoundError,
    IncompleteCheckpoint."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # a file torch cannot map (not its zip format): read it whole
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise IncompleteCheckpoint(f"checkpoint {path} is incomplete or corrupted: "
                                       f"{type(exc).__name__}: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise IncompleteCheckpoint(f"{path} is not an onerec training checkpoint")
    return {k: v for k, v in state.items()
            if k not in ("model", "optimizer", "scheduler", "data", "rng")}


def load_checkpoint(path: str | os.PathLike, *, model_config: dict | None = None,
                    tokenizer_checksum: str | None = None) -> dict:
    """The state saved by `save_checkpoint`, after checking it is complete and, when given,
    that it was trained with the same model config (OneRecConfig.to_dict()) and semantic-ID
    table (`codes_checksum`). Raises FileNotFoundError, IncompleteCheckpoint, CheckpointError."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if _listed_in_manifest(path):  # published by a ResultFolder: its sha256 must match too
        try:
            verify_result_file(path)
        except IncompleteResultFolder as exc:
            raise IncompleteCheckpoint(f"checkpoint {path}: {exc}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated zip, garbage, not a torch file
        raise IncompleteCheckpoint(f"checkpoint {path} is incomplete or corrupted (an "
                                   f"interrupted copy?): {type(exc).__name__}: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise IncompleteCheckpoint(f"{path} is not an onerec training checkpoint")
    if state.get("format_version") != FORMAT_VERSION:
        raise IncompleteCheckpoint(f"checkpoint {path} has format version "
                                   f"{state.get('format_version')}, this code reads "
                                   f"{FORMAT_VERSION}")
    if model_config is not None and state["model_config"] != model_config:
        diff = sorted(k for k in set(model_config) | set(state["model_config"])
                      if model_config.get(k) != state["model_config"].get(k))
        raise CheckpointError(
            f"checkpoint {path} was trained with another model config (differs in {diff}: "
            + ", ".join(f"{k} {state['model_config'].get(k)!r} vs {model_config.get(k)!r}"
                        for k in diff[:4]) + "); use the same preset and data, or a new --out")
    if tokenizer_checksum is not None and state["tokenizer_checksum"] != tokenizer_checksum:
        raise CheckpointError(f"checkpoint {path} was trained with another tokenizer / "
                              f"semantic-ID table (checksum {state['tokenizer_checksum'][:12]}, "
                              f"this run {tokenizer_checksum[:12]}); retrain or use its tokenizer")
    return state

"""Input validation shared by the public ops: errors name the argument, what was expected and
what was given, so kernels never see unchecked shapes."""
from __future__ import annotations

from typing import Iterable, Sequence

import torch

LOW_PRECISION = (torch.float16, torch.bfloat16)
FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def check_tensor(
    op: str,
    name: str,
    t: object,
    *,
    ndim: int | None = None,
    dtypes: Iterable[torch.dtype] | None = None,
) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{op}: {name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if dtypes is not None:
        dtypes = tuple(dtypes)
        if t.dtype not in dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
            raise TypeError(f"{op}: {name} must have dtype in ({names}), got {t.dtype}")
    return t


def check_same(op: str, names: Sequence[str], tensors: Sequence[torch.Tensor], *,
               dtype: bool = True, device: bool = True) -> None:
    first_name, first = names[0], tensors[0]
    for name, t in zip(names[1:], tensors[1:]):
        if device and t.device != first.device:
            raise ValueError(f"{op}: {name} must be on the same device as {first_name} "
                             f"({first.device}), got {t.device}")
        if dtype and t.dtype != first.dtype:
            raise TypeError(f"{op}: {name} must have the same dtype as {first_name} "
                            f"({first.dtype}), got {t.dtype}")


def check_dim(op: str, name: str, t: torch.Tensor, dim: int, expected: int, what: str) -> None:
    if t.shape[dim] != expected:
        raise ValueError(f"{op}: {name}.shape[{dim}] ({what}) must be {expected}, got "
                         f"{t.shape[dim]} (shape {tuple(t.shape)})")


def check_positive(op: str, name: str, value: int, what: str) -> None:
    if value < 1:
        raise ValueError(f"{op}: {what} ({name}) must be >= 1, got {value}")

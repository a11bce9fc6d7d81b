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


FP32_MAX = float(torch.finfo(torch.float32).max)


def check_distance_range(op: str, names: Sequence[str], tensors: Sequence[torch.Tensor],
                         growth: float, what: str) -> None:
    """Refuse inputs whose squared distances would overflow float32, the same way in every
    backend (instead of inf inertia from one, all-zero codes from another, an overflow error
    from a third).

    With m the largest |value| of `tensors` (NaN ignored: NaN rows keep their documented
    behaviour), the op's largest float32 quantity is bounded by growth * m^2, `growth` being
    the op's own factor (e.g. 4 * N * D for a sum over N of ||x - c||^2 in D dimensions). Infinite
    values are refused too. CPU tensors only: on CUDA the check would cost a host sync per call,
    so the public ops document the unchecked (degenerate) result there instead.
    """
    if tensors[0].device.type != "cpu" or torch.compiler.is_compiling():
        return  # (traced: values unknown; the eager call checks)
    m = 0.0
    for t in tensors:
        if t.numel():
            top = float(torch.linalg.vector_norm(t.detach(), ord=float("inf")))  # max |value|
            if top != top:  # NaN somewhere: the max over the non-NaN entries
                t = t.detach()
                top = float(torch.where(torch.isnan(t), 0, t.abs()).amax())
            m = max(m, top)
    if m == float("inf"):
        raise ValueError(f"{op}: {' / '.join(names)} hold an infinite value")
    limit = (FP32_MAX / growth) ** 0.5
    if m > limit:
        raise ValueError(f"{op}: {' / '.join(names)} hold values up to {m:.3g} in magnitude; "
                         f"{what} then overflow float32 (the bound for these shapes is "
                         f"{limit:.3g}): scale the inputs down")

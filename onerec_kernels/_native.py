"""Loading of the compiled extension `onerec_kernels._C`.

The package imports and runs (PyTorch and Triton paths) without it: the library is loaded inside
try/except, and a native-only feature asks `require()` which raises a message saying how to build.
"""
from __future__ import annotations

import torch

_BUILD_HINT = (
    "build it from the repository root with `pip install --no-build-isolation -e .` "
    "(torch must already be installed; ONEREC_NO_NATIVE must not be set; a CUDA toolkit and a "
    "CUDA build of torch are needed for the CUDA kernels)"
)

try:  # importing _C runs the TORCH_LIBRARY registrations of the onerec_C namespace
    from onerec_kernels import _C  # noqa: F401

    LOAD_ERROR: str | None = None
except ImportError as exc:  # not built, or built against another torch
    _C = None
    LOAD_ERROR = f"{type(exc).__name__}: {exc}"


def available() -> bool:
    """True when the native extension is loaded."""
    return _C is not None


def _native_kernels(dispatch_key: str) -> frozenset[str]:
    if _C is None:
        return frozenset()
    names = torch._C._dispatch_get_registrations_for_dispatch_key(dispatch_key)
    return frozenset(n.split("::", 1)[1] for n in names if n.startswith("onerec_C::"))


# Build facts, read once at load: a plain set lookup is free on the hot path and constant for
# torch.compile (querying the dispatcher inside a traced function would break the graph).
_KERNELS = {key: _native_kernels(key) for key in ("CPU", "CUDA")}


def has_kernel(op: str, dispatch_key: str) -> bool:
    """True when the native op `onerec_C::<op>` has a kernel for `dispatch_key` ("CPU", "CUDA")."""
    return op in _KERNELS.get(dispatch_key, ())


def require(feature: str, op: str | None = None, dispatch_key: str = "CPU") -> None:
    """Raise RuntimeError unless the native extension (and, if given, `op` for `dispatch_key`) exists."""
    if _C is None:
        raise RuntimeError(
            f"{feature} needs the native extension onerec_kernels._C, which is not available "
            f"({LOAD_ERROR}); {_BUILD_HINT}"
        )
    if op is not None and not has_kernel(op, dispatch_key):
        raise RuntimeError(
            f"{feature} needs onerec_C::{op} for {dispatch_key}, which this build of "
            f"onerec_kernels._C does not contain; {_BUILD_HINT}"
        )

"""The one place that decides which implementation of an op runs.

Every public op takes ``backend: str | None``:

- ``"torch"``: the plain PyTorch reference (the oracle of the tests; runs anywhere).
- ``"triton"``: Triton kernels. On CUDA tensors always; on CPU tensors only when
  ``TRITON_INTERPRET=1`` was set before triton was imported (how CI tests the kernels).
- ``"cpp"``: the native multi-threaded CPU kernels (needs the compiled extension).
- ``"cuda"``: the native CUDA kernels (needs the extension built with CUDA).

``None`` picks the fastest available for the tensors' device (each op lists its order). The
environment variable ``ONEREC_BACKEND`` overrides that default: a comma-separated preference list
(e.g. ``triton`` or ``cuda,triton``); each op takes the first entry it implements, and errors if
that entry is not available for the tensors' device. Entries an op does not implement are
skipped, so one variable can steer ops with different backend sets. A backend that was asked for
and is not available is always an error, never a silent fallback.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Sequence

import torch

from . import _native

BACKENDS = ("torch", "triton", "cpp", "cuda")
ENV_VAR = "ONEREC_BACKEND"


def triton_interpret() -> bool:
    """True when Triton runs in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# An install fact, looked up once (a filesystem search) rather than on every op call.
_TRITON_FOUND = importlib.util.find_spec("triton") is not None


def _has_triton() -> bool:
    return _TRITON_FOUND


def unavailable_reason(backend: str, device: torch.device, native_op: str | None = None) -> str | None:
    """Why `backend` cannot run on `device` (None when it can)."""
    if backend == "torch":
        return None
    if backend == "triton":
        if not _has_triton():
            return "triton is not installed (pip install 'onerec-kernels[triton]')"
        if device.type == "cuda":
            return None if torch.cuda.is_available() else "no CUDA device is available"
        if device.type == "cpu" and triton_interpret():
            return None
        return (f"Triton kernels need CUDA tensors; for {device.type} tensors set "
                "TRITON_INTERPRET=1 before importing triton (CPU interpreter, slow, for tests)")
    if backend == "cpp":
        if device.type != "cpu":
            return f"the cpp backend runs on CPU tensors, got {device.type} tensors"
        if not _native.available():
            return f"the native extension is not built ({_native.LOAD_ERROR}); {_native._BUILD_HINT}"
        if native_op is not None and not _native.has_kernel(native_op, "CPU"):
            return f"this build has no CPU kernel for onerec_C::{native_op}; {_native._BUILD_HINT}"
        return None
    if backend == "cuda":
        if device.type != "cuda":
            return f"the cuda backend runs on CUDA tensors, got {device.type} tensors"
        if not torch.cuda.is_available():
            return "no CUDA device is available"
        if not _native.available():
            return f"the native extension is not built ({_native.LOAD_ERROR}); {_native._BUILD_HINT}"
        if native_op is not None and not _native.has_kernel(native_op, "CUDA"):
            return (f"this build has no CUDA kernel for onerec_C::{native_op} (built without a "
                    f"CUDA toolkit or CUDA torch?); {_native._BUILD_HINT}")
        return None
    return f"unknown backend {backend!r}; expected one of {BACKENDS}"


def resolve(
    op: str,
    backend: str | None,
    device: torch.device,
    supported: Sequence[str],
    default_order: dict[str, Sequence[str]],
    native_op: str | None = None,
) -> str:
    """Return the backend `op` runs with on `device`.

    supported: the backends `op` implements. default_order: per device type ("cuda", "cpu"), the
    preference order used when nothing was asked for; the first available entry wins ("torch"
    should close every list). native_op: the onerec_C op behind "cpp"/"cuda", to check the build.
    """
    if backend is not None:
        if not isinstance(backend, str):
            raise TypeError(f"{op}: backend must be a str or None, got {type(backend).__name__}")
        if backend not in supported:
            raise ValueError(f"{op}: backend must be one of {tuple(supported)} or None, got {backend!r}")
        reason = unavailable_reason(backend, device, native_op)
        if reason is not None:
            raise RuntimeError(f"{op}: backend {backend!r} is not available: {reason}")
        return backend

    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        prefs = [b.strip() for b in env.split(",") if b.strip()]
        bad = [b for b in prefs if b not in BACKENDS]
        if bad:
            raise ValueError(f"{ENV_VAR}={env!r}: unknown backend(s) {bad}; expected {BACKENDS}")
        for b in prefs:
            if b in supported:
                reason = unavailable_reason(b, device, native_op)
                if reason is not None:
                    raise RuntimeError(f"{op}: backend {b!r} (from {ENV_VAR}={env!r}) is not "
                                       f"available: {reason}")
                return b

    order = default_order.get(device.type, ("torch",))
    for b in order:
        if b in supported and unavailable_reason(b, device, native_op) is None:
            return b
    return "torch"

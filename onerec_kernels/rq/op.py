"""`rq_assign`: public function, custom-op registration, fake (meta) kernels and autograd.

Layering (FlashAttention's pattern): one private custom op per raw kernel
(`onerec::rq_assign_triton` here, `onerec_C::rq_assign` in C++), each with a fake kernel so
torch.compile can trace it and an autograd formula for the residual; one public function that
validates, picks the backend and dispatches.
"""
from __future__ import annotations

import torch

from .. import _backend, _native
from .._checks import (FLOATS, check_dim, check_distance_range, check_positive, check_same,
                       check_tensor)
from .reference import rq_assign_reference

OP = "rq_assign"
SUPPORTED = ("torch", "triton", "cpp")
DEFAULT_ORDER = {"cuda": ("triton", "torch"), "cpu": ("cpp", "torch")}


@torch.library.custom_op("onerec::rq_assign_triton", mutates_args=())
def _rq_assign_triton_op(x: torch.Tensor, codebooks: torch.Tensor,
                         return_residual: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from .triton_kernels import rq_assign_triton  # triton is imported on first use only

    codes, residual = rq_assign_triton(x, codebooks, return_residual)
    if residual is None:
        residual = x.new_empty((0, x.shape[1]))
    return codes, residual


def _fake_outputs(x, codebooks, return_residual):
    n, d = x.shape
    codes = x.new_empty((n, codebooks.shape[0]), dtype=torch.int64)
    return codes, x.new_empty((n if return_residual else 0, d))


_rq_assign_triton_op.register_fake(_fake_outputs)


def _setup_context(ctx, inputs, output):
    x, codebooks = inputs[0], inputs[1]
    codes, _ = output
    ctx.save_for_backward(codes)
    ctx.cb_shape = codebooks.shape
    ctx.cb_dtype = codebooks.dtype
    ctx.x_dtype = x.dtype


def _backward(ctx, grad_codes, grad_residual):
    """residual = x - sum_l codebooks[l, codes[:, l]]: identity for x, a scatter of -grad for
    the chosen codes (straight-through: the argmin itself has no gradient)."""
    (codes,) = ctx.saved_tensors
    num_levels, k, d = ctx.cb_shape
    n = codes.shape[0]
    if grad_residual is None or grad_residual.shape[0] != n:  # residual was not returned
        return None, None, None
    grad_x = grad_residual.to(ctx.x_dtype)
    flat = (codes + torch.arange(num_levels, device=codes.device) * k).reshape(-1)  # (N*L,)
    src = grad_residual.float().unsqueeze(1).expand(n, num_levels, d).reshape(-1, d)
    grad_cb = torch.zeros((num_levels * k, d), dtype=torch.float32, device=codes.device)
    grad_cb.index_add_(0, flat, -src)
    return grad_x, grad_cb.view(num_levels, k, d).to(ctx.cb_dtype), None


_rq_assign_triton_op.register_autograd(_backward, setup_context=_setup_context)

if _native.available():
    torch.library.register_fake("onerec_C::rq_assign")(_fake_outputs)
    torch.library.register_autograd("onerec_C::rq_assign", _backward,
                                    setup_context=_setup_context)


def _validate(x, codebooks) -> None:
    check_tensor(OP, "x", x, ndim=2, dtypes=FLOATS)
    check_tensor(OP, "codebooks", codebooks, ndim=3, dtypes=FLOATS)
    check_same(OP, ("x", "codebooks"), (x, codebooks))
    check_dim(OP, "codebooks", codebooks, 2, x.shape[1], "D, the embedding size of x")
    check_positive(OP, "x.shape[1]", x.shape[1], "D")
    check_positive(OP, "codebooks.shape[0]", codebooks.shape[0], "L, the number of levels")
    check_positive(OP, "codebooks.shape[1]", codebooks.shape[1], "K, the codebook size")


def rq_assign(x: torch.Tensor, codebooks: torch.Tensor, *, return_residual: bool = False,
              backend: str | None = None):
    """Greedy residual quantization of `x` against per-level codebooks (RQ-KMeans assignment).

    Args:
        x: (N, D) float32 / float16 / bfloat16 embeddings; N may be 0.
        codebooks: (L, K, D), same dtype and device as x; L, K, D >= 1.
        return_residual: also return the final residual.
        backend: "torch" | "triton" | "cpp" | None (see onerec_kernels._backend; None: Triton on
            CUDA, the C++ kernel on CPU, overridable with ONEREC_BACKEND).

    Semantics: r = x; for l in 0..L-1: codes[:, l] = argmin_k ||r - codebooks[l, k]||^2 (ties:
    the lowest k; rows whose distances are all NaN get code 0), r = r - codebooks[l, codes[:, l]].
    fp16/bf16 inputs accumulate in fp32; the residual is carried in fp32 between levels. Codes
    from different backends may differ only at genuine near-ties (rounding of the distances).

    Overflow: values so large that the squared distances overflow float32 (max |value| above
    sqrt(FLT_MAX / (4 D (L + 1)^2))), or infinite values, raise ValueError in every backend for
    CPU tensors; on CUDA tensors that check is skipped (it would cost a host sync per call) and
    such inputs give a degenerate answer (all codes 0).

    Returns:
        codes: (N, L) int64 in [0, K); and, when return_residual, residual: (N, D) in x's dtype,
        differentiable with respect to x and codebooks (straight-through for the argmin).
    """
    _validate(x, codebooks)
    backend = _backend.resolve(OP, backend, x.device, SUPPORTED, DEFAULT_ORDER, native_op="rq_assign")
    n, d = x.shape
    # The residual before level l is at most (l + 1) m per entry, so every score and distance is
    # within D ((L + 1) m)^2 up to a small factor.
    check_distance_range(OP, ("x", "codebooks"), (x, codebooks),
                         4.0 * d * (codebooks.shape[0] + 1) ** 2, "the squared distances")
    if n == 0:
        codes = torch.empty((0, codebooks.shape[0]), dtype=torch.int64, device=x.device)
        return (codes, x.new_empty((0, d))) if return_residual else codes
    if backend == "torch":
        codes, residual = rq_assign_reference(x, codebooks)
    else:
        if x.stride(1) != 1:
            x = x.contiguous()
        codebooks = codebooks.contiguous()
        if backend == "triton":
            codes, residual = _rq_assign_triton_op(x, codebooks, return_residual)
        else:
            codes, residual = torch.ops.onerec_C.rq_assign(x, codebooks, return_residual)
    return (codes, residual) if return_residual else codes

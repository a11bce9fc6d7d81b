"""`kmeans_step`: public function, custom-op registration and fake (meta) kernels.

Same layering as `rq_assign`: a private custom op per raw kernel (`onerec::kmeans_step_triton`,
`onerec_C::kmeans_step` in C++), each with a fake kernel so torch.compile can trace it; one
public function that validates, picks the backend and dispatches. No autograd: a Lloyd step is
not differentiated (assignments are discrete, the sums are statistics).
"""
from __future__ import annotations

import torch

from .. import _backend, _native
from .._checks import (FLOATS, check_dim, check_distance_range, check_positive, check_same,
                       check_tensor)
from .reference import kmeans_step_reference

OP = "kmeans_step"
SUPPORTED = ("torch", "triton", "cpp")
DEFAULT_ORDER = {"cuda": ("triton", "torch"), "cpu": ("cpp", "torch")}


def _fake_outputs(x, centroids):
    n, d = x.shape
    k = centroids.shape[0]
    return (x.new_empty((n,), dtype=torch.int64), x.new_empty((k, d), dtype=torch.float32),
            x.new_empty((k,), dtype=torch.int64), x.new_empty((), dtype=torch.float32))


@torch.library.custom_op("onerec::kmeans_step_triton", mutates_args=())
def _kmeans_step_triton_op(x: torch.Tensor, centroids: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from .triton_kernels import kmeans_step_triton  # triton is imported on first use only

    return kmeans_step_triton(x, centroids)


_kmeans_step_triton_op.register_fake(_fake_outputs)

if _native.available():
    torch.library.register_fake("onerec_C::kmeans_step")(_fake_outputs)


def _validate(x, centroids) -> None:
    check_tensor(OP, "x", x, ndim=2, dtypes=FLOATS)
    check_tensor(OP, "centroids", centroids, ndim=2, dtypes=FLOATS)
    check_same(OP, ("x", "centroids"), (x, centroids))
    check_dim(OP, "centroids", centroids, 1, x.shape[1], "D, the embedding size of x")
    check_positive(OP, "x.shape[1]", x.shape[1], "D")
    check_positive(OP, "centroids.shape[0]", centroids.shape[0], "K, the number of centroids")
    if x.shape[0] >= 2 ** 31:
        raise ValueError(f"{OP}: x.shape[0] (N) must be < 2^31 (int32 counts), got {x.shape[0]}")


def kmeans_step(x: torch.Tensor, centroids: torch.Tensor, *, backend: str | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Lloyd step of k-means, fused: nearest-centroid assignment and the per-centroid
    statistics of the update, accumulated in the same pass over x.

    Args:
        x: (N, D) float32 / float16 / bfloat16 points; N may be 0.
        centroids: (K, D), same dtype and device as x; K, D >= 1. K > N is allowed (some
            centroids then get no point).
        backend: "torch" | "triton" | "cpp" | None (None: Triton on CUDA, the C++ kernel on CPU,
            overridable with ONEREC_BACKEND; see onerec_kernels._backend).

    Semantics: a_i = argmin_k ||x_i - centroids[k]||^2, exactly `rq_assign` with one level
    (norm trick ||c||^2 - 2 x.c; ties: the lowest k; a row whose scores are all NaN gets 0 and
    its NaNs flow into that centroid's sum). fp16/bf16 inputs are products in their precision
    with fp32 accumulation (fp32 inputs use TF32 on the GPU when torch allows it); assignments
    from different backends may differ only at genuine near-ties.

    Returns:
        assignments: (N,) int64 in [0, K).
        sums: (K, D) float32, sums[k] = sum of the x_i with a_i == k (zeros for empty clusters).
        counts: (K,) int64, how many rows each centroid got (sums to N).
        inertia: 0-d float32, sum_i ||x_i - centroids[a_i]||^2 computed from the differences
            (not the norm trick), so it is >= 0 and accurate near convergence.
        The next centroids are sums / counts where counts > 0. No output requires grad.
        Overflow: values so large that the squared distances or the inertia overflow float32
        (max |value| above sqrt(FLT_MAX / (4 N D))), or infinite values, raise ValueError in
        every backend for CPU tensors. On CUDA tensors that check is skipped (it would cost a
        host sync per call) and such inputs give a degenerate answer (inertia inf, codes 0);
        RQKMeansTokenizer.fit checks its inertia and raises there.
        Determinism: the torch and cpp backends are deterministic (cpp for a given
        torch.get_num_threads()); the Triton kernel accumulates sums and inertia with fp32
        atomics, so their last bits vary between runs.
    """
    _validate(x, centroids)
    backend = _backend.resolve(OP, backend, x.device, SUPPORTED, DEFAULT_ORDER,
                               native_op="kmeans_step")
    # Not differentiable: without this, the custom ops' outputs of a requires_grad input would
    # claim requires_grad (and fail in backward) while the reference's do not.
    x, centroids = x.detach(), centroids.detach()
    n, d = x.shape
    k = centroids.shape[0]
    # inertia: a sum over N of ||x - c||^2 <= D (2m)^2
    check_distance_range(OP, ("x", "centroids"), (x, centroids), 4.0 * max(n, 1) * d,
                         "the squared distances and their sum (the inertia)")
    if n == 0:
        return (torch.empty((0,), dtype=torch.int64, device=x.device),
                torch.zeros((k, d), dtype=torch.float32, device=x.device),
                torch.zeros((k,), dtype=torch.int64, device=x.device),
                torch.zeros((), dtype=torch.float32, device=x.device))
    if backend == "torch":
        return kmeans_step_reference(x, centroids)
    if x.stride(1) != 1:
        x = x.contiguous()
    centroids = centroids.contiguous()
    if backend == "triton":
        return _kmeans_step_triton_op(x, centroids)
    return torch.ops.onerec_C.kmeans_step(x, centroids)

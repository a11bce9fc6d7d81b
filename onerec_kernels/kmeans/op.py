"""`kmeans_step` and `grouped_kmeans`: public functions, custom-op registration and fake (meta)
kernels.

Same layering as `rq_assign`: a private custom op per raw kernel (`onerec::kmeans_step_triton`,
`onerec::grouped_kmeans_triton`, `onerec_C::kmeans_step` and `onerec_C::grouped_kmeans` in
C++), each with a fake kernel so torch.compile can trace it; one
public function that validates, picks the backend and dispatches. No autograd: a Lloyd step is
not differentiated (assignments are discrete, the sums are statistics).
"""
from __future__ import annotations

import torch

from .. import _backend, _native
from .._checks import (FLOATS, check_dim, check_distance_range, check_positive, check_same,
                       check_tensor)
from .reference import grouped_kmeans_reference, kmeans_step_reference

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

def _fake_grouped(x, centroids, x_offsets, centroid_offsets, iters, *hint):
    return (x.new_empty((x.shape[0],), dtype=torch.int64),
            centroids.new_empty(centroids.shape, dtype=torch.float32))


@torch.library.custom_op("onerec::grouped_kmeans_triton", mutates_args=())
def _grouped_kmeans_triton_op(x: torch.Tensor, centroids: torch.Tensor, x_offsets: torch.Tensor,
                              centroid_offsets: torch.Tensor, iters: int, max_group_k: int
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    from .triton_kernels import grouped_kmeans_triton  # triton is imported on first use only

    return grouped_kmeans_triton(x, centroids, x_offsets, centroid_offsets, iters, max_group_k)


_grouped_kmeans_triton_op.register_fake(_fake_grouped)


if _native.available():
    torch.library.register_fake("onerec_C::kmeans_step")(_fake_outputs)
    if _native.has_kernel("grouped_kmeans", "CPU"):
        torch.library.register_fake("onerec_C::grouped_kmeans")(_fake_grouped)


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


GROUPED_OP = "grouped_kmeans"
GROUPED_SUPPORTED = ("torch", "triton", "cpp")
GROUPED_DEFAULT_ORDER = {"cpu": ("cpp", "torch"), "cuda": ("triton", "torch")}


def _validate_grouped(x, centroids, x_offsets, centroid_offsets, iters) -> torch.Tensor:
    """Check the inputs; returns the offsets on the host, (2, G + 1) int64 (x_offsets, then
    centroid_offsets): the one host transfer of the call."""
    op = GROUPED_OP
    check_tensor(op, "x", x, ndim=2, dtypes=FLOATS)
    check_tensor(op, "centroids", centroids, ndim=2, dtypes=FLOATS)
    check_same(op, ("x", "centroids"), (x, centroids))
    check_dim(op, "centroids", centroids, 1, x.shape[1], "D, the embedding size of x")
    check_positive(op, "x.shape[1]", x.shape[1], "D")
    for name, t in (("x_offsets", x_offsets), ("centroid_offsets", centroid_offsets)):
        check_tensor(op, name, t, ndim=1, dtypes=(torch.int32, torch.int64))
        check_same(op, ("x", name), (x, t), dtype=False)
        check_positive(op, f"{name}.shape[0]", t.shape[0], "G + 1, one more than the groups")
    check_dim(op, "centroid_offsets", centroid_offsets, 0, x_offsets.shape[0],
              "G + 1, as in x_offsets")
    if not isinstance(iters, int) or isinstance(iters, bool):
        raise TypeError(f"{op}: iters must be an int, got {type(iters).__name__}")
    check_positive(op, "iters", iters, "the number of Lloyd steps")
    # Offset values: one host transfer for both (a sync on CUDA, where the torch path needs the
    # group sizes on the host anyway), and one check on the fast path.
    both = torch.stack([x_offsets.long(), centroid_offsets.long()]).cpu()
    steps = both[:, 1:] - both[:, :-1]
    ends = both[:, [0, -1]].tolist()
    if (ends == [[0, x.shape[0]], [0, centroids.shape[0]]]
            and not bool(((steps < 0).any(1) | ((steps[0] > 0) & (steps[1] == 0)).any()).any())):
        return both
    for name, o, total in (("x_offsets", both[0], x.shape[0]),
                           ("centroid_offsets", both[1], centroids.shape[0])):
        if int(o[0]) != 0 or int(o[-1]) != total or bool((o[1:] < o[:-1]).any()):
            raise ValueError(f"{op}: {name} must start at 0, not decrease and end at {total}, "
                             f"got {o.tolist() if o.numel() <= 12 else o}")
    g = int(torch.nonzero((steps[0] > 0) & (steps[1] == 0))[0])
    raise ValueError(f"{op}: group {g} has {int(steps[0, g])} rows of x but no centroid "
                     "(centroid_offsets must give every group with rows at least one)")


def grouped_kmeans(x: torch.Tensor, centroids: torch.Tensor, x_offsets: torch.Tensor,
                   centroid_offsets: torch.Tensor, *, iters: int, backend: str | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means of many small independent problems in one call: `iters` Lloyd steps per group,
    each row compared only with its own group's centroids.

    Args:
        x: (N, D) float32 / float16 / bfloat16 points, grouped: group g owns rows
            x_offsets[g]:x_offsets[g+1]. N may be 0.
        centroids: (K, D), same dtype and device; group g's initial centroids are rows
            centroid_offsets[g]:centroid_offsets[g+1] (at least one wherever the group has
            rows; a group may have more centroids than rows).
        x_offsets, centroid_offsets: (G + 1,) int32/int64 on x's device, starting at 0,
            non-decreasing, ending at N and K.
        iters: Lloyd steps (>= 1).
        backend: "torch" | "triton" | "cpp" | None (None: the C++ kernel on CPU, the Triton
            kernel on CUDA; ONEREC_BACKEND can override).

    Semantics, per group: a_i = argmin_j ||x_i - c_j||^2 over the group's centroids, from exact
    differences in float32 summed in a fixed lane order (csrc/core/kmeans.h) that every backend
    shares (the Triton kernel with FMA contraction off), so their distances are bit-identical;
    ties go to the lowest j; NaN never wins, and a row with no finite distance gets the group's
    first centroid. Then every centroid that got rows becomes their mean (summed in float64,
    rounded to float32 once); the others keep their value. A group whose step repeats the
    previous assignments has converged and stops (the answer is that of all `iters` steps).
    fp16/bf16 inputs are widened to float32 first.

    Returns:
        assignments: (N,) int64 global centroid indices in [0, K), from the last step.
        centroids: (K, D) float32, the means of those assignments (unassigned ones unchanged).
        No output requires grad.
        Determinism: "cpp" is deterministic for any thread count (each group is computed by one
        thread in a fixed order), and on CPU "cpp" and "torch" return identical tensors. The
        float64 sum of a centroid's column is exact, hence the same in any order, when
        rows x largest |value| / smallest nonzero |value| < 2^30 there; otherwise its last
        float64 bits depend on the order of the GPU paths' atomics (the torch path's index_add_
        unless torch.use_deterministic_algorithms is on, the Triton kernel's fp64 atomics),
        which moves the float32 mean by one ulp only when it lies that close to a rounding
        boundary (rare), and through it at most an exact tie of a later step. Otherwise the
        Triton kernel returns the reference's tensors exactly.
        Host syncs: one, the transfer of the offsets for their validation; the Triton path then
        runs every step on the device (2 launches per step, converged groups exit at once;
        the autotuner times the tile configs, with syncs, on the first call of each key: D,
        largest group's centroids and mean rows per group, bucketed).
        Range: the squared distances are fp32; values beyond ~sqrt(FLT_MAX / D) make them inf
        (then never the minimum, as above).
    Cost: O(sum_g N_g K_g D) per step, against O(N K D) for one kmeans_step over all groups.
    """
    host_offsets = _validate_grouped(x, centroids, x_offsets, centroid_offsets, iters)
    backend = _backend.resolve(GROUPED_OP, backend, x.device, GROUPED_SUPPORTED,
                               GROUPED_DEFAULT_ORDER, native_op="grouped_kmeans")
    x, centroids = x.detach(), centroids.detach()
    if backend == "torch":
        return grouped_kmeans_reference(x, centroids, x_offsets, centroid_offsets, iters)
    if backend == "triton":
        k_per_group = host_offsets[1, 1:] - host_offsets[1, :-1]
        max_group_k = int(k_per_group.max()) if k_per_group.numel() else 1
        return _grouped_kmeans_triton_op(x, centroids, x_offsets, centroid_offsets, iters,
                                         max(max_group_k, 1))
    return torch.ops.onerec_C.grouped_kmeans(x, centroids, x_offsets.long(),
                                             centroid_offsets.long(), iters)

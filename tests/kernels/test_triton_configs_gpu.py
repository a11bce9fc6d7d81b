"""Every tile config of every Triton kernel, forced once on the GPU, against an fp64 check.

The autotuner picks one config per shape, so a config that miscompiles (or reads out of bounds
on ragged tiles) could hide until some user's shape selects it. Here each config of each
operand family runs once on a shape with ragged N, K and D tiles: bf16 operands for the "fp16"
family (tensor cores; the CPU interpreter cannot test bf16), fp32 with TF32 on for "tf32", exact
fp32 for "fp32". GPU only: the interpreter runs a single config.
"""
import pytest
import torch

from onerec_kernels import _triton_tiles as tt
from onerec_kernels import kmeans_step_reference

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

# Rounding allowed in the choice of a code, relative to ||r||^2 + max ||c||^2 (the same scale as
# tests/kernels/test_rq.py): bf16 inputs are exact in fp32 products; TF32 rounds products.
RTOL = {"fp16": 3e-2, "tf32": 2e-3, "fp32": 2e-5}
DTYPE = {"fp16": torch.bfloat16, "tf32": torch.float32, "fp32": torch.float32}


def _cases(kernel):
    return [pytest.param(family, i, id=f"{family}-{i}")
            for family in tt.FAMILIES for i in range(len(tt.TILES[kernel][family]))]


def _forced(family, index, kernel):
    bn, bk, bd, warps, stages, flat = tt.TILES[kernel][family][index]
    return {"BLOCK_N": bn, "BLOCK_K": bk, "BLOCK_D": bd, "FLAT": flat, "num_warps": warps,
            "num_stages": stages}


def _nearest_within(x64, c64, chosen, rtol):
    """Each chosen centroid is the fp64-nearest up to rtol x scale; returns the exact fraction."""
    dist = torch.cdist(x64, c64).square()
    best = dist.min(dim=1).values
    got = dist.gather(1, chosen[:, None]).squeeze(1)
    scale = x64.square().sum(1) + c64.square().sum(1).max()
    assert ((got - best) <= rtol * scale + 1e-9).all(), (got - best).max().item()
    return (dist.argmin(1) == chosen).float().mean().item()


@pytest.fixture
def tf32_for(monkeypatch):
    def set_family(family):
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", family == "tf32")
    return set_family


@pytest.mark.parametrize("family,index", _cases("rq_assign"))
def test_rq_assign_every_config(family, index, tf32_for, seed):
    from onerec_kernels.rq.triton_kernels import rq_assign_triton

    tf32_for(family)
    dtype = DTYPE[family]
    x = torch.randn(333, 150, device="cuda").to(dtype)  # ragged in N, D and (below) K
    codebooks = (torch.randn(3, 300, 150, device="cuda")
                 * torch.tensor([1.0, 0.5, 0.25], device="cuda")[:, None, None]).to(dtype)
    codes, residual = rq_assign_triton(x, codebooks, True, config=_forced(family, index, "rq_assign"))
    r = x.double().cpu()
    cb = codebooks.double().cpu()
    codes = codes.cpu()
    exact = []
    for level in range(3):
        exact.append(_nearest_within(r, cb[level], codes[:, level], RTOL[family]))
        r = r - cb[level][codes[:, level]]
    assert min(exact) >= 0.9, exact
    torch.testing.assert_close(residual.double().cpu(), r, rtol=0,
                               atol=RTOL[family] * 10 * (x.abs().max().item() + 1))


@pytest.mark.parametrize("family,index", _cases("kmeans_step"))
def test_kmeans_step_every_config(family, index, tf32_for, seed):
    from onerec_kernels.kmeans.triton_kernels import kmeans_step_triton

    tf32_for(family)
    dtype = DTYPE[family]
    x = torch.randn(333, 150, device="cuda").to(dtype)
    c = torch.randn(300, 150, device="cuda").to(dtype)
    a, sums, counts, inertia = kmeans_step_triton(x, c, config=_forced(family, index, "kmeans_step"))
    x64, c64 = x.double().cpu(), c.double().cpu()
    assert _nearest_within(x64, c64, a.cpu(), RTOL[family]) >= 0.9
    # sums, counts and inertia follow from the kernel's own assignments
    want_sums = torch.zeros_like(c64).index_add_(0, a.cpu(), x64)
    torch.testing.assert_close(sums.double().cpu(), want_sums, rtol=1e-4, atol=1e-3)
    assert torch.equal(counts.cpu(), torch.bincount(a.cpu(), minlength=300).to(counts.dtype))
    want_inertia = (x64 - c64[a.cpu()]).square().sum()
    torch.testing.assert_close(inertia.double().cpu().reshape(()), want_inertia, rtol=1e-3,
                               atol=1e-3)
    if family == "fp32":  # exact fp32: the reference's assignments, ties aside
        ref_a = kmeans_step_reference(x, c)[0]
        assert (a == ref_a).float().mean().item() >= 0.99

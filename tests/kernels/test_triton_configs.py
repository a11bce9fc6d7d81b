"""Every autotune config of the nearest-code Triton kernels, forced once on the GPU, against
the reference: a config the autotuner could pick must not miscompile (the tests' default run
meets only the first config of each family, ONEREC_TRITON_AUTOTUNE=0). All three operand
families: bf16 (tensor cores), TF32 (fp32 operands with torch's TF32 switch on) and exact fp32.
Two shapes: "even", K and D multiples of every tile (the mask-free EVEN path production shapes
take) with ragged rows, and "ragged", N, K and D all off the tiles (the masked path). Each config
runs with pointer loads of the codebook, the quick bf16 ones with TMA descriptors too."""
from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


FAMILY_DTYPE = {"fp16": torch.bfloat16, "tf32": torch.float32, "fp32": torch.float32}
SHAPES = {"even": (777, 192, 1024), "ragged": (333, 150, 300)}  # (N, D, K)


def _configs(kernel):
    """Every config with pointer loads of the codebook (the default), and the "quick" bf16 ones
    with TMA descriptors too (opt-in ONEREC_TRITON_TMA=1 until verified here; never for the
    exact-fp32 FMA dot on the GPU), each on both shapes."""
    from onerec_kernels._triton_tiles import family_configs

    out = []
    for family in FAMILY_DTYPE:
        for loads, mode in (("pointers", "1"), ("tma", "quick"))[:2 if family == "fp16" else 1]:
            for cfg in family_configs(kernel, family, mode):
                kw = cfg.kwargs
                name = (f"{family}-{kw['BLOCK_N']}x{kw['BLOCK_K']}x{kw['BLOCK_D']}-"
                        f"w{cfg.num_warps}-s{cfg.num_stages}-"
                        f"{'flat' if kw['FLAT'] else 'nested'}-{loads}")
                for shape in SHAPES:
                    out.append(pytest.param(cfg, family, loads, shape, id=f"{name}-{shape}"))
    return out


@pytest.fixture
def operands(monkeypatch, set_tf32):
    """Set up one case: TMA or pointer loads, torch's TF32 switch for the family; returns the
    operand dtype."""
    def setup(family, loads):
        monkeypatch.setenv("ONEREC_TRITON_TMA", "1" if loads == "tma" else "0")
        set_tf32(family == "tf32")
        return FAMILY_DTYPE[family]
    return setup


def _near_best(x, codebook, chosen, rtol):
    """fp64 check: each chosen code is the nearest up to rounding of the distances."""
    d2 = torch.cdist(x.double(), codebook.double()).square()
    best = d2.min(dim=1).values
    scale = x.double().square().sum(1) + codebook.double().square().sum(1).max()
    excess = d2.gather(1, chosen[:, None]).squeeze(1) - best
    assert bool((excess <= rtol * scale).all()), excess.max().item()
    return (d2.argmin(dim=1) == chosen).float().mean().item()


RTOL = {"fp16": 3e-2, "tf32": 2e-3, "fp32": 2e-5}
L = 3


@pytest.mark.parametrize("cfg,family,loads,shape", _configs("rq_assign"))
def test_every_rq_assign_config(cfg, family, loads, shape, operands):
    from onerec_kernels.rq.triton_kernels import rq_assign_triton

    dtype = operands(family, loads)
    N, D, K = SHAPES[shape]

    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(N, D, device="cuda", generator=g).to(dtype)
    scales = torch.tensor([0.5 ** level for level in range(L)], device="cuda")[:, None, None]
    codebooks = (torch.randn(L, K, D, device="cuda", generator=g) * scales).to(dtype)
    codes, residual = rq_assign_triton(x, codebooks, True, config=cfg)
    r = x.double()
    exact = 0.0
    for level in range(L):
        exact += _near_best(r, codebooks[level], codes[:, level], RTOL[family]) / L
        r = r - codebooks[level].double()[codes[:, level]]
    assert exact > 0.9, exact
    want = x.float()
    for level in range(L):
        want = want - codebooks[level].float()[codes[:, level]]
    assert torch.equal(residual, want.to(dtype))  # the kernel's fp32 walk, bit for bit


@pytest.mark.parametrize("cfg,family,loads,shape", _configs("kmeans_step"))
def test_every_kmeans_step_config(cfg, family, loads, shape, operands):
    from onerec_kernels.kmeans.triton_kernels import kmeans_step_triton

    dtype = operands(family, loads)
    N, D, K = SHAPES[shape]

    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(N, D, device="cuda", generator=g).to(dtype)
    centroids = torch.randn(K, D, device="cuda", generator=g).to(dtype)
    assign, sums, counts, inertia = kmeans_step_triton(x, centroids, config=cfg)
    assert _near_best(x, centroids, assign, RTOL[family]) > 0.9
    assert torch.equal(counts, torch.bincount(assign, minlength=K))
    want_sums = torch.zeros(K, D, device="cuda", dtype=torch.float64).index_add_(
        0, assign, x.double())
    torch.testing.assert_close(sums.double(), want_sums, rtol=1e-5, atol=1e-3)
    want_inertia = (x.double() - centroids.double()[assign]).square().sum()
    torch.testing.assert_close(inertia.double(), want_inertia, rtol=1e-4, atol=1e-2)

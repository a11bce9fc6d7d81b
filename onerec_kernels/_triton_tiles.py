"""Tile configs of the Triton kernels (data, one place), launch helpers, and the registry that
scripts/triton_aot.py compiles ahead of time.

Operand families. The tiled dot product of the nearest-code kernels runs on different hardware
depending on its operands, so each family has its own tile list:

- "fp16": fp16 / bf16 operands -> tensor cores (wgmma on sm_90), fp32 accumulation.
- "tf32": fp32 operands with torch.backends.cuda.matmul.allow_tf32 = True -> tensor cores in
  TF32 (10-bit mantissa products: assignments may then differ from the fp32 reference at
  near-ties). Operands are twice as wide as fp16, so BLOCK_D is halved to keep the pipeline's
  shared memory under the sm_90 limit.
- "fp32": fp32 operands, the default (allow_tf32 is False in torch) -> exact fp32 FMA dot
  products, no tensor cores; the accumulator and both operand slices live in registers, so the
  tiles are small enough not to spill (see scripts/triton_aot.py for the numbers).

The autotuner sees all families' configs; `prune_to_family` keeps the ones of the call's operand
family before any tuning, so a config is only ever tried on operands it was sized for. Under
ONEREC_TRITON_AUTOTUNE=0 one config per family remains, and `launch` runs the call's family's
one directly (no autotuner, so no Triton version times it).

Codebook loads: pointer loads by default; with ONEREC_TRITON_TMA=1, tensor-core families take
the codebook tiles through a TMA tensor descriptor (`codebook_descriptor`), which frees the
registers the per-thread addresses held (the rq 128x256 tile stops spilling). Off by default
on the GPU until a GPU run has verified it (tests/kernels/test_triton_configs.py).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import triton

from ._backend import triton_interpret


def version_tuple(version: str) -> tuple[int, int]:
    """(major, minor) of a version string such as "3.6.0" or "3.8.1+git" (triton, numpy)."""
    return tuple(int(v) for v in version.split("+")[0].split(".")[:2])

# Per kernel and operand family: (BLOCK_N, BLOCK_K, BLOCK_D, num_warps, num_stages, FLAT). FLAT
# picks the loop shape (see onerec_kernels/rq/triton_kernels.py). The first entry is what
# ONEREC_TRITON_AUTOTUNE=0 keeps, the first QUICK entries the "quick" list.
#
# Configs that spill heavily (> 256 B/thread of spill stores + loads, ptxas on sm_90a, from
# `python scripts/triton_aot.py`, Triton 3.9) are not listed. Left out, with (registers, spill
# stores/loads in bytes per thread) for the kernels as they are now:
#   rq_assign bf16: 128x256x64 w8 s3 flat (255, 540/856); 256x128x64 w8 s3 flat (255, 372/512);
#     128x128x32 w4 s4 flat (255, 164/268).
#   rq_assign tf32: 128x256x32 w8 s3 flat (255, 960/1512 before the epilogue rework; not
#     remeasured).
#   kmeans_step tf32: 128x256x32 w8 s3 flat (255, 168/176 before the rework; not remeasured).
# Light spills kept (the autotuner times them): rq_assign 128x256x64 w8 s3 nested (255,
# 88/108), 256x128x64 w8 s3 nested (255, 100/144), tf32 128x256x32 nested (255, 88/108);
# kmeans_step 128x256x64 flat (255, 96/92).
# fp32 (FMA dot, no tensor cores): small tiles, at most 96 B/thread of spills in either kernel.
_FP32_FMA = [
    (64, 128, 16, 8, 2, False),
    (64, 128, 16, 8, 2, True),
    (64, 64, 16, 4, 2, False),
    (64, 64, 16, 4, 2, True),
    (32, 64, 32, 4, 2, False),
    (32, 64, 32, 4, 2, True),
]
# TF32 tensor cores: fp32 operands are twice as wide as bf16, hence BLOCK_D 32.
_TF32 = [
    (128, 128, 32, 8, 3, False),
    (128, 128, 32, 8, 3, True),
    (64, 128, 32, 4, 3, False),
    (64, 128, 32, 4, 3, True),
]
TILES = {
    "rq_assign": {
        "fp16": [
            (128, 128, 64, 8, 3, False),
            (128, 128, 64, 8, 3, True),
            (64, 128, 64, 4, 3, False),
            (64, 128, 64, 4, 3, True),
            (128, 128, 32, 4, 4, False),
            (128, 256, 64, 8, 3, False),
            (256, 128, 64, 8, 3, False),
        ],
        "tf32": _TF32 + [(128, 256, 32, 8, 3, False)],
        "fp32": _FP32_FMA,
    },
    "kmeans_step": {
        "fp16": [
            (128, 128, 64, 8, 3, False),
            (128, 128, 64, 8, 3, True),
            (256, 128, 64, 8, 3, False),
            (256, 128, 64, 8, 3, True),
            (128, 128, 32, 4, 4, False),
            (128, 128, 32, 4, 4, True),
            (64, 128, 64, 4, 3, False),
            (64, 128, 64, 4, 3, True),
            (128, 256, 64, 8, 3, False),
            (128, 256, 64, 8, 3, True),
        ],
        "tf32": _TF32 + [(128, 256, 32, 8, 3, False)],
        "fp32": _FP32_FMA,
    },
}
FAMILIES = ("fp16", "tf32", "fp32")
QUICK = 4
INTERPRET_CONFIG = {"BLOCK_N": 32, "BLOCK_K": 64, "BLOCK_D": 64, "FLAT": True}


def set_descriptor_block(nargs) -> None:
    """Config pre_hook: a host tensor descriptor's block shape is the config's code tile."""
    desc = nargs.get("cb_desc")
    if desc is not None:
        desc.block_shape = [nargs["BLOCK_K"], nargs["BLOCK_D"]]


def _config(tile) -> triton.Config:
    bn, bk, bd, warps, stages, flat = tile
    return triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "BLOCK_D": bd, "FLAT": flat},
                         num_warps=warps, num_stages=stages, pre_hook=set_descriptor_block)


def family_configs(kernel: str, family: str, mode: str = "1") -> list[triton.Config]:
    """GPU configs of `kernel` for one operand family: mode "1" all, "quick" the first QUICK,
    "0" the first."""
    tiles = TILES[kernel][family]
    tiles = tiles[:1] if mode == "0" else tiles[:QUICK] if mode == "quick" else tiles
    return [_config(t) for t in tiles]


# Every config object handed to an autotuner, with its family (configs are matched by identity).
_FAMILY_OF: dict[int, str] = {}


def autotune_configs(kernel: str) -> list[triton.Config]:
    """The autotune list of `kernel`: every family's configs (pruned per call by
    `prune_to_family`). ONEREC_TRITON_AUTOTUNE=0 keeps one config per family (the tests set it:
    they meet many (D, K, L) keys and each would cost a full sweep); =quick a short list
    (scripts/device_check.sh, time-boxed). The interpreter accepts a single config only."""
    if triton_interpret():
        return [triton.Config(dict(INTERPRET_CONFIG), pre_hook=set_descriptor_block)]
    mode = os.environ.get("ONEREC_TRITON_AUTOTUNE", "1")
    out = []
    for family in FAMILIES:
        for cfg in family_configs(kernel, family, mode):
            _FAMILY_OF[id(cfg)] = family
            out.append(cfg)
    return out


# grouped_kmeans's tile step (onerec_kernels/kmeans/triton_kernels.py, not a nearest-code
# kernel: exact fp32 differences, no tl.dot for the distances): (BLOCK_N rows per block,
# BLOCK_D columns per step of the sums pass, num_warps, num_stages). The distance pass walks D
# 8 columns at a time (the lane order of the reference); its centroid block BLOCK_K follows
# each call's largest group (<= 8). The autotune key buckets the mean rows per group too: calls
# of many tiny groups (the late split rounds) want 16-32-row blocks, which waste less on
# padding. The first entry is what ONEREC_TRITON_AUTOTUNE=0 keeps, the first QUICK the "quick"
# list. Every entry compiles for sm_90 in fp32 and bf16, at BLOCK_K 2 and at its largest
# BLOCK_K, with at most 8 B/thread of spills (`python scripts/triton_aot.py --family
# grouped_kmeans`, Triton 3.9). Left out: 2 warps with 32-128 rows (up to 255 registers, ~1
# KB/thread of spills at BLOCK_K 8 with 64-row blocks), BLOCK_D 64 with 64-128 rows and 4 warps
# (168-255 registers, spills), 8 warps with 64-128 rows x 16-32 columns (128 registers, 40-64
# B/thread of spills).
GROUPED_KMEANS_TILES = [
    (64, 32, 4, 1),
    (32, 32, 4, 1),
    (128, 32, 4, 1),
    (16, 32, 4, 1),
    (64, 16, 4, 1),
    (32, 64, 4, 1),
    (128, 64, 8, 1),
    (16, 32, 2, 1),
    (64, 32, 4, 2),
]
GROUPED_INTERPRET_CONFIG = {"BLOCK_N": 128, "BLOCK_D": 64}


def grouped_kmeans_configs(mode: str | None = None) -> list[triton.Config]:
    """The autotune list of grouped_kmeans's tile step (ONEREC_TRITON_AUTOTUNE: "0" the first,
    "quick" the first QUICK, else all; the interpreter takes one config)."""
    if triton_interpret():
        return [triton.Config(dict(GROUPED_INTERPRET_CONFIG))]
    mode = os.environ.get("ONEREC_TRITON_AUTOTUNE", "1") if mode is None else mode
    tiles = GROUPED_KMEANS_TILES
    tiles = tiles[:1] if mode == "0" else tiles[:QUICK] if mode == "quick" else tiles
    return [triton.Config({"BLOCK_N": bn, "BLOCK_D": bd}, num_warps=w, num_stages=s)
            for bn, bd, w, s in tiles]


# triton.heuristics of the nearest-code kernels: K / D multiples of the tile need no masks;
# USE_TMA when the launcher passed a codebook descriptor (codebook_descriptor).
EVEN_TILES = {
    "EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0,
    "EVEN_D": lambda args: args["D"] % args["BLOCK_D"] == 0,
    "USE_TMA": lambda args: args["cb_desc"] is not None,
}


def codebook_descriptor(codebook: torch.Tensor, input_precision: str):
    """A host tensor descriptor of a (rows, D) contiguous codebook for TMA loads (its block
    shape is set per config by `set_descriptor_block`), or None where TMA cannot take it: rows
    must be 16-byte multiples and the base 16-byte aligned (D % 8 == 0 for fp16/bf16, % 4 for
    fp32), on CUDA or in the interpreter (which emulates it, so CPU tests cover the path), and
    only with ONEREC_TRITON_TMA=1 on the GPU (see below). Not for the exact-fp32 FMA dot on the
    GPU: it takes its operands from registers, and there TMA raised registers (174 -> 255 for
    64x128x16) instead of saving them."""
    if not (codebook.is_cuda or triton_interpret()):
        return None
    if codebook.is_cuda and operand_family(codebook.dtype, input_precision) == "fp32":
        return None
    # Off by default on the GPU until a GPU run has verified it (on in the interpreter, so CI
    # covers the path): ONEREC_TRITON_TMA=1 / 0 overrides.
    if os.environ.get("ONEREC_TRITON_TMA", "1" if triton_interpret() else "0") != "1":
        return None
    row_bytes = codebook.shape[1] * codebook.element_size()
    if row_bytes % 16 or codebook.data_ptr() % 16 or not codebook.is_contiguous():
        return None
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor
    except ImportError:  # a Triton without host descriptors: pointer loads
        return None
    return TensorDescriptor.from_tensor(codebook, [1, 1])


def operand_family(dtype: torch.dtype, input_precision: str) -> str:
    if dtype in (torch.float16, torch.bfloat16):
        return "fp16"
    return "tf32" if input_precision == "tf32" else "fp32"


def prune_to_family(configs, named_args, **kwargs):
    """early_config_prune: keep the configs sized for this call's operands (dtype of x_ptr and
    INPUT_PRECISION). Configs of unknown family (e.g. the interpreter's) are kept."""
    family = operand_family(named_args["x_ptr"].dtype, kwargs["INPUT_PRECISION"])
    kept = [c for c in configs if _FAMILY_OF.get(id(c), family) == family]
    return kept or configs[:1]


def dot_input_precision(dtype: torch.dtype) -> str:
    """tl.dot input precision for operands of `dtype`: fp32 follows torch's TF32 switch
    (torch.backends.cuda.matmul.allow_tf32, False by default: exact "ieee" fp32 products, the
    reference's assignments) on the GPU, "ieee" in the interpreter; fp16/bf16 operands have
    exact products in fp32 anyway."""
    if dtype == torch.float32:
        return "tf32" if torch.backends.cuda.matmul.allow_tf32 and not triton_interpret() else "ieee"
    return "ieee"


def device_guard(device: torch.device):
    """Make `device` current for a launch: Triton launches on the *current* CUDA device and
    stream, so tensors on cuda:1 would otherwise be read by a kernel running on cuda:0."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def launch(kernel, grid, *args, device: torch.device, config=None, **kwargs) -> None:
    """Launch an autotuned kernel on `device`, or, with `config`, its plain JIT function with
    exactly that config: a dict of tile meta-parameters (how tests cover every loop shape in
    the interpreter) or a triton.Config (num_warps / num_stages too: how a GPU test runs every
    autotune config once)."""
    if config is None and os.environ.get("ONEREC_TRITON_AUTOTUNE", "1") == "0":
        # One config per family is left: take it directly, so no Triton version times it.
        config = prune_to_family(kernel.configs, {"x_ptr": args[0]}, **kwargs)[0]
    if isinstance(config, triton.Config):
        config = config.all_kwargs()
    if config is not None:  # no autotuner to run the config's pre_hook: size descriptors here
        for arg in args:
            if hasattr(arg, "block_shape") and hasattr(arg, "base"):
                arg.block_shape = [config["BLOCK_K"], config["BLOCK_D"]]
    with device_guard(device):
        if config is None:
            kernel[grid](*args, **kwargs)
        else:
            kernel.fn[grid](*args, **kwargs, **config)


# ---- ahead-of-time compilation registry (scripts/triton_aot.py) -----------------------------
@dataclass(frozen=True)
class AotKernel:
    """How to compile one autotuned kernel without a GPU. specialize(family, config, tma)
    returns (signature, constexprs) for triton.compiler.ASTSource: the argument types a typical
    call passes for that operand family (codebook tiles through a TMA descriptor or pointers),
    and every constexpr (the config's included)."""
    name: str
    kernel: object  # the triton.autotune object (its .fn is the JIT function)
    specialize: Callable[[str, triton.Config], tuple[dict, dict]]


AOT_KERNELS: list[AotKernel] = []


def register_aot(name: str, kernel, specialize) -> None:
    AOT_KERNELS.append(AotKernel(name, kernel, specialize))


def aot_spec(family: str, config: triton.Config, tma: bool, args: dict[str, str], **constexprs):
    """(signature, constexprs) for ASTSource: `args` maps each runtime argument to its Triton type,
    "*op" standing for a pointer to the family's operand dtype (bf16 for "fp16") and "desc" for
    the codebook's tensor descriptor (block BLOCK_K x BLOCK_D); the constexprs
    get the family's INPUT_PRECISION and the config's meta-parameters."""
    op = "bf16" if family == "fp16" else "fp32"
    kw = config.kwargs
    desc = f"tensordesc<{op}[{kw['BLOCK_K']},{kw['BLOCK_D']}]>"
    sig = {name: (f"*{op}" if t == "*op" else desc if t == "desc" else t)
           for name, t in args.items()}
    # Production shapes (D = 512, K = 8192): multiples of every tile, codebooks TMA-aligned.
    const = {**constexprs, "INPUT_PRECISION": "tf32" if family == "tf32" else "ieee",
             "EVEN_K": True, "EVEN_D": True, "USE_TMA": tma, **kw}
    if not tma:  # the descriptor argument is None: a constexpr
        sig = {name: ("constexpr" if t == "desc" else sig[name]) for name, t in args.items()}
        const.update({name: None for name, t in args.items() if t == "desc"})
    return {**sig, **{name: "constexpr" for name in const}}, const


# Second registration style: a family whose kernels are not tiled by TILES (attention, MoE)
# registers a generator of fully specified compile entries instead.
@dataclass(frozen=True)
class AotEntry:
    """One compile of scripts/triton_aot.py: ASTSource(fn, signature, constexprs, attrs) with
    `divisible_by_16` arguments marked tt.divisibility=16, compiled with num_warps/num_stages.
    `kernel`, `config` and `dtype` label the table row; `quick` says whether the entry may be
    in the --quick subset (the first quick entry per (kernel, dtype) is)."""
    family: str
    kernel: str
    config: str
    dtype: str
    fn: object  # the JIT function
    signature: dict
    constexprs: dict
    divisible_by_16: tuple
    num_warps: int
    num_stages: int
    quick: bool = True
    options: tuple = ()  # further compile options as (name, value) pairs, e.g. enable_fp_fusion


@dataclass(frozen=True)
class AotSpecFamily:
    name: str
    generator: Callable[[], Iterable[dict]]

    def entries(self) -> list[AotEntry]:
        return [aot_entry(self.name, spec) for spec in self.generator()]


AOT_SPEC_FAMILIES: list[AotSpecFamily] = []


def register_aot_specs(family: str, generator) -> None:
    """Register `generator()` (called only by scripts/triton_aot.py, so importing a kernel
    module stays cheap) as the compile list of `family`. It yields dicts with:

    - name: the kernel's row label; fn: its JIT function (an autotune/heuristics wrapper is
      unwrapped);
    - signature: {argument: Triton type} of the runtime arguments (constexpr arguments may be
      left out or typed "constexpr"); constexprs: {argument: value}, meta-parameters included;
    - num_warps, num_stages, or config: a triton.Config giving them (and its kwargs, merged into
      the constexprs);
    - divisible_by_16: arguments the runtime would mark 16-divisible (aligned pointers, sizes
      and strides that are multiples of 16); unit (optional): integer arguments equal to 1 at
      run time (unit strides), compiled as the constant 1 as the runtime specializes them;
    - optional labels: dtype (default: the first pointer argument's element type), config_name
      (default: from the constexprs and warps/stages), quick (default True; False keeps the
      entry out of the --quick subset); options (optional): further compile options of the
      launch, e.g. {"enable_fp_fusion": False}.

    Registering a family name again replaces its generator (a reloaded module)."""
    AOT_SPEC_FAMILIES[:] = [f for f in AOT_SPEC_FAMILIES if f.name != family]
    AOT_SPEC_FAMILIES.append(AotSpecFamily(family, generator))


def jit_function(fn):
    """The JIT function under autotune / heuristics wrappers."""
    while not hasattr(fn, "arg_names") or not hasattr(fn, "src"):  # autotune / heuristics
        fn = fn.fn
    return fn


def aot_entry(family: str, spec: dict) -> AotEntry:
    """Normalize one generator dict (see register_aot_specs) into an AotEntry: a signature over
    every argument of fn in order, unit arguments moved to the constexprs."""
    fn = jit_function(spec["fn"])
    cfg = spec.get("config")
    constexprs = dict(spec.get("constexprs", {}))
    if isinstance(cfg, triton.Config):
        constexprs.update({k: v for k, v in cfg.kwargs.items() if k in fn.arg_names})
    constexprs.update({arg: 1 for arg in spec.get("unit", ())})
    unknown = (set(constexprs) | set(spec["signature"])) - set(fn.arg_names)
    if unknown:
        raise ValueError(f"{spec['name']}: {sorted(unknown)} are not arguments of {fn.__name__}")
    signature = {}
    for arg in fn.arg_names:
        typ = "constexpr" if arg in constexprs else spec["signature"].get(arg)
        if typ is None:
            raise ValueError(f"{spec['name']}: argument {arg!r} has no type and no value")
        signature[arg] = typ
    num_warps = spec.get("num_warps", cfg.num_warps if isinstance(cfg, triton.Config) else 4)
    num_stages = spec.get("num_stages", cfg.num_stages if isinstance(cfg, triton.Config) else 3)
    dtype = spec.get("dtype") or next(
        (t[1:] for t in signature.values() if t.startswith("*")), "-")
    config = spec.get("config_name") or " ".join(
        [f"{k}={v}" for k, v in constexprs.items() if k.startswith("BLOCK")]
        + [f"w{num_warps}", f"s{num_stages}"])
    div16 = tuple(a for a in spec.get("divisible_by_16", ()) if signature[a] != "constexpr")
    return AotEntry(family, spec["name"], config, dtype, fn, signature, constexprs, div16,
                    num_warps, num_stages, spec.get("quick", True),
                    tuple(sorted(spec.get("options", {}).items())))

#!/usr/bin/env python
"""Compile every autotune config of every Triton kernel of the package for sm_90 (H100/H200)
on a machine without a GPU, and report what ptxas says about each.

Kernels register themselves next to their launcher, in one of two ways
(onerec_kernels._triton_tiles):
- register_aot(name, kernel, specialize): a nearest-code kernel tiled by TILES; specialize builds
  the compile-time signature for an operand family, the configs are the autotuner's tile lists;
- register_aot_specs(family, generator): a family (attention, MoE) whose generator yields fully
  specified compile entries (JIT function, signature, constexprs, warps, stages, which arguments
  are 16-divisible or unit strides).
A new kernel family only has to register there. The MoE family's list (AOT_CONFIGS of
onerec_kernels/moe/triton_kernels.py) is adapted here while that module does not register it.

For each (kernel, operand family, config): triton.compile(ASTSource(...),
target=GPUTarget("cuda", 90, 32)), then Triton's bundled ptxas -v on the PTX for registers and
spills; shared memory is Triton's own (dynamic) figure. A config "cannot launch" when its shared
memory exceeds the sm_90 limit (227 KB per block) or registers x threads exceed the 64K register
file. Exit status 1 when any compile fails or any config cannot launch.

    python scripts/triton_aot.py                       # every config
    python scripts/triton_aot.py --quick               # first config per kernel and dtype (CI)
    python scripts/triton_aot.py --family attention    # one family (rq, kmeans, grouped_kmeans,
                                                       # attention, moe)
    python scripts/triton_aot.py --dtype bf16 --json rows.json
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import importlib.util
import io
import json
import multiprocessing
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SM90_SMEM_LIMIT = 227 * 1024  # bytes of shared memory one block may opt in to on sm_90
SM90_REGISTERS = 64 * 1024  # 32-bit registers per SM (and per block)
# Spill traffic (stores + loads, bytes per thread) above which a config is "heavy": such configs
# must not be in the autotune lists (the test asserts it).
HEAVY_SPILL_BYTES = 256


@dataclass
class Row:
    family: str
    kernel: str
    config: str
    dtype: str
    loads: str
    registers: int = -1
    spill_stores: int = -1
    spill_loads: int = -1
    smem: int = -1
    threads: int = 0
    seconds: float = 0.0
    error: str = ""

    @property
    def cannot_launch(self) -> str:
        why = []
        if self.smem > SM90_SMEM_LIMIT:
            why.append(f"smem {self.smem} > {SM90_SMEM_LIMIT}")
        if self.registers > 0 and self.registers * self.threads > SM90_REGISTERS:
            why.append(f"regs {self.registers} x {self.threads} threads > {SM90_REGISTERS}")
        return "; ".join(why)

    @property
    def heavy_spill(self) -> bool:
        return self.spill_stores + self.spill_loads > HEAVY_SPILL_BYTES


def load_kernels():
    """Import every triton_kernels module of the package (they register on import)."""
    import onerec_kernels

    for info in pkgutil.walk_packages(onerec_kernels.__path__, "onerec_kernels."):
        if info.name.endswith(".triton_kernels"):
            importlib.import_module(info.name)
    from onerec_kernels._triton_tiles import AOT_KERNELS, AOT_SPEC_FAMILIES, register_aot_specs

    if importlib.util.find_spec("onerec_kernels.moe") is not None and not any(
            f.name == "moe" for f in AOT_SPEC_FAMILIES):
        register_aot_specs("moe", moe_specs)
    return AOT_KERNELS, AOT_SPEC_FAMILIES


def moe_specs():
    """The MoE family's compile list (AOT_CONFIGS of onerec_kernels/moe/triton_kernels.py: dicts
    of name, fn, signature, constexprs, divisible_by_16, num_warps, num_stages, unit strides
    already among the constexprs) as register_aot_specs entries: rows grouped by JIT function
    (moe_gemm, moe_wgrad, moe_route, moe_align_*), dtype from the first operand; the --quick
    subset takes the "train" tiles (the largest) and leaves fp16 (compiles like bf16) out."""
    from onerec_kernels.moe import triton_kernels as moe

    for spec in moe.AOT_CONFIGS:
        kernel = spec["fn"].__name__.strip("_").removesuffix("_kernel")
        dtype = next(t[1:] for t in spec["signature"].values() if t.startswith("*"))
        config = spec["name"].removeprefix("moe_").replace(f"_{dtype}", "").replace("default_", "")
        yield {**spec, "name": kernel, "dtype": dtype,
               "config_name": f"{config} w{spec['num_warps']} s{spec['num_stages']}",
               "quick": dtype != "fp16" and "_decode_" not in config and "_mid_" not in config}


def ptxas_path() -> str:
    """The ptxas Triton itself uses for sm_90 (3.9 ships two: bin/ptxas-blackwell, CUDA 13,
    is the one for arch >= 90; bin/ptxas, CUDA 12.9, rejects PTX 9.x)."""
    import triton

    try:
        from triton.backends.nvidia.compiler import get_ptxas

        return get_ptxas(90).path
    except (ImportError, TypeError, AttributeError):
        path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
        if not path.exists():
            raise FileNotFoundError(f"Triton's bundled ptxas is missing: {path}") from None
        return str(path)


_PTXAS_PATTERNS = {
    "registers": re.compile(r"Used (\d+) registers"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
}


def parse_ptxas_log(log: str) -> dict[str, int] | None:
    if "Used" not in log:
        return None
    out = {}
    for key, pat in _PTXAS_PATTERNS.items():
        m = pat.search(log)
        out[key] = int(m.group(1)) if m else 0
    return out


def ptxas_usage(ptx: str, arch: str, workdir: str) -> dict[str, int]:
    """ptxas -v on the PTX (when Triton did not show its own ptxas log)."""
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", dir=workdir, delete=False) as f:
        f.write(ptx)  # a file per call: pool workers share the folder
        src = f.name
    proc = subprocess.run([ptxas_path(), f"--gpu-name={arch}", "-v", src, "-o", os.devnull],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"ptxas failed: {proc.stderr.strip()[-2000:]}")
    return parse_ptxas_log(proc.stderr) or {k: 0 for k in _PTXAS_PATTERNS}


def config_name(cfg) -> str:
    kw = cfg.kwargs
    loop = "flat" if kw.get("FLAT") else "nested"
    return (f"{kw['BLOCK_N']}x{kw['BLOCK_K']}x{kw['BLOCK_D']} w{cfg.num_warps} "
            f"s{cfg.num_stages} {loop}")


DTYPE_OF_FAMILY = {"fp16": "bf16", "tf32": "fp32-tf32", "fp32": "fp32"}


def family_of(fn) -> str:
    """The kernel's op family: "rq" for a kernel of onerec_kernels.rq.triton_kernels."""
    parts = fn.__module__.split(".")
    return parts[1] if len(parts) > 2 and parts[0] == "onerec_kernels" else parts[-1]


def compile_tiled(entry, family: str, cfg, workdir: str, tma: bool = False) -> Row:
    """One config of a register_aot kernel (TILES) for one operand family."""
    from onerec_kernels._triton_tiles import jit_function

    fn = jit_function(entry.kernel)
    row = Row(family_of(fn), entry.name, config_name(cfg), DTYPE_OF_FAMILY[family],
              "tma" if tma else "ptr", threads=cfg.num_warps * 32)
    signature, constexprs = entry.specialize(family, cfg, tma)
    # What the runtime specializes for real calls: 16-byte aligned pointers and sizes that are
    # multiples of 16 (D, K, row strides of production shapes), which enables vector loads.
    aligned = [name for name in fn.arg_names
               if signature.get(name, "").startswith("*") or name in ("D", "K", "stride_xn")]
    return compile_source(row, fn, signature, constexprs, aligned, cfg.num_warps,
                          cfg.num_stages, workdir)


def compile_spec(entry, workdir: str) -> Row:
    """One register_aot_specs entry (an onerec_kernels._triton_tiles.AotEntry)."""
    row = Row(entry.family, entry.kernel, entry.config, entry.dtype, "-",
              threads=entry.num_warps * 32)
    return compile_source(row, entry.fn, entry.signature, entry.constexprs,
                          entry.divisible_by_16, entry.num_warps, entry.num_stages, workdir,
                          dict(entry.options))


def compile_source(row: Row, fn, signature, constexprs, aligned, num_warps: int,
                   num_stages: int, workdir: str, options: dict | None = None) -> Row:
    """triton.compile for sm_90 with `aligned` arguments marked tt.divisibility=16 (and any
    further compile `options` of the launch); fills the row's registers, spills, shared memory
    and seconds, or its error."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in aligned}
    src = ASTSource(fn, signature, constexprs, attrs)
    log = io.StringIO()
    start = time.perf_counter()
    try:
        # Triton runs ptxas -v itself (with its own flags); with dump_ptxas_log it prints the
        # log, which is read here instead of assembling the PTX a second time.
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                                      options={"num_warps": num_warps,
                                               "num_stages": num_stages, **(options or {})})
        row.seconds = time.perf_counter() - start
        row.smem = int(compiled.metadata.shared)
        usage = parse_ptxas_log(log.getvalue()) or ptxas_usage(compiled.asm["ptx"], "sm_90a",
                                                                 workdir)
    except Exception as e:  # noqa: BLE001 - reported in the table, counted as a failure
        row.seconds = time.perf_counter() - start
        text = str(e).strip()
        row.error = f"{type(e).__name__}: {text.splitlines()[-1] if text else ''}"
        return row
    row.registers, row.spill_stores, row.spill_loads = (
        usage["registers"], usage["spill_stores"], usage["spill_loads"])
    return row


def quick_subset(entries):
    """The first quick-eligible entry per (family, kernel, dtype)."""
    seen, out = set(), []
    for e in entries:
        key = (e.family, e.kernel, e.dtype)
        if e.quick and key not in seen:
            seen.add(key)
            out.append(e)
    return out


# The compile tasks of run(), read by pool workers forked after it is filled (closures over JIT
# functions do not pickle; a forked worker already holds them).
_TASKS: list = []


def _run_task(index: int) -> Row:
    return _TASKS[index]()


def run(quick: bool, kernels: list[str] | None = None, families: list[str] | None = None,
        dtypes: list[str] | None = None, out=sys.stdout, jobs: int = 1) -> list[Row]:
    """Compile the registered kernels (filtered by kernel name, op family, dtype label), one
    table row each, in registry order; `jobs` compiles run at once (forked processes)."""
    from onerec_kernels._triton_tiles import FAMILIES, family_configs, jit_function

    def wanted(family: str, kernel: str, dtype: str) -> bool:
        return ((not kernels or kernel in kernels) and (not families or family in families)
                and (not dtypes or dtype in dtypes))

    rows = []
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as workdir:
        # A fresh cache: the compile seconds are real, and nothing stale is reported.
        os.environ["TRITON_CACHE_DIR"] = cache
        from triton import knobs

        if hasattr(knobs, "nvidia") and hasattr(knobs.nvidia, "dump_ptxas_log"):
            knobs.nvidia.dump_ptxas_log = True
        tiled, spec_families = load_kernels()
        tasks = []
        for entry in tiled:
            fn = jit_function(entry.kernel)
            for operands in FAMILIES:
                if not wanted(family_of(fn), entry.name, DTYPE_OF_FAMILY[operands]):
                    continue
                for cfg in family_configs(entry.name, operands, "0" if quick else "1"):
                    # Codebook tiles by pointer loads (the default) and by TMA descriptors
                    # (ONEREC_TRITON_TMA=1; tensor-core families only, see codebook_descriptor).
                    for tma in (False, True) if operands != "fp32" else (False,):
                        tasks.append(functools.partial(compile_tiled, entry, operands, cfg,
                                                       workdir, tma))
        for fam in spec_families:
            if families and fam.name not in families:
                continue
            entries = [e for e in fam.entries() if wanted(e.family, e.kernel, e.dtype)]
            for entry in quick_subset(entries) if quick else entries:
                tasks.append(functools.partial(compile_spec, entry, workdir))
        _TASKS[:] = tasks
        if jobs > 1 and len(tasks) > 1:
            ctx = multiprocessing.get_context("fork")
            with ctx.Pool(min(jobs, len(tasks))) as pool:
                results = pool.imap(_run_task, range(len(tasks)))
                for row in results:
                    rows.append(row)
                    print(format_row(row), file=out, flush=True)
        else:
            for task in tasks:
                rows.append(task())
                print(format_row(rows[-1]), file=out, flush=True)
        _TASKS.clear()
    return rows


HEADER = (f"{'kernel':<16} {'config':<32} {'dtype':<10} {'B':<4} {'regs':>4} "
          f"{'spill st/ld B':>13} {'smem KB':>8} {'compile s':>9}  status")


def format_row(r: Row) -> str:
    if r.error:
        status = f"COMPILE ERROR {r.error}"
        return (f"{r.kernel:<16} {r.config:<32} {r.dtype:<10} {r.loads:<4} {'':>4} {'':>13} "
                f"{'':>8} {r.seconds:9.1f}  {status}")
    status = "cannot launch: " + r.cannot_launch if r.cannot_launch else "ok"
    if r.heavy_spill:
        status += " (heavy spill)"
    spill = f"{r.spill_stores}/{r.spill_loads}"
    return (f"{r.kernel:<16} {r.config:<32} {r.dtype:<10} {r.loads:<4} {r.registers:>4} "
            f"{spill:>13} {r.smem / 1024:8.1f} {r.seconds:9.1f}  {status}")


def status(r: Row) -> str:
    if r.error:
        return "compile error"
    return "cannot launch" if r.cannot_launch else "heavy spill" if r.heavy_spill else "ok"


def summary(rows: list[Row]) -> str:
    """Per op family: configs, failures, and the largest registers / spills / shared memory."""
    lines = []
    for fam in dict.fromkeys(r.family for r in rows):
        mine = [r for r in rows if r.family == fam]
        built = [r for r in mine if not r.error] or [Row(fam, "", "", "", "")]
        worst_spill = max(built, key=lambda r: r.spill_stores + r.spill_loads)
        lines.append(
            f"{fam}: {len(mine)} configs, {sum(status(r) != 'ok' for r in mine)} not ok; max regs "
            f"{max(r.registers for r in built)}, max spill st/ld {worst_spill.spill_stores}/"
            f"{worst_spill.spill_loads} B ({worst_spill.kernel} {worst_spill.config} "
            f"{worst_spill.dtype}), max smem {max(r.smem for r in built) / 1024:.1f} KB")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="the first config per kernel and dtype (CI)")
    parser.add_argument("--kernel", action="append", help="only this kernel (repeatable)")
    parser.add_argument("--family", action="append",
                        help="only this op family: rq, kmeans, grouped_kmeans, attention, "
                             "moe (repeatable)")
    parser.add_argument("--dtype", action="append",
                        help="only this dtype label: bf16, fp16, fp32, fp32-tf32, ... (repeatable)")
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                        else os.cpu_count() or 1,
                        help="compiles at once (default: one per CPU)")
    parser.add_argument("--json", help="also write the rows (with status) to this JSON file")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU, not the interpreter
    print(HEADER, flush=True)
    rows = run(args.quick, args.kernel, args.family, args.dtype, jobs=args.jobs)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{**vars(r), "cannot_launch": r.cannot_launch, "status": status(r)}
                       for r in rows], f, indent=1)
    bad = [r for r in rows if r.error or r.cannot_launch]
    heavy = [r for r in rows if not r.error and r.heavy_spill]
    print(summary(rows))
    print(f"{len(rows)} configs: {len(bad)} failing (compile error or cannot launch), "
          f"{len(heavy)} spilling > {HEAVY_SPILL_BYTES} B/thread")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

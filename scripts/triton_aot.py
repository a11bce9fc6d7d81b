#!/usr/bin/env python
"""Compile every autotune config of every Triton kernel of the package for sm_90 (H100/H200)
on a machine without a GPU, and report what ptxas says about each.

Kernels register themselves (onerec_kernels._triton_tiles.register_aot, next to their launcher)
with how to build the compile-time signature for an operand family; the configs come from the
same tile lists the autotuner uses (onerec_kernels._triton_tiles.TILES). A new kernel family only
has to register there.

For each (kernel, operand family, config): triton.compile(ASTSource(...),
target=GPUTarget("cuda", 90, 32)), then Triton's bundled ptxas -v on the PTX for registers and
spills; shared memory is Triton's own (dynamic) figure. A config "cannot launch" when its shared
memory exceeds the sm_90 limit (227 KB per block) or registers x threads exceed the 64K register
file. Exit status 1 when any compile fails or any config cannot launch.

    python scripts/triton_aot.py            # every config
    python scripts/triton_aot.py --quick    # one config per kernel and family (CI)
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
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
    from onerec_kernels._triton_tiles import AOT_KERNELS

    return AOT_KERNELS


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
    src = os.path.join(workdir, "k.ptx")
    with open(src, "w") as f:
        f.write(ptx)
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


def compile_one(entry, family: str, cfg, workdir: str, tma: bool = False) -> Row:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = entry.kernel  # unwrap autotune / heuristics down to the JIT function
    while not isinstance(fn, triton.runtime.JITFunction):
        fn = fn.fn
    row = Row(entry.name, config_name(cfg), DTYPE_OF_FAMILY[family], "tma" if tma else "ptr",
              threads=cfg.num_warps * 32)
    signature, constexprs = entry.specialize(family, cfg, tma)
    # What the runtime specializes for real calls: 16-byte aligned pointers and sizes that are
    # multiples of 16 (D, K, row strides of production shapes), which enables vector loads.
    aligned = [i for i, name in enumerate(fn.arg_names)
               if signature.get(name, "").startswith("*") or name in ("D", "K", "stride_xn")]
    attrs = {(i,): [["tt.divisibility", 16]] for i in aligned}
    src = ASTSource(fn, signature, constexprs, attrs)
    log = io.StringIO()
    start = time.perf_counter()
    try:
        # Triton runs ptxas -v itself (with its own flags); with dump_ptxas_log it prints the
        # log, which is read here instead of assembling the PTX a second time.
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                                      options={"num_warps": cfg.num_warps,
                                               "num_stages": cfg.num_stages})
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


def run(quick: bool, kernels: list[str] | None = None, families: list[str] | None = None,
        out=sys.stdout) -> list[Row]:
    from onerec_kernels._triton_tiles import FAMILIES, family_configs

    rows = []
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as workdir:
        # A fresh cache: the compile seconds are real, and nothing stale is reported.
        os.environ["TRITON_CACHE_DIR"] = cache
        from triton import knobs

        if hasattr(knobs, "nvidia") and hasattr(knobs.nvidia, "dump_ptxas_log"):
            knobs.nvidia.dump_ptxas_log = True
        for entry in load_kernels():
            if kernels and entry.name not in kernels:
                continue
            for family in FAMILIES:
                if families and family not in families:
                    continue
                for cfg in family_configs(entry.name, family, "0" if quick else "1"):
                    # Codebook tiles by pointer loads (the default) and by TMA descriptors
                    # (ONEREC_TRITON_TMA=1; tensor-core families only, see codebook_descriptor).
                    for tma in (False, True) if family != "fp32" else (False,):
                        row = compile_one(entry, family, cfg, workdir, tma)
                        rows.append(row)
                        print(format_row(row), file=out, flush=True)
    return rows


HEADER = (f"{'kernel':<12} {'config':<26} {'dtype':<10} {'B':<4} {'regs':>4} "
          f"{'spill st/ld B':>13} {'smem KB':>8} {'compile s':>9}  status")


def format_row(r: Row) -> str:
    if r.error:
        status = f"COMPILE ERROR {r.error}"
        return (f"{r.kernel:<12} {r.config:<26} {r.dtype:<10} {r.loads:<4} {'':>4} {'':>13} "
                f"{'':>8} {r.seconds:9.1f}  {status}")
    status = "cannot launch: " + r.cannot_launch if r.cannot_launch else "ok"
    if r.heavy_spill:
        status += " (heavy spill)"
    spill = f"{r.spill_stores}/{r.spill_loads}"
    return (f"{r.kernel:<12} {r.config:<26} {r.dtype:<10} {r.loads:<4} {r.registers:>4} "
            f"{spill:>13} {r.smem / 1024:8.1f} {r.seconds:9.1f}  {status}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="one config per kernel and operand family")
    parser.add_argument("--kernel", action="append", help="only this kernel (repeatable)")
    parser.add_argument("--family", action="append", help="only this operand family (repeatable)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU, not the interpreter
    print(HEADER, flush=True)
    rows = run(args.quick, args.kernel, args.family)
    bad = [r for r in rows if r.error or r.cannot_launch]
    heavy = [r for r in rows if not r.error and r.heavy_spill]
    print(f"{len(rows)} configs: {len(bad)} failing (compile error or cannot launch), "
          f"{len(heavy)} spilling > {HEAVY_SPILL_BYTES} B/thread")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

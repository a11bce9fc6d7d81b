"""The `onerec` command line.

`onerec run` is the main job on the embedded default (synthetic data, no downloads); other
subcommands expose single stages. Every subcommand prints what ran where (backend, device).
"""
from __future__ import annotations

import argparse
import sys
import time

import torch


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"onerec: --device {name}: no CUDA device is available")
    return dev


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def cmd_rq(args: argparse.Namespace) -> int:
    """Batched RQ assignment on generated clustered data: codes, timing, backend, device."""
    import onerec_kernels as ok
    from onerec_kernels._backend import resolve
    from onerec_kernels.rq.op import DEFAULT_ORDER, OP, SUPPORTED

    dev = _device(args.device)
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(args.seed)
    # Clustered synthetic embeddings: K0 centres plus noise, so the codes carry structure.
    centres = torch.randn(args.codebook_size, args.dim, generator=gen)
    x = centres[torch.randint(0, args.codebook_size, (args.num,), generator=gen)]
    x = x + 0.3 * torch.randn(args.num, args.dim, generator=gen)
    # Codebooks: level 0 from data rows, deeper levels from shrinking residual scales.
    idx = torch.randperm(args.num, generator=gen)[: args.codebook_size]
    levels = [x[idx % args.num]]
    for level in range(1, args.levels):
        levels.append(0.3 ** level * torch.randn(args.codebook_size, args.dim, generator=gen))
    codebooks = torch.stack(levels)
    x, codebooks = x.to(dev, dtype), codebooks.to(dev, dtype)

    backend = resolve(OP, args.backend, dev, SUPPORTED, DEFAULT_ORDER, native_op="rq_assign")
    ok.rq_assign(x[:8], codebooks, backend=backend)  # warm-up (Triton compile, thread pool)
    _sync(dev)
    t0 = time.perf_counter()
    codes, residual = ok.rq_assign(x, codebooks, return_residual=True, backend=backend)
    _sync(dev)
    dt = time.perf_counter() - t0
    flops = 2.0 * args.num * args.codebook_size * args.dim * args.levels
    rel = (residual.float().norm() / x.float().norm()).item()
    used = [int(torch.unique(codes[:, lv]).numel()) for lv in range(args.levels)]
    print(f"rq_assign  backend={backend}  device={dev}  dtype={args.dtype}  "
          f"N={args.num} D={args.dim} L={args.levels} K={args.codebook_size}")
    print(f"time {dt * 1e3:.2f} ms  ({flops / dt / 1e9:.1f} GFLOP/s)  "
          f"relative residual {rel:.4f}  codes used per level {used}")
    print("first codes:")
    for row in codes[: min(5, args.num)].tolist():
        print("  ", row)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="onerec", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
        sp.add_argument("--backend", default=None, help="torch | triton | cpp | cuda (default: fastest)")
        sp.add_argument("--seed", type=int, default=0)

    rq = sub.add_parser("rq", help="batched RQ assignment on generated data")
    common(rq)
    rq.add_argument("--num", type=int, default=20000)
    rq.add_argument("--dim", type=int, default=64)
    rq.add_argument("--levels", type=int, default=3)
    rq.add_argument("--codebook-size", type=int, default=256)
    rq.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    rq.set_defaults(func=cmd_rq)

    run = sub.add_parser("run", help="the main job on the embedded default (synthetic data)")
    common(run)
    run.set_defaults(func=cmd_run)
    return p


def cmd_run(args: argparse.Namespace) -> int:
    """The main job. Today: the RQ assignment stage; later stages join as they land."""
    ns = build_parser().parse_args(["rq", "--device", args.device, "--seed", str(args.seed)]
                                   + (["--backend", args.backend] if args.backend else []))
    return cmd_rq(ns)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

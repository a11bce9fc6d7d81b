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


def _print_quality(q: dict) -> None:
    print(f"tokenizer: {q['num_items']} items, {q['num_levels']} levels x {q['codebook_sizes']} codes; "
          f"relative error {q['relative_error']:.4f}, MSE {q['reconstruction_mse']:.5f}")
    for lv, row in enumerate(q["per_level"]):
        print(f"  level {lv}: used {row['used']}/{row['codebook_size']} "
              f"(utilization {row['utilization']:.1%}), perplexity {row['perplexity']:.1f}, "
              f"largest cluster {row['largest_cluster_share']:.1%}, "
              f"relative error after {row['relative_error_after']:.4f}")
    print(f"  collisions: raw {q['raw_collision_rate']:.2%} -> after resolution "
          f"{q.get('collision_rate_after', float('nan')):.2%} "
          f"({q.get('num_reassigned', 0)} items re-assigned)")


def _tokenize(args: argparse.Namespace):
    from onerec.data import load_dataset
    from onerec.data.embeddings import format_report
    from onerec.pipeline import build_semantic_ids
    from onerec_kernels._backend import resolve
    from onerec_kernels.kmeans.op import DEFAULT_ORDER, OP, SUPPORTED

    dev = _device(args.device)
    backend = resolve(OP, args.backend, dev, SUPPORTED, DEFAULT_ORDER, native_op="kmeans_step")
    t0 = time.perf_counter()
    ds = load_dataset(args.data)
    print(ds.summary(), f"[{time.perf_counter() - t0:.1f} s]")
    print(f"tokenizer fit: kmeans_step backend={backend}  device={dev}")
    sids = build_semantic_ids(ds, dim=args.dim, fusion=args.fusion, num_levels=args.levels,
                              codebook_size=args.codebook_size, balanced=args.balanced,
                              iters=args.iters, seed=args.seed, backend=backend, device=dev,
                              progress=sys.stderr.isatty())
    print(format_report(sids.embedding_report))
    _print_quality(sids.quality)
    print(f"  [embeddings {sids.seconds['embeddings']:.1f} s, tokenizer "
          f"{sids.seconds['tokenizer']:.1f} s]")
    if args.out:
        import json
        import os

        os.makedirs(args.out, exist_ok=True)
        sids.tokenizer.save(os.path.join(args.out, "tokenizer.rqk"))
        codes, item_ids = sids.table.export()
        torch.save({"codes": codes, "item_ids": item_ids,
                    "codebook_sizes": list(sids.tokenizer.codebook_sizes)},
                   os.path.join(args.out, "semantic_ids.pt"))
        with open(os.path.join(args.out, "tokenizer_report.json"), "w") as f:
            json.dump({"quality": sids.quality, "embeddings": sids.embedding_report}, f,
                      indent=1, default=float)
        from onerec.profiling import plot_tokenizer_report

        plot_tokenizer_report(sids.tokenizer.fit_codes_, sids.tokenizer.codebook_sizes,
                              sids.quality, sids.embedding_report,
                              os.path.join(args.out, "tokenizer_report.png"))
        print(f"saved tokenizer.rqk, semantic_ids.pt, tokenizer_report.json and "
              f"tokenizer_report.png to {args.out}")
    return ds, sids


def cmd_tokenize(args: argparse.Namespace) -> int:
    """Item embeddings + RQ-KMeans tokenizer + one-to-one semantic-ID table, with its report."""
    _tokenize(args)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """The main job on the chosen data (default: the embedded synthetic generator): tokenizer,
    trie, and trie-constrained generation for the held-out users (recall of their test item)."""
    from onerec.pipeline import build_trie, generate_for_split

    import onerec_kernels as ok

    from onerec_kernels._backend import resolve
    from onerec_kernels.beam import op as beam_op

    dev = _device(args.device)
    # Fail fast on an unusable backend request, before minutes of tokenizer work.
    beam_backend = resolve(beam_op.OP, args.beam_backend, dev, beam_op.SUPPORTED,
                           beam_op.DEFAULT_ORDER, native_op=beam_op.NATIVE_OP)
    print(f"onerec run: data={args.data} device={dev} native={ok.native_available()} "
          f"beam backend={beam_backend}")
    ds, sids = _tokenize(args)
    trie = build_trie(sids, dev)
    print(f"trie: {trie.num_items} items, levels {trie.num_levels}, "
          f"max branching {[trie.max_branching(t) for t in range(trie.num_levels)]}")
    gen = generate_for_split(ds, sids, trie, split="test", beam_width=args.beam_width,
                             max_users=args.max_users, backend=beam_backend)
    users = len(gen.users)
    print(f"generation: {users} users x {args.beam_width} beams in {gen.seconds * 1e3:.1f} ms "
          f"(history-code prior as the model; backend={beam_backend}); "
          f"legal items {gen.legal_fraction:.1%}; recall@{args.beam_width} of the held-out "
          f"item {gen.recall:.3f}")
    for u, tgt, row in list(zip(gen.users, gen.targets, gen.item_ids.tolist()))[:3]:
        print(f"  user {u}: held-out item {tgt}; generated {row[:8]}...")
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

    def tokenizer_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--data", default="synthetic", help="synthetic | ml-100k:PATH")
        sp.add_argument("--dim", type=int, default=64, help="item embedding size")
        sp.add_argument("--fusion", default="contrastive",
                        choices=["contrastive", "concat", "content", "collaborative"])
        sp.add_argument("--levels", type=int, default=3)
        sp.add_argument("--codebook-size", type=int, default=32)
        sp.add_argument("--iters", type=int, default=20)
        sp.add_argument("--balanced", action="store_true", help="size-constrained k-means")
        sp.add_argument("--out", default=None, help="folder for tokenizer + semantic IDs")

    tok = sub.add_parser("tokenize", help="item embeddings + RQ-KMeans tokenizer + semantic IDs")
    common(tok)
    tokenizer_args(tok)
    tok.set_defaults(func=cmd_tokenize)

    run = sub.add_parser("run", help="the main job: tokenizer, trie, constrained generation")
    common(run)
    tokenizer_args(run)
    run.add_argument("--beam-width", type=int, default=32)
    run.add_argument("--max-users", type=int, default=None)
    run.add_argument("--beam-backend", default=None, help="torch | cpp | cuda (default: fastest)")
    run.set_defaults(func=cmd_run)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, RuntimeError, OSError) as exc:
        # Our checks name the argument and the fix; a traceback would only bury that.
        print(f"onerec {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

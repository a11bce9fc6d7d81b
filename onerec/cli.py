"""The `onerec` command line.

`onerec run` is the main job on the embedded default (synthetic data, no downloads); other
subcommands expose single stages. Every subcommand prints what ran where (backend, device).

Every argument is checked before any compute starts. Exit status: 0 success, 2 a usage error
(bad argument, unusable device/backend, unwritable --out), 1 a failure while working, 130 when
interrupted (Ctrl-C). Result folders (--out) are all-or-nothing: see onerec.results.
"""
from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
import time

import torch

EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class UsageError(ValueError):
    """A bad request found before (or instead of) the work: exit status 2."""


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    parse.__name__ = f"int >= {low}"  # what argparse names in its messages
    return parse


def _device_arg(name: str) -> str:
    """--device: 'auto', 'cpu' or 'cuda[:i]', checked against this machine at parse time."""
    if name == "auto":
        return name
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"expected auto | cpu | cuda[:i], got {name!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected auto | cpu | cuda[:i], got {name!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{name}: no CUDA device is available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{name}: this machine has "
                                             f"{torch.cuda.device_count()} CUDA device(s)")
    return name


def _data_arg(spec: str) -> str:
    from onerec.data import parse_spec

    try:
        kind, path = parse_spec(spec)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("load_dataset: ")) from None
    if kind == "ml-100k":
        import os

        if not os.path.isdir(path):
            raise argparse.ArgumentTypeError(f"{spec}: {path} is not a folder (expected the "
                                             f"one holding u.data, u.item, u.user)")
    return spec


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _resolve(module, requested: str | None, dev: torch.device, native_op: str) -> str:
    from onerec_kernels._backend import resolve

    return resolve(module.OP, requested, dev, module.SUPPORTED, module.DEFAULT_ORDER,
                   native_op=native_op)


# ------------------------------------------------------------------------------------ rq
def check_rq(args: argparse.Namespace, stack: contextlib.ExitStack) -> dict:
    from onerec_kernels.rq import op as rq_op

    dev = _device(args.device)
    return {"device": dev, "backend": _resolve(rq_op, args.backend, dev, "rq_assign")}


def cmd_rq(args: argparse.Namespace, plan: dict) -> int:
    """Batched RQ assignment on generated clustered data: codes, timing, backend, device."""
    import onerec_kernels as ok

    dev, backend = plan["device"], plan["backend"]
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(args.seed)
    # Clustered synthetic embeddings: K0 centres plus noise, so the codes carry structure.
    centres = torch.randn(args.codebook_size, args.dim, generator=gen)
    x = centres[torch.randint(0, args.codebook_size, (args.num,), generator=gen)]
    x = x + 0.3 * torch.randn(args.num, args.dim, generator=gen)
    # Codebooks: level 0 from data rows (repeating rows when K > N), deeper levels from
    # shrinking residual scales.
    rows = torch.randperm(args.num, generator=gen)[torch.arange(args.codebook_size) % args.num]
    levels = [x[rows]]
    for level in range(1, args.levels):
        levels.append(0.3 ** level * torch.randn(args.codebook_size, args.dim, generator=gen))
    codebooks = torch.stack(levels)
    x, codebooks = x.to(dev, dtype), codebooks.to(dev, dtype)

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


# ------------------------------------------------------------------------------ tokenize
def check_tokenize(args: argparse.Namespace, stack: contextlib.ExitStack) -> dict:
    from onerec.results import ResultFolder
    from onerec.tokenizer import RQKMeansTokenizer
    from onerec_kernels.kmeans import op as kmeans_op

    dev = _device(args.device)
    backend = _resolve(kmeans_op, args.backend, dev, "kmeans_step")
    # The tokenizer's own checks, now rather than after the embeddings are built.
    RQKMeansTokenizer(num_levels=args.levels, codebook_size=args.codebook_size, iters=args.iters,
                      seed=args.seed, balanced=args.balanced, backend=backend)
    out = None
    if args.out:  # lock + private temp dir now: a busy, file or read-only --out fails here
        config = {k: v for k, v in vars(args).items() if k not in ("func", "check")}
        out = stack.enter_context(ResultFolder(args.out, command=args.command_line, config=config))
    return {"device": dev, "backend": backend, "out": out}


def _tokenize(args: argparse.Namespace, plan: dict, *, commit: bool = True):
    from onerec.data import load_dataset
    from onerec.data.embeddings import format_report
    from onerec.pipeline import build_semantic_ids, save_semantic_ids

    dev, backend, out = plan["device"], plan["backend"], plan["out"]
    t0 = time.perf_counter()
    ds = load_dataset(args.data)
    print(ds.summary(), f"[{time.perf_counter() - t0:.1f} s]")
    capacity = args.codebook_size ** args.levels
    if ds.num_items > capacity:
        raise UsageError(f"{ds.num_items} items need distinct semantic IDs but --levels "
                         f"{args.levels} x --codebook-size {args.codebook_size} hold only "
                         f"{capacity}; raise one of them")
    print(f"tokenizer fit: kmeans_step backend={backend}  device={dev}")
    sids = build_semantic_ids(ds, dim=args.dim, fusion=args.fusion, num_levels=args.levels,
                              codebook_size=args.codebook_size, balanced=args.balanced,
                              iters=args.iters, seed=args.seed, backend=backend, device=dev,
                              progress=sys.stderr.isatty())
    print(format_report(sids.embedding_report))
    _print_quality(sids.quality)
    print(f"  [embeddings {sids.seconds['embeddings']:.1f} s, tokenizer "
          f"{sids.seconds['tokenizer']:.1f} s]")
    if out is not None:
        save_semantic_ids(sids, out)
        if commit:
            _publish(args, out)
    return ds, sids


def _publish(args: argparse.Namespace, out) -> None:
    names = out.commit()
    print(f"saved {', '.join(names)} and manifest.json to {args.out}")


def cmd_tokenize(args: argparse.Namespace, plan: dict) -> int:
    """Item embeddings + RQ-KMeans tokenizer + one-to-one semantic-ID table, with its report."""
    _tokenize(args, plan)
    return 0


# ----------------------------------------------------------------------------------- run
def check_run(args: argparse.Namespace, stack: contextlib.ExitStack) -> dict:
    from onerec_kernels.beam import op as beam_op

    dev = _device(args.device)
    beam_backend = _resolve(beam_op, args.beam_backend, dev, beam_op.NATIVE_OP)
    return {**check_tokenize(args, stack), "beam_backend": beam_backend}


def cmd_run(args: argparse.Namespace, plan: dict) -> int:
    """The main job on the chosen data (default: the embedded synthetic generator): item
    embeddings, tokenizer, trie, pretraining of the tiny OneRec model, its evaluation against the
    baselines on the held-out users (side-by-side table, both protocols), and a few users'
    recommendations with their semantic IDs."""
    import json

    import onerec_kernels as ok
    from onerec.main_job import (evaluate_against_baselines, recommend_examples, train_model,
                                 train_out_dir)
    from onerec.pipeline import build_trie

    dev, beam_backend, out = plan["device"], plan["beam_backend"], plan["out"]
    print(f"onerec run: data={args.data} device={dev} native={ok.native_available()} "
          f"beam backend={beam_backend}")
    ds, sids = _tokenize(args, plan, commit=False)
    trie = build_trie(sids, dev)
    print(f"trie: {trie.num_items} items, levels {trie.num_levels}, "
          f"max branching {[trie.max_branching(t) for t in range(trie.num_levels)]}")
    print(f"training: tiny OneRec, {args.steps} steps of {args.batch_size} contexts "
          f"(device={dev})")
    trained = train_model(ds, sids, trie, steps=args.steps, batch_size=args.batch_size,
                          seed=args.seed, device=dev,
                          out_dir=train_out_dir(out) if out is not None else None,
                          progress=sys.stderr.isatty())
    res = trained.result
    params = sum(p.numel() for p in trained.model.parameters())
    print(f"  {params / 1e3:.0f}k parameters; loss {res.losses[0]:.3f} -> {res.losses[-1]:.3f} "
          f"in {res.seconds:.1f} s")
    print("evaluation: full-catalogue leave-one-out on the test split"
          + (" (SASRec trains first)" if args.sasrec else ""))
    table = evaluate_against_baselines(ds, sids, trie, trained, max_users=args.max_users,
                                       sasrec=args.sasrec, seed=args.seed,
                                       beam_backend=beam_backend)
    if args.sasrec:
        rep = table["sasrec_train"]
        print(f"sasrec: {rep['epochs']} epochs in {rep['seconds']:.1f} s, loss "
              f"{rep['loss'][0]:.3f} -> {rep['loss'][-1]:.3f}")
    print(table["markdown"])
    rows = [r for r in table["rows"] if r["model"] == "onerec"]
    legal = min(r["legal_rate"] for r in rows)
    print(f"generation: {table['users']} users, OneRec trie-constrained beam search "
          f"(backend={beam_backend}) in {sum(r['seconds'] for r in rows):.1f} s; "
          f"legal items {legal:.1%}")
    exclude = table["default_protocol"] == "exclude"
    print(f"recommendations (beam width {args.beam_width}, {table['default_protocol']} "
          f"protocol; first 5 as item id [semantic ID]):")
    for ex in recommend_examples(ds, trained, trie, k=args.beam_width, exclude=exclude,
                                 beam_backend=beam_backend):
        items = ", ".join(f"{i} {list(c)}" for i, c in ex["items"][:5])
        print(f"  user {ex['user']}: held-out item {ex['target']}; recommended {items}")
    if out is not None:
        with open(out.path("eval.json"), "w") as f:
            json.dump({k: v for k, v in table.items() if k != "markdown"}, f, indent=1,
                      default=float)
        _publish(args, out)
    return 0


# -------------------------------------------------------------------------------- parser
class _HelpFormatter(argparse.HelpFormatter):
    """One line of help per option with its default appended (unless the help already says
    what the default means, or there is none to show)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" not in text and action.option_strings and not any(
                action.default is d for d in (None, False, argparse.SUPPRESS)):
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    from onerec_kernels.beam import op as beam_op
    from onerec_kernels.kmeans import op as kmeans_op
    from onerec_kernels.rq import op as rq_op

    fmt = _HelpFormatter
    intro, _, exit_status = __doc__.strip().split("\n\n")[:3]
    p = argparse.ArgumentParser(prog="onerec", description=intro, epilog=exit_status,
                                formatter_class=fmt)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    positive, nonneg = _int_at_least(1), _int_at_least(0)

    def command(name: str, func, check, help: str):
        doc = " ".join(func.__doc__.split())
        sp = sub.add_parser(name, help=help, description=doc, formatter_class=fmt)
        sp.set_defaults(func=func, check=check)
        return sp

    def common(sp: argparse.ArgumentParser, backends) -> None:
        sp.add_argument("--device", default="auto", type=_device_arg,
                        help="auto (CUDA when present, else CPU) | cpu | cuda[:i]")
        sp.add_argument("--backend", default=None, choices=backends,
                        help="kernel backend (default: the fastest available on --device)")
        sp.add_argument("--seed", type=nonneg, default=0, help="random seed (data, k-means)")

    rq = command("rq", cmd_rq, check_rq, "batched RQ assignment on generated data (timing)")
    common(rq, rq_op.SUPPORTED)
    rq.add_argument("--num", type=positive, default=20000, help="N, points to assign")
    rq.add_argument("--dim", type=positive, default=64, help="D, embedding size")
    rq.add_argument("--levels", type=positive, default=3, help="L, residual levels")
    rq.add_argument("--codebook-size", type=positive, default=256, help="K, codes per level")
    rq.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                    help="dtype of points and codebooks")

    def tokenizer_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--data", default="synthetic", type=_data_arg,
                        help="synthetic | ml-100k:PATH (folder holding u.data, u.item, u.user)")
        sp.add_argument("--dim", type=positive, default=64, help="item embedding size")
        sp.add_argument("--fusion", default="contrastive",
                        choices=["contrastive", "concat", "content", "collaborative"],
                        help="how content and collaborative signals make item embeddings")
        sp.add_argument("--levels", type=positive, default=3, help="semantic-ID levels L")
        sp.add_argument("--codebook-size", type=positive, default=32, help="codes per level K")
        sp.add_argument("--iters", type=nonneg, default=20, help="Lloyd iterations per level")
        sp.add_argument("--balanced", action="store_true", help="size-constrained k-means")
        sp.add_argument("--out", default=None,
                        help="result folder for tokenizer, semantic IDs and report (written "
                             "all-or-nothing, with manifest.json)")

    tok = command("tokenize", cmd_tokenize, check_tokenize,
                  "item embeddings + RQ-KMeans tokenizer + semantic IDs")
    common(tok, kmeans_op.SUPPORTED)
    tokenizer_args(tok)

    run = command("run", cmd_run, check_run,
                  "the main job: semantic IDs, training, evaluation vs baselines")
    common(run, kmeans_op.SUPPORTED)
    tokenizer_args(run)
    run.add_argument("--beam-width", type=positive, default=32,
                     help="beams per example user's search (the evaluation's is 20, its largest "
                          "cutoff)")
    run.add_argument("--max-users", type=positive, default=None,
                     help="evaluate only the first this many held-out users (default: all)")
    run.add_argument("--steps", type=positive, default=400,
                     help="training steps of the tiny OneRec model")
    run.add_argument("--batch-size", type=positive, default=64,
                     help="training contexts per step")
    run.add_argument("--sasrec", action="store_true",
                     help="add SASRec (briefly trained) to the baselines")
    run.add_argument("--beam-backend", default=None, choices=beam_op.SUPPORTED,
                     help="beam-search backend (default: the fastest available on --device)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2, message printed)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    args.command_line = shlex.join(["onerec", *argv])
    prefix = f"onerec {args.command}"
    try:
        with contextlib.ExitStack() as stack:
            try:
                plan = args.check(args, stack)
            except (ValueError, TypeError, RuntimeError, OSError) as exc:
                raise UsageError(str(exc)) from exc
            return args.func(args, plan)
    except UsageError as exc:
        print(f"{prefix}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted (nothing was published to --out)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, TypeError, RuntimeError, OSError) as exc:
        # Our checks name the argument and the fix; a traceback would only bury that.
        print(f"{prefix}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())

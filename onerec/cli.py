"""The `onerec` command line.

`onerec run` is the main job on the embedded default (synthetic data, no downloads);
`onerec train`, `onerec eval` and `onerec recommend` split it around a result folder; `tokenize`
and `rq` expose single stages. Every subcommand prints what ran where (backend, device).

Every argument is checked before any compute starts. Exit status: 0 success, 2 a usage error
(bad argument, missing data path, unknown preset, unusable device/backend, unwritable --out,
incompatible checkpoint), 1 a failure while working, 130 when interrupted (Ctrl-C). Result
folders (--out) are all-or-nothing: see onerec.results.

The training folder (files: onerec.jobs). `train --out DIR` publishes the tokenizer, semantic
IDs, model and training configs, checkpoints and metrics under one manifest; a run that does
not finish (Ctrl-C, kill, error) publishes nothing, so DIR keeps its previous complete state.
While it runs, its tokenizer and checkpoints (every --checkpoint-every steps) live in the work
folder DIR/.work, which no manifest lists and which survives a kill (onerec.jobs.WorkFolder):
`train --resume` continues from its last checkpoint, or else from the published DIR/last.pt,
with the tokenizer and semantic IDs of the run that wrote it (never rebuilt, so the checkpoint's
checksum matches), exactly as if never stopped, and publishes all-or-nothing in turn. A fresh
run refuses to start over a work folder holding a checkpoint (resume it, or delete DIR/.work);
one without a checkpoint is discarded. `--stop-after N` ends a run early on purpose and
publishes it (the schedule still spans --steps) for a later --resume.
`eval --out DIR` writes into the same DIR, the place a user looks for a model's results: it
takes DIR's lock, checks DIR against its manifest, and re-publishes it with eval.json and an
updated summary.md, every training file carried over (hard links) under the new manifest, so DIR
still verifies (onerec.results.verify_result_folder) and a stopped evaluation changes nothing.
`recommend` only reads DIR.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
import time

import torch

EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class UsageError(ValueError):
    """A bad request found before (or instead of) the work: exit status 2."""


def _number(kind: type, low, *, above: bool = False):
    """An argparse type: a `kind` (int or float) >= low (> low with `above`; never nan)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (value > low if above else value >= low):
            raise argparse.ArgumentTypeError(f"must be {'>' if above else '>='} {low}, "
                                             f"got {value}")
        return value
    parse.__name__ = f"{kind.__name__} {'>' if above else '>='} {low}"  # argparse's messages
    return parse


def _int_at_least(low: int):
    return _number(int, low)


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
        if not os.path.isdir(path):
            raise argparse.ArgumentTypeError(f"{spec}: {path} is not a folder (expected the "
                                             f"one holding u.data, u.item, u.user)")
    if kind == "seqrec-json":
        from onerec.data.seqrec import find_files

        try:
            find_files(path)
        except FileNotFoundError as exc:
            raise argparse.ArgumentTypeError(
                f"{spec}: {str(exc).removeprefix('seqrec-json: ')}") from None
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
        from onerec.jobs import have_matplotlib

        if not have_matplotlib():
            print("matplotlib is not installed: no tokenizer_report.png (pip install matplotlib)")
        save_semantic_ids(sids, out, plot=have_matplotlib())
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


def _print_sasrec_training(table: dict) -> None:
    rep = table["sasrec_train"]
    print(f"sasrec: {rep['epochs']} epochs in {rep['seconds']:.1f} s, loss "
          f"{rep['loss'][0]:.3f} -> {rep['loss'][-1]:.3f}")


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
        _print_sasrec_training(table)
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


# --------------------------------------------------------------------------------- train
def _options(args: argparse.Namespace) -> dict:
    """The run's settings as saved in train_config.json (the data spec with an absolute path)."""
    from onerec.jobs import normalize_data_spec

    skip = ("func", "check", "command", "command_line", "out", "resume")
    opts = {k: v for k, v in vars(args).items() if k not in skip}
    return {**opts, "data": normalize_data_spec(args.data)}


def _cli_name(option: str) -> str:
    return "--" + option.replace("_", "-")


def check_train(args: argparse.Namespace, stack: contextlib.ExitStack) -> dict:
    from onerec.jobs import WorkFolder, open_training_folder, resume_differences
    from onerec.main_job import checkpoint_finished, default_warmup
    from onerec.train import IncompleteCheckpoint, TrainConfig
    from onerec.train.pretrain import LAST

    train_config = TrainConfig(
        lr=args.lr, max_steps=args.steps, warmup_steps=default_warmup(args.steps),
        batch_size=args.batch_size, grad_accum=args.grad_accum, eval_every=args.eval_every,
        eval_users=args.eval_users, patience=args.patience,
        checkpoint_every=args.checkpoint_every, compile=args.compile, seed=args.seed,
        log_every=max(1, min(10, args.steps // 20)))
    if args.stop_after is not None and args.stop_after > args.steps:
        raise UsageError(f"--stop-after {args.stop_after} is beyond --steps {args.steps} (the "
                         f"length of the schedule)")
    last = os.path.join(args.out, LAST)
    if args.resume and not (os.path.isfile(last) or WorkFolder(args.out).exists):
        raise UsageError(f"--resume: there is no {last} to continue from (no `onerec train --out "
                         f"{args.out}` has published or checkpointed a run there); drop "
                         f"--resume to start a fresh run")
    plan = check_tokenize(args, stack)  # takes the lock on --out: the folder cannot change now
    work = WorkFolder(args.out)
    work.remove_leftovers()
    if work.exists and work.published():
        work.discard()  # killed just after publishing: the published folder holds that run
    previous, done, finished, discard_work = None, 0, False, False
    if work.exists:
        try:
            info = work.last_info()
            done, base = (info["step"] if info else 0), int(work.meta["base_step"])
        except IncompleteCheckpoint as exc:
            raise UsageError(f"{exc}; delete {work.path} to go on without it (--resume then "
                             f"continues from {last} when a run was published there)") from exc
        total = work.train["train"]["max_steps"]
        if not args.resume and done > base:
            raise UsageError(f"{args.out} holds an interrupted run, checkpointed at step {done} "
                             f"of {total} in {work.path}: continue it with --resume, or delete "
                             f"{work.path} to train afresh")
        discard_work = not args.resume
        finished = info is not None and checkpoint_finished(info)
    if args.resume:
        if work.exists:  # the newest state of DIR: an interrupted run (maybe of a resume)
            work_train = work.train
            options, command = work_train["options"], work_train["command"]
        else:
            previous = open_training_folder(args.out)
            options, command = previous.train["options"], previous.train["command"]
        diff = resume_differences(options, _options(args))
        if diff:
            said = ", ".join(f"{_cli_name(k)} {a!r} (now {b!r})" for k, (a, b) in diff.items())
            raise UsageError(f"--resume: {args.out} was trained with other settings: {said}; a "
                             f"resume repeats them (it ran as: {command})")
        if previous is not None:
            done, total, finished = previous.progress
            if finished:
                raise UsageError(f"--resume: the run in {args.out} has finished (step {done} "
                                 f"of {total}); nothing to continue. Train afresh (without "
                                 f"--resume) for a longer schedule")
        if args.stop_after is not None and args.stop_after <= done and not finished:
            raise UsageError(f"--stop-after {args.stop_after}: the run in {args.out} is already "
                             f"at step {done}")
    source = "work" if args.resume and work.exists else "published" if args.resume else None
    return {**plan, "train_config": train_config, "previous": previous, "work": work,
            "source": source, "done": done, "discard_work": discard_work}


def _training_stopped(args: argparse.Namespace, work) -> None:
    """Tell what a stopped run left in its work folder and how to go on from there."""
    from onerec.train import IncompleteCheckpoint

    again = args.command_line + ("" if args.resume else " --resume")
    try:
        step = work.progress()[0] if work.exists else 0
    except IncompleteCheckpoint:
        step = 0
    if step:
        print(f"onerec train: the checkpoint of step {step} stays in {work.path}; continue "
              f"with: {again}", file=sys.stderr)
    elif work.exists:
        print(f"onerec train: no checkpoint yet (--checkpoint-every {args.checkpoint_every}); "
              f"{again} trains again with the saved tokenizer", file=sys.stderr)


def _print_training(args: argparse.Namespace, res, done: int, params: int,
                    seconds: float) -> None:
    new = res.losses[done:]  # this run's steps
    if new:
        print(f"  {params / 1e3:.0f}k parameters; steps {done + 1}-{res.step}: loss "
              f"{new[0]:.3f} -> {new[-1]:.3f} in {seconds:.1f} s")
    else:
        print(f"  the run had ended at step {res.step} but was not published: publishing it")
    for e in res.evals:
        print(f"  validation step {e['step']}: Recall@{e['k']} {e['recall']:.4f}, legal "
              f"{e['legal_rate']:.1%}")
    if res.stopped_early:
        print(f"  stopped early at step {res.step}: {args.patience} validations without gain")
    elif res.extra.get("stopped_at"):
        print(f"  stopped after step {res.step} of {args.steps} (--stop-after); continue with "
              f"--resume")


def cmd_train(args: argparse.Namespace, plan: dict) -> int:
    """Train a OneRec model of --preset on --data and leave in --out everything `onerec eval`
    and `onerec recommend` need: data, item embeddings, tokenizer and semantic IDs (saved), trie,
    pretraining with periodic validation (Recall@10, best checkpoint kept, early stopping),
    then last.pt, best.pt, metrics.jsonl, metrics.json, training.png (with matplotlib),
    summary.md, model_config.json and train_config.json, published all-or-nothing.
    While it runs, the checkpoints (every --checkpoint-every steps) live in --out/.work, which
    survives a kill or Ctrl-C: --resume then continues from the last one exactly (same losses as
    an uninterrupted run), else from the published last.pt, with the tokenizer and semantic IDs
    of that run; it must repeat the run's data, tokenizer, preset and schedule options. A run
    that does not finish publishes nothing, so --out keeps its previous complete state. A fresh
    run refuses to start over an interrupted run's checkpoint (--resume it, or delete
    --out/.work). To train in pieces, use --stop-after and then --resume."""
    from dataclasses import replace

    import onerec_kernels as ok
    from onerec.data import load_dataset
    from onerec.jobs import (BEST, EVAL_JSON, LAST, METRICS, MODEL_CONFIG, PLOT, PLOT_FILE,
                             TOKENIZER_FILES, WorkFolder, have_matplotlib, read_json,
                             semantic_ids_from_folder, training_metrics, write_training_files)
    from onerec.main_job import model_config, train_run
    from onerec.pipeline import build_trie
    from onerec.train import CheckpointError

    dev, out, prev, work = plan["device"], plan["out"], plan["previous"], plan["work"]
    source, done = plan["source"], plan["done"]
    print(f"onerec train: data={args.data} preset={args.preset} device={dev} "
          f"native={ok.native_available()}")
    if plan["discard_work"]:
        print(f"discarding {work.path}: an interrupted run without a checkpoint of its own")
        work.discard()
    if source is None:
        if os.path.isfile(os.path.join(args.out, LAST)):
            print(f"{args.out} holds an earlier training run: this fresh run replaces it when "
                  f"it finishes (--resume would continue it)")
        ds, sids = _tokenize(args, plan, commit=False)
        links = {n: out.path(n) for n in TOKENIZER_FILES if os.path.exists(out.path(n))}
        copies, base_seconds = {}, 0.0
    else:
        t0 = time.perf_counter()
        ds = load_dataset(args.data)
        print(ds.summary(), f"[{time.perf_counter() - t0:.1f} s]")
        # The tokenizer and table of the run that wrote the checkpoint, not rebuilt ones: the
        # checkpoint's checksum is of these codes.
        folder = work.path if source == "work" else args.out
        sids = semantic_ids_from_folder(folder, backend=plan["backend"])
        if source == "work":
            print(f"resuming the interrupted run in {work.path} at step {done} of {args.steps}; "
                  f"tokenizer and semantic IDs loaded from there")
        else:
            links = {n: os.path.join(args.out, n) for n in TOKENIZER_FILES + (LAST, BEST)
                     if prev.has(n)}
            # pretrain appends to metrics.jsonl: a copy, never the published file
            copies = {METRICS: os.path.join(args.out, METRICS)} if prev.has(METRICS) else {}
            base_seconds = (prev.metrics or {}).get("train", {}).get("seconds", 0.0) or 0.0
            print(f"resuming {os.path.join(args.out, LAST)} at step {done} of {args.steps}; "
                  f"tokenizer and semantic IDs loaded from {args.out}")
    trie = build_trie(sids, dev)
    config = model_config(args.preset, sids, ds)
    cfg = replace(plan["train_config"], out_dir=work.path, progress=sys.stderr.isatty())
    train_dict = {k: v for k, v in cfg.to_dict().items() if k not in ("out_dir", "progress")}
    train_dict["checkpoint_every"] = args.checkpoint_every
    if source == "work":
        if read_json(work.path, MODEL_CONFIG) != config.to_dict():
            raise UsageError(f"--resume: the model config of {work.path} differs from the one "
                             f"--preset {args.preset} gives on this data")
    else:
        work = WorkFolder.create(
            args.out, links=links, copies=copies,
            meta={"base_step": done, "base_seconds": base_seconds},
            model_config=config.to_dict(),
            train_config={"command": args.command_line, "options": _options(args),
                          "train": train_dict})
    try:
        info = work.last_info()
        work.restore_best(info["best_step"] if info else 0)
        for name in (BEST, PLOT, PLOT_FILE, EVAL_JSON):  # an earlier run's, if this one lacks it
            out.discard(name)
        print(f"training: preset {args.preset}, {args.steps} steps of {args.batch_size} x "
              f"{args.grad_accum} contexts, lr {args.lr}"
              + (f", stopping after step {args.stop_after}" if args.stop_after else "")
              + (f", validation every {args.eval_every} steps on {args.eval_users} users"
                 if args.eval_every else ", no validation")
              + f"; checkpoints in {work.path}")
        t0 = time.perf_counter()
        try:
            trained = train_run(ds, sids, trie, config, cfg, seed=args.seed, device=dev,
                                resume_from=work.file(LAST) if info else None,
                                stop_after=args.stop_after, on_step=work.checkpoint_hook())
        except CheckpointError as exc:
            raise UsageError(str(exc)) from exc
        seconds = time.perf_counter() - t0
        res = trained.result
        params = sum(p.numel() for p in trained.model.parameters())
        _print_training(args, res, done, params, seconds)
        metrics = training_metrics(res, options=_options(args), model_config=config.to_dict(),
                                   train_config=train_dict, parameters=params, device=str(dev),
                                   seconds=seconds,
                                   previous={"train": {"seconds": work.meta["base_seconds"]}})
        for name in TOKENIZER_FILES + (LAST, BEST, METRICS):  # the run's files, into DIR
            if os.path.exists(work.file(name)) and not os.path.exists(out.path(name)):
                out.carry(name, src=work.file(name), copy=name == METRICS)
        write_training_files(out, metrics=metrics, options=_options(args),
                             command=args.command_line, model_config=config.to_dict(),
                             train_config=train_dict, work_id=work.meta["id"])
        if not have_matplotlib():
            print("matplotlib is not installed: no training.png (pip install matplotlib)")
        # Removed under DIR's lock, once published: a kill in between leaves a work folder
        # that the published train_config.json names (stale, dropped by the next run).
        out.on_published(work.discard)
        _publish(args, out)
    except UsageError:
        raise
    except BaseException:
        _training_stopped(args, work)
        raise
    return 0


# ------------------------------------------------------------------------- eval, recommend
def _check_trained(args: argparse.Namespace) -> dict:
    """The checks `eval` and `recommend` share: --out is a complete training folder, the
    checkpoint is in it, --data (default: the training's) is usable."""
    from onerec.jobs import CHECKPOINTS, open_training_folder

    if not os.path.isdir(args.out):
        raise UsageError(f"--out {args.out}: no such folder (train first: onerec train --out "
                         f"{args.out})")
    folder = open_training_folder(args.out)
    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = "best" if folder.has(CHECKPOINTS["best"]) else "last"
    elif not folder.has(CHECKPOINTS[checkpoint]):
        raise UsageError(f"--checkpoint {checkpoint}: {args.out} has no "
                         f"{CHECKPOINTS[checkpoint]} (training ran no validation: --eval-every "
                         f"0, or it stopped before the first); use --checkpoint last")
    spec = args.data if args.data is not None else folder.train["options"]["data"]
    try:
        _data_arg(spec)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"--data: {exc}") from None
    return {"device": _device(args.device), "folder": folder, "checkpoint": checkpoint,
            "data": spec}


def _load_trained(args: argparse.Namespace, plan: dict):
    from onerec.data import load_dataset
    from onerec.jobs import load_trained_folder
    from onerec.train import CheckpointError

    t0 = time.perf_counter()
    ds = load_dataset(plan["data"])
    print(ds.summary(), f"[{time.perf_counter() - t0:.1f} s]")
    try:
        run = load_trained_folder(plan["folder"], ds, plan["checkpoint"], device=plan["device"])
    except CheckpointError as exc:
        raise UsageError(str(exc)) from exc
    opts = plan["folder"].train["options"]
    params = sum(p.numel() for p in run.trained.model.parameters())
    print(f"model: preset {opts['preset']} ({params / 1e3:.0f}k parameters), checkpoint "
          f"{run.checkpoint} (step {run.info['step']}) from {args.out}; trie of "
          f"{run.trie.num_items} items on {plan['device']}")
    return ds, run


def check_eval(args: argparse.Namespace, stack: contextlib.ExitStack) -> dict:
    from onerec.results import ResultFolder
    from onerec_kernels.beam import op as beam_op

    if not os.path.isdir(args.out):  # ResultFolder would create it
        raise UsageError(f"--out {args.out}: no such folder (train first: onerec train --out "
                         f"{args.out})")
    config = {k: v for k, v in vars(args).items() if k not in ("func", "check")}
    # The lock first, then the checks: no other writer can change the folder in between.
    out = stack.enter_context(ResultFolder(args.out, command=args.command_line, config=config))
    plan = _check_trained(args)
    beam_backend = _resolve(beam_op, args.beam_backend, plan["device"], beam_op.NATIVE_OP)
    return {**plan, "out": out, "beam_backend": beam_backend}


def cmd_eval(args: argparse.Namespace, plan: dict) -> int:
    """Evaluate the model trained in --out (its tokenizer, semantic IDs, model config and
    checkpoint, loaded from there) against the baselines on the same held-out users:
    popularity, co-occurrence, the history-code prior and, with --sasrec, SASRec; Recall and
    NDCG at 1, 5, 10, 20, legal-output rate, consumed share, coverage, cold targets; prints the
    markdown table. Writes eval.json and the evaluation into summary.md of the same --out
    folder, re-published all-or-nothing with every training file kept under one manifest (a
    stopped evaluation leaves the folder as it was)."""
    from onerec.jobs import EVAL_JSON, SUMMARY, format_summary, write_json
    from onerec.eval import KS
    from onerec.main_job import SASREC_FULL, evaluate_against_baselines

    dev, out, beam_backend = plan["device"], plan["out"], plan["beam_backend"]
    print(f"onerec eval: {args.out} device={dev} beam backend={beam_backend}")
    ds, run = _load_trained(args, plan)
    protocols = ("exclude", "keep") if args.protocol == "both" else (args.protocol,)
    print(f"evaluation: full-catalogue leave-one-out on the {args.split} split"
          + (" (SASRec trains first)" if args.sasrec else ""))
    sasrec = dict(SASREC_FULL)
    if args.sasrec_epochs is not None:
        sasrec["epochs"] = args.sasrec_epochs
    table = evaluate_against_baselines(ds, run.sids, run.trie, run.trained,
                                       max_users=args.max_users, sasrec=args.sasrec,
                                       seed=args.seed, beam_backend=beam_backend,
                                       split=args.split, protocols=protocols,
                                       sasrec_options=sasrec, beam_width=args.beam_width)
    if args.sasrec:
        _print_sasrec_training(table)
    print(f"onerec: constrained beam search of width {max(max(KS), args.beam_width)}")
    print(table["markdown"])
    legal = min(r["legal_rate"] for r in table["rows"] if r["model"] == "onerec")
    print(f"OneRec legal outputs {legal:.1%}")
    report = {k: v for k, v in table.items() if k != "markdown"}
    report.update(checkpoint=run.checkpoint, checkpoint_step=run.info["step"],
                  command=args.command_line)
    write_json(out.path(EVAL_JSON), report)
    folder = plan["folder"]
    if folder.metrics is not None:
        with open(out.path(SUMMARY), "w") as f:
            f.write(format_summary(folder.metrics, {**report, "markdown": table["markdown"]}))
    rewritten = {EVAL_JSON} | ({SUMMARY} if folder.metrics is not None else set())
    for name in folder.manifest["files"]:  # the training files stay listed
        if name not in rewritten:
            out.carry(name)
    _publish(args, out)
    return 0


def _user_list(text: str) -> list[int]:
    try:
        users = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected user ids separated by commas, got "
                                         f"{text!r}") from None
    if not users:
        raise argparse.ArgumentTypeError("expected at least one user id")
    return users


def check_recommend(args: argparse.Namespace, stack: contextlib.ExitStack) -> dict:
    from onerec_kernels.beam import op as beam_op

    plan = _check_trained(args)  # reads --out only: no lock, nothing written
    return {**plan, "beam_backend": _resolve(beam_op, args.beam_backend, plan["device"],
                                             beam_op.NATIVE_OP)}


def cmd_recommend(args: argparse.Namespace, plan: dict) -> int:
    """Top-K recommendations of the model trained in --out for some users, from each user's
    whole history: item id, semantic ID and (when the data has item text) title. Items the user
    already consumed are excluded on data where nobody consumes an item twice (the evaluator's
    default protocol) unless --keep-consumed. User and item ids are the data's own ids."""
    from onerec.eval import default_exclude_consumed
    from onerec.main_job import recommend_next

    dev, beam_backend = plan["device"], plan["beam_backend"]
    print(f"onerec recommend: {args.out} device={dev} beam backend={beam_backend}")
    ds, run = _load_trained(args, plan)
    if args.users is not None:
        dense = {int(u): i for i, u in enumerate(ds.users.ids)}
        unknown = [u for u in args.users if u not in dense]
        if unknown:
            raise UsageError(f"--users: {unknown} are not user ids of {ds.name} (its ids run "
                             f"{int(ds.users.ids.min())}..{int(ds.users.ids.max())})")
        users = [dense[u] for u in args.users]
    else:
        users = list(range(min(args.num_users, ds.num_users)))
    exclude, reason = default_exclude_consumed(ds)
    if args.keep_consumed:
        exclude, reason = False, "consumed items kept (--keep-consumed)"
    print(f"top {args.k} per user ({reason}); item id [semantic ID] title")
    recs = recommend_next(ds, run.trained, run.trie, users, k=args.k, exclude=exclude,
                          beam_backend=beam_backend)
    for r in recs:
        print(f"user {r['user']} ({r['history']} items in history):")
        for rank, it in enumerate(r["items"], 1):
            title = " ".join(it["title"].split())
            title = title if len(title) <= 70 else title[:67] + "..."
            print(f"  {rank:>3}. item {it['item']} {it['semantic_id']}"
                  + (f"  {title}" if title else ""))
        if len(r["items"]) < args.k:
            print(f"  (only {len(r['items'])} items left after excluding the history)")
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
    from onerec.model.config import PRESETS
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

    data_help = ("synthetic | ml-100k:PATH (folder holding u.data, u.item, u.user) | "
                 "seqrec-json:DIR (folder holding <name>.inter.json [+ <name>.item.json])")

    def tokenizer_args(sp: argparse.ArgumentParser, *, out_required: bool = False) -> None:
        sp.add_argument("--data", default="synthetic", type=_data_arg, help=data_help)
        sp.add_argument("--dim", type=positive, default=64, help="item embedding size")
        sp.add_argument("--fusion", default="contrastive",
                        choices=["contrastive", "concat", "content", "collaborative"],
                        help="how content and collaborative signals make item embeddings")
        sp.add_argument("--levels", type=positive, default=3, help="semantic-ID levels L")
        sp.add_argument("--codebook-size", type=positive, default=32, help="codes per level K")
        sp.add_argument("--iters", type=nonneg, default=20, help="Lloyd iterations per level")
        sp.add_argument("--balanced", action="store_true", help="size-constrained k-means")
        if out_required:
            sp.add_argument("--out", required=True,
                            help="result folder (written all-or-nothing, with manifest.json)")
        else:
            sp.add_argument("--out", default=None,
                            help="result folder for tokenizer, semantic IDs and report "
                                 "(written all-or-nothing, with manifest.json)")

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

    train = command("train", cmd_train, check_train,
                    "train a OneRec model into --out (tokenizer, checkpoints, metrics)")
    common(train, kmeans_op.SUPPORTED)
    tokenizer_args(train, out_required=True)
    train.add_argument("--preset", default="tiny", choices=sorted(PRESETS),
                       help="model size (onerec.model.config.PRESETS)")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --out: from the last checkpoint of an "
                            "interrupted run (--out/.work), else from the published last.pt")
    train.add_argument("--steps", type=positive, default=400,
                       help="optimizer steps of the schedule (warmup + cosine)")
    train.add_argument("--stop-after", type=positive, default=None,
                       help="end this run after that many steps in all (the schedule still "
                            "spans --steps) and publish; continue with --resume")
    train.add_argument("--batch-size", type=positive, default=64,
                       help="training contexts per micro-batch")
    train.add_argument("--grad-accum", type=positive, default=1,
                       help="micro-batches per step")
    train.add_argument("--lr", type=_number(float, 0, above=True), default=3e-3, help="peak AdamW learning rate")
    train.add_argument("--eval-every", type=nonneg, default=50,
                       help="steps between validations (Recall@10 on validation targets; 0: none)")
    train.add_argument("--eval-users", type=positive, default=256,
                       help="users of each validation (the first ones with a validation target)")
    train.add_argument("--patience", type=nonneg, default=3,
                       help="validations without gain before stopping (0: never stop early)")
    train.add_argument("--checkpoint-every", type=nonneg, default=50,
                       help="steps between checkpoints (into --out/.work, kept when the run "
                            "is killed, for --resume; 0: only at the end)")
    train.add_argument("--compile", action="store_true", help="torch.compile the training loss")

    def trained_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--out", required=True, help="the folder `onerec train --out` wrote")
        sp.add_argument("--data", default=None,
                        help="the data (default: the one the model was trained on); "
                             + data_help)
        sp.add_argument("--checkpoint", default=None, choices=["best", "last"],
                        help="which checkpoint (default: best.pt when training validated, "
                             "else last.pt)")
        sp.add_argument("--device", default="auto", type=_device_arg,
                        help="auto (CUDA when present, else CPU) | cpu | cuda[:i]")
        sp.add_argument("--beam-backend", default=None, choices=beam_op.SUPPORTED,
                        help="beam-search backend (default: the fastest available on --device)")

    ev = command("eval", cmd_eval, check_eval,
                 "evaluate a trained --out against the baselines; eval.json + summary.md")
    trained_args(ev)
    ev.add_argument("--split", default="test", choices=["test", "valid"],
                    help="held-out targets to score")
    ev.add_argument("--max-users", type=positive, default=None,
                    help="evaluate only the first this many held-out users (default: all)")
    ev.add_argument("--protocol", default="both", choices=["both", "exclude", "keep"],
                    help="consumed items excluded from the rankings, kept, or both side by side")
    ev.add_argument("--sasrec", action="store_true",
                    help="add SASRec to the baselines, trained here with the recipe of "
                         "docs/evaluation.md (2 layers, dim 64, last 100 items; minutes on a "
                         "CPU)")
    ev.add_argument("--sasrec-epochs", type=positive, default=None,
                    help="SASRec training epochs (default: the recipe's 100)")
    ev.add_argument("--beam-width", type=positive, default=20,
                    help="beams of OneRec's constrained search (at least 20, the largest "
                         "cutoff; wider finds better items that a narrow search prunes early)")
    ev.add_argument("--seed", type=nonneg, default=0, help="random seed (SASRec)")

    rec = command("recommend", cmd_recommend, check_recommend,
                  "top-K items per user from a trained --out")
    trained_args(rec)
    who = rec.add_mutually_exclusive_group()
    who.add_argument("--users", type=_user_list, default=None,
                     help="user ids of the data, comma separated (default: the first --num-users)")
    who.add_argument("--num-users", type=positive, default=5, help="the first this many users")
    rec.add_argument("-k", type=positive, default=10, help="items per user")
    rec.add_argument("--keep-consumed", action="store_true",
                     help="allow items the user already consumed (default: excluded on data "
                          "where nobody consumes an item twice)")
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

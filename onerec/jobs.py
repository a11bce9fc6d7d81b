"""Training result folders: what `onerec train` leaves in `--out`, and how `onerec eval` and
`onerec recommend` rebuild the trained model from that folder alone (plus the data). The CLI
parses arguments and prints; the folder work is here, the model work in onerec.main_job.

Files of a training folder, all listed in its manifest.json (see onerec.results):

    tokenizer.rqk, semantic_ids.pt, tokenizer_report.json [tokenizer_report.png]
                       the tokenizer stage (onerec.pipeline.save_semantic_ids)
    model_config.json  OneRecConfig.to_dict() of the trained model
    train_config.json  {"command", "options": {CLI option: value}, "train": TrainConfig dict}:
                       how it was trained; a resume must repeat the RESUME_OPTIONS
    last.pt [best.pt]  checkpoints (onerec.train; best.pt once a validation ran)
    metrics.jsonl [training.png]   the training log and its plot (when matplotlib is there)
    metrics.json       {"train": summary, "valid": validation history, "config": ...}
    summary.md         markdown tables: the training, and the evaluation once `onerec eval` ran
    eval.json          the `onerec eval` table (onerec.eval.compare_rankers), once it ran

While a run trains, its checkpoints live in the work folder DIR/.work (WorkFolder), which no
manifest lists: a killed run keeps its last periodic checkpoint there for `--resume`, and the
published files stay those of the previous complete run until the new one publishes.
"""
from __future__ import annotations

import contextlib
import glob
import importlib.util
import json
import math
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass

import numpy as np
import torch

from .data import Dataset
from .main_job import TrainedModel
from .pipeline import (PLOT_FILE, REPORT_FILE, SEMANTIC_IDS_FILE, TOKENIZER_FILE, SemanticIds,
                       build_trie)
from .results import MANIFEST, fsync_dir, fsync_file, link_or_copy, verify_result_folder
from .train.pretrain import BEST, LAST, METRICS, PLOT

MODEL_CONFIG, TRAIN_CONFIG = "model_config.json", "train_config.json"
WORK_DIR, WORK_FILE, BEST_OF_LAST = ".work", "work.json", "best_of_last.pt"
METRICS_JSON, SUMMARY, EVAL_JSON = "metrics.json", "summary.md", "eval.json"
TOKENIZER_FILES = (TOKENIZER_FILE, SEMANTIC_IDS_FILE, REPORT_FILE, PLOT_FILE)
CHECKPOINTS = {"best": BEST, "last": LAST}
# CLI options a resume must repeat: they decide the data, the semantic IDs, the model, or which
# samples and updates every step makes (the rest, like --eval-every or --device, may change).
RESUME_OPTIONS = ("data", "preset", "dim", "fusion", "levels", "codebook_size", "iters",
                  "balanced", "seed", "steps", "batch_size", "lr", "grad_accum")


def have_matplotlib() -> bool:
    """Whether the optional plotting dependency is installed (plots are skipped without it)."""
    return importlib.util.find_spec("matplotlib") is not None


def write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(_plain(obj), f, indent=1)


def _plain(obj):
    """obj with NaN / inf as None (strict JSON) and tuples / numpy scalars as plain values."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (np.integer, np.floating)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def read_json(folder: str, name: str):
    with open(os.path.join(folder, name)) as f:
        return json.load(f)


def normalize_data_spec(spec: str) -> str:
    """The spec with an absolute path: the same data however the path was written."""
    from .data import parse_spec

    kind, path = parse_spec(spec)
    return spec if path is None else f"{kind}:{os.path.abspath(path)}"


@dataclass
class TrainingFolder:
    """A verified training result folder: its manifest, train_config.json, model_config.json
    and (when listed) metrics.json."""
    path: str
    manifest: dict
    train: dict
    model: dict
    metrics: dict | None

    def has(self, name: str) -> bool:
        return name in self.manifest["files"]

    @property
    def progress(self) -> tuple[int, int, bool]:
        """(steps done, steps of the schedule, finished: all done or stopped early)."""
        t = (self.metrics or {}).get("train", {})
        step, total = int(t.get("step", 0)), int(self.train["train"]["max_steps"])
        return step, total, bool(t.get("finished", step >= total))


def open_training_folder(folder: str) -> TrainingFolder:
    """The training folder `folder` after checking every file against its manifest. Raises
    FileNotFoundError (no such folder, or not written by `onerec train`: names what is missing)
    or onerec.results.IncompleteResultFolder (an interrupted or mixed folder)."""
    manifest = verify_result_folder(folder)
    missing = [n for n in (TOKENIZER_FILE, SEMANTIC_IDS_FILE, MODEL_CONFIG, TRAIN_CONFIG, LAST)
               if n not in manifest["files"]]
    if missing:
        raise FileNotFoundError(f"{folder} is not a training folder of `onerec train` (it lacks "
                                f"{', '.join(missing)}; written by {manifest.get('command')!r})")
    metrics = read_json(folder, METRICS_JSON) if METRICS_JSON in manifest["files"] else None
    return TrainingFolder(folder, manifest, read_json(folder, TRAIN_CONFIG),
                          read_json(folder, MODEL_CONFIG), metrics)


class WorkFolder:
    """DIR/.work: where a training run into DIR keeps everything a resume needs while it runs,
    so that a killed run (SIGKILL, OOM, power loss, Ctrl-C) loses only the steps since its last
    periodic checkpoint, while DIR's published files (onerec.results) stay those of the previous
    complete run: no manifest lists the work folder.

    Contents: work.json ({"id", "base_step", "base_seconds"}: the step and wall time of the
    published run it continues, 0 for a fresh run), the run's tokenizer files, model_config.json
    and train_config.json (as they will be published), pretrain's last.pt, best.pt and
    metrics.jsonl, and best_of_last.pt (see `keep_best`).

    Protocol: it is created whole (built in DIR/.work.tmp-*, fsync'ed, renamed into place) and
    removed whole (renamed away first), so `.work` either is complete or does not exist; it is
    touched only while the run holds DIR's lock (the run's ResultFolder); it is removed once the
    run has published. The published train_config.json carries the work folder's id, so a work
    folder left by a kill between that publish and the removal reads as `published` (stale).
    Large files (checkpoints, the tokenizer) are hard links, never copies, and are only ever
    replaced by rename (save_checkpoint), never written in place: a link shared with a
    published file never changes it. metrics.jsonl, which pretrain appends to, is a copy.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = os.path.abspath(os.fspath(folder))
        self.path = os.path.join(self.folder, WORK_DIR)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def exists(self) -> bool:
        return os.path.isdir(self.path)

    @property
    def meta(self) -> dict:
        return read_json(self.path, WORK_FILE)

    @property
    def train(self) -> dict:
        """Its train_config.json: {"command", "options", "train"}."""
        return read_json(self.path, TRAIN_CONFIG)

    def published(self) -> bool:
        """Whether DIR's manifest-complete train_config.json names this work folder: the run
        published and was killed before removing it. A folder's train_config.json only ever sits
        beside a manifest when it belongs to that manifest (the publish protocol)."""
        try:
            with open(os.path.join(self.folder, MANIFEST)) as f:
                if TRAIN_CONFIG not in json.load(f).get("files", {}):
                    return False
            return read_json(self.folder, TRAIN_CONFIG).get("work_id") == self.meta["id"]
        except (OSError, ValueError, KeyError, AttributeError):
            return False

    def last_info(self) -> dict | None:
        """The plain fields of its last.pt (onerec.train.checkpoint_info), None without one.
        Raises IncompleteCheckpoint when it cannot be read."""
        from .train.checkpoint import checkpoint_info

        last = self.file(LAST)
        return checkpoint_info(last) if os.path.exists(last) else None

    def progress(self) -> tuple[int, int]:
        """(step of its last.pt (0 without one), step of the published run it continues)."""
        info = self.last_info()
        return (info["step"] if info else 0), int(self.meta["base_step"])

    @classmethod
    def create(cls, folder: str | os.PathLike, *, links: dict, copies: dict, meta: dict,
               model_config: dict, train_config: dict) -> "WorkFolder":
        """A new work folder in `folder` (there must be none) holding hard links to `links`
        and copies of `copies` ({name: source path}), work.json (`meta` and a fresh id),
        model_config.json and train_config.json (`train_config` plus "work_id")."""
        work = cls(folder)
        if work.exists:
            raise FileExistsError(f"{work.path} exists (discard it first)")
        stage = tempfile.mkdtemp(prefix=f"{WORK_DIR}.tmp-", dir=work.folder)
        try:
            for name, src in links.items():
                link_or_copy(src, os.path.join(stage, name))
            for name, src in copies.items():
                shutil.copy2(src, os.path.join(stage, name))
            meta = {**meta, "id": uuid.uuid4().hex}
            write_json(os.path.join(stage, WORK_FILE), meta)
            write_json(os.path.join(stage, MODEL_CONFIG), model_config)
            write_json(os.path.join(stage, TRAIN_CONFIG), {**train_config, "work_id": meta["id"]})
            for name in os.listdir(stage):  # data on disk before the rename makes it visible
                fsync_file(os.path.join(stage, name))
            os.rename(stage, work.path)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        fsync_dir(work.folder)
        return work

    def discard(self) -> None:
        """Remove it whole: renamed away first, so a kill midway leaves no half work folder."""
        if not self.exists:
            return
        gone = tempfile.mkdtemp(prefix=f"{WORK_DIR}.tmp-", dir=self.folder)
        os.rename(self.path, os.path.join(gone, WORK_DIR))
        shutil.rmtree(gone, ignore_errors=True)

    def remove_leftovers(self) -> None:
        """Stage and discard folders of killed runs (the caller holds DIR's lock: none is live)."""
        for stale in glob.glob(os.path.join(self.folder, f"{WORK_DIR}.tmp-*")):
            shutil.rmtree(stale, ignore_errors=True)

    def keep_best(self) -> None:
        """best_of_last.pt := best.pt (an atomic hard link). Called each time last.pt has been
        saved, it keeps the best checkpoint as that last.pt knows it: a validation after the
        last checkpoint may replace best.pt with a step the resumed run has not reached yet."""
        best = self.file(BEST)
        if not os.path.exists(best):
            return
        tmp = self.file(f".{BEST_OF_LAST}.tmp")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        link_or_copy(best, tmp)
        os.replace(tmp, self.file(BEST_OF_LAST))

    def restore_best(self, best_step: int) -> None:
        """Before a resume from a checkpoint whose best validation was at `best_step` (0: none
        yet): best.pt becomes the candidate (best.pt, best_of_last.pt) saved at that step, or
        goes when there is none, so it never runs ahead of the resumed run."""
        from .train import IncompleteCheckpoint
        from .train.checkpoint import checkpoint_info

        keep = None
        for name in (BEST, BEST_OF_LAST):
            path = self.file(name)
            if best_step and keep is None and os.path.exists(path):
                with contextlib.suppress(FileNotFoundError, IncompleteCheckpoint):
                    if checkpoint_info(path)["step"] == best_step:
                        keep = path
        if keep is None:
            for name in (BEST, BEST_OF_LAST):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.file(name))
            return
        if keep != self.file(BEST):
            os.replace(keep, self.file(BEST))
        self.keep_best()

    def checkpoint_hook(self):
        """An on_step callback for pretrain that calls keep_best after every save of last.pt
        (seen as a new inode: save_checkpoint renames a new file into place)."""
        last = self.file(LAST)

        def inode() -> int | None:
            try:
                return os.stat(last).st_ino
            except FileNotFoundError:
                return None
        seen = [inode()]

        def on_step(step: int, loss: float) -> None:
            now = inode()
            if now != seen[0]:
                seen[0] = now
                self.keep_best()
        return on_step


def resume_differences(saved: dict, now: dict) -> dict:
    """{option: (saved value, value now)} of the RESUME_OPTIONS that differ."""
    return {k: (saved.get(k), now.get(k)) for k in RESUME_OPTIONS if saved.get(k) != now.get(k)}


def semantic_ids_from_folder(folder: str, backend: str | None = None) -> SemanticIds:
    """The tokenizer stage as saved in `folder` (already verified by the caller): the tokenizer,
    the one-to-one table and the reports. The item embeddings are not saved (an empty array):
    nothing downstream of the table reads them."""
    from .semantic_ids import SemanticIdTable
    from .tokenizer import RQKMeansTokenizer

    tok = RQKMeansTokenizer.load(os.path.join(folder, TOKENIZER_FILE), backend=backend)
    saved = torch.load(os.path.join(folder, SEMANTIC_IDS_FILE))
    table = SemanticIdTable(saved["codes"], saved["item_ids"], saved["codebook_sizes"])
    report = read_json(folder, REPORT_FILE) if os.path.exists(
        os.path.join(folder, REPORT_FILE)) else {}
    return SemanticIds(np.zeros((0, 0), dtype=np.float32), report.get("embeddings", {}), tok,
                       table, report.get("quality", {}))


def check_data_matches(folder: TrainingFolder, config, dataset: Dataset, sids: SemanticIds
                       ) -> None:
    """CheckpointError unless `dataset` is the data the folder's model was trained on as far as
    the model can tell: its item count (one semantic ID each) and its features (the config)."""
    from .train import CheckpointError

    trained_on = folder.train.get("options", {}).get("data")
    hint = f"evaluate with the data it was trained on (--data {trained_on})"
    if dataset.num_items != len(sids.table):
        raise CheckpointError(f"{dataset.name} has {dataset.num_items} items but the semantic IDs "
                              f"in {folder.path} cover {len(sids.table)}: {hint}")
    expect = config.for_data(config.codebook_sizes, dataset, with_user_ids=config.num_users > 0)
    if expect != config:
        a, b = expect.to_dict(), config.to_dict()
        diff = sorted(k for k in a if a[k] != b[k])
        raise CheckpointError(f"{dataset.name} has other features than the data the model in "
                              f"{folder.path} was trained on (differs in {diff}): {hint}")


@dataclass
class LoadedRun:
    """A trained model rebuilt from a training folder."""
    folder: TrainingFolder
    sids: SemanticIds
    trie: object  # onerec_kernels.SemanticIdTrie on the model's device
    trained: TrainedModel
    checkpoint: str  # "best" | "last"
    info: dict  # load_trained's: step, evals, best_step, best_recall


def load_trained_folder(folder: TrainingFolder, dataset: Dataset, checkpoint: str, *,
                        device: torch.device | str = "cpu") -> LoadedRun:
    """Tokenizer, semantic IDs, model config and checkpoint ("best" | "last") of `folder`, the
    model on `device`. Raises CheckpointError when `dataset` or the checkpoint does not belong
    to the folder's model."""
    from .main_job import new_model
    from .model.config import OneRecConfig
    from .train import load_trained
    from .train.pretrain import as_item_codes

    sids = semantic_ids_from_folder(folder.path)
    config = OneRecConfig.from_dict(folder.model)
    check_data_matches(folder, config, dataset, sids)
    model = new_model(config, device=device)
    item_codes = as_item_codes(sids, dataset.num_items)
    info = load_trained(model, os.path.join(folder.path, CHECKPOINTS[checkpoint]), dataset,
                        item_codes)
    model.eval()
    trained = TrainedModel(model, item_codes, None)
    return LoadedRun(folder, sids, build_trie(sids, device), trained, checkpoint, info)


def training_metrics(result, *, options: dict, model_config: dict, train_config: dict,
                     parameters: int, device: str, seconds: float,
                     previous: dict | None = None) -> dict:
    """metrics.json of a training run: the summary (with `previous`, the metrics.json of the
    run it resumed, the wall time adds up), the validation history and the config used."""
    losses = list(result.losses)
    step, total = int(result.step), int(train_config["max_steps"])
    before = (previous or {}).get("train", {}).get("seconds", 0.0) or 0.0
    return _plain({
        "train": {"step": step, "max_steps": total,
                  "finished": step >= total or bool(result.stopped_early),
                  "stopped_early": bool(result.stopped_early),
                  "first_loss": losses[0] if losses else None,
                  "final_loss": losses[-1] if losses else None,
                  "best_step": int(result.best_step), "best_recall": result.best_recall,
                  "parameters": int(parameters), "device": device,
                  "seconds": before + seconds, "losses": losses},
        "valid": list(result.evals),
        "config": {"options": options, "model": model_config, "train": train_config}})


def _fmt(v, spec: str = ".4f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def format_summary(metrics: dict, evaluation: dict | None = None) -> str:
    """summary.md: a short table of the training run and, when given, the `onerec eval` table
    (`evaluation`: the contents of eval.json plus its "markdown")."""
    t, opts = metrics["train"], metrics["config"]["options"]
    k = next((e.get("k", 10) for e in metrics["valid"]), 10)
    state = ("finished" if t["step"] >= t["max_steps"] else
             "stopped early (no validation gain)" if t["stopped_early"] else
             "stopped by --stop-after (continue with --resume)")
    rows = [("data", opts["data"]),
            ("model", f"preset `{opts['preset']}`, {t['parameters'] / 1e6:.3f} M parameters"),
            ("steps", f"{t['step']} of {t['max_steps']}, {state}"),
            ("loss", f"{_fmt(t['first_loss'], '.3f')} -> {_fmt(t['final_loss'], '.3f')}"),
            (f"best validation Recall@{k}",
             f"{_fmt(t['best_recall'])} at step {t['best_step']}" if t["best_step"] else "-"),
            ("validations", str(len(metrics["valid"]))),
            ("training time", f"{t['seconds']:.1f} s ({t['device']})")]
    lines = ["# onerec train", "", "| training | |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    if evaluation is not None:
        lines += ["", "# onerec eval", "",
                  f"checkpoint `{evaluation['checkpoint']}` (step "
                  f"{evaluation['checkpoint_step']}); {evaluation['markdown']}"]
    return "\n".join(lines) + "\n"


def write_training_files(out, *, metrics: dict, options: dict, command: str,
                         model_config: dict, train_config: dict,
                         work_id: str | None = None) -> list[str]:
    """model_config.json, train_config.json, metrics.json, summary.md and (with matplotlib)
    training.png into the open ResultFolder `out`, beside pretrain's files. Returns the names.
    work_id: the id of the WorkFolder the run trained in (train_config.json records it)."""
    from .train import plot_metrics

    write_json(out.path(MODEL_CONFIG), model_config)
    write_json(out.path(TRAIN_CONFIG), {"command": command, "options": options,
                                        "train": train_config,
                                        **({"work_id": work_id} if work_id else {})})
    write_json(out.path(METRICS_JSON), metrics)
    with open(out.path(SUMMARY), "w") as f:
        f.write(format_summary(metrics))
    names = [MODEL_CONFIG, TRAIN_CONFIG, METRICS_JSON, SUMMARY]
    if have_matplotlib() and os.path.exists(out.path(METRICS)):
        plot_metrics(out.path(METRICS), out.path(PLOT))
        names.append(PLOT)
    return names

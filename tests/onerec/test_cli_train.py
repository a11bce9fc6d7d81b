"""`onerec train | eval | recommend` (issue 12, CLI): the files a training folder holds, resume
equal to the uninterrupted run through the all-or-nothing folder (also after a SIGKILL, from the
work folder's periodic checkpoint), refusals with exit status 2,
evaluation against the baselines and recommendations rebuilt from the folder alone, all on a
small seqrec-json directory written here."""
import contextlib
import io
import json
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import onerec.data
import onerec.jobs
import onerec.results
import onerec.train
from onerec import cli
from onerec.jobs import WorkFolder, have_matplotlib
from onerec.results import IncompleteResultFolder, verify_result_folder
from onerec.train import save_checkpoint
from onerec.train.checkpoint import checkpoint_info

REPO = Path(__file__).resolve().parents[2]

# Small everything: the tokenizer and the tiny model, a few steps, validation on a few users.
TOKENIZER = ["--dim", "16", "--fusion", "collaborative", "--codebook-size", "8", "--iters", "5"]
SCHEDULE = ["--steps", "6", "--batch-size", "8", "--eval-every", "2", "--eval-users", "10"]
TRAIN_FILES = {"tokenizer.rqk", "semantic_ids.pt", "tokenizer_report.json", "model_config.json",
               "train_config.json", "last.pt", "best.pt", "metrics.jsonl", "metrics.json",
               "summary.md"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These runs are a few milliseconds of tiny ops each; on a shared 2-core machine two
    intra-op threads spin against each other and a step takes seconds instead."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _write_seqrec(folder: Path, *, users=60, items=90, interactions=1200) -> dict:
    """A seqrec-json directory from the synthetic generator (structure to learn), each user's
    items deduplicated (so nobody consumes an item twice, as in the public benchmarks), with
    an item file. Returns {user id: sequence}."""
    ds = onerec.data.load_dataset("synthetic", num_users=users, num_items=items,
                                  num_interactions=interactions, seed=3)
    seqs = {}
    for u in range(ds.num_users):
        row = ds.interactions.item[ds.user_offsets[u]:ds.user_offsets[u + 1]].tolist()
        seqs[100 + u] = [int(i) + 1000 for i in dict.fromkeys(row)]  # ids != dense ids
    folder.mkdir(parents=True)
    (folder / "toy.inter.json").write_text(json.dumps({str(u): s for u, s in seqs.items()}))
    (folder / "toy.item.json").write_text(json.dumps(
        {str(i + 1000): {"title": ds.items.titles[i], "categories": "a,b"}
         for i in range(ds.num_items)}))
    return seqs


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data") / "toy"
    return folder, _write_seqrec(folder)


def _train(data: Path, out: Path, *extra: str) -> int:
    return cli.main(["train", "--data", f"seqrec-json:{data}", "--device", "cpu", *TOKENIZER,
                     *SCHEDULE, "--out", str(out), *extra])


@pytest.fixture(scope="module")
def trained(fixture_dir, tmp_path_factory):
    """One uninterrupted training run (the reference of the resume test) and its output."""
    out = tmp_path_factory.mktemp("runs") / "full"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):  # capsys is per test
        assert _train(fixture_dir[0], out) == 0
    return out, buf.getvalue()


def _metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def _log_events(folder: Path) -> list[dict]:
    """metrics.jsonl without its wall-clock fields."""
    return [{k: v for k, v in json.loads(line).items() if k != "tokens_per_s"}
            for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_train_writes_every_file_and_the_folder_verifies(trained):
    out, stdout = trained
    files = set(verify_result_folder(out)["files"])
    expected = TRAIN_FILES | ({"training.png", "tokenizer_report.png"} if have_matplotlib()
                              else set())
    assert files == expected
    if not have_matplotlib():
        assert "matplotlib is not installed: no training.png" in stdout
    m = _metrics(out)
    assert m["train"]["step"] == 6 and m["train"]["finished"] and len(m["train"]["losses"]) == 6
    assert [e["step"] for e in m["valid"]] == [2, 4, 6]
    assert all(e["legal_rate"] == 1.0 for e in m["valid"])
    assert m["config"]["options"]["preset"] == "tiny"
    assert m["config"]["train"]["max_steps"] == 6 and m["config"]["model"]["name"] == "tiny"
    model_config = json.loads((out / "model_config.json").read_text())
    assert model_config["codebook_sizes"] == [8, 8, 8]
    summary = (out / "summary.md").read_text()
    assert "| steps | 6 of 6, finished |" in summary and "preset `tiny`" in summary
    assert "validation step 6: Recall@10" in stdout


def test_resume_continues_exactly_and_an_interrupted_run_publishes_nothing(
        trained, fixture_dir, tmp_path, monkeypatch, capsys):
    """--stop-after 3, then a resume killed at step 4 (the folder keeps the step-3 run, its
    metrics log untouched), then a resume to the end: the same losses, validations and log as
    the uninterrupted run."""
    data, out = fixture_dir[0], tmp_path / "pieces"
    with monkeypatch.context() as m:  # the first piece also shows a machine without matplotlib
        m.setattr(onerec.jobs, "have_matplotlib", lambda: False)
        assert _train(data, out, "--stop-after", "3") == 0
    stdout = capsys.readouterr().out
    assert "stopped after step 3 of 6" in stdout
    assert "matplotlib is not installed: no training.png" in stdout
    assert "matplotlib is not installed: no tokenizer_report.png" in stdout
    first = verify_result_folder(out)
    assert set(first["files"]) == TRAIN_FILES  # no PNG
    assert _metrics(out)["train"]["step"] == 3 and not _metrics(out)["train"]["finished"]
    log_before = (out / "metrics.jsonl").read_bytes()

    real = onerec.train.pretrain

    def killed_at_step_4(*args, on_step=None, **kwargs):
        def step_then_stop(step, loss):
            on_step(step, loss)
            if step == 4:
                raise KeyboardInterrupt
        return real(*args, on_step=step_then_stop, **kwargs)

    monkeypatch.setattr(onerec.train, "pretrain", killed_at_step_4)
    assert _train(data, out, "--resume") == cli.EXIT_INTERRUPTED
    assert verify_result_folder(out)["files"] == first["files"]  # still the step-3 folder
    assert (out / "metrics.jsonl").read_bytes() == log_before
    monkeypatch.setattr(onerec.train, "pretrain", real)

    assert _train(data, out, "--resume") == 0
    assert "resuming" in capsys.readouterr().out
    full, resumed = _metrics(trained[0]), _metrics(out)
    assert resumed["train"]["losses"] == full["train"]["losses"]  # exactly
    assert resumed["valid"] == full["valid"]
    assert _log_events(out) == _log_events(trained[0])
    assert set(verify_result_folder(out)["files"]) >= TRAIN_FILES


# A training run SIGKILLed by itself right after step `argv[1]` (and that step's checkpoint):
# pretrain's step callback is wrapped here, in the test, so the CLI has no such hook.
_KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    import onerec.train
    from onerec import cli

    real, kill_at = onerec.train.pretrain, int(sys.argv[1])

    def pretrain(*args, on_step=None, **kwargs):
        def step_then_die(step, loss):
            if on_step is not None:
                on_step(step, loss)
            if step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, on_step=step_then_die, **kwargs)

    onerec.train.pretrain = pretrain
    sys.exit(cli.main(sys.argv[2:]))
""")


def _train_killed_at(step: int, data: Path, out: Path, *extra: str) -> None:
    args = ["train", "--data", f"seqrec-json:{data}", "--device", "cpu", *TOKENIZER, *SCHEDULE,
            "--out", str(out), *extra]
    proc = subprocess.run([sys.executable, "-c", _KILLED_RUN, str(step), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr


def _assert_same_run(out: Path, reference: Path) -> None:
    """Losses, validations, log and final weights exactly those of the reference run."""
    full, resumed = _metrics(reference), _metrics(out)
    assert resumed["train"]["losses"] == full["train"]["losses"]
    assert resumed["valid"] == full["valid"]
    assert _log_events(out) == _log_events(reference)
    for name in ("last.pt", "best.pt"):
        a, b = (torch.load(f / name, weights_only=False) for f in (out, reference))
        assert a["step"] == b["step"], name
        for key, tensor in a["model"].items():
            assert torch.equal(tensor, b["model"][key]), (name, key)
    assert TRAIN_FILES <= set(verify_result_folder(out)["files"])
    assert not (out / ".work").exists()


def test_a_killed_first_run_resumes_from_its_periodic_checkpoint_exactly(trained, fixture_dir,
                                                                          tmp_path, capsys):
    """SIGKILL after step 5 of a first run checkpointing every 2 steps: DIR has no manifest,
    the work folder holds step 4 and the tokenizer; --resume finishes equal to the reference."""
    data, out = fixture_dir[0], tmp_path / "killed"
    _train_killed_at(5, data, out, "--checkpoint-every", "2")
    with pytest.raises(IncompleteResultFolder, match="no manifest.json"):
        verify_result_folder(out)
    assert checkpoint_info(out / ".work" / "last.pt")["step"] == 4
    assert {"tokenizer.rqk", "semantic_ids.pt", "train_config.json"} <= {
        p.name for p in (out / ".work").iterdir()}

    assert _train(data, out, "--checkpoint-every", "2", "--resume") == 0
    stdout = capsys.readouterr().out
    assert "resuming the interrupted run in" in stdout and "at step 4 of 6" in stdout
    assert "tokenizer fit" not in stdout  # the saved tokenizer, not a rebuilt one
    _assert_same_run(out, trained[0])


def test_a_killed_resume_leaves_the_published_run_and_resumes_from_the_work_folder(
        trained, fixture_dir, tmp_path, capsys):
    """--stop-after 2 publishes; a resume SIGKILLed after step 5 (checkpoint at 4) leaves that
    folder verifying as before; a fresh run refuses to drop the checkpoint; --resume goes on
    from step 4 to the reference's end."""
    data, out = fixture_dir[0], tmp_path / "pieces"
    assert _train(data, out, "--stop-after", "2") == 0
    first = (out / "manifest.json").read_bytes()
    _train_killed_at(5, data, out, "--resume", "--checkpoint-every", "2")
    assert (out / "manifest.json").read_bytes() == first
    assert verify_result_folder(out)  # still the complete step-2 run
    assert _metrics(out)["train"]["step"] == 2
    assert checkpoint_info(out / ".work" / "last.pt")["step"] == 4
    capsys.readouterr()

    assert _train(data, out) == 2  # a fresh run would throw step 4 away
    err = capsys.readouterr().err
    assert "holds an interrupted run, checkpointed at step 4 of 6" in err
    assert "continue it with --resume, or delete" in err
    assert (out / "manifest.json").read_bytes() == first
    assert checkpoint_info(out / ".work" / "last.pt")["step"] == 4

    assert _train(data, out, "--resume") == 0
    assert "at step 4 of 6" in capsys.readouterr().out
    _assert_same_run(out, trained[0])


def test_ctrl_c_keeps_the_work_folder_and_an_unpublished_finished_run_is_published(
        trained, fixture_dir, tmp_path, monkeypatch, capsys):
    """Ctrl-C before the first checkpoint: the hint says so, a fresh run discards that work
    folder (nothing to lose), a resume trains from step 0 with the saved tokenizer. Ctrl-C
    while publishing a finished run: --resume publishes it without training, equal to the
    reference."""
    data, out = fixture_dir[0], tmp_path / "ctrl_c"
    real = onerec.train.pretrain

    def interrupted_at_step_1(*args, **kwargs):
        def on_step(step, loss):
            raise KeyboardInterrupt
        return real(*args, **{**kwargs, "on_step": on_step})

    with monkeypatch.context() as m:
        m.setattr(onerec.train, "pretrain", interrupted_at_step_1)
        assert _train(data, out) == cli.EXIT_INTERRUPTED
        err = capsys.readouterr().err
        assert "no checkpoint yet (--checkpoint-every 50)" in err and "--resume" in err
        assert not (out / "manifest.json").exists()
        assert (out / ".work" / "tokenizer.rqk").exists()
        first_id = json.loads((out / ".work" / "work.json").read_text())["id"]
        assert _train(data, out) == cli.EXIT_INTERRUPTED
        assert "discarding" in capsys.readouterr().out
        assert json.loads((out / ".work" / "work.json").read_text())["id"] != first_id

    def killed_publish(self):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(onerec.results.ResultFolder, "commit", killed_publish)
        assert _train(data, out, "--resume") == cli.EXIT_INTERRUPTED
    captured = capsys.readouterr()
    assert "at step 0 of 6" in captured.out and "tokenizer fit" not in captured.out
    assert "the checkpoint of step 6 stays in" in captured.err
    assert not (out / "manifest.json").exists()

    assert _train(data, out, "--resume") == 0
    assert "the run had ended at step 6 but was not published" in capsys.readouterr().out
    _assert_same_run(out, trained[0])


def test_work_folder_best_checkpoint_follows_the_last_checkpoint(tmp_path):
    """best.pt saved by a validation after the last checkpoint runs ahead of a resume from it:
    restore_best puts back the best that last.pt knows (kept by the step hook), or none. A work
    folder whose id the published train_config.json names is stale."""
    work = WorkFolder.create(tmp_path, links={}, copies={},
                             meta={"base_step": 0, "base_seconds": 0.0}, model_config={},
                             train_config={"command": "test", "options": {}, "train": {}})
    hook = work.checkpoint_hook()
    save_checkpoint(work.file("best.pt"), {"step": 2})
    save_checkpoint(work.file("last.pt"), {"step": 3, "best_step": 2})
    hook(3, 0.0)  # last.pt saved: best_of_last.pt = best.pt of step 2
    save_checkpoint(work.file("best.pt"), {"step": 4})  # then the run dies at step 5
    hook(4, 0.0)
    work.restore_best(checkpoint_info(work.file("last.pt"))["best_step"])
    assert checkpoint_info(work.file("best.pt"))["step"] == 2
    assert checkpoint_info(work.file("best_of_last.pt"))["step"] == 2
    work.restore_best(0)  # resuming from a checkpoint without a validation yet
    assert not Path(work.file("best.pt")).exists()
    assert not Path(work.file("best_of_last.pt")).exists()

    assert not work.published()
    with onerec.results.ResultFolder(tmp_path, command="test") as out:
        onerec.jobs.write_json(out.path("train_config.json"), {"work_id": work.meta["id"]})
    assert work.published()
    work.discard()
    assert not work.exists and sorted(p.name for p in tmp_path.iterdir()) == [
        ".onerec.lock", "manifest.json", "train_config.json"]


def test_resume_refuses_other_settings_a_finished_run_and_a_missing_checkpoint(
        trained, fixture_dir, tmp_path, capsys):
    out = trained[0]
    before = (out / "manifest.json").read_bytes()
    assert _train(fixture_dir[0], out, "--resume", "--preset", "onerec-0.015b") == 2
    err = capsys.readouterr().err
    assert "onerec train: error: --resume:" in err
    assert "--preset 'tiny' (now 'onerec-0.015b')" in err and "Traceback" not in err
    assert cli.main(["train", "--data", f"seqrec-json:{fixture_dir[0]}", "--device", "cpu",
                     *TOKENIZER[:-4], "--codebook-size", "16", "--iters", "5", *SCHEDULE,
                     "--out", str(out), "--resume"]) == 2
    assert "--codebook-size 8 (now 16)" in capsys.readouterr().err
    assert _train(fixture_dir[0], out, "--resume") == 2
    assert "has finished (step 6 of 6)" in capsys.readouterr().err
    assert (out / "manifest.json").read_bytes() == before

    nothing = tmp_path / "never_trained"
    assert _train(fixture_dir[0], nothing, "--resume") == 2
    assert f"there is no {nothing}/last.pt to continue from" in capsys.readouterr().err
    assert not nothing.exists()


def test_unknown_preset_and_missing_data_paths_exit_2(tmp_path, no_compute, capsys):
    out = str(tmp_path / "out")
    assert cli.main(["train", "--preset", "huge", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "argument --preset: invalid choice: 'huge'" in err and "'tiny'" in err
    assert cli.main(["train", "--data", "ml-100k:/no/such/folder", "--out", out]) == 2
    assert "/no/such/folder is not a folder" in capsys.readouterr().err
    assert cli.main(["train", "--data", "seqrec-json:/no/such/dir", "--out", out]) == 2
    assert "seqrec-json:/no/such/dir: folder /no/such/dir does not exist" in \
        capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["train", "--data", f"seqrec-json:{empty}", "--out", out]) == 2
    assert "must hold exactly one '<name>.inter.json', found none" in capsys.readouterr().err
    assert cli.main(["train", "--device", "cpu"]) == 2  # --out is required
    assert "the following arguments are required: --out" in capsys.readouterr().err
    assert cli.main(["eval", "--out", str(tmp_path / "nope")]) == 2
    assert "no such folder (train first" in capsys.readouterr().err


def _table_rows(out: str) -> list[dict]:
    header = next(line for line in out.splitlines() if line.startswith("| model |"))
    cols = [c.strip() for c in header.split("|")[1:-1]]
    return [dict(zip(cols, [c.strip() for c in line.split("|")[1:-1]]))
            for line in out.splitlines() if line.startswith("| ") and line != header]


def test_eval_prints_the_table_and_republishes_the_folder(trained, capsys):
    out = trained[0]
    assert cli.main(["eval", "--out", str(out), "--max-users", "20", "--device", "cpu",
                     "--beam-width", "30", "--sasrec", "--sasrec-epochs", "1"]) == 0
    stdout = capsys.readouterr().out
    assert "checkpoint best (step" in stdout
    assert "constrained beam search of width 30" in stdout
    assert re.search(r"sasrec: 1 epochs in [\d.]+ s", stdout)
    rows = _table_rows(stdout)
    assert {r["model"] for r in rows} == {"onerec", "popularity", "co-occurrence",
                                          "history prior", "sasrec"}
    onerec_rows = [r for r in rows if r["model"] == "onerec"]
    assert len(onerec_rows) == 2 and all(r["legal_rate"] == "1.0000" for r in onerec_rows)
    assert "default protocol: exclude" in stdout  # nobody repeats an item in the fixture
    files = set(verify_result_folder(out)["files"])  # the training files stay listed
    assert TRAIN_FILES | {"eval.json"} <= files
    report = json.loads((out / "eval.json").read_text())
    assert report["users"] == 20 and report["checkpoint"] == "best"
    assert {r["protocol"] for r in report["rows"]} == {"exclude", "keep"}
    summary = (out / "summary.md").read_text()
    assert "# onerec eval" in summary and "| onerec | exclude (default) |" in summary
    assert "| steps | 6 of 6, finished |" in summary


def test_eval_refuses_other_data(trained, tmp_path, capsys):
    other = tmp_path / "other"
    _write_seqrec(other, users=30, items=50, interactions=400)
    before = (trained[0] / "manifest.json").read_bytes()
    assert cli.main(["eval", "--out", str(trained[0]), "--data", f"seqrec-json:{other}",
                     "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "onerec eval: error:" in err and "evaluate with the data it was trained on" in err
    assert (trained[0] / "manifest.json").read_bytes() == before


def test_recommend_prints_k_unseen_items_per_user_with_semantic_ids(trained, fixture_dir,
                                                                    capsys):
    seqs = fixture_dir[1]
    assert cli.main(["recommend", "--out", str(trained[0]), "--users", "101,105", "-k", "4",
                     "--checkpoint", "last", "--device", "cpu"]) == 0
    stdout = capsys.readouterr().out
    assert "consumed items are excluded" in stdout
    blocks = re.split(r"^user ", stdout, flags=re.M)[1:]
    assert [int(b.split()[0]) for b in blocks] == [101, 105]
    for block, user in zip(blocks, (101, 105)):
        items = re.findall(r"^\s+\d+\. item (\d+) \[(\d+), (\d+), (\d+)\]  \S", block, re.M)
        assert len(items) == 4, block  # K items, each with a 3-level semantic ID and a title
        ids = [int(i[0]) for i in items]
        assert len(set(ids)) == 4 and not set(ids) & set(seqs[user])  # unseen, distinct
    assert cli.main(["recommend", "--out", str(trained[0]), "--users", "7",
                     "--device", "cpu"]) == 2
    assert "--users: [7] are not user ids" in capsys.readouterr().err

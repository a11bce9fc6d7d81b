"""The CLI's contract for bad requests (issue 8, items 3-5, 8, 10, 11): every argument checked
before any compute, one exit-code convention (2 usage, 1 failure, 130 Ctrl-C, one line each),
--help with defaults, and the popularity baseline beside the headline recall."""
import argparse
import os

import pytest
import torch

import onerec.data
import onerec.pipeline
from onerec import cli
from onerec.results import ResultFolder

GENRES = "|".join(["0"] * 19)


def _err(capsys) -> str:
    return capsys.readouterr().err


@pytest.mark.parametrize("argv, words", [
    # item 4: onerec rq
    (["rq", "--levels", "0"], "argument --levels: must be >= 1, got 0"),
    (["rq", "--levels", "-2"], "argument --levels: must be >= 1, got -2"),
    (["rq", "--codebook-size", "0"], "argument --codebook-size: must be >= 1"),
    (["rq", "--num", "0"], "argument --num: must be >= 1"),
    (["rq", "--dim", "x"], "expected an integer, got 'x'"),
    # item 5
    (["run", "--max-users", "-1"], "argument --max-users: must be >= 1, got -1"),
    (["run", "--max-users", "0"], "argument --max-users: must be >= 1, got 0"),
    # item 8
    (["run", "--beam-width", "0"], "argument --beam-width: must be >= 1, got 0"),
    (["run", "--steps", "0"], "argument --steps: must be >= 1, got 0"),
    (["run", "--batch-size", "x"], "argument --batch-size: expected an integer, got 'x'"),
    (["tokenize", "--backend", "cuda"], "argument --backend: invalid choice: 'cuda'"),
    (["tokenize", "--data", "ml-100k-bogus:/tmp"], "unknown spec 'ml-100k-bogus:/tmp'"),
    (["tokenize", "--data", "ml-100k:/no/such/folder"], "/no/such/folder is not a folder"),
    (["tokenize", "--iters", "-1"], "argument --iters: must be >= 0"),
    (["tokenize", "--seed", "-3"], "argument --seed: must be >= 0"),
    (["run", "--device", "tpu"], "argument --device: expected auto | cpu | cuda[:i]"),
])
def test_bad_arguments_exit_2_before_any_compute(argv, words, no_compute, capsys):
    assert cli.main(argv) == cli.EXIT_USAGE
    err = _err(capsys)
    assert f"onerec {argv[0]}: error:" in err and words in err, err
    assert "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_a_gpu_is_a_usage_error(no_compute, capsys):
    assert cli.main(["run", "--device", "cuda"]) == cli.EXIT_USAGE
    assert "onerec run: error: argument --device: cuda: no CUDA device is available" in _err(capsys)


def test_out_that_is_a_file_fails_before_compute(tmp_path, no_compute, capsys):
    target = tmp_path / "a_file"
    target.write_text("x")
    assert cli.main(["tokenize", "--device", "cpu", "--out", str(target)]) == cli.EXIT_USAGE
    err = _err(capsys)
    assert "onerec tokenize: error:" in err and "is not a folder" in err
    assert target.read_text() == "x"


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_unwritable_out_fails_before_compute(tmp_path, no_compute, capsys):
    if os.geteuid() == 0:  # root writes through permission bits: use a read-only filesystem
        if not os.path.isdir("/sys"):
            pytest.skip("root, and no read-only /sys to write into")
        target, parent = "/sys/onerec_test_out", None
    else:
        parent = tmp_path / "ro"
        parent.mkdir()
        parent.chmod(0o555)
        target = str(parent / "res")
    try:
        assert cli.main(["tokenize", "--device", "cpu", "--out", target]) == 2
    finally:
        if parent is not None:
            parent.chmod(0o755)
    assert "cannot write result folder" in _err(capsys)


def test_out_held_by_another_writer_fails_before_compute(tmp_path, no_compute, capsys):
    with ResultFolder(tmp_path / "res", command="the other run"):
        assert cli.main(["run", "--device", "cpu", "--out", str(tmp_path / "res")]) == 2
    assert "being written by another process" in _err(capsys)


def test_unavailable_beam_backend_is_a_usage_error(no_compute, capsys):
    if torch.cuda.is_available():
        pytest.skip("the cuda beam backend may be available here")
    assert cli.main(["run", "--device", "cpu", "--beam-backend", "cuda"]) == 2
    assert "backend 'cuda' is not available" in _err(capsys)


def _small_synthetic(monkeypatch):
    real = onerec.data.load_dataset
    small = real("synthetic", num_users=120, num_items=300, num_interactions=4000, seed=3)
    monkeypatch.setattr(onerec.data, "load_dataset", lambda spec, **kw: small)
    return small


def test_ctrl_c_exits_130_with_one_line_and_publishes_nothing(tmp_path, monkeypatch, capsys):
    _small_synthetic(monkeypatch)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(onerec.pipeline, "build_semantic_ids", interrupted)
    out = tmp_path / "res"
    assert cli.main(["tokenize", "--device", "cpu", "--out", str(out)]) == cli.EXIT_INTERRUPTED
    err = _err(capsys)
    assert err.strip().splitlines() == ["onerec tokenize: interrupted (nothing was published "
                                        "to --out)"]
    assert not (out / "manifest.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res"]  # no temp dir left


def test_failure_while_working_exits_1(monkeypatch, capsys):
    _small_synthetic(monkeypatch)

    def broken(*args, **kwargs):
        raise RuntimeError("the fit diverged")

    monkeypatch.setattr(onerec.pipeline, "build_semantic_ids", broken)
    assert cli.main(["tokenize", "--device", "cpu"]) == cli.EXIT_FAILURE
    assert _err(capsys).strip() == "onerec tokenize: error: the fit diverged"


def test_too_small_codebooks_are_reported_before_the_fit(monkeypatch, capsys):
    _small_synthetic(monkeypatch)
    monkeypatch.setattr(onerec.pipeline, "build_semantic_ids",
                        lambda *a, **k: pytest.fail("fit started"))
    assert cli.main(["tokenize", "--device", "cpu", "--levels", "2", "--codebook-size", "4"]) == 2
    assert "300 items need distinct semantic IDs" in _err(capsys)


# -- item 3: an empty u.data ----------------------------------------------------------------
def test_empty_u_data_is_an_error_not_a_run(tmp_path, capsys):
    (tmp_path / "u.item").write_text(f"1|A (1995)|01-Jan-1995||http://x|{GENRES}\n"
                                     f"2|B (1995)|01-Jan-1995||http://y|{GENRES}\n")
    (tmp_path / "u.user").write_text("1|24|M|technician|85711\n")
    (tmp_path / "u.data").write_text("")
    argv = ["run", "--device", "cpu", "--data", f"ml-100k:{tmp_path}", "--fusion",
            "collaborative"]
    assert cli.main(argv) == cli.EXIT_FAILURE
    assert "u.data: no ratings" in _err(capsys)


def test_generate_for_split_refuses_bad_max_users_and_empty_splits():
    from onerec.pipeline import generate_for_split

    ds = onerec.data.load_dataset("synthetic", num_users=30, num_items=50,
                                  num_interactions=600, seed=2)
    for bad in (-1, 0, 2.5, True):
        with pytest.raises(ValueError, match="max_users must be an int >= 1"):
            generate_for_split(ds, None, None, max_users=bad)
    ds.split.role[ds.split.test] = ds.split.role[ds.split.train[0]]  # no held-out users left
    with pytest.raises(ValueError, match="no held-out users in split 'test'"):
        generate_for_split(ds, None, None)


# -- item 10: --help ---------------------------------------------------------------------
def _subparsers(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action, action.choices


def test_help_has_a_line_per_option_and_subcommand_with_defaults(capsys):
    parser = cli.build_parser()
    action, commands = _subparsers(parser)
    assert {c.dest for c in action._choices_actions} == set(commands) == {"rq", "tokenize", "run", "train",
                                                                "eval", "recommend"}
    assert all(c.help for c in action._choices_actions)  # one line per subcommand
    for name, sub in commands.items():
        assert sub.description, name
        text = sub.format_help()
        for opt in sub._actions:
            if not opt.option_strings or opt.dest == "help":
                continue
            assert opt.help, f"{name} {opt.option_strings[0]} has no help"
            if opt.default is not None and opt.default is not False:
                assert f"(default: {opt.default})" in " ".join(text.split()), \
                    f"{name} {opt.option_strings[0]}: default not shown"
    assert cli.main(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Exit status: 0 success, 2 a usage error" in out
    for name in commands:
        assert name in out


# -- item 11: the baselines beside the headline -------------------------------------------
def test_run_prints_the_popularity_baseline_and_history_policy(monkeypatch, capsys):
    ds = _small_synthetic(monkeypatch)
    argv = ["run", "--device", "cpu", "--dim", "16", "--levels", "2", "--codebook-size", "32",
            "--iters", "3", "--beam-width", "8", "--max-users", "40", "--steps", "2"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in out.splitlines()
            if line.startswith("| ")}
    # both protocols (history items excluded / kept) for the popularity baseline and OneRec
    for model in ("popularity", "onerec"):
        assert {p.split()[0] for m, p in rows if m == model} == {"exclude", "keep"}
    # the popularity recall@20 printed (keep protocol) is the brute-force one
    users, targets, _ = ds.targets("test")
    train_items = ds.interactions.item[ds.split.train]
    counts = torch.bincount(torch.as_tensor(train_items), minlength=ds.num_items)
    top = set(torch.sort(counts, descending=True, stable=True).indices[:20].tolist())
    expected = sum(int(t) in top for t in targets[:40]) / 40
    keep = next(v for (m, p), v in rows.items() if m == "popularity" and p.startswith("keep"))
    assert float(keep.split("|")[6]) == pytest.approx(expected, abs=1e-4)  # recall@20 column


def test_rq_with_fewer_points_than_codes_runs(capsys):
    """item 4: `--num 10` (N < K = 256) failed inside torch.stack; level 0 now repeats rows."""
    assert cli.main(["rq", "--device", "cpu", "--num", "10", "--dim", "8"]) == 0
    out = capsys.readouterr().out
    assert "N=10 D=8 L=3 K=256" in out and "-" not in out.split("GFLOP/s")[0].split("(")[-1]

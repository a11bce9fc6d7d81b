"""All-or-nothing result folders (onerec.results): the manifest, the loaders' check, the lock,
and a writer killed at random points never leaving a folder that loads as complete."""
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from onerec import results
from onerec.results import (IncompleteResultFolder, ResultFolder, ResultFolderBusy,
                            verify_result_folder)

REPO = Path(__file__).resolve().parents[2]


def _write(target, tag, names=("a.txt", "b.txt", "c.bin"), command="test"):
    with ResultFolder(target, command=command, config={"tag": tag}) as out:
        for i, name in enumerate(names):
            with open(out.path(name), "w") as f:
                f.write(f"{tag}:{name}:" + "x" * (100 * i))
    return out


def _assert_one_run(folder):
    """The folder verifies and every listed file belongs to the run its manifest names."""
    manifest = verify_result_folder(folder)
    tag = manifest["config"]["tag"]
    for name in manifest["files"]:
        assert (Path(folder) / name).read_text().startswith(f"{tag}:{name}:"), name
    return tag


def test_manifest_lists_every_file_with_its_sha256(tmp_path):
    import hashlib

    target = tmp_path / "res"
    _write(target, "run1", command="onerec tokenize --out res")
    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["command"] == "onerec tokenize --out res"
    assert manifest["config"] == {"tag": "run1"}
    assert "python" in manifest["versions"] and "torch" in manifest["versions"]
    assert sorted(manifest["files"]) == ["a.txt", "b.txt", "c.bin"]
    for name, meta in manifest["files"].items():
        data = (target / name).read_bytes()
        assert meta == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    assert _assert_one_run(target) == "run1"
    # nothing left beside the target: the private temp dir is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res"]


def test_loaders_refuse_missing_tampered_or_mixed_folders(tmp_path):
    target = tmp_path / "res"
    _write(target, "run1")
    (target / "b.txt").write_text("run0:b.txt:")  # a file of another run
    with pytest.raises(IncompleteResultFolder, match="incomplete or mixed result folder.*b.txt"):
        verify_result_folder(target)
    _write(target, "run2")
    (target / "c.bin").unlink()
    with pytest.raises(IncompleteResultFolder, match="c.bin is listed.*but missing"):
        verify_result_folder(target)
    (target / "manifest.json").unlink()
    with pytest.raises(IncompleteResultFolder, match="no manifest.json"):
        verify_result_folder(target)
    (target / "manifest.json").write_text("{")
    with pytest.raises(IncompleteResultFolder, match="unreadable"):
        verify_result_folder(target)
    with pytest.raises(FileNotFoundError):
        verify_result_folder(tmp_path / "nowhere")


def test_failed_run_leaves_the_previous_folder_untouched(tmp_path):
    target = tmp_path / "res"
    _write(target, "run1")
    with pytest.raises(KeyboardInterrupt):
        with ResultFolder(target, command="test", config={"tag": "run2"}) as out:
            Path(out.path("a.txt")).write_text("run2:a.txt:")
            raise KeyboardInterrupt
    assert _assert_one_run(target) == "run1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res"]
    with ResultFolder(target, command="test", config={"tag": "run3"}):
        pass  # nothing written: nothing published (no empty manifest over run1)
    assert _assert_one_run(target) == "run1"


def test_carry_republishes_earlier_files_and_discard_drops_them(tmp_path):
    """A run that adds to a folder keeps the earlier files listed (hard links: renaming one
    back over itself changes nothing; a copy for files it modifies in place), and the files it
    discards are gone once it has published, not before."""
    target = tmp_path / "res"
    _write(target, "run1", names=("a.txt", "b.txt", "c.bin"))
    with ResultFolder(target, command="test", config={"tag": "run1"}) as out:
        out.carry("a.txt")
        out.carry("b.txt", copy=True)
        with open(out.path("b.txt"), "a") as f:  # in place: the published copy stays as it was
            f.write("more")
        out.discard("c.bin")
        out.discard("never-there")
        assert (target / "b.txt").read_text() == "run1:b.txt:" + "x" * 100
        assert (target / "c.bin").exists()
        with pytest.raises(FileNotFoundError, match="does not exist"):
            out.carry("missing.txt")
    assert sorted(verify_result_folder(target)["files"]) == ["a.txt", "b.txt"]
    assert (target / "a.txt").read_text() == "run1:a.txt:"
    assert (target / "b.txt").read_text().endswith("more")
    assert not (target / "c.bin").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res"]  # no temp dir left


def test_second_writer_is_refused_while_the_first_holds_the_folder(tmp_path):
    target = tmp_path / "res"
    with ResultFolder(target, command="first", config={"tag": "first"}) as out:
        Path(out.path("a.txt")).write_text("first:a.txt:")
        with pytest.raises(ResultFolderBusy, match="being written by another process"):
            with ResultFolder(target, command="second", config={"tag": "second"}):
                pass
    assert _assert_one_run(target) == "first"
    _write(target, "third")  # released: the next writer gets it
    assert _assert_one_run(target) == "third"


def test_out_that_is_a_file_is_refused_before_any_work(tmp_path):
    target = tmp_path / "file"
    target.write_text("not a folder")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        ResultFolder(target, command="test").__enter__()


@pytest.mark.parametrize("crash_at", range(5))
def test_crash_at_every_rename_never_yields_a_mixed_folder(tmp_path, monkeypatch, crash_at):
    """Run 2 publishes 4 files (+ manifest): fail the k-th rename, as a kill there would."""
    target = tmp_path / "res"
    _write(target, "run1", names=("a.txt", "b.txt", "c.bin", "d.txt"))
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == crash_at + 1:
            raise OSError("simulated crash")
        return real_replace(src, dst)

    monkeypatch.setattr(results.os, "replace", replace)
    with pytest.raises(OSError, match="simulated crash"):
        _write(target, "run2", names=("a.txt", "b.txt", "c.bin", "d.txt"))
    monkeypatch.undo()
    with pytest.raises(IncompleteResultFolder, match="no manifest.json"):
        verify_result_folder(target)


_WRITER = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, sys.argv[2])
    from onerec.results import ResultFolder
    print("started", flush=True)
    run = 0
    while True:
        run += 1
        tag = f"{os.getpid()}-{run}"
        with ResultFolder(sys.argv[1], command="kill test", config={"tag": tag}) as out:
            for i in range(6):
                with open(out.path(f"part{i}.txt"), "w") as f:
                    f.write(f"{tag}:part{i}.txt:" + "x" * (5000 * i))
""")


def test_writer_killed_at_random_points_never_leaves_a_folder_that_loads_as_complete(tmp_path,
                                                                                     seed):
    """SIGKILL a writer that republishes a folder in a loop, a random time into the loop, 12 times;
    after each kill the folder either fails the check or holds exactly one run's files."""
    rng = random.Random(seed)
    target = tmp_path / "res"
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    outcomes = {"complete": 0, "incomplete": 0}
    tags = set()
    for _ in range(12):
        proc = subprocess.Popen([sys.executable, str(script), str(target), str(REPO)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout.readline() == b"started\n"  # the kill lands inside the loop
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL, err.decode()  # it was killed mid-loop
        if not (target / "part0.txt").exists() and not (target / "manifest.json").exists():
            continue  # killed before its first publish
        try:
            tags.add(_assert_one_run(target))
            outcomes["complete"] += 1
        except IncompleteResultFolder:
            outcomes["incomplete"] += 1
    # the lock died with the killed writers, and their temp dirs are cleared by the next one
    _write(target, "final", names=("part0.txt",))
    assert _assert_one_run(target) == "final"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res", "writer.py"]
    assert outcomes["complete"] + outcomes["incomplete"] > 0, outcomes


# -- the tokenizer stage's folder ----------------------------------------------------------
@pytest.fixture
def small_sids():
    from onerec.pipeline import SemanticIds
    from onerec.tokenizer import RQKMeansTokenizer

    x = torch.randn(60, 8)
    tok = RQKMeansTokenizer(num_levels=2, codebook_size=8, iters=2, seed=0).fit(x)
    table = tok.build_table(x, codes=tok.fit_codes_)
    quality = tok.quality_report(x, codes=tok.fit_codes_, table=table)
    return SemanticIds(x.numpy(), {}, tok, table, quality)


def test_semantic_ids_folder_round_trip_and_refusal(tmp_path, small_sids):
    from onerec.pipeline import load_semantic_ids, save_semantic_ids
    from onerec.tokenizer import RQKMeansTokenizer

    target = tmp_path / "tok"
    with ResultFolder(target, command="test") as out:
        names = save_semantic_ids(small_sids, out, plot=False)
    assert sorted(names) == ["semantic_ids.pt", "tokenizer.rqk", "tokenizer_report.json"]
    tok, saved, manifest = load_semantic_ids(target)
    assert torch.equal(saved["codes"], small_sids.table.export()[0])
    assert tok.codebook_sizes == [8, 8]
    assert RQKMeansTokenizer.load(target).codebook_sizes == [8, 8]  # a folder loads too
    # the case: an old semantic_ids.pt beside a new tokenizer
    torch.save({"codes": torch.zeros(3000, 3, dtype=torch.int64)}, target / "semantic_ids.pt")
    with pytest.raises(IncompleteResultFolder, match="semantic_ids.pt"):
        load_semantic_ids(target)
    with pytest.raises(IncompleteResultFolder):
        RQKMeansTokenizer.load(target)
    # the tokenizer file read on its own is checked against its folder too
    with pytest.raises(IncompleteResultFolder, match="semantic_ids.pt does not match"):
        RQKMeansTokenizer.load(target / "tokenizer.rqk")
    (target / "manifest.json").unlink()  # an interrupted run: the lock file, no manifest
    with pytest.raises(IncompleteResultFolder, match="no manifest.json"):
        RQKMeansTokenizer.load(target / "tokenizer.rqk")


def test_tokenizer_save_uses_a_private_temp_name(tmp_path, small_sids, monkeypatch):
    """Two saves to one path never share a temp file (the old fixed name was path + '.tmp')."""
    seen = []
    real_replace = os.replace

    def replace(src, dst):
        seen.append(os.path.basename(src))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    small_sids.tokenizer.save(tmp_path / "t.rqk")
    small_sids.tokenizer.save(tmp_path / "t.rqk")
    assert len(seen) == 2 and seen[0] != seen[1] and "t.rqk.tmp" not in seen
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.rqk"]

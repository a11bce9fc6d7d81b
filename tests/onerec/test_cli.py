"""The `onerec` CLI and the pipeline stages behind it, end to end on real and synthetic data."""
import os
import re
from pathlib import Path

import pytest
import torch

from onerec import cli
from onerec.data import load_dataset
from onerec.pipeline import build_semantic_ids, build_trie, generate_for_split
from onerec.tokenizer import RQKMeansTokenizer

ML100K = Path(__file__).resolve().parents[3] / "shared" / "data" / "ml-100k"


def test_pipeline_small_synthetic():
    ds = load_dataset("synthetic", num_users=120, num_items=300, num_interactions=4000, seed=3)
    sids = build_semantic_ids(ds, dim=16, num_levels=3, codebook_size=8, iters=5, seed=1)
    assert sids.quality["collision_rate_after"] == 0.0
    codes, item_ids = sids.table.export()
    assert codes.shape == (300, 3) and sorted(item_ids.tolist()) == list(range(300))
    trie = build_trie(sids)
    assert trie.num_items == 300
    gen = generate_for_split(ds, sids, trie, beam_width=16, max_users=40)
    assert gen.item_ids.shape == (40, 16)
    assert gen.legal_fraction == 1.0
    live = gen.item_ids[gen.item_ids >= 0]
    assert live.numel() > 0 and ((live >= 0) & (live < 300)).all()
    # every user's generated items are distinct real items
    for row in gen.item_ids.tolist():
        row = [i for i in row if i >= 0]
        assert len(row) == len(set(row))
    assert 0.0 <= gen.recall <= 1.0


def test_cli_run_trains_and_evaluates_on_cpu(capsys):
    """The main job on the CPU (stated explicitly: `--device auto` picks CUDA where there is
    one): semantic IDs, a short training of the tiny model, the side-by-side table with a OneRec
    row whose outputs are all legal, and example users' recommendations with semantic IDs."""
    assert cli.main(["run", "--max-users", "50", "--steps", "10", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "synthetic(seed=0)" in out and "tokenizer:" in out
    assert "kmeans_step backend=cpp  device=cpu" in out  # what ran where
    assert "after resolution 0.00%" in out
    assert "training: tiny OneRec, 10 steps" in out
    header = next(line for line in out.splitlines() if line.startswith("| model |"))
    cols = [c.strip() for c in header.split("|")[1:-1]]
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in out.splitlines()
            if line.startswith("| ") and line != header]
    models = {r[0] for r in rows}
    assert {"onerec", "popularity", "co-occurrence", "history prior"} <= models
    onerec_rows = [dict(zip(cols, r)) for r in rows if r[0] == "onerec"]
    assert len(onerec_rows) == 2  # both protocols
    assert all(r["legal_rate"] == "1.0000" for r in onerec_rows)
    assert "(50 users, full catalogue)" in out
    assert "legal items 100.0%" in out
    examples = [line for line in out.splitlines() if line.startswith("  user ")]
    assert len(examples) == 3
    assert re.search(r"recommended \d+ \[\d+, \d+, \d+\]", examples[0])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cli_run_on_cuda(capsys):
    """`--device auto` picks the GPU where there is one; the tokenizer ops then run Triton."""
    assert cli.main(["run", "--max-users", "200", "--steps", "20"]) == 0
    out = capsys.readouterr().out
    assert "kmeans_step backend=triton  device=cuda" in out
    assert "legal items 100.0%" in out


@pytest.mark.skipif(not ML100K.is_dir(), reason=f"MovieLens-100K not found at {ML100K}")
def test_cli_tokenize_movielens_saves_a_loadable_tokenizer(tmp_path, capsys):
    out_dir = tmp_path / "tok"
    pytest.importorskip("matplotlib")  # the report plot
    assert cli.main(["tokenize", "--data", f"ml-100k:{ML100K}", "--codebook-size", "16",
                     "--iters", "5", "--out", str(out_dir), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "ml-100k: 943 users, 1682 items, 100000 interactions" in out
    assert "level 2:" in out
    tok = RQKMeansTokenizer.load(out_dir / "tokenizer.rqk")
    saved = torch.load(out_dir / "semantic_ids.pt")
    assert saved["codes"].shape == (1682, 3)
    assert torch.unique(saved["codes"], dim=0).shape[0] == 1682  # one-to-one
    assert tok.codebook_sizes == [16, 16, 16]
    assert os.path.exists(out_dir / "tokenizer_report.json")
    png = (out_dir / "tokenizer_report.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_cli_rq(capsys, device):
    assert cli.main(["rq", "--num", "500", "--dim", "16", "--codebook-size", "32",
                     "--device", device.type]) == 0
    out = capsys.readouterr().out
    assert "rq_assign" in out and f"device={device.type}" in out


def test_cli_reports_bad_requests_without_a_traceback(capsys):
    assert cli.main(["tokenize", "--data", "netflix"]) == 2
    assert "error:" in capsys.readouterr().err
    # the CUDA beam backend on CPU tensors is refused (stated device: auto would pick CUDA on a GPU)
    assert cli.main(["run", "--beam-backend", "cuda", "--max-users", "5", "--device", "cpu"]) == 2
    assert "cuda" in capsys.readouterr().err


def test_cli_run_out_keeps_checkpoint_metrics_and_table(tmp_path, monkeypatch, capsys):
    """`onerec run --out DIR` publishes the tokenizer files, the training checkpoint and log,
    and the evaluation table, under one manifest."""
    pytest.importorskip("matplotlib")  # the tokenizer report plot
    import json

    import onerec.data
    from onerec.train import load_trained
    from onerec.results import verify_result_folder

    small = load_dataset("synthetic", num_users=120, num_items=300, num_interactions=4000, seed=3)
    monkeypatch.setattr(onerec.data, "load_dataset", lambda spec, **kw: small)
    out_dir = tmp_path / "res"
    assert cli.main(["run", "--device", "cpu", "--dim", "16", "--levels", "2",
                     "--codebook-size", "32", "--iters", "3", "--steps", "3", "--max-users",
                     "20", "--out", str(out_dir)]) == 0
    files = set(verify_result_folder(out_dir)["files"])
    assert {"tokenizer.rqk", "semantic_ids.pt", "last.pt", "metrics.jsonl",
            "eval.json"} <= files
    table = json.loads((out_dir / "eval.json").read_text())
    assert table["users"] == 20 and {r["model"] for r in table["rows"]} >= {"onerec"}
    from onerec.model.config import OneRecConfig
    from onerec.model.model import OneRec
    from onerec.pipeline import load_semantic_ids

    tok, saved, _ = load_semantic_ids(out_dir)
    codes = torch.full((300, 2), -1, dtype=torch.int64)
    codes[saved["item_ids"]] = saved["codes"]
    model = OneRec(OneRecConfig.preset("tiny").for_data(tok.codebook_sizes, small))
    assert load_trained(model, out_dir / "last.pt", small, codes)["step"] == 3

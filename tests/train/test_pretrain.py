"""The training loop: exact resume, refused checkpoints, atomic saves, gradient accumulation,
early stopping, the metrics log and plot, and (on MovieLens-100K) that it learns."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from onerec.data import load_dataset
from onerec.model.config import OneRecConfig
from onerec.model.model import OneRec
from onerec.model.moe import moe_layers
from onerec.pipeline import build_semantic_ids
from onerec.train import (CheckpointError, IncompleteCheckpoint, TrainConfig, Validator,
                          load_checkpoint, load_trained, plot_metrics, pretrain,
                          save_checkpoint)
from onerec.train import checkpoint as ckpt_mod
from onerec.train.pretrain import as_item_codes
from onerec_kernels import SemanticIdTrie

from _train_helpers import ML100K, random_codes

FAST = dict(batch_size=16, warmup_steps=2, history_len=24, eval_users=12, log_every=1)


def fresh(cfg, seed=0):
    torch.manual_seed(seed)
    return OneRec(cfg)


class Stop(Exception):
    pass


def stop_at(n):
    def cb(step, loss):
        if step == n:
            raise Stop
    return cb


def test_resume_continues_exactly(world, tmp_path):
    """Interrupted after step 3 (last checkpoint at step 2), resumed with a differently
    initialised model and a disturbed global RNG: the losses, the validation, the balancing
    bias and the final weights equal the uninterrupted run's bit for bit."""
    ds, codes, cfg = world
    tc = TrainConfig(max_steps=6, eval_every=3, checkpoint_every=2, **FAST)
    ref_model = fresh(cfg)
    ref = pretrain(ref_model, ds, codes, replace(tc, out_dir=str(tmp_path / "ref")))

    out = str(tmp_path / "run")
    with pytest.raises(Stop):
        pretrain(fresh(cfg), ds, codes, replace(tc, out_dir=out), on_step=stop_at(3))
    assert load_checkpoint(os.path.join(out, "last.pt"))["step"] == 2
    torch.manual_seed(1234)
    np.random.seed(99)
    model = fresh(cfg, seed=7)
    res = pretrain(model, ds, codes, replace(tc, out_dir=out), resume=True)
    assert res.step == 6 and res.losses == ref.losses  # bit for bit, all six
    assert res.evals == ref.evals and res.best_step == ref.best_step
    for a, b in zip(moe_layers(model), moe_layers(ref_model)):
        assert torch.equal(a.expert_bias, b.expert_bias)
    assert any(bool(m.expert_bias.abs().sum() > 0) for m in moe_layers(model))
    for (n, p), q in zip(model.state_dict().items(), ref_model.state_dict().values()):
        assert torch.equal(p, q), n
    # the metrics log holds each step once (the redone step 3 is not duplicated)
    recs = [json.loads(ln) for ln in open(os.path.join(out, "metrics.jsonl"))]
    train_steps = [r["step"] for r in recs if r["event"] == "train"]
    assert train_steps == list(range(1, 7))
    assert [r["step"] for r in recs if r["event"] == "valid"] == [3, 6]
    assert all(r["tokens_per_s"] > 0 and r["imbalance"] >= 1.0 for r in recs
               if r["event"] == "train")
    assert res.best_checkpoint and load_checkpoint(res.best_checkpoint)["step"] == res.best_step


def test_refuses_another_config_tokenizer_or_schedule(world, tmp_path):
    ds, codes, cfg = world
    tc = TrainConfig(max_steps=1, eval_every=0, out_dir=str(tmp_path), **FAST)
    pretrain(fresh(cfg), ds, codes, tc)
    with pytest.raises(CheckpointError, match=r"another model config \(differs in \['d_ff'\]"):
        pretrain(fresh(replace(cfg, d_ff=128)), ds, codes, tc, resume=True)
    with pytest.raises(CheckpointError, match="another tokenizer"):
        pretrain(fresh(cfg), ds, random_codes(ds.num_items, 1), tc, resume=True)
    with pytest.raises(CheckpointError, match="other training settings.*'lr'"):
        pretrain(fresh(cfg), ds, codes, replace(tc, lr=1e-4), resume=True)
    with pytest.raises(FileNotFoundError):
        pretrain(fresh(cfg), ds, codes, tc, resume=str(tmp_path / "nope.pt"))
    model = fresh(cfg, seed=3)
    info = load_trained(model, tmp_path / "last.pt", ds, codes)
    saved = load_checkpoint(tmp_path / "last.pt")["model"]
    assert info["step"] == 1 and all(torch.equal(v, model.state_dict()[k])
                                     for k, v in saved.items())
    with pytest.raises(CheckpointError, match="another tokenizer"):
        load_trained(model, tmp_path / "last.pt", ds, random_codes(ds.num_items, 2))


def test_interrupted_save_never_loads_as_complete(world, tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1, "w": torch.arange(10)})
    real_save = torch.save

    def dies_midway(obj, f, *a, **k):  # half the bytes reach the temp file, then the kill
        import io

        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[:len(buf.getvalue()) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_mod.torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"step": 2, "w": torch.arange(10)})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1  # the previous checkpoint, intact
    assert os.listdir(tmp_path) == ["last.pt"]  # no temp file left behind
    # a truncated file at the final name (e.g. a copy cut short) is refused, not half-loaded
    data = path.read_bytes()
    for cut in (0, 10, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(IncompleteCheckpoint, match="incomplete or corrupted"):
            load_checkpoint(path)
    torch.save({"step": 3}, path)  # a torch file that is not a checkpoint
    with pytest.raises(IncompleteCheckpoint, match="not an onerec training checkpoint"):
        load_checkpoint(path)


def test_checkpoint_in_a_result_folder(tmp_path):
    """Written by training beside a published result folder's files it loads on its own;
    published through the folder, it is checked against the manifest as well."""
    from onerec.results import ResultFolder

    with ResultFolder(tmp_path / "out", command="test") as out:
        open(out.path("tokenizer.rqk"), "w").write("x")
    save_checkpoint(tmp_path / "out" / "last.pt", {"step": 4})
    assert load_checkpoint(tmp_path / "out" / "last.pt")["step"] == 4
    with ResultFolder(tmp_path / "pub", command="test") as out:
        save_checkpoint(out.path("best.pt"), {"step": 5})
    assert load_checkpoint(tmp_path / "pub" / "best.pt")["step"] == 5
    save_checkpoint(tmp_path / "pub" / "best.pt", {"step": 6})  # not what the manifest lists
    with pytest.raises(IncompleteCheckpoint, match="does not match manifest.json"):
        load_checkpoint(tmp_path / "pub" / "best.pt")


def test_killed_writer_leaves_the_old_or_the_new_checkpoint(tmp_path):
    """A real SIGKILL at random moments of a writer that saves over and over: every time, the
    file at the final name loads complete and consistent (never partial)."""
    path = tmp_path / "ck.pt"
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {os.getcwd()!r})
        from onerec.train.checkpoint import save_checkpoint
        i = 0
        while True:
            i += 1
            save_checkpoint({str(path)!r}, {{"step": i, "w": torch.full((1 << 20,), float(i))}})
            print(i, flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "1"  # at least one save completed
        rng = np.random.default_rng(0)
        for _ in range(3):
            time.sleep(float(rng.uniform(0.01, 0.1)))
            state = load_checkpoint(path)  # concurrent reader: old or new, always whole
            assert bool((state["w"] == state["step"]).all())
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    state = load_checkpoint(path)
    assert state["w"].shape == (1 << 20,) and bool((state["w"] == state["step"]).all())
    save_checkpoint(path, {"step": 0, "w": torch.zeros(1)})  # removes a temp file the kill left
    assert os.listdir(tmp_path) == ["ck.pt"]


def test_grad_accumulation_equals_the_larger_batch(world):
    ds, codes, cfg = world
    small = dict(FAST, batch_size=8, max_steps=1, eval_every=0)
    m1, m2 = fresh(cfg), fresh(cfg)
    r1 = pretrain(m1, ds, codes, TrainConfig(**dict(small, batch_size=16)))
    r2 = pretrain(m2, ds, codes, TrainConfig(grad_accum=2, **small))
    assert r1.losses[0] == pytest.approx(r2.losses[0], rel=1e-5)
    for (n, p), q in zip(m1.named_parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=n)


def test_early_stopping_and_plot(world, tmp_path):
    ds, codes, cfg = world
    tc = TrainConfig(max_steps=20, eval_every=1, patience=2, lr=1e-12, out_dir=str(tmp_path),
                     **FAST)
    res = pretrain(fresh(cfg), ds, codes, tc)
    # a learning rate of 1e-12 changes nothing: the first evaluation stays the best
    assert res.stopped_early and res.step == 3 and res.best_step == 1
    assert [e["step"] for e in res.evals] == [1, 2, 3]
    assert all(e["legal_rate"] == 1.0 for e in res.evals)
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 3
    pytest.importorskip("matplotlib")
    png = plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "training.png")
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_validation_masks_consumed_items_under_the_exclude_protocol(world):
    """The validator follows the dataset's default protocol (this world re-consumes items:
    keep) unless told; with exclude=True no validation list holds an item the user consumed
    before the target, and the lists stay full."""
    ds, codes, cfg = world
    model = fresh(cfg).eval()
    trie = SemanticIdTrie(codes, cfg.codebook_sizes, item_ids=torch.arange(ds.num_items))
    assert Validator(ds, codes, cfg, trie, max_users=12, history_len=24)(model)["protocol"] \
        == "keep"
    v = Validator(ds, codes, cfg, trie, max_users=12, history_len=24, exclude=True, k=10,
                  beam_width=10)
    seen = []
    real = model.recommend

    def spy(*args, **kw):
        res = real(*args, **kw)
        off, items = kw["exclude_offsets"], kw["exclude_items"]
        for u in range(res.item_ids.shape[0]):
            seen.append((set(res.item_ids[u].tolist()), set(items[off[u]:off[u + 1]].tolist())))
        return res

    model.recommend = spy
    m = v(model)
    assert m["protocol"] == "exclude" and m["legal_rate"] == 1.0 and len(seen) == 12
    assert any(consumed for _, consumed in seen)
    for recommended, consumed in seen:
        assert -1 not in recommended and not recommended & consumed


def test_bad_settings():
    with pytest.raises(ValueError, match="beam_width"):
        TrainConfig(eval_k=10, beam_width=5)
    with pytest.raises(ValueError, match="max_steps"):
        TrainConfig(max_steps=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_and_compiled_training_on_gpu(world):
    ds, codes, cfg = world
    model = fresh(cfg).cuda()
    res = pretrain(model, ds, codes, TrainConfig(max_steps=20, eval_every=10, **FAST))
    assert all(np.isfinite(res.losses)) and res.losses[-1] < res.losses[0]
    assert all(e["legal_rate"] == 1.0 for e in res.evals)
    compiled = pretrain(fresh(cfg).cuda(), ds, codes,
                        TrainConfig(max_steps=4, eval_every=0, compile=True, **FAST))
    assert all(np.isfinite(compiled.losses))


def test_ml100k_tiny_beats_popularity():
    """A short training of `tiny` on MovieLens-100K beats the most-popular-items list on
    Recall@10 of the test targets (all 943 users; neither excludes already-seen items), with
    100 % legal outputs. 200 steps of 64 contexts: about 15 s on two idle CPU cores."""
    if not (ML100K / "u.data").is_file():
        pytest.skip(f"MovieLens-100K not found at {ML100K}")
    ds = load_dataset(f"ml-100k:{ML100K}")
    sids = build_semantic_ids(ds, dim=32, num_levels=3, codebook_size=16, iters=10, seed=0)
    cfg = OneRecConfig.preset("tiny").for_data(sids.tokenizer.codebook_sizes, ds)
    model = fresh(cfg)
    tc = TrainConfig(max_steps=200, batch_size=64, warmup_steps=20, history_len=32,
                     eval_every=0, log_every=0)
    res = pretrain(model, ds, sids, tc)
    assert np.mean(res.losses[-20:]) < np.mean(res.losses[:5]) - 0.3
    codes = as_item_codes(sids, ds.num_items)
    trie = SemanticIdTrie(codes, cfg.codebook_sizes, item_ids=torch.arange(ds.num_items))
    m = Validator(ds, codes, cfg, trie, split="test", max_users=ds.num_users,
                  history_len=32, exclude=False)(model)
    _, targets, _ = ds.targets("test")
    counts = np.bincount(ds.interactions.item[ds.split.train], minlength=ds.num_items)
    top10 = np.argsort(-counts, kind="stable")[:10]
    popularity = float(np.isin(targets, top10).mean())
    print(f"ml-100k test Recall@10: tiny {m['recall']:.4f} vs popularity {popularity:.4f} "
          f"({m['users']} users, {res.seconds:.1f} s training)")
    assert m["users"] == ds.num_users and m["legal_rate"] == 1.0
    assert m["recall"] > popularity

"""OneRec model inference: encoder once per user + the full trie-constrained beam search, fused
backends (Triton attention / MoE, native beam step) against the "torch" backend in the same run.

One batch = B users with pathways at the config's lengths (short-term full, positive-feedback and
lifelong lengths drawn uniformly, the lifelong one already compressed to at most lifelong_len so
the QFormer sees it directly), a catalogue of random distinct semantic IDs, beam width W.
Reported: time per batch, users/s, items/s (B * W recommended items per batch), and
`speedup_vs_torch` (torch backend time / fused time).
  CPU: `tiny`, B = 32, W = 16 (wall clock). On CPU the default attention / MoE backends are
       the references themselves, so "fused" differs from "torch" only in the beam-search step;
       the ratio is near 1 up to the noise of a shared machine.
  GPU: `onerec-0.121b` and `onerec-0.935b` in bf16, B = 256, W = 128, 3 x 8192 codebook,
       200k items (--quick: B = 64, W = 64); device time from CUDA events.
"""
from __future__ import annotations

import pytest
import torch

from common import cpu_times_ms, gpu_time_ms, quick, record, requires_cuda, run_timed
from onerec.model.batch import EncoderBatch, SequenceFeatures
from onerec.model.config import OneRecConfig
from onerec.model.model import OneRec
from onerec_kernels import SemanticIdTrie


def _sequence(cfg, lengths, gen) -> SequenceFeatures:
    total = int(lengths.sum())
    cu = torch.zeros(lengths.shape[0] + 1, dtype=torch.int32)
    cu[1:] = lengths.cumsum(0)
    codes = torch.stack([torch.randint(0, k, (total,), generator=gen) for k in cfg.codebook_sizes],
                        dim=1)
    nb = cfg.num_buckets
    buckets = torch.stack([torch.randint(0, nb, (total,), generator=gen),
                           torch.randint(0, nb, (total,), generator=gen),
                           torch.randint(0, 2, (total,), generator=gen)], dim=1)
    no_features = torch.zeros((total, 0), dtype=torch.int64)
    return SequenceFeatures(cu, int(lengths.max()), codes, no_features, buckets)


def random_batch(cfg: OneRecConfig, num_users: int, seed: int = 0) -> EncoderBatch:
    gen = torch.Generator().manual_seed(seed)
    B = num_users
    short = torch.full((B,), cfg.short_len)
    positive = torch.randint(0, cfg.positive_len + 1, (B,), generator=gen)
    lifelong = torch.randint(0, min(cfg.lifelong_len, 2000) + 1, (B,), generator=gen)
    return EncoderBatch(torch.arange(B), torch.zeros((B, 0), dtype=torch.int64),
                        torch.zeros((B, 0)), _sequence(cfg, short, gen),
                        _sequence(cfg, positive, gen), _sequence(cfg, lifelong, gen))


def random_trie(cfg: OneRecConfig, num_items: int, device, seed: int = 0) -> SemanticIdTrie:
    gen = torch.Generator().manual_seed(seed)
    codes = torch.stack([torch.randint(0, k, (2 * num_items,), generator=gen)
                         for k in cfg.codebook_sizes], dim=1)
    codes = torch.unique(codes, dim=0)
    codes = codes[torch.randperm(codes.shape[0], generator=gen)[:num_items]]
    return SemanticIdTrie(codes.to(device), cfg.codebook_sizes)


def _extra(cfg, B, W, ms, torch_ms):
    return {"preset": cfg.name, "users": B, "beams": W, "backend": "fused", "time_ms": ms,
            "users_per_s": B / (ms * 1e-3), "items_per_s": B * W / (ms * 1e-3),
            "anchor_torch_ms": torch_ms, "speedup_vs_torch": torch_ms / ms}


def test_model_inference_cpu(benchmark):
    cfg = OneRecConfig.preset("tiny", codebook_sizes=(64, 64, 64))
    B, W = 32, 16
    torch.manual_seed(0)
    model = OneRec(cfg).eval()
    batch, trie = random_batch(cfg, B), random_trie(cfg, 5000, "cpu")

    def run(backend):
        def go():
            model.set_backend(backend)
            return model.recommend(batch, trie, W, backend=backend)
        return go

    with torch.no_grad():
        times = cpu_times_ms({"fused": run(None), "torch": run("torch")})
    record(benchmark, **_extra(cfg, B, W, times["fused"], times["torch"]))
    run_timed(benchmark, run(None), times["fused"])


@requires_cuda
@pytest.mark.parametrize("preset", ["onerec-0.121b", "onerec-0.935b"])
def test_model_inference_gpu(benchmark, preset):
    cfg = OneRecConfig.preset(preset)
    B, W = (64, 64) if quick() else (256, 128)
    torch.manual_seed(0)
    with torch.device("cuda"):  # initialise on the GPU (0.935b is 3 GB in fp32)
        model = OneRec(cfg)
    model = model.to(torch.bfloat16).eval()
    batch = random_batch(cfg, B).to("cuda")
    trie = random_trie(cfg, 200_000, "cuda")

    def run(backend):
        def go():
            model.set_backend(backend)
            with torch.no_grad():
                return model.recommend(batch, trie, W, backend=backend)
        return go

    fused, ref = run(None), run("torch")
    a, b = fused(), ref()  # warm up (Triton compiles) outside the timing
    # How often the two backends agree on the recommended items (bf16 rounding reorders ties).
    overlap = torch.isin(a.item_ids, b.item_ids).float().mean().item()
    ms, torch_ms = gpu_time_ms(fused), gpu_time_ms(ref)
    record(benchmark, **_extra(cfg, B, W, ms, torch_ms), dtype="bfloat16",
           item_overlap_vs_torch=overlap, legal=bool((a.item_ids >= 0).all()))
    run_timed(benchmark, lambda: (fused(), torch.cuda.synchronize()), ms)

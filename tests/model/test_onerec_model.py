"""The OneRec model on the tiny preset (CPU): pathway shapes, backends, beam-shared decoding vs
a naive per-beam recompute, legality, parameter counts, torch.compile, bad input."""
import copy
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from onerec.data import build_pathways, load_dataset
from onerec.model.batch import build_batch, encoder_batch
from onerec.model.config import NOMINAL_PARAMS, PRESETS, OneRecConfig
from onerec.model.encoder import EncoderOutput
from onerec.model.model import OneRec
from onerec.model.moe import attach_balancing
from onerec_kernels import SemanticIdTrie, constrained_beam_search

K = 16


@pytest.fixture(scope="module")
def data():
    ds = load_dataset("synthetic", num_users=30, num_items=120, num_interactions=2500, seed=3)
    gen = torch.Generator().manual_seed(0)
    codes = torch.randperm(K ** 3, generator=gen)[:ds.num_items]
    item_codes = torch.stack([codes // K ** 2, codes // K % K, codes % K], dim=1)
    # No lifelong compression by default (its k-means dominates CPU time; one test runs it).
    config = OneRecConfig.preset("tiny", lifelong_len=10_000).for_data((K, K, K), ds,
                                                                       with_user_ids=True)
    return ds, item_codes, config


def make_batch(data, users, times=None, config=None):
    ds, item_codes, cfg = data
    return build_batch(ds, torch.as_tensor(users), times, item_codes, config or cfg)


def first_times(ds, users):
    """Each user's first event time: histories cut there are empty."""
    return torch.as_tensor(ds.interactions.timestamp[ds.user_offsets[users]])


def test_pathway_shapes_with_empty_histories(data, seed):
    ds, item_codes, cfg = data
    users = torch.tensor([0, 1, 2, 3])
    times = torch.full((4,), torch.iinfo(torch.int64).max)
    times[1:3] = first_times(ds, users[1:3].numpy())  # users 1, 2: no history at all
    cfg = replace(cfg, lifelong_len=20)
    b = make_batch(data, users, times, cfg)
    for name in ("short_term", "positive", "lifelong"):
        s = getattr(b, name)
        n = int(s.cu_seqlens[-1])
        assert s.codes.shape == (n, cfg.num_levels)
        assert s.buckets.shape == (n, 3 + len(cfg.signals))
        assert s.categorical.shape == (n, len(cfg.item_cardinalities))
        assert s.lengths[1] == 0 and s.lengths[2] == 0
    assert b.lifelong.lengths.max() > cfg.lifelong_len  # exercises compress_history
    model = OneRec(cfg).eval()
    enc = model.encode(b)
    want = 1 + b.short_term.lengths + b.positive.lengths + cfg.num_queries
    assert torch.equal((enc.cu_seqlens[1:] - enc.cu_seqlens[:-1]).long(), want)
    assert enc.memory.shape == (int(want.sum()), cfg.d_model)
    assert torch.isfinite(enc.memory).all()


def test_users_are_independent_of_the_batch(data, seed):
    """Packed ragged encoding: a user's encoder output does not depend on who else is in the
    batch or on padding (no compression here: its random init depends on the batch)."""
    cfg = data[2]
    model = OneRec(cfg).eval()
    users = torch.tensor([4, 5, 6])
    times = torch.full((3,), torch.iinfo(torch.int64).max)
    times[1] = first_times(data[0], [5])[0]
    with torch.no_grad():
        enc = model.encode(make_batch(data, users, times, cfg))
        for i in range(3):
            alone = model.encode(make_batch(data, users[i:i + 1], times[i:i + 1], cfg))
            a, b = int(enc.cu_seqlens[i]), int(enc.cu_seqlens[i + 1])
            torch.testing.assert_close(enc.memory[a:b], alone.memory, atol=1e-5, rtol=1e-5)


def test_fused_backends_match_torch(data, seed):
    pytest.importorskip("triton")
    cfg = data[2]
    fused, ref = OneRec(cfg, backend="triton").eval(), OneRec(cfg).eval()
    ref.load_state_dict(fused.state_dict())
    ref.set_backend("torch")
    b = make_batch(data, [7, 8, 9])
    codes = data[1][torch.tensor([1, 2, 3])]
    with torch.no_grad():
        e1, e2 = fused.encode(b), ref.encode(b)
        torch.testing.assert_close(e1.memory, e2.memory, atol=1e-4, rtol=1e-4)
        for a, r in zip(fused(b, codes), ref(b, codes)):
            torch.testing.assert_close(a, r, atol=1e-4, rtol=1e-4)
    # Training: the loss and every gradient (through the kernels' backward) agree too.
    fused.train(), ref.train()
    for model in (fused, ref):
        model.loss(b, codes).backward()
    for (name, p), q in zip(fused.named_parameters(), ref.parameters()):
        if p.grad is not None or q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, atol=1e-4, rtol=1e-3,
                                       msg=lambda m, n=name: f"{n}: {m}")


class NaiveStep:
    """Recompute [BOS, prefix] from scratch for every beam, with the encoder output copied per
    beam (what beam sharing and the KV cache must reproduce)."""

    def __init__(self, model: OneRec, enc: EncoderOutput):
        self.model, self.enc = model, enc

    def __call__(self, tokens, parents):
        B, W, t = tokens.shape
        lengths = (self.enc.cu_seqlens[1:] - self.enc.cu_seqlens[:-1]).long()
        rows = [torch.arange(int(self.enc.cu_seqlens[b]), int(self.enc.cu_seqlens[b + 1]))
                for b in range(B) for _ in range(W)]
        dev = self.enc.memory.device
        cu = torch.zeros(B * W + 1, dtype=torch.int32, device=dev)
        cu[1:] = lengths.repeat_interleave(W).cumsum(0)
        copied = EncoderOutput(self.enc.memory[torch.cat(rows).to(dev)], cu, self.enc.max_len)
        h = self.model.decoder.hidden(copied, tokens.reshape(B * W, 1, t))[:, 0, t]
        return F.log_softmax(self.model.decoder.heads[t](h).float(), -1).view(B, W, -1)


def test_beam_shared_kv_cache_equals_naive(data, seed):
    ds, item_codes, cfg = data
    model = OneRec(cfg).eval()
    trie = SemanticIdTrie(item_codes, cfg.codebook_sizes)
    b = make_batch(data, [10, 11, 12])
    with torch.no_grad():
        enc = model.encode(b)
        log = []

        def record(fn):
            def step(tokens, parents):
                out = fn(tokens, parents)
                log.append(out)
                return out
            return step

        fast = constrained_beam_search(record(model.step_fn(enc)), trie, 3, 6)
        naive = constrained_beam_search(record(NaiveStep(model, enc)), trie, 3, 6)
    for a, r in zip(log[:3], log[3:]):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.scores, naive.scores, atol=1e-5, rtol=1e-5)
    assert torch.equal(fast.item_ids, naive.item_ids)
    assert torch.equal(fast.codes, naive.codes)


def test_recommend_returns_legal_items(data, seed):
    ds, item_codes, cfg = data
    model = OneRec(cfg).eval()
    catalogue = torch.arange(0, ds.num_items, 2)  # half the items are recommendable
    trie = SemanticIdTrie(item_codes[catalogue], cfg.codebook_sizes, item_ids=catalogue)
    res = model.recommend(make_batch(data, [13, 14]), trie, beam_width=8)
    assert res.item_ids.shape == (2, 8) and (res.item_ids >= 0).all()
    assert torch.isin(res.item_ids, catalogue).all()
    assert torch.equal(res.codes, item_codes[res.item_ids])  # the codes are the item's
    assert (res.scores[:, :-1] >= res.scores[:, 1:]).all()  # best first
    for row in res.item_ids:
        assert row.unique().numel() == row.numel()


def test_item_sequence_only_data(data, seed):
    """No static, item or signal features (an item-sequence-only dataset): still runs."""
    ds, item_codes, _ = data
    cfg = OneRecConfig.preset("tiny", lifelong_len=10_000).for_data((K, K, K))
    paths = build_pathways(ds, torch.tensor([22, 23]), short_len=cfg.short_len,
                           positive_len=cfg.positive_len)
    paths.static, paths.static_numeric = paths.static[:, :0], paths.static_numeric[:, :0]
    b = encoder_batch(paths, item_codes, cfg)
    assert b.short_term.buckets.shape[1] == 3 and b.short_term.categorical.shape[1] == 0
    model = OneRec(cfg)
    assert torch.isfinite(model.loss(b, item_codes[:2]))


def test_loss_trains_every_part(data, seed):
    ds, item_codes, cfg = data
    model = OneRec(cfg)
    b = make_batch(data, [15, 16, 17])
    loss = model.loss(b, item_codes[torch.tensor([3, 4, 5])])
    loss.backward()
    assert torch.isfinite(loss)
    for name in ("code_emb.0.weight", "encoder.qformer.queries", "decoder.bos",
                 "encoder.layers.0.ffn.w1", "decoder.layers.1.cross.kv_proj.weight",
                 "encoder.user_emb.weight"):
        g = model.get_parameter(name).grad
        assert g is not None and g.abs().sum() > 0, name


def test_overfit_batch_then_recommend_the_targets(data):
    """End to end: a few optimizer steps memorise 16 users' targets (teacher forcing), and the
    beam search (KV cache, shared K/V) then ranks each user's target first."""
    ds, item_codes, cfg = data
    torch.manual_seed(0)
    model = OneRec(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    attach_balancing(opt, model)
    b = make_batch(data, torch.arange(16))
    targets = torch.randint(0, ds.num_items, (16,), generator=torch.Generator().manual_seed(1))
    for _ in range(40):
        loss = model.loss(b, item_codes[targets])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1
    res = model.eval().recommend(b, SemanticIdTrie(item_codes, cfg.codebook_sizes), 4)
    assert torch.equal(res.item_ids[:, 0], targets)


def test_param_counts_of_presets():
    for name, cfg in PRESETS.items():
        with torch.device("meta"):
            model = OneRec(cfg)
        total, active = model.num_parameters()
        assert total == sum(p.numel() for p in model.parameters())
        experts = 3 * cfg.d_model * cfg.d_ff  # SwiGLU expert: w1 (d, 2h) + w2 (h, d)
        moe_layers = (cfg.num_decoder_layers if cfg.decoder_moe else 0) + (
            cfg.num_encoder_layers if cfg.encoder_moe else 0)
        assert total - active == moe_layers * (cfg.num_experts - cfg.top_k) * experts
        if name in NOMINAL_PARAMS:  # the table's scale: within 2x of the preset's name
            assert 0.5 <= total / NOMINAL_PARAMS[name] <= 2.0, (name, total)
    assert "params=" in repr(OneRec(PRESETS["tiny"]))


def test_torch_compile_decoder_step(data, seed):
    """fullgraph: the fused ops trace without graph breaks (the "torch" reference reads
    cu_seqlens on the host, so it is not the backend to compile)."""
    pytest.importorskip("triton")
    ds, item_codes, cfg = data
    model = OneRec(cfg, backend="triton").eval()
    trie = SemanticIdTrie(item_codes, cfg.codebook_sizes)
    b = make_batch(data, [18, 19])
    with torch.no_grad():
        enc = model.encode(b)
        eager = model.recommend(b, trie, beam_width=4)
        step = model.step_fn(enc)
        model.decoder.step = torch.compile(model.decoder.step, backend="aot_eager",
                                           fullgraph=True, dynamic=False)
        compiled = constrained_beam_search(step, trie, 2, 4)
    torch.testing.assert_close(compiled.scores, eager.scores, atol=1e-5, rtol=1e-5)
    assert torch.equal(compiled.item_ids, eager.item_ids)


def test_torch_compile_forward(data, seed):
    """The teacher-forced decoder forward compiles as one graph (fullgraph) with the fused ops."""
    pytest.importorskip("triton")
    ds, item_codes, cfg = data
    model = OneRec(cfg, backend="triton").eval()
    b = make_batch(data, [20, 21])
    codes = item_codes[torch.tensor([0, 1])]
    with torch.no_grad():
        enc = model.encode(b)
        want = model.decoder(enc, codes)
        got = torch.compile(model.decoder, backend="aot_eager", fullgraph=True)(enc, codes)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_bad_input_is_named(data):
    ds, item_codes, cfg = data
    paths = build_pathways(ds, torch.tensor([0, 1]), short_len=cfg.short_len,
                           positive_len=cfg.positive_len)
    with pytest.raises(ValueError, match="short_term.item"):
        encoder_batch(paths, item_codes[:5], cfg, ds)  # items beyond the semantic-ID table
    bad_codes = item_codes.clone()
    bad_codes[3, 1] = K
    with pytest.raises(ValueError, match="item_codes"):
        encoder_batch(paths, bad_codes, cfg, ds)
    with pytest.raises(ValueError, match="users"):
        encoder_batch(paths, item_codes, replace(cfg, num_users=1), ds)
    with pytest.raises(ValueError, match="static"):
        encoder_batch(paths, item_codes, replace(cfg, static_cardinalities=(1,) * len(
            cfg.static_cardinalities)), ds)
    long_paths = build_pathways(ds, torch.tensor([0, 1]), short_len=cfg.short_len + 5)
    with pytest.raises(ValueError, match="short_term"):
        encoder_batch(long_paths, item_codes, cfg, ds)
    model = OneRec(cfg)
    b = encoder_batch(paths, item_codes, cfg, ds)
    with pytest.raises(ValueError, match="codebook"):
        model(b, torch.tensor([[0, 0, K], [0, 0, 0]]))
    bad = copy.deepcopy(b)  # hand-built batches are checked by the model (free on the host)
    bad.positive.codes[0, 2] = K
    with pytest.raises(ValueError, match="positive.codes"):
        model.encode(bad)
    bad = copy.deepcopy(b)
    bad.short_term.max_len = cfg.short_len + 1
    with pytest.raises(ValueError, match="short_term.max_len"):
        model.encode(bad)
    bad = copy.deepcopy(b)
    bad.lifelong.buckets = bad.lifelong.buckets[:, :2]
    with pytest.raises(ValueError, match="lifelong"):
        model.encode(bad)
    other = SemanticIdTrie(item_codes, (K, K, 2 * K))
    with pytest.raises(ValueError, match="codebook shape"):
        model.recommend(b, other, 4)
    with pytest.raises(ValueError, match="preset"):
        OneRecConfig.preset("onerec-huge")
    with pytest.raises(ValueError, match="head"):
        OneRecConfig(d_model=96, num_heads=4)


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")  # CPU rms_norm
def test_bf16_autocast_and_bf16_weights(data, seed):
    """Under autocast the attention and MoE ops get one dtype (they are not autocast ops); a
    model cast to bf16 runs too. CPU, torch backends (the Triton interpreter miscomputes bf16)."""
    ds, item_codes, cfg = data
    model = OneRec(cfg, backend="torch")
    b = make_batch(data, [24, 25])
    trie = SemanticIdTrie(item_codes, cfg.codebook_sizes)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.loss(b, item_codes[:2])
        loss.backward()
        res = model.recommend(b, trie, 4)
    assert torch.isfinite(loss) and model.code_emb[0].weight.grad is not None
    assert torch.equal(res.codes, item_codes[res.item_ids])
    res16 = model.to(torch.bfloat16).recommend(b, trie, 4)
    assert torch.equal(res16.codes, item_codes[res16.item_ids])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fused_matches_torch(data, seed):
    """On CUDA the default backends are the Triton kernels: compare with the references, then
    decode in bf16 with the KV cache against the naive per-beam recompute."""
    ds, item_codes, cfg = data
    model = OneRec(cfg).to("cuda").eval()
    ref = copy.deepcopy(model)
    ref.set_backend("torch")
    b = make_batch(data, [26, 27, 28]).to("cuda")
    codes = item_codes[torch.tensor([5, 6, 7])].cuda()
    with torch.no_grad():
        torch.testing.assert_close(model.encode(b).memory, ref.encode(b).memory,
                                   atol=2e-2, rtol=2e-2)  # tl.dot may use TF32
        for a, r in zip(model(b, codes), ref(b, codes)):
            torch.testing.assert_close(a, r, atol=2e-2, rtol=2e-2)
        trie = SemanticIdTrie(item_codes.cuda(), cfg.codebook_sizes)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            enc = model.encode(b)
            log = []
            for fn in (model.step_fn(enc), NaiveStep(model, enc)):
                res = constrained_beam_search(
                    lambda t, p, fn=fn: log.append(fn(t, p)) or log[-1], trie, 3, 8)
                assert torch.equal(res.codes.cpu(), item_codes[res.item_ids.cpu()])
        torch.testing.assert_close(log[0], log[3], atol=5e-2, rtol=5e-2)  # the first step


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_capture_of_the_search(data, seed):
    """With the encoder output fixed, the whole constrained search (decoder steps with the KV
    cache, beam-shared cross-attention, MoE, trie steps) captures in one CUDA graph."""
    ds, item_codes, cfg = data
    model = OneRec(cfg).to("cuda").eval()
    trie = SemanticIdTrie(item_codes.cuda(), cfg.codebook_sizes)
    b = make_batch(data, [1, 2, 3, 4]).to("cuda")
    with torch.no_grad():
        enc = model.encode(b)
        want = constrained_beam_search(model.step_fn(enc), trie, 4, 8)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            constrained_beam_search(model.step_fn(enc), trie, 4, 8)  # warm-up (compiles)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            got = constrained_beam_search(model.step_fn(enc), trie, 4, 8)
        g.replay()
        torch.cuda.synchronize()
    assert torch.equal(got.item_ids, want.item_ids)
    torch.testing.assert_close(got.scores, want.scores)


def test_config_round_trip():
    cfg = PRESETS["onerec-0.935b"]
    assert OneRecConfig.from_dict(cfg.to_dict()) == cfg


def test_dropout_only_in_training(data, seed):
    """dropout > 0 perturbs training forwards (every stack) and leaves eval mode deterministic
    and equal to the same weights without dropout; out-of-range values are refused."""
    ds, item_codes, cfg = data
    users = [5, 6, 7]
    codes = item_codes[torch.as_tensor([1, 2, 3])]
    plain = OneRec(cfg)
    noisy = OneRec(replace(cfg, dropout=0.3))
    noisy.load_state_dict(plain.state_dict())
    batch = make_batch(data, users)
    noisy.train()
    a, b = noisy(batch, codes), noisy(batch, codes)
    assert not torch.allclose(a[0], b[0])
    noisy.eval()
    plain.eval()
    with torch.no_grad():
        for x, y in zip(noisy(batch, codes), plain(batch, codes)):
            torch.testing.assert_close(x, y)
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="dropout"):
            replace(cfg, dropout=bad)

"""RQ-KMeans tokenizer, semantic-ID table and quality report on generated clustered data."""
import math

import numpy as np
import pytest
import torch

from onerec.semantic_ids import SemanticIdTable
from onerec.tokenizer import FORMAT_VERSION, RQKMeansTokenizer, TokenizerFormatError
from onerec_kernels import _backend, rq_assign


@pytest.fixture(autouse=True)
def _one_thread():
    # These fits are tiny; torch's intra-op threads only add barrier waits (100x slower on a
    # loaded 2-core box). The cpp kernel's thread handling is tested in tests/kernels.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def mixture(n, d, num_clusters, noise, seed, skew=0.0):
    """Gaussian mixture: unit-variance centres, isotropic noise; cluster sizes ~ rank^-skew."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_clusters, d, generator=g)
    weights = torch.arange(1, num_clusters + 1, dtype=torch.float64) ** -skew
    labels = torch.multinomial(weights, n, replacement=True, generator=g)
    return centres[labels] + noise * torch.randn(n, d, generator=g)


@pytest.fixture(scope="module")
def data():
    return mixture(1500, 16, 64, 0.3, seed=0)


@pytest.fixture(scope="module")
def fitted(data):
    return RQKMeansTokenizer(num_levels=3, codebook_size=16, iters=15, seed=0).fit(data)


def test_fit_is_deterministic_for_a_seed(data, fitted):
    again = RQKMeansTokenizer(num_levels=3, codebook_size=16, iters=15, seed=0).fit(data)
    for a, b in zip(fitted.codebooks, again.codebooks):
        assert torch.equal(a, b)
    assert torch.equal(fitted.fit_codes_, again.fit_codes_)
    other = RQKMeansTokenizer(num_levels=3, codebook_size=16, iters=15, seed=1).fit(data)
    assert not torch.equal(fitted.codebooks[0], other.codebooks[0])


def test_shapes_and_encode_matches_fit(data, fitted):
    assert [tuple(c.shape) for c in fitted.codebooks] == [(16, 16)] * 3
    assert fitted.fit_codes_.shape == (1500, 3) and fitted.fit_codes_.dtype == torch.int64
    codes = fitted.encode(data)
    assert codes.shape == (1500, 3) and codes.dtype == torch.int64
    # The fit's final assignment and encode use the same nearest-code machinery.
    assert (codes == fitted.fit_codes_).all(dim=1).float().mean() >= 0.999
    # decode(encode(x)) is x minus rq_assign's residual.
    _, residual = rq_assign(data, torch.stack(fitted.codebooks), return_residual=True)
    torch.testing.assert_close(fitted.decode(codes), data - residual, atol=1e-5, rtol=1e-5)
    assert fitted.encode(torch.empty(0, 16)).shape == (0, 3)


def test_utilization_and_levels_reduce_error(data, fitted):
    report = fitted.quality_report(data)
    errors = [lv["relative_error_after"] for lv in report["per_level"]]
    assert errors[0] > errors[1] > errors[2] == pytest.approx(report["relative_error"])
    for lv in report["per_level"]:
        assert lv["utilization"] >= 0.9, lv
        assert lv["perplexity_ratio"] >= 0.5, lv
        assert 1.0 <= lv["perplexity"] <= 16.0
    assert report["largest_cluster_share"] <= 0.25


def test_reconstruction_beats_single_level_kmeans(data, fitted):
    """3 levels x 16 codes against one k-means with the same 48 codes."""
    flat = RQKMeansTokenizer(num_levels=1, codebook_size=48, iters=15, seed=0).fit(data)
    rq_err = fitted.quality_report(data)["relative_error"]
    flat_err = flat.quality_report(data)["relative_error"]
    assert rq_err < 0.95 * flat_err, (rq_err, flat_err)


def test_quality_report_values(data, fitted):
    codes = fitted.encode(data)
    report = fitted.quality_report(data, codes=codes)
    recon = fitted.decode(codes)
    assert report["reconstruction_mse"] == pytest.approx(float((data - recon).square().mean()), rel=1e-5)
    want_rel = float((data - recon).norm() / data.norm())
    assert report["relative_error"] == pytest.approx(want_rel, rel=1e-5)
    distinct = torch.unique(codes, dim=0).shape[0]
    assert report["raw_collision_rate"] == pytest.approx((1500 - distinct) / 1500)
    for level, lv in enumerate(report["per_level"]):
        counts = torch.bincount(codes[:, level], minlength=16).double()
        assert lv["used"] == int((counts > 0).sum())
        assert lv["largest_cluster_share"] == pytest.approx(float(counts.max() / 1500))
        p = counts[counts > 0] / 1500
        assert lv["perplexity"] == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-6)
    table = fitted.build_table(data, codes=codes)
    with_table = fitted.quality_report(data, codes=codes, table=table)
    assert with_table["collision_rate_after"] == 0.0
    assert with_table["num_reassigned"] == table.num_reassigned


def test_balanced_caps_cluster_sizes():
    x = mixture(1200, 8, 12, 0.4, seed=3, skew=1.5)  # a few huge clusters
    plain = RQKMeansTokenizer(num_levels=2, codebook_size=16, iters=10, seed=0).fit(x)
    bal = RQKMeansTokenizer(num_levels=2, codebook_size=16, iters=10, seed=0, balanced=True,
                            capacity_factor=1.25).fit(x)
    cap = math.ceil(1.25 * 1200 / 16)
    for level in range(2):
        counts = torch.bincount(bal.fit_codes_[:, level], minlength=16)
        assert int(counts.max()) <= cap, (level, counts)
        assert int(counts.sum()) == 1200
    plain_share = plain.quality_report(x, codes=plain.fit_codes_)["per_level"][0]["largest_cluster_share"]
    bal_report = bal.quality_report(x, codes=bal.fit_codes_)
    assert plain_share > cap / 1200  # the skewed data does overflow without balancing
    assert bal_report["per_level"][0]["largest_cluster_share"] <= cap / 1200
    again = RQKMeansTokenizer(num_levels=2, codebook_size=16, iters=10, seed=0, balanced=True,
                              capacity_factor=1.25).fit(x)
    assert torch.equal(again.fit_codes_, bal.fit_codes_)


def test_empty_cluster_repair(monkeypatch):
    x = mixture(400, 6, 8, 0.05, seed=4)
    tok = RQKMeansTokenizer(num_levels=1, codebook_size=8, iters=10, seed=0)
    # Degenerate seeding: all 8 seeds on one point, so 7 clusters start empty.
    monkeypatch.setattr(tok, "_kmeans_pp", lambda pts, k, gen: pts[:1].repeat(k, 1))
    tok.fit(x)
    assert tok.fit_stats_[0]["empty_repaired"] >= 7
    assert tok.fit_stats_[0]["empty_final"] == 0
    assert tok.quality_report(x)["per_level"][0]["utilization"] == 1.0


def test_per_level_codebook_sizes(data):
    tok = RQKMeansTokenizer(num_levels=3, codebook_size=[32, 8, 4], iters=8, seed=0).fit(data)
    assert [c.shape[0] for c in tok.codebooks] == [32, 8, 4]
    codes = tok.encode(data)
    for level, k in enumerate([32, 8, 4]):
        assert int(codes[:, level].max()) < k
    assert (codes == tok.fit_codes_).all(dim=1).float().mean() >= 0.999
    report = tok.quality_report(data)
    assert report["codebook_sizes"] == [32, 8, 4]
    assert [lv["codebook_size"] for lv in report["per_level"]] == [32, 8, 4]


def test_semantic_id_table_resolves_collisions(data, fitted):
    g = torch.Generator().manual_seed(8)
    # Near-duplicates guarantee raw collisions.
    x = torch.cat([data[:600], data[:100] + 1e-4 * torch.randn(100, 16, generator=g)])
    ids = torch.arange(700) * 10 + 5
    raw = fitted.encode(x)
    table = SemanticIdTable.build(fitted, x, item_ids=ids)
    distinct = torch.unique(raw, dim=0).shape[0]
    assert table.raw_collision_rate == pytest.approx((700 - distinct) / 700)
    assert table.raw_collision_rate >= 100 / 700 - 1e-9
    assert table.num_reassigned == 700 - distinct
    assert table.collision_rate == 0.0
    assert torch.unique(table.codes, dim=0).shape[0] == 700
    moved = (table.codes != raw).any(dim=1)
    assert int(moved.sum()) == table.num_reassigned
    # Most movers stay under their own prefix (nearest free leaf first).
    same_prefix = (table.codes[moved, :2] == raw[moved, :2]).all(dim=1).float().mean()
    assert same_prefix >= 0.9
    # Unmoved items keep their raw codes; lookups are inverse to each other.
    assert torch.equal(table.codes[~moved], raw[~moved])
    assert torch.equal(table.items_of(table.codes_of(ids)), ids)
    codes, item_ids = table.export()
    assert codes.shape == (700, 3) and codes.dtype == torch.int64 and item_ids.dtype == torch.int64
    keys = (codes[:, 0] * 16 + codes[:, 1]) * 16 + codes[:, 2]
    assert bool((keys[1:] > keys[:-1]).all())  # sorted by tuple, distinct
    assert torch.equal(table.codes_of(item_ids), codes)
    free = [(a, b, c) for a in range(16) for b in range(16) for c in range(16)
            if (a * 16 + b) * 16 + c not in set(keys.tolist())][:1]
    assert table.items_of(torch.tensor(free)).tolist() == [-1]
    with pytest.raises(KeyError, match="item id 6"):
        table.codes_of(torch.tensor([6]))


def _hand_tokenizer(codebooks):
    tok = RQKMeansTokenizer(num_levels=len(codebooks), codebook_size=[c.shape[0] for c in codebooks])
    tok.codebooks = [c.float() for c in codebooks]
    tok.dim = codebooks[0].shape[1]
    return tok


def test_semantic_id_table_falls_back_to_a_free_prefix():
    # Level 0: 4 codes on a line; level 1: 2 codes. All items sit on code 0, so its 2 leaves
    # fill and the rest must move to the nearest other prefixes (1 before 2 before 3).
    tok = _hand_tokenizer([torch.tensor([[0.0, 0], [1, 0], [2, 0], [3, 0]]),
                           torch.tensor([[0.0, 0.01], [0, -0.01]])])
    x = torch.tensor([[0.0, 0.001 * i] for i in range(6)])
    table = tok.build_table(x)
    assert table.collision_rate == 0.0 and table.num_reassigned == 5
    prefixes = sorted(table.codes[:, 0].tolist())
    assert prefixes == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="cannot have distinct tuples"):
        tok.build_table(torch.zeros(9, 2))


def test_save_load_round_trip(tmp_path, data, fitted):
    path = tmp_path / "tok.rq"
    fitted.save(path)
    loaded = RQKMeansTokenizer.load(path)
    assert loaded.codebook_sizes == fitted.codebook_sizes and loaded.dim == 16
    assert (loaded.iters, loaded.seed, loaded.balanced) == (15, 0, False)
    for a, b in zip(fitted.codebooks, loaded.codebooks):
        assert torch.equal(a, b)
    assert torch.equal(loaded.encode(data), fitted.encode(data))
    var = RQKMeansTokenizer(num_levels=2, codebook_size=[8, 4], iters=3, balanced=True).fit(data)
    var.save(tmp_path / "var.rq")
    back = RQKMeansTokenizer.load(tmp_path / "var.rq")
    assert back.codebook_sizes == [8, 4] and back.balanced
    assert all(torch.equal(a, b) for a, b in zip(var.codebooks, back.codebooks))


def test_load_rejects_other_versions_and_corrupt_files(tmp_path, fitted):
    path = tmp_path / "tok.rq"
    fitted.save(path)
    blob = path.read_bytes()

    def write(name, content):
        p = tmp_path / name
        p.write_bytes(content)
        return p

    other = bytearray(blob)
    other[8:12] = (FORMAT_VERSION + 1).to_bytes(4, "little")
    with pytest.raises(TokenizerFormatError, match=f"version {FORMAT_VERSION + 1}"):
        RQKMeansTokenizer.load(write("v2.rq", bytes(other)))
    with pytest.raises(TokenizerFormatError, match="not an RQKMeansTokenizer file"):
        RQKMeansTokenizer.load(write("magic.rq", b"PK\x03\x04" + blob[4:]))
    with pytest.raises(TokenizerFormatError, match="not an RQKMeansTokenizer file"):
        RQKMeansTokenizer.load(write("short.rq", blob[:5]))
    with pytest.raises(TokenizerFormatError, match="truncated"):
        RQKMeansTokenizer.load(write("trunc.rq", blob[:-7]))
    flipped = bytearray(blob)
    flipped[-3] ^= 0x40
    with pytest.raises(TokenizerFormatError, match="SHA-256"):
        RQKMeansTokenizer.load(write("flip.rq", bytes(flipped)))
    bad_header = bytearray(blob)
    bad_header[17] = ord("}")
    with pytest.raises(TokenizerFormatError, match="corrupt header"):
        RQKMeansTokenizer.load(write("header.rq", bytes(bad_header)))
    with pytest.raises(TokenizerFormatError):  # it is a ValueError too
        RQKMeansTokenizer.load(write("extra.rq", blob + b"\0"))
    assert issubclass(TokenizerFormatError, ValueError)


def test_bad_inputs(data, fitted):
    tok = RQKMeansTokenizer(num_levels=2, codebook_size=8, iters=2)
    with pytest.raises(ValueError, match="empty"):
        tok.fit(torch.empty(0, 4))
    nan = data[:100].clone()
    nan[17, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite.*row 17"):
        tok.fit(nan)
    with pytest.raises(ValueError, match="larger than the number of items N=5"):
        tok.fit(data[:5])
    with pytest.raises(ValueError, match="2-D"):
        tok.fit(data[0])
    with pytest.raises(ValueError, match="2-D"):
        tok.fit(data[None])
    with pytest.raises(TypeError, match="floating point"):
        tok.fit(torch.ones(20, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="torch.Tensor or numpy"):
        tok.fit([[1.0, 2.0]])
    with pytest.raises(RuntimeError, match="not fitted"):
        tok.encode(data)
    with pytest.raises(ValueError, match="D = 16"):
        fitted.encode(torch.randn(4, 15))
    with pytest.raises(ValueError, match="NaN"):
        fitted.encode(torch.full((2, 16), float("nan")))
    with pytest.raises(ValueError, match=r"codes\[1, 2\] = 16 is out of range"):
        fitted.decode(torch.tensor([[0, 0, 0], [1, 1, 16]]))
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        fitted.decode(torch.zeros(4, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="integer"):
        fitted.decode(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="num_levels"):
        RQKMeansTokenizer(num_levels=0)
    with pytest.raises(ValueError, match="one per level"):
        RQKMeansTokenizer(num_levels=3, codebook_size=[4, 4])
    with pytest.raises(ValueError, match="codebook_size entries"):
        RQKMeansTokenizer(num_levels=2, codebook_size=[4, 0])
    with pytest.raises(ValueError, match="iters"):
        RQKMeansTokenizer(iters=-1)
    for bad in (0.5, float("inf"), float("nan"), "2"):
        with pytest.raises(ValueError, match="capacity_factor"):
            RQKMeansTokenizer(capacity_factor=bad)
    with pytest.raises(ValueError, match="tol"):
        RQKMeansTokenizer(tol="0")
    with pytest.raises(ValueError, match="seed_sample"):
        RQKMeansTokenizer(seed_sample=True)
    with pytest.raises(TypeError, match="seed"):
        RQKMeansTokenizer(seed=1.0)
    with pytest.raises(ValueError, match="item_ids must be unique"):
        fitted.build_table(data[:3], item_ids=[1, 1, 2])


def test_triton_backend_fit_agrees_with_torch(device):
    """CPU: the Triton interpreter; CUDA (the GPU machine): compiled Triton on CUDA tensors."""
    reason = _backend.unavailable_reason("triton", device)
    if reason is not None:
        pytest.skip(reason)
    x = mixture(160, 8, 6, 0.2, seed=6)
    kw = dict(num_levels=2, codebook_size=4, iters=3, seed=0)
    tri = RQKMeansTokenizer(backend="triton", **kw).fit(x.to(device))
    ref = RQKMeansTokenizer(backend="torch", **kw).fit(x)
    assert (tri.fit_codes_.cpu() == ref.fit_codes_).all(dim=1).float().mean() >= 0.99
    for a, b in zip(tri.codebooks, ref.codebooks):
        torch.testing.assert_close(a.cpu(), b, atol=1e-4, rtol=1e-4)


def test_semantic_id_table_constructor_checks():
    codes = torch.tensor([[0, 1], [1, 0], [2, 1]])
    table = SemanticIdTable(codes, torch.tensor([7, 3, 9]), [3, 2])
    assert table.items_of(torch.tensor([[1, 0], [2, 0], [5, 0]])).tolist() == [3, -1, -1]
    assert table.codes_of([9, 7]).tolist() == [[2, 1], [0, 1]]
    exported_codes, exported_ids = table.export()
    assert exported_codes.tolist() == [[0, 1], [1, 0], [2, 1]] and exported_ids.tolist() == [7, 3, 9]
    with pytest.raises(ValueError, match="not one-to-one"):
        SemanticIdTable(torch.tensor([[0, 1], [0, 1]]), torch.tensor([1, 2]), [3, 2])
    with pytest.raises(ValueError, match=r"level 1 must be in \[0, 2\)"):
        SemanticIdTable(torch.tensor([[0, 2]]), torch.tensor([1]), [3, 2])
    with pytest.raises(ValueError, match="item_ids has 1 entries"):
        SemanticIdTable(codes, torch.tensor([1]), [3, 2])
    with pytest.raises(TypeError, match="codes must be a torch.Tensor"):
        SemanticIdTable([[0, 1]], torch.tensor([1]), [3, 2])
    # Non-integer ids or codes are an error, not silently truncated to integers.
    with pytest.raises(TypeError, match="item_ids must hold integers"):
        SemanticIdTable(codes, torch.tensor([7.5, 3.0, 9.0]), [3, 2])
    with pytest.raises(TypeError, match="codes must hold integers"):
        SemanticIdTable(codes.float(), torch.tensor([7, 3, 9]), [3, 2])
    with pytest.raises(TypeError, match="item_ids must hold integers"):
        table.codes_of([9.7])
    with pytest.raises(TypeError, match="codes must hold integers"):
        table.items_of(torch.tensor([[1.5, 0.0]]))


def test_numpy_integer_parameters_save_and_load(tmp_path, data):
    """numpy integers (e.g. from a config array) are accepted like ints and stored as ints, so
    the JSON header of `save` can hold them."""
    tok = RQKMeansTokenizer(num_levels=np.int64(2), codebook_size=np.int64(4), iters=np.int64(2),
                            seed=np.int64(3), seed_sample=np.int32(50)).fit(data[:100])
    assert (tok.num_levels, tok.iters, tok.seed, tok.seed_sample) == (2, 2, 3, 50)
    assert all(type(v) is int for v in (tok.num_levels, tok.iters, tok.seed, tok.seed_sample))
    tok.save(tmp_path / "np.rq")
    back = RQKMeansTokenizer.load(tmp_path / "np.rq")
    assert (back.iters, back.seed, back.seed_sample) == (2, 3, 50)


def test_rank_in_groups():
    """The shared (group, value) ranking behind balanced eviction, capacity acceptance and the
    semantic-ID table's keepers: ties in value go to the earlier position."""
    from onerec.tokenizer import _rank_in_groups

    groups = torch.tensor([1, 0, 1, 0, 1, 2])
    values = torch.tensor([3.0, 2.0, 1.0, 2.0, 5.0, 0.0])
    order, rank = _rank_in_groups(groups, values)
    assert order.tolist() == [1, 3, 2, 0, 4, 5]
    assert rank.tolist() == [0, 1, 0, 1, 2, 0]
    empty = torch.empty(0, dtype=torch.int64)
    assert [t.numel() for t in _rank_in_groups(empty, empty.float())] == [0, 0]


def test_fit_progress_bar_does_not_change_the_fit(capsys):
    x = torch.randn(300, 8, generator=torch.Generator().manual_seed(5))
    quiet = RQKMeansTokenizer(num_levels=2, codebook_size=6, iters=4, seed=2).fit(x)
    shown = RQKMeansTokenizer(num_levels=2, codebook_size=6, iters=4, seed=2).fit(x, progress=True)
    assert "RQ-KMeans fit" in capsys.readouterr().err
    assert torch.equal(quiet.fit_codes_, shown.fit_codes_)

"""Every Triton kernel compiles for sm_90 without a GPU (the quick subset of
scripts/triton_aot.py: the first config per kernel and dtype of every registered family), fits on
the SM, and does not spill heavily. The full list: `python scripts/triton_aot.py`."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]

triton = pytest.importorskip("triton")
NVIDIA = Path(triton.__file__).parent / "backends" / "nvidia"


@pytest.mark.skipif(not NVIDIA.exists(), reason="this triton has no NVIDIA backend")
def test_quick_subset_compiles_for_sm90(tmp_path):
    # A subprocess: the test session runs Triton in the interpreter (TRITON_INTERPRET=1 is set
    # before triton is imported), where @triton.jit gives no compilable function.
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRITON_INTERPRET", "ONEREC_TRITON_AUTOTUNE")}
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "triton_aot.py"), "--quick",
                           "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    table = proc.stdout
    assert proc.returncode == 0, table + proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    families = {"rq", "kmeans", "grouped_kmeans", "attention"}
    if importlib.util.find_spec("onerec_kernels.moe") is not None:
        families.add("moe")
    assert {r["family"] for r in rows} == families, table

    tiled = [r for r in rows if r["family"] in ("rq", "kmeans")]
    assert {r["kernel"] for r in tiled} == {"rq_assign", "kmeans_step"}, table
    assert {r["dtype"] for r in tiled} == {"bf16", "fp32-tf32", "fp32"}, table
    assert {r["loads"] for r in tiled} == {"ptr", "tma"}, table  # codebook tiles, both ways

    attention = {(r["kernel"], r["dtype"]) for r in rows if r["family"] == "attention"}
    kernels = {"attn_fwd", "attn_fwd_split", "attn_combine", "attn_bwd_dkdv", "attn_bwd_dq"}
    assert {k for k, d in attention if d == "bf16"} == kernels, table
    assert {("attn_fwd", "fp32-tf32"), ("attn_bwd_dq", "fp32-tf32")} <= attention, table

    grouped = {(r["kernel"], r["dtype"]) for r in rows if r["family"] == "grouped_kmeans"}
    assert grouped == {("grouped_kmeans_step", "fp32"), ("grouped_kmeans_step", "bf16"),
                       ("grouped_kmeans_update", "fp32")}, table

    for r in rows:  # no compile error, launchable, no heavy spill
        assert r["status"] == "ok", f"{r['kernel']} {r['config']} {r['dtype']}: {r}"
        assert r["registers"] > 0 and r["smem"] >= 0, r


def test_spec_entries_are_normalized():
    """register_aot_specs entries: the signature covers every argument in order, unit strides
    become the constant 1, labels default sensibly, a missing type is an error naming it."""
    from onerec_kernels._triton_tiles import aot_entry

    fn = SimpleNamespace(__name__="_k", arg_names=["x_ptr", "n", "stride", "BLOCK"], src="")
    entry = aot_entry("fam", {"name": "k", "fn": fn, "signature": {"x_ptr": "*bf16", "n": "i32"},
                              "constexprs": {"BLOCK": 64}, "unit": ("stride",),
                              "divisible_by_16": ("x_ptr", "stride"), "num_warps": 8,
                              "num_stages": 2})
    assert entry.signature == {"x_ptr": "*bf16", "n": "i32", "stride": "constexpr",
                               "BLOCK": "constexpr"}
    assert entry.constexprs == {"BLOCK": 64, "stride": 1}
    assert entry.divisible_by_16 == ("x_ptr",)  # a constant carries no divisibility attribute
    assert (entry.dtype, entry.config, entry.quick) == ("bf16", "BLOCK=64 w8 s2", True)
    with pytest.raises(ValueError, match="'n'"):
        aot_entry("fam", {"name": "k", "fn": fn, "signature": {"x_ptr": "*bf16"},
                          "constexprs": {"BLOCK": 64, "stride": 1}})
    with pytest.raises(ValueError, match="not arguments"):
        aot_entry("fam", {"name": "k", "fn": fn, "signature": {"y_ptr": "*bf16"}})

"""The native build: the extension is loaded where it should be, the torch-free C++ core builds
and passes CTest through CMake, and every CUDA source compiles with nvcc (they can only run on a
GPU machine, but a syntax or type error must not wait for one)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import onerec_kernels
from onerec_kernels import _native

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(os.environ.get("ONEREC_EXPECT_NATIVE") != "1",
                    reason="ONEREC_EXPECT_NATIVE=1 is set by .ci/run, where the extension is built")
def test_native_extension_loaded():
    assert _native.available(), _native.LOAD_ERROR
    assert _native.has_kernel("rq_assign", "CPU")
    assert onerec_kernels.backends()["native"]


@pytest.mark.skipif(not _native.available(), reason="native extension not built")
def test_native_errors_raise_instead_of_crashing():
    """A TORCH_CHECK failing inside the extension becomes a Python ValueError. Run in a child
    process: on the first GPU run a statically linked libstdc++ made every such message segfault
    (which would take the test process down with it)."""
    code = ("import torch, onerec_kernels\n"
            "try:\n"
            "    torch.ops.onerec_C.trie_build(torch.tensor([[0, 1], [0, 1]]), [3, 3])\n"
            "except ValueError as e:\n"
            "    print('raised:', e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    assert "raised: SemanticIdTrie: duplicate code rows: codes[0] == codes[1]" in proc.stdout


@pytest.mark.skipif(not _native.available() or shutil.which("readelf") is None
                    or not sys.platform.startswith("linux"), reason="Linux build with readelf")
def test_extension_links_the_shared_libstdcxx():
    """libstdc++ is a direct dependency (NEEDED), not a static copy inside the extension."""
    so = _native._C.__file__
    out = subprocess.run(["readelf", "-d", so], capture_output=True, text=True).stdout
    assert "[libstdc++.so.6]" in out, out
    syms = subprocess.run(["nm", "-D", "--defined-only", so], capture_output=True, text=True).stdout
    assert "codecvt" not in syms, "libstdc++ symbols are defined (and exported) by the extension"


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_cmake_core_builds_and_ctest_passes(tmp_path):
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    run = lambda *cmd: subprocess.run(cmd, capture_output=True, text=True, timeout=600)  # noqa: E731
    cfg = run("cmake", "-S", str(ROOT), "-B", str(tmp_path), *gen, "-DCMAKE_BUILD_TYPE=Release")
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    build = run("cmake", "--build", str(tmp_path), "-j", "2")
    assert build.returncode == 0, build.stdout + build.stderr
    test = run("ctest", "--test-dir", str(tmp_path), "--output-on-failure")
    assert test.returncode == 0, test.stdout + test.stderr
    assert "tests passed" in test.stdout


CUDA_SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))


def _nvcc():
    path = shutil.which("nvcc")
    if path is None and os.path.exists("/usr/local/cuda/bin/nvcc"):
        path = "/usr/local/cuda/bin/nvcc"
    return path


@pytest.mark.skipif(_nvcc() is None, reason="nvcc is not installed")
@pytest.mark.skipif(not CUDA_SOURCES, reason="no .cu sources yet")
@pytest.mark.parametrize("source", CUDA_SOURCES, ids=lambda p: p.name)
def test_cuda_source_compiles(source, tmp_path):
    cmd = [_nvcc(), "-std=c++17", "-O3", "-gencode=arch=compute_90a,code=sm_90a",
           "-I", str(ROOT / "csrc"), "-c", str(source), "-o", str(tmp_path / "out.o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr

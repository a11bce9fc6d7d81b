"""Build of the native extension `onerec_kernels._C`.

- `csrc/core/*.cpp` (plain C++, also built by CMakeLists.txt) and `csrc/torch/*.cpp` (torch op
  registrations) are always compiled.
- `csrc/cuda/*.cu` (raw CUDA kernels behind a plain C++ interface) and `csrc/torch_cuda/*.cpp`
  (their torch bindings) are added only when torch was built with CUDA and a CUDA toolkit is
  found (CUDA_HOME / nvcc).
- `ONEREC_NO_NATIVE=1` skips the native build entirely; the package then runs its PyTorch and
  Triton paths only.

torch must already be installed (build with `pip install --no-build-isolation ...`), since the
extension compiles against the installed torch's headers and ABI.
"""
import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _native_extensions():
    if os.environ.get("ONEREC_NO_NATIVE", "0") == "1":
        print("onerec-kernels: ONEREC_NO_NATIVE=1, skipping the native extension")
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as exc:  # pragma: no cover - only without torch
        raise RuntimeError(
            "onerec-kernels builds its native extension against the installed torch: install "
            "torch first, then `pip install --no-build-isolation -e .` "
            "(or set ONEREC_NO_NATIVE=1 to skip the native build)"
        ) from exc

    sources = _sources("csrc/core/*.cpp") + _sources("csrc/torch/*.cpp")
    cxx_flags = ["-O3", "-std=c++17", "-fvisibility=hidden", "-Wno-psabi"]
    define_macros = []
    force_cpu = os.environ.get("ONEREC_FORCE_CPU_BUILD", "0") == "1"
    with_cuda = (
        not force_cpu and torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    )
    if with_cuda:
        sources += _sources("csrc/cuda/*.cu") + _sources("csrc/torch_cuda/*.cpp")
        nvcc_flags = ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo"]
        arch = os.environ.get("TORCH_CUDA_ARCH_LIST")
        if not arch:
            # Hopper gets its own SASS (sm_90a: wgmma/TMA); PTX for anything newer.
            nvcc_flags += ["-gencode=arch=compute_90a,code=sm_90a",
                           "-gencode=arch=compute_90,code=compute_90"]
        ext = cpp_extension.CUDAExtension(
            "onerec_kernels._C",
            sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=define_macros + [("ONEREC_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx_flags + ["-DONEREC_WITH_CUDA=1"], "nvcc": nvcc_flags},
        )
    else:
        ext = cpp_extension.CppExtension(
            "onerec_kernels._C",
            sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags},
        )
    print(f"onerec-kernels: building the native extension (cuda={with_cuda}, "
          f"{len(sources)} sources)")
    cmdclass = {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}
    return [ext], cmdclass


ext_modules, cmdclass = _native_extensions()
setup(
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)

"""Backend selection: explicit requests, defaults, the ONEREC_BACKEND override, clear errors."""
import pytest
import torch

from onerec_kernels import _backend, _native

CPU = torch.device("cpu")
# Where Triton runs in this session: CUDA tensors on a GPU machine, CPU tensors in the interpreter.
TRITON_DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DEFAULTS = {"cuda": ("triton", "torch"), "cpu": ("cpp", "torch")}


def resolve(backend=None, supported=("torch", "triton", "cpp"), native_op=None, device=CPU):
    return _backend.resolve("op", backend, device, supported, DEFAULTS, native_op=native_op)


def test_explicit_request_is_honoured():
    assert resolve("torch") == "torch"
    assert resolve("triton", device=TRITON_DEV) == "triton"


def test_default_on_cpu_is_native_when_built(monkeypatch):
    monkeypatch.delenv(_backend.ENV_VAR, raising=False)
    assert resolve() == ("cpp" if _native.available() else "torch")


def test_env_override_takes_first_supported(monkeypatch):
    monkeypatch.setenv(_backend.ENV_VAR, "cuda, torch")
    assert resolve(supported=("torch", "triton")) == "torch"  # cuda skipped: not implemented
    monkeypatch.setenv(_backend.ENV_VAR, "triton")
    assert resolve(device=TRITON_DEV) == "triton"
    assert resolve("torch", device=TRITON_DEV) == "torch"  # an explicit argument beats the env


def test_env_override_errors_when_unavailable(monkeypatch):
    monkeypatch.setenv(_backend.ENV_VAR, "cuda")
    with pytest.raises(RuntimeError, match="ONEREC_BACKEND"):
        resolve(supported=("torch", "cuda"))
    monkeypatch.setenv(_backend.ENV_VAR, "warp")
    with pytest.raises(ValueError, match="unknown backend"):
        resolve()


def test_unavailable_backend_is_an_error_not_a_fallback(monkeypatch):
    with pytest.raises(RuntimeError, match="CUDA"):
        resolve("cuda", supported=("torch", "cuda"))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        resolve("triton")
    with pytest.raises(ValueError, match="one of"):
        resolve("cpp", supported=("torch",))
    with pytest.raises(TypeError, match="backend"):
        resolve(3)


def test_missing_native_kernel_names_the_build(monkeypatch):
    monkeypatch.setattr(_native, "_C", None)
    monkeypatch.setattr(_native, "LOAD_ERROR", "ImportError: not built")
    with pytest.raises(RuntimeError, match="pip install --no-build-isolation"):
        resolve("cpp")
    with pytest.raises(RuntimeError, match="native extension"):
        _native.require("the C++ trie")

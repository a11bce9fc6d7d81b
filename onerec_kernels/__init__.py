"""onerec-kernels: fused kernels for OneRec-style generative recommendation.

Public API only; every op takes `backend=None | "torch" | "triton" | "cpp" | "cuda"`
(see `onerec_kernels.backends()` for what this installation can run).
"""
from ._backend import BACKENDS
from ._native import available as native_available
from .rq import rq_assign, rq_assign_reference
from .beam import (BeamSearchResult, SemanticIdTrie, constrained_beam_search,
                   trie_beam_search_step, trie_beam_step_reference)
from .kmeans import (grouped_kmeans, grouped_kmeans_reference, kmeans_step,
                     kmeans_step_reference)
from .attention import varlen_cross_attention, varlen_cross_attention_reference
from .moe import (MoeAlignment, fused_moe, fused_moe_reference, moe_align, moe_route,
                  moe_route_reference)

__version__ = "0.1.0"


def backends() -> dict:
    """What this installation can run: native extension state, Triton, CUDA."""
    import torch

    from . import _backend, _native

    cpu = torch.device("cpu")
    info = {
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "native": _native.available(),
        "native_error": _native.LOAD_ERROR,
        "triton_interpret": _backend.triton_interpret(),
    }
    for b in BACKENDS:
        dev = torch.device("cuda") if b == "cuda" or (b == "triton" and torch.cuda.is_available()) else cpu
        info[f"{b}_unavailable"] = _backend.unavailable_reason(b, dev)
    return info


__all__ = [
    "BACKENDS", "backends", "native_available",
    "rq_assign", "rq_assign_reference",
    "kmeans_step", "kmeans_step_reference", "grouped_kmeans", "grouped_kmeans_reference",
    "SemanticIdTrie", "BeamSearchResult", "trie_beam_search_step", "trie_beam_step_reference",
    "constrained_beam_search",
    "varlen_cross_attention", "varlen_cross_attention_reference",
    "moe_route", "moe_route_reference", "moe_align", "MoeAlignment", "fused_moe",
    "fused_moe_reference",
]

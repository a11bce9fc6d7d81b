"""Residual-quantization assignment (the RQ-KMeans tokenizer's hot op)."""
from .op import rq_assign
from .reference import rq_assign_reference

__all__ = ["rq_assign", "rq_assign_reference"]

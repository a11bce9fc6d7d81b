"""Ragged cross-attention: few queries per user (or shared) over packed per-user keys."""
from .op import varlen_cross_attention
from .reference import varlen_cross_attention_reference

__all__ = ["varlen_cross_attention", "varlen_cross_attention_reference"]

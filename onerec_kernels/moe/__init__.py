"""Mixture-of-experts FFN: routing with loss-free balancing, slot alignment, grouped GEMMs."""
from .op import MoeAlignment, fused_moe, moe_align, moe_route
from .reference import fused_moe_reference, moe_align_reference, moe_route_reference

__all__ = ["MoeAlignment", "fused_moe", "moe_align", "moe_route", "fused_moe_reference",
           "moe_align_reference", "moe_route_reference"]

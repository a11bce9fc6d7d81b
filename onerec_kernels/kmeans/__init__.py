"""One fused Lloyd step of k-means (assignment + per-centroid sums/counts + inertia)."""
from .op import kmeans_step
from .reference import kmeans_step_reference

__all__ = ["kmeans_step", "kmeans_step_reference"]

"""k-means: one fused Lloyd step (assignment + per-centroid sums/counts + inertia), and whole
Lloyd runs of many small independent problems at once (grouped_kmeans)."""
from .op import grouped_kmeans, kmeans_step
from .reference import grouped_kmeans_reference, kmeans_step_reference

__all__ = ["kmeans_step", "kmeans_step_reference", "grouped_kmeans", "grouped_kmeans_reference"]

"""Plots for the reports the CLI writes. matplotlib is imported on use, with the Agg backend
(files only, no display needed)."""
from __future__ import annotations

import os

import torch


def plot_tokenizer_report(fit_codes: torch.Tensor, codebook_sizes: list[int], quality: dict,
                          embedding_report: dict | None, path: str | os.PathLike) -> str:
    """Write a PNG: per level, cluster sizes by rank against the balanced size N/K (how evenly
    the codes are used), and the item-embedding neighbour recall per fusion variant.

    fit_codes: (N, L) int64 codes of the fitted items; codebook_sizes: L ints; quality: the
    tokenizer's quality_report; embedding_report: build_item_embeddings' report (or None).
    Returns the path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    codes = fit_codes.detach().cpu()
    n = codes.shape[0]
    panels = 2 if embedding_report else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.2), squeeze=False)
    ax = axes[0, 0]
    for level, k in enumerate(codebook_sizes):
        sizes = torch.bincount(codes[:, level], minlength=k).sort(descending=True).values.double()
        sizes[sizes == 0] = float("nan")  # unused codes: off a log axis (the legend counts them)
        row = quality["per_level"][level]
        ax.plot(range(1, k + 1), sizes.numpy(), marker=".", ms=3,
                label=f"level {level}: {row['used']}/{k} used, perplexity {row['perplexity']:.0f}")
        ax.axhline(n / k, ls=":", lw=0.8, color=ax.lines[-1].get_color())
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("code rank")
    ax.set_ylabel("items per code (dotted: N/K)")
    ax.set_title(f"RQ-KMeans codes, {n} items; relative error {quality['relative_error']:.3f}; "
                 f"raw collisions {quality['raw_collision_rate']:.1%}", fontsize=9)
    ax.legend(fontsize=8)
    if embedding_report:
        ax = axes[0, 1]
        k_nn = embedding_report.get("k", 10)
        recall = embedding_report[f"recall@{k_nn}"]
        names = list(recall)
        bars = ax.bar(names, [recall[m] for m in names],
                      color=["C2" if m == embedding_report.get("fusion") else "C7" for m in names])
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
        ax.set_ylabel(f"co-engaged neighbour recall@{k_nn} (held-out users)")
        ax.set_title(f"item embeddings: fusion={embedding_report.get('fusion')}, "
                     f"dim={embedding_report.get('dim')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)

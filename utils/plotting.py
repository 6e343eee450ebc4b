"""Plots used across the lectures: attention heatmaps (Lecture 04; per head from Lecture 07)."""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import torch


def plot_attention(weights: torch.Tensor, tokens: Sequence[str] | None = None, ax=None,
                   title: str | None = None, annotate: bool | None = None, cmap: str = "viridis"):
    """Heatmap of one (T_q, T_k) attention matrix: rows are queries, columns keys (Lecture 04).

    Values are written in the cells when the matrix is small (``annotate`` overrides).
    Returns the matplotlib ``Axes``.
    """
    w = torch.as_tensor(weights).detach().float().cpu()
    if w.dim() != 2:
        raise ValueError(f"plot_attention takes one (queries, keys) matrix, got shape {tuple(w.shape)}; "
                         "use plot_attention_heads for (heads, queries, keys).")
    if tokens is not None and len(tokens) != w.shape[1]:
        raise ValueError(f"{len(tokens)} token labels for {w.shape[1]} keys; pass one label per token.")
    if ax is None:
        _, ax = plt.subplots(figsize=(0.5 * w.shape[1] + 2, 0.5 * w.shape[0] + 1.5))
    image = ax.imshow(w.numpy(), cmap=cmap, vmin=0.0, vmax=max(1e-9, float(w.max())))
    if tokens is not None:
        ax.set_xticks(range(len(tokens)), tokens, rotation=60, ha="right")
        ax.set_yticks(range(w.shape[0]), list(tokens)[-w.shape[0]:])
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query")
    if annotate if annotate is not None else w.numel() <= 64:
        for i in range(w.shape[0]):
            for j in range(w.shape[1]):
                ax.text(j, i, f"{w[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if w[i, j] < 0.6 * float(w.max()) else "black")
    if title:
        ax.set_title(title)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return ax


def plot_attention_heads(weights: torch.Tensor, tokens: Sequence[str] | None = None,
                         titles: Sequence[str] | None = None, annotate: bool | None = None):
    """One heatmap per head for (n_heads, T, T) weights, side by side (Lecture 07). Returns the figure."""
    w = torch.as_tensor(weights).detach()
    if w.dim() != 3:
        raise ValueError(f"plot_attention_heads takes (heads, queries, keys), got shape {tuple(w.shape)}; "
                         "drop the batch axis with weights[0].")
    n = w.shape[0]
    fig, axes = plt.subplots(1, n, figsize=(n * (0.45 * w.shape[2] + 2.5), 0.45 * w.shape[1] + 2), squeeze=False)
    for h, ax in enumerate(axes[0]):
        plot_attention(w[h], tokens, ax=ax, title=titles[h] if titles else f"head {h}", annotate=annotate)
    fig.tight_layout()
    return fig

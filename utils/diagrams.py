"""Diagrams drawn with matplotlib, so they render in JupyterLab, on GitHub and in Colab (Lectures 03-08).

Each function draws one picture of an idea (a GPT block and its data flow, the sliding window
over token ids, the memory layout of attention heads) and returns the matplotlib figure.
"""

from __future__ import annotations

import matplotlib.pyplot as plt


def draw_gqa_groups(n_heads: int = 4, n_groups: int = 2):
    """Query heads and the K/V heads they read, for MHA, GQA and MQA side by side (Lecture 11).

    Three panels with ``n_heads`` query heads each: multi-head attention (one K/V head per query
    head), grouped-query attention with ``n_groups`` K/V heads (query heads
    g * H/G ... (g + 1) * H/G - 1 read K/V head g) and multi-query attention (one K/V head for
    all). Colour = group; the K/V row is what the cache stores per token and layer.
    """
    from matplotlib.patches import Rectangle

    if n_heads < 1 or n_groups < 1 or n_heads % n_groups or n_heads > 16:
        raise ValueError(f"draw_gqa_groups needs 1 <= n_heads <= 16 divisible by n_groups, got {n_heads}, {n_groups}.")
    panels = [("multi-head (MHA)", n_heads), (f"grouped-query (GQA), {n_groups} groups", n_groups),
              ("multi-query (MQA)", 1)]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, (title, groups) in zip(axes, panels):
        size = n_heads // groups  # query heads per K/V head
        ax.set_xlim(-1.4, n_heads + 0.1)
        ax.set_ylim(-0.9, 3.4)
        ax.set_axis_off()
        ax.set_title(title, fontsize=11)
        for h in range(n_heads):
            color = plt.cm.tab10((h // size) % 10)
            ax.add_patch(Rectangle((h + 0.1, 2.0), 0.8, 0.8, facecolor=color, alpha=0.45, edgecolor="black"))
            ax.text(h + 0.5, 2.4, f"Q{h}", ha="center", va="center", fontsize=9)
        kv_width = n_heads / groups  # each K/V box sits under its group of query heads
        for g in range(groups):
            x0 = g * kv_width
            color = plt.cm.tab10(g % 10)
            ax.add_patch(Rectangle((x0 + 0.1, 0.0), kv_width - 0.2, 0.8, facecolor=color, alpha=0.8,
                                   edgecolor="black"))
            ax.text(x0 + kv_width / 2, 0.4, f"K{g}\nV{g}" if kv_width < 1.5 else f"K{g}, V{g}",
                    ha="center", va="center", fontsize=9)
            for h in range(g * size, (g + 1) * size):
                ax.annotate("", xy=(h + 0.5, 2.0), xytext=(x0 + kv_width / 2, 0.8),
                            arrowprops=dict(arrowstyle="-|>", color="0.35", lw=1))
        ax.text(n_heads / 2, -0.45, f"cached per token and layer: 2 x {groups} x d_h numbers",
                ha="center", va="center", fontsize=9)
        ax.text(-0.1, 2.4, "query\nheads", ha="right", va="center", fontsize=9, color="0.3")
        ax.text(-0.1, 0.4, "K/V\nheads", ha="right", va="center", fontsize=9, color="0.3")
    fig.tight_layout()
    return fig

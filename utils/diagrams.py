"""Diagrams drawn with matplotlib, so they render in JupyterLab, on GitHub and in Colab (Lectures 03-11).

Each function draws one picture of an idea (a GPT block and its data flow, the sliding window
over token ids, the memory layout of attention heads, query heads sharing K/V heads) and returns the matplotlib figure.
"""

from __future__ import annotations

import matplotlib.pyplot as plt


def _block_box(ax, x, y, w, h, text, color, fontsize=9, weight="normal"):
    """A rounded box centred at (x, y) with ``text`` in it (Lecture 03)."""
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                facecolor=color, edgecolor="0.3", lw=1))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, weight=weight)


def _block_arrow(ax, start, end, color="0.25", style="-|>", **kwargs):
    ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle=style, color=color, lw=1.2, **kwargs))


def draw_gpt_block():
    """A GPT's data flow (left) and one pre-norm transformer block (right), with shapes (Lecture 03).

    ids (B, T) -> token + position embedding -> dropout -> L blocks -> final LayerNorm -> output
    head -> logits (B, T, V); each block is x + Dropout(Attn(LN1(x))), then + Dropout(FFN(LN2(x))).
    """
    fig, ax = plt.subplots(figsize=(9.5, 6.6))
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 10.4)
    ax.axis("off")
    emb, norm, core, drop, io = "#dbe9f6", "#fde2c8", "#d5ecd4", "#eeeeee", "white"

    # left: the whole model, bottom to top
    x, w, h = 2.0, 3.2, 0.62
    model = [(0.75, "token ids", io, "(B, T)"),
             (1.75, "token embedding + position embedding", emb, "(B, T, d)"),
             (2.85, "dropout", drop, "(B, T, d)"),
             (5.15, "transformer block  x L", core, "(B, T, d)"),
             (7.45, "final LayerNorm", norm, "(B, T, d)"),
             (8.55, "output head  (d -> V)", emb, "(B, T, V)"),
             (9.65, "logits", io, "")]
    for i, (y, text, color, shape) in enumerate(model):
        height = 2.2 if "block" in text else h
        _block_box(ax, x, y, w, height, text, color, weight="bold" if "block" in text else "normal")
        if i:
            prev_y, prev_h = model[i - 1][0], 2.2 if "block" in model[i - 1][1] else h
            _block_arrow(ax, (x, prev_y + prev_h / 2), (x, y - height / 2))
            if model[i - 1][3]:
                ax.text(x + 0.1, (prev_y + prev_h / 2 + y - height / 2) / 2, model[i - 1][3],
                        fontsize=8, color="0.35", va="center")
    ax.text(x, 10.25, "the whole model", ha="center", fontsize=10, weight="bold")

    # right: one block, bottom to top, with its two residual connections
    bx, bw = 6.8, 2.6
    steps = [(0.6, "x  (block input)", io), (1.6, "LayerNorm 1", norm), (2.6, "causal multi-head attention", core),
             (3.6, "dropout", drop), (4.55, "+", io), (5.5, "LayerNorm 2", norm),
             (6.5, "feed-forward  d -> 4d -> d", core), (7.5, "dropout", drop), (8.45, "+", io),
             (9.4, "block output", io)]
    for i, (y, text, color) in enumerate(steps):
        if text == "+":
            from matplotlib.patches import Circle
            ax.add_patch(Circle((bx, y), 0.22, facecolor="white", edgecolor="0.3", lw=1.2))
            ax.text(bx, y, "+", ha="center", va="center", fontsize=13, weight="bold")
            bottom, top = y - 0.22, y + 0.22
        else:
            _block_box(ax, bx, y, bw, 0.55, text, color)
            bottom, top = y - 0.275, y + 0.275
        if i:
            _block_arrow(ax, (bx, prev_top), (bx, bottom))
        prev_top = top
    right = bx + bw / 2 + 0.35
    for branch, plus in ((1.03, 4.55), (4.92, 8.45)):  # residual (shortcut) connections
        ax.plot([bx], [branch], "o", color="#c0392b", ms=4)
        ax.plot([bx, right, right], [branch, branch, plus], color="#c0392b", lw=1.4)
        _block_arrow(ax, (right, plus), (bx + 0.22, plus), color="#c0392b")
        ax.text(right + 0.08, (branch + plus) / 2, "residual", color="#c0392b", fontsize=8, rotation=90, va="center")
    ax.text(bx, 10.25, "one block (pre-norm, as GPT-2)", ha="center", fontsize=10, weight="bold")
    ax.text(bx - bw / 2 - 0.1, 0.6, "(B, T, d)", ha="right", va="center", fontsize=8, color="0.35")
    ax.text(bx - bw / 2 - 0.1, 9.4, "(B, T, d)", ha="right", va="center", fontsize=8, color="0.35")
    ax.text(0.35, 0.0, "B batch, T tokens, d width, V vocabulary, L blocks", fontsize=8, color="0.35", va="center")

    # dashed lines: the right-hand side is what one "block" box on the left contains
    for y_left, y_right in ((5.15 - 1.1, 0.3), (5.15 + 1.1, 9.7)):
        ax.plot([x + w / 2, bx - bw / 2 - 0.05], [y_left, y_right], ls=":", color="0.55", lw=1)
    fig.tight_layout()
    return fig


def draw_sliding_windows(ids, context_length, stride, labels=None, max_windows=4):
    """Input/target windows over a row of token ids: targets are the inputs shifted by one (Lecture 03).

    Window ``i`` starts at ``i * stride`` (as :class:`utils.data.WindowDataset`); its inputs
    are ``context_length`` ids and its targets the ``context_length`` ids that follow each one.
    ``labels`` (one string per id, e.g. the decoded tokens) are written under the ids.
    """
    from matplotlib.patches import Rectangle

    ids = [int(i) for i in ids]
    n = len(ids)
    n_windows = max(0, (n - context_length - 1) // stride + 1)
    shown = min(n_windows, max_windows)
    rows = 1 + 2 * shown
    fig, ax = plt.subplots(figsize=(max(6.0, 0.75 * n + 1.6), 0.55 * rows + 1.1))
    ax.set_xlim(-1.9, n + 0.1)
    bottom = -1.15 - 1.3 * (shown - 1) - (0.15 if labels else 0.0) - 0.62 - 0.4
    ax.set_ylim(min(bottom, -0.8), 0.9)
    ax.axis("off")

    def cell(col, y, text, color, edge="0.4"):
        ax.add_patch(Rectangle((col + 0.04, y - 0.3), 0.92, 0.6, facecolor=color, edgecolor=edge, lw=1))
        ax.text(col + 0.5, y, str(text), ha="center", va="center", fontsize=8)

    for col, i in enumerate(ids):  # the token row, with positions above
        cell(col, 0.0, i, "white")
        ax.text(col + 0.5, 0.45, str(col), ha="center", va="bottom", fontsize=7, color="0.45")
        if labels:
            ax.text(col + 0.5, -0.42, labels[col], ha="center", va="top", fontsize=7, color="0.3")
    ax.text(-0.1, 0.0, "token ids", ha="right", va="center", fontsize=9, weight="bold")
    ax.text(-0.1, 0.5, "position", ha="right", va="bottom", fontsize=7, color="0.45")
    for w in range(shown):
        start = w * stride
        y_in = -1.15 - 1.3 * w + (0.0 if not labels else -0.15)
        y_out = y_in - 0.62
        for t in range(context_length):
            cell(start + t, y_in, ids[start + t], "#dbe9f6")
            cell(start + 1 + t, y_out, ids[start + 1 + t], "#fde2c8")
        ax.text(-0.1, y_in, f"window {w}: input", ha="right", va="center", fontsize=8, color="#1f5f99")
        ax.text(-0.1, y_out, "target", ha="right", va="center", fontsize=8, color="#b35900")
    more = f" (first {shown} of {n_windows})" if n_windows > shown else ""
    ax.set_title(f"context length {context_length}, stride {stride}: {n_windows} windows{more}; "
                 "target = input shifted by one", fontsize=10)


def draw_head_layout(B: int = 1, T: int = 3, H: int = 2, d_h: int = 3):
    """How ``view`` and ``transpose(1, 2)`` cut a projection into heads, and how heads merge (Lecture 08).

    Each square is one number of Q, labelled with its place in memory (as ``torch.arange``) and
    coloured by the head whose columns it belongs to. From top to bottom: the memory of
    (B, T, d_out); ``view`` to (B, T, H, d_h) (the same memory) and ``transpose(1, 2)`` to
    (B, H, T, d_h), each head's T rows together; the wrong shortcut ``view(B, H, T, d_h)``;
    and the merge, where ``.contiguous()`` copies the context from head order back into token
    order so that ``view(B, T, d_out)`` can glue each token's heads into one row.
    """
    from matplotlib.patches import FancyArrowPatch, Rectangle

    d_out, n = H * d_h, B * T * H * d_h
    if min(B, T, H, d_h) < 1 or n > 48:
        raise ValueError(f"draw_head_layout draws every number: keep B * T * H * d_h between 1 and 48, got {n}.")
    colors = [plt.cm.tab10(h % 10) for h in range(H)]

    def head_of(offset):  # the head whose columns hold this place of (B, T, d_out)
        return (offset % d_out) // d_h

    def tag(b):
        return f"b{b} " if B > 1 else ""

    fig, ax = plt.subplots()
    ax.set_axis_off()
    gap = 1.15  # vertical distance between rows of squares

    def cell(x, y, text, head, wrong=False):
        ax.add_patch(Rectangle((x, y), 1, 1, facecolor=colors[head], alpha=0.35,
                               edgecolor="firebrick" if wrong else "black", lw=2.0 if wrong else 0.8))
        ax.text(x + 0.5, y + 0.5, text, ha="center", va="center", fontsize=9)

    def note(x, y, text, **kw):
        ax.text(x, y, text, ha="left", va="bottom", fontsize=10, linespacing=1.3, **kw)

    def arrow(x0, y0, x1, y1):
        ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=16, color="0.3"))

    def bracket(x0, width, y, text, fontsize=9):
        ax.plot([x0 + 0.05, x0 + width - 0.05], [y - 0.15, y - 0.15], color="0.3", lw=1)
        ax.text(x0 + width / 2, y - 0.25, text, ha="center", va="top", fontsize=fontsize)

    def head_blocks(x_left, y_top, offset, wrong=False):
        """One (T, d_h) block per (batch, head); ``offset(b, h, t, j)`` says which number sits there."""
        for b in range(B):
            for h in range(H):
                x0 = x_left + (b * H + h) * (d_h + 1)
                for t in range(T):
                    for j in range(d_h):
                        o = offset(b, h, t, j)
                        cell(x0 + j, y_top - t * gap, str(o), head_of(o), wrong and head_of(o) != h)
                label = f"'{tag(b)}head {h}'" if wrong else f"{tag(b)}head {h}"
                ax.text(x0 + d_h / 2, y_top - (T - 1) * gap - 0.2, label, ha="center", va="top", fontsize=9,
                        weight="bold", color="firebrick" if wrong else "black")

    # 1. the projection in memory: token after token, each token's d_out columns head after head
    y = 0.0
    note(0, y + 1.2, f"$Q = X W_q$, shape (B, T, d_out) = {(B, T, d_out)}, in memory token after token\n"
                     "(number = place in memory, colour = the head whose columns it is)", weight="bold")
    for x in range(n):
        cell(x, y, str(x), head_of(x))
    for r in range(B * T):
        bracket(r * d_out, d_out, y, f"{tag(r // T)}token {r % T}")

    # 2. view(B, T, H, d_h), left, and 3. transpose(1, 2), right
    y_top = y - 4.0
    left_width = H * (d_h + 0.4) - 0.4
    x_right = left_width + 6.0
    note(0, y_top + 1.3, f".view(B, T, H, d_h) = {(B, T, H, d_h)}\nsame memory, no copy: each token's\n"
                         "row cut into H pieces of d_h")
    for r in range(B * T):
        yy = y_top - r * gap
        for h in range(H):
            for j in range(d_h):
                o = r * d_out + h * d_h + j
                cell(h * (d_h + 0.4) + j, yy, str(o), h)
        ax.text(-0.2, yy + 0.5, f"{tag(r // T)}token {r % T}", ha="right", va="center", fontsize=9)
    note(x_right, y_top + 1.3, f".transpose(1, 2) -> (B, H, T, d_h) = {(B, H, T, d_h)}\n"
                               "strides swapped, no copy: each head's T rows\ntogether, one (T, d_h) matrix per head")
    head_blocks(x_right, y_top, lambda b, h, t, j: (b * T + t) * d_out + h * d_h + j)
    y_mid = y_top - (min(B * T, T) - 1) * gap / 2 + 0.5
    arrow(left_width + 0.6, y_mid, x_right - 0.6, y_mid)
    y_low = y_top - (max(B * T, T) - 1) * gap - 0.9
    ax.text(x_right, y_low, "to the next token a row jumps H * d_h places in memory;\n"
                            "$Q_h K_h^\\top$ for every (batch, head) is one batched matmul",
            ha="left", va="top", fontsize=9, color="0.25")

    # 4. the wrong shortcut: view(B, H, T, d_h) directly
    y_top = y_low - 2.4
    ax.text(0, y_top + 1.0, "wrong: .view(B, H, T, d_h) directly\nhas the right shape but reads memory in\n"
                         "order: 'head 0' gets the first T * d_h\nnumbers (whole tokens, both colours)",
         color="firebrick")
    head_blocks(x_right, y_top, lambda b, h, t, j: ((b * H + h) * T + t) * d_h + j, wrong=True)

    # 5. merging: head order in memory -> token order (.contiguous() copies) -> view(B, T, d_out)
    y = y_top - (T - 1) * gap - 2.8
    head_order = [(b, h, t) for b in range(B) for h in range(H) for t in range(T) for _ in range(d_h)]
    note(0, y + 1.2, "merge: the context $A_h V_h$ comes out as (B, H, T, d_h), in memory head after head\n"
                     "(t = token, colour = head)", weight="bold")
    for x, (b, h, t) in enumerate(head_order):
        cell(x, y, f"{tag(b)}t{t}", h)
    y2 = y - 3.4
    arrow(1.0, y - 0.2, 1.0, y2 + 1.2)
    ax.text(1.5, (y + y2) / 2 + 0.5,
            ".transpose(1, 2) -> (B, T, H, d_h) swaps strides only: a token's numbers are not\n"
            "side by side in memory, so .view(B, T, d_out) refuses; .contiguous() copies them:",
            ha="left", va="center", fontsize=9)
    for x, (b, h, t) in enumerate(sorted(head_order, key=lambda k: (k[0], k[2], k[1]))):
        cell(x, y2, f"{tag(b)}t{t}", h)
    for r in range(B * T):
        bracket(r * d_out, d_out, y2, f"{tag(r // T)}token {r % T}")
    ax.text(0, y2 - 1.0,
            f".view(B, T, d_out) = {(B, T, d_out)} now reads each run of d_out numbers as one token's row,\n"
            "head h in columns h * d_h ... (h + 1) * d_h - 1; then out_proj mixes the heads",
            ha="left", va="top", fontsize=9)

    x_max = max(n, x_right + B * H * (d_h + 1)) + 0.5
    ax.set_xlim(-2.2, x_max)
    ax.set_ylim(y2 - 2.4, 2.6)
    ax.set_aspect("equal")
    fig.set_size_inches(0.5 * (x_max + 2.2), 0.5 * (2.6 - y2 + 2.4))
    fig.subplots_adjust(0, 0, 1, 1)
    return fig


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


def draw_parallel_heads(n: int = 4):
    """Gloeckle et al.'s multi-token model: a shared trunk and n parallel heads (Lecture 23).

    ids (B, T) -> embedding -> trunk (the first L - 1 blocks, run once) -> n independent head blocks
    -> the shared final norm and unembedding -> head j scores token t + 1 + j.
    """
    if not isinstance(n, int) or not 1 <= n <= 6:
        raise ValueError(f"draw_parallel_heads draws 1 to 6 heads, got {n!r}.")
    fig, ax = plt.subplots(figsize=(1.9 * n + 2.2, 4.6))
    ax.set_axis_off()
    width = 1.9 * n
    ax.set_xlim(-1.2, width + 0.2)
    ax.set_ylim(-0.5, 6.1)
    mid = width / 2 - 0.5
    _block_box(ax, mid, 0.0, 3.4, 0.5, "token ids x_1 ... x_t  (B, T)", "#eeeeee")
    _block_box(ax, mid, 1.0, 3.4, 0.5, "token + position embedding", "#dbe9f6")
    _block_box(ax, mid, 2.1, 3.4, 0.7, "shared trunk: blocks 1 ... L-1\n(run once)  z_t  (B, T, d)", "#c6dbef",
               weight="bold")
    _block_arrow(ax, (mid, 0.25), (mid, 0.75))
    _block_arrow(ax, (mid, 1.25), (mid, 1.75))
    for j in range(n):
        x = 1.9 * j + 0.45
        _block_arrow(ax, (mid, 2.45), (x, 3.05))
        _block_box(ax, x, 3.3, 1.6, 0.5, f"head {j}: block", "#fdd0a2")
        _block_box(ax, x, 4.2, 1.6, 0.5, "norm + out_head", "#e5e5e5")
        _block_box(ax, x, 5.2, 1.6, 0.55, f"P(x_t+{j + 1} | x_<=t)", "#c7e9c0", fontsize=9)
        _block_arrow(ax, (x, 3.55), (x, 3.95))
        _block_arrow(ax, (x, 4.45), (x, 4.92))
    ax.text(-1.1, 4.2, "shared\n(same\nweights)", ha="left", va="center", fontsize=8, color="0.3")
    ax.text(-1.1, 3.3, "n separate\nblocks", ha="left", va="center", fontsize=8, color="0.3")
    ax.set_title(f"Multi-token prediction with {n} parallel heads (Gloeckle et al. 2024)", fontsize=11)
    fig.tight_layout()
    return fig


def draw_mtp_chain(depth: int = 3):
    """DeepSeek-V3's sequential MTP modules and their causal chain (Lecture 24).

    The main model's hidden state h^0 feeds depth 1; depth k combines h^{k-1} with Emb(t_{i+k}) (both
    RMS-normalised, concatenated, projected 2d -> d), runs one block and scores t_{i+k+1} through the
    shared head; its output h^k feeds depth k + 1.
    """
    if not isinstance(depth, int) or not 1 <= depth <= 4:
        raise ValueError(f"draw_mtp_chain draws depths 1 to 4, got {depth!r}.")
    cols = depth + 1
    fig, ax = plt.subplots(figsize=(2.6 * cols + 0.6, 5.2))
    ax.set_axis_off()
    ax.set_xlim(-0.4, 2.6 * cols)
    ax.set_ylim(-0.6, 6.4)
    x0 = 1.1
    _block_box(ax, x0, 0.0, 2.0, 0.5, "Emb(t_i)  (shared)", "#dbe9f6")
    _block_box(ax, x0, 1.6, 2.0, 1.0, "main model\nblocks 1 ... L\nh^0  (T, d)", "#c6dbef", weight="bold")
    _block_box(ax, x0, 4.3, 2.0, 0.5, "norm + head (shared)", "#e5e5e5")
    _block_box(ax, x0, 5.5, 2.0, 0.55, "P(t_(i+1))", "#c7e9c0")
    _block_arrow(ax, (x0, 0.25), (x0, 1.1))
    _block_arrow(ax, (x0, 2.1), (x0, 4.05))
    _block_arrow(ax, (x0, 4.55), (x0, 5.22))
    prev = (x0 + 1.0, 1.6)
    for k in range(1, depth + 1):
        x = x0 + 2.6 * k
        _block_box(ax, x, 0.0, 2.0, 0.5, f"Emb(t_(i+{k}))  (shared)", "#dbe9f6")
        _block_box(ax, x, 1.2, 2.2, 0.75, "[RMSNorm(h); RMSNorm(emb)]\n(2d) -> eh_proj -> (d)", "#fdd0a2",
                   fontsize=8)
        _block_box(ax, x, 2.5, 2.0, 0.55, f"block  ->  h^{k}", "#fdae6b")
        _block_box(ax, x, 4.3, 2.0, 0.5, "norm + head (shared)", "#e5e5e5")
        _block_box(ax, x, 5.5, 2.0, 0.55, f"P(t_(i+{k + 1}))", "#c7e9c0")
        _block_arrow(ax, (x, 0.25), (x, 0.82))
        _block_arrow(ax, (x, 1.58), (x, 2.22))
        _block_arrow(ax, (x, 2.78), (x, 4.05))
        _block_arrow(ax, (x, 4.55), (x, 5.22))
        _block_arrow(ax, prev, (x - 1.1, 1.2))
        ax.text((prev[0] + x - 1.1) / 2, (prev[1] + 1.2) / 2 + 0.25, f"h^{k - 1}", ha="center", fontsize=8,
                color="0.3")
        prev = (x + 1.0, 2.5)
    ax.set_title(f"DeepSeek-V3 multi-token prediction: {depth} sequential module(s), causal chain kept",
                 fontsize=11)
    fig.tight_layout()
    return fig


def draw_speculative_step():
    """One step of speculative decoding with an MTP module as the drafter (Lecture 25).

    Draft: MTP module 1 turns (h_(L-2), Emb(t_(L-1))) into a guess d for t_L. Verify: one pass of
    the main model over [t_(L-1), d] gives its own choices for t_L and t_(L+1). Accept when its
    choice for t_L equals d (two tokens from one pass), otherwise keep its own token and truncate
    d's keys and values from the cache (one token).
    """
    fig, ax = plt.subplots(figsize=(10.5, 4.4))
    ax.set_axis_off()
    ax.set_xlim(-0.2, 10.6)
    ax.set_ylim(-0.4, 4.6)
    _block_box(ax, 1.3, 3.8, 2.4, 0.6, "known: t_0 ... t_(L-1)\nmain cache: positions 0 ... L-2", "#eeeeee",
               fontsize=8)
    _block_box(ax, 1.3, 2.3, 2.4, 0.8, "1. draft\nMTP module 1 on\n(h_(L-2), Emb(t_(L-1)))", "#fdd0a2", fontsize=8)
    _block_box(ax, 1.3, 0.8, 2.4, 0.5, "draft d = argmax  (guess for t_L)", "#fdae6b", fontsize=8)
    _block_arrow(ax, (1.3, 3.48), (1.3, 2.72))
    _block_arrow(ax, (1.3, 1.88), (1.3, 1.07))
    _block_box(ax, 5.0, 2.3, 2.8, 0.8, "2. verify: ONE main-model pass\non [t_(L-1), d] at positions L-1, L", "#c6dbef",
               fontsize=8, weight="bold")
    _block_box(ax, 5.0, 0.8, 2.8, 0.5, "main argmax: a (for t_L), b (for t_(L+1))", "#dbe9f6", fontsize=8)
    _block_arrow(ax, (2.52, 0.8), (3.58, 2.1))
    _block_arrow(ax, (5.0, 1.88), (5.0, 1.07))
    _block_box(ax, 9.0, 3.0, 2.9, 0.9, "3a. a == d: accept\nappend d and b (2 tokens, 1 pass)\ncache keeps d",
               "#c7e9c0", fontsize=8)
    _block_box(ax, 9.0, 1.0, 2.9, 0.9, "3b. a != d: reject\nappend a (1 token)\ncache.truncate(L): drop d", "#fcbba1",
               fontsize=8)
    _block_arrow(ax, (6.42, 0.9), (7.52, 2.85))
    _block_arrow(ax, (6.42, 0.8), (7.52, 1.0))
    ax.text(5.0, 4.2, "the MTP module then combines the new hidden states with the new tokens and drafts again",
            ha="center", fontsize=8, color="0.3")
    ax.set_title("One step of greedy speculative decoding (draft with MTP, verify with the main model)", fontsize=11)
    fig.tight_layout()
    return fig


def draw_deepseek_model(n_layers="N", first_k_dense="k"):
    """The whole mini DeepSeek in one picture (Lecture 29), with the MTP module branching off.

    ids -> embedding -> N x [RMSNorm -> MLA (latent cache) -> +, RMSNorm -> dense SwiGLU (first k layers) or
    DeepSeekMoE -> +] -> final RMSNorm -> head -> P(t_(i+1)); MTP module 1 takes the trunk's last hidden
    state (before the final norm) and Emb(t_(i+1)), runs one more block and drafts P(t_(i+2)) through the
    shared head. ``n_layers`` and ``first_k_dense`` are printed as given (numbers or letters).
    """
    from matplotlib.patches import FancyBboxPatch

    fig, ax = plt.subplots(figsize=(10.5, 8.2))
    ax.set_axis_off()
    ax.set_xlim(0, 10.5)
    ax.set_ylim(-0.3, 12.0)
    emb, norm, attn, ffn, head, io, mtp = "#dbe9f6", "#fde2c8", "#c6dbef", "#d5ecd4", "#e5e5e5", "white", "#fdd0a2"
    x, w = 3.0, 3.8
    _block_box(ax, x, 0.2, w, 0.5, "token ids  (B, T)", io, fontsize=8)
    _block_box(ax, x, 1.2, w, 0.55, "embed_tokens  ->  (B, T, d)   (no position embedding)", emb, fontsize=8)
    ax.add_patch(FancyBboxPatch((x - w / 2 - 0.3, 1.95), w + 0.6, 5.75, boxstyle="round,pad=0.02,rounding_size=0.1",
                                facecolor="none", edgecolor="0.45", lw=1.2, ls="--"))
    ax.text(x + w / 2 + 0.4, 2.2, f"{n_layers} x\nDeepSeekBlock", fontsize=9, weight="bold", va="center")
    rows = [(2.5, "input_layernorm  (RMSNorm)", norm, w),
            (3.5, "self_attn: MLA + decoupled RoPE\ncaches c_KV and k_R: d_c + d_h^R numbers per token", attn, w),
            (4.5, "+  (residual)", io, 1.6),
            (5.3, "post_attention_layernorm  (RMSNorm)", norm, w),
            (6.3, f"mlp: dense SwiGLU (the first {first_k_dense} layers)\nor DeepSeekMoE: shared + top-k routed",
             ffn, w),
            (7.2, "+  (residual)", io, 1.6)]
    heights = [0.7 if "\n" in text else 0.45 for _, text, _, _ in rows]
    for (y, text, color, width), h in zip(rows, heights):
        _block_box(ax, x, y, width, h, text, color, fontsize=8)
    for (y0, *_), h0, (y1, *_), h1 in zip(rows, heights, rows[1:], heights[1:]):
        _block_arrow(ax, (x, y0 + h0 / 2), (x, y1 - h1 / 2))
    _block_arrow(ax, (x, 1.48), (x, 2.27))
    _block_arrow(ax, (x, 0.45), (x, 0.92))
    for y_from, y_to in ((2.05, 4.5), (4.75, 7.2)):  # the two skip connections, on the left
        xs = x - w / 2 - 0.15
        ax.plot([x, xs, xs], [y_from, y_from, y_to], color="0.45", lw=1.0)
        _block_arrow(ax, (xs, y_to), (x - 0.8, y_to), color="0.45")
    _block_box(ax, x, 8.4, w, 0.5, "h: the trunk's last hidden state  (B, T, d)", io, fontsize=8)
    _block_box(ax, x, 9.3, w, 0.5, "norm  (final RMSNorm)", norm, fontsize=8)
    _block_box(ax, x, 10.2, w, 0.5, "lm_head  ->  logits  (B, T, V)", head, fontsize=8)
    _block_box(ax, x, 11.1, w, 0.5, "P(t_(i+1)): the next token", "#c7e9c0", fontsize=8)
    _block_arrow(ax, (x, 7.43), (x, 8.15))
    for y in (8.65, 9.55, 10.45):
        _block_arrow(ax, (x, y), (x, y + 0.4))
    xm, wm = 8.0, 3.6  # the MTP module, on the right
    _block_box(ax, xm, 4.6, wm, 0.5, "Emb(t_(i+1))  (the same embed_tokens)", emb, fontsize=8)
    _block_box(ax, xm, 6.0, wm, 0.75, "MTP module 1: [hnorm(h); enorm(emb)]\n(2d) -> eh_proj -> (d)", mtp,
               fontsize=8)
    _block_box(ax, xm, 7.4, wm, 0.55, "one more DeepSeekBlock (MLA + MoE)", mtp, fontsize=8)
    _block_box(ax, xm, 9.3, wm, 0.5, "shared_head.norm  (its own RMSNorm)", norm, fontsize=8)
    _block_box(ax, xm, 10.2, wm, 0.5, "lm_head  (the same tensor)", head, fontsize=8)
    _block_box(ax, xm, 11.1, wm, 0.5, "P(t_(i+2)): a draft, one token further", "#c7e9c0", fontsize=8)
    _block_arrow(ax, (xm, 4.85), (xm, 5.62))
    _block_arrow(ax, (xm, 6.38), (xm, 7.12))
    _block_arrow(ax, (xm, 7.68), (xm, 9.05))
    for y in (9.55, 10.45):
        _block_arrow(ax, (xm, y), (xm, y + 0.4))
    _block_arrow(ax, (x + w / 2, 8.4), (xm - wm / 2, 6.2))
    ax.text(5.6, 8.05, "h, before the final norm", fontsize=8, color="0.3", ha="left")
    ax.set_title("The mini DeepSeek: MLA with a latent cache, DeepSeekMoE, and one MTP module", fontsize=11)
    fig.tight_layout()
    return fig

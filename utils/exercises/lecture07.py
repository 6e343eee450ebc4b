"""Exercises for Lecture 07 (multi-head attention, visually): expected values come from :mod:`utils.attention`.

07.1 the head wrapper (checked against :class:`utils.attention.MultiHeadAttentionWrapper` with
copied weights), 07.2 split a projection matrix into heads, 07.3 count the attention weights.
Every case that builds a layer draws its weights inside ``torch.random.fork_rng``.
"""

from __future__ import annotations

import torch

from utils.attention import MultiHeadAttention, MultiHeadAttentionWrapper
from utils.exercises import Case, exercise, module_case, randn, run_module, seeded






@exercise("07.1", "MultiHeadAttentionWrapper: causal heads side by side", call=run_module)
def _head_wrapper():
    """The learner's class is built like ``MultiHeadAttentionWrapper(d_in, d_out, context_length, n_heads,
    dropout, qkv_bias)`` with ``self.heads`` an ``nn.ModuleList`` of ``utils.attention.CausalAttention``
    heads of width ``d_out // n_heads``; it gets the reference's weights and must return the same
    (B, T, d_out) output, head 0's columns first."""
    return [
        module_case("the lecture's sizes: (1, 11, 8), d_out = 4 in 2 heads of width 2",
                    seeded(MultiHeadAttentionWrapper, 8, 4, 11, 2, seed=0), (8, 4, 11, 2), (randn(1, 11, 8, seed=1),)),
        module_case("3 heads of width 2, a batch of 2, T = 5 < context_length = 8",
                    seeded(MultiHeadAttentionWrapper, 6, 6, 8, 3, seed=2), (6, 6, 8, 3), (randn(2, 5, 6, seed=3),)),
        module_case("4 heads with qkv_bias=True, d_in = 5 != d_out = 8",
                    seeded(MultiHeadAttentionWrapper, 5, 8, 6, 4, qkv_bias=True, seed=4), (5, 8, 6, 4), (randn(2, 6, 5, seed=5),),
                    init_kwargs={"qkv_bias": True}),
        module_case("training mode, dropout 0.3 in every head (same seed, same dropout masks)",
                    seeded(MultiHeadAttentionWrapper, 4, 4, 6, 2, 0.3, seed=6), (4, 4, 6, 2, 0.3), (randn(2, 6, 4, seed=7),),
                    train=True, seed=8),
    ]


@exercise("07.2", "split a projection matrix into heads")
def _split_projection():
    """split_projection(W (d_in, d_out), n_heads) -> list of n_heads blocks (d_in, d_out // n_heads).

    Block h must give head h's queries: ``x @ blocks[h]`` equals the h-th head of ``split_heads(x @ W)``.
    """
    cases = []
    for label, d_in, d_out, n_heads, seed in (("the lecture's W_Q (8, 4) into 2 heads", 8, 4, 2, 0),
                                              ("square (6, 6) into 3 heads", 6, 6, 3, 1),
                                              ("(5, 8) into 4 heads of width 2", 5, 8, 4, 2),
                                              ("one head: the whole matrix", 3, 6, 1, 3)):
        W = randn(d_in, d_out, seed=seed)
        with torch.random.fork_rng(devices=[]):
            mha = MultiHeadAttention(d_in, d_out, 4, n_heads)
        eye = torch.eye(d_in).unsqueeze(0)  # (1, d_in, d_in): the rows of W are eye @ W
        per_head = mha.split_heads(eye @ W)[0]  # (n_heads, d_in, d_out // n_heads)
        cases.append(Case(label, (W.clone(), n_heads), list(per_head.unbind(0))))
    return cases


@exercise("07.3", "attention weights computed and used")
def _weights_count():
    """weights_count(n_heads, T) -> (computed, allowed): entries of all score matrices, and those not masked.

    Expected: counted on the weights a real causal MultiHeadAttention returns for one sequence.
    """
    cases = []
    for label, n_heads, T in (("one head, one token", 1, 1), ("the lecture's 2 heads, 11 tokens", 2, 11),
                              ("4 heads, 6 tokens", 4, 6), ("GPT-2's 12 heads, 32 tokens", 12, 32)):
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(0)
            mha = MultiHeadAttention(n_heads, n_heads, T, n_heads).eval()
            _, weights = mha(torch.randn(1, T, n_heads), return_weights=True)  # (1, H, T, T)
        cases.append(Case(label, (n_heads, T), (weights.numel(), int((weights > 0).sum()))))
    return cases

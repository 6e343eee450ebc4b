"""Exercises of Lecture 08: multi-head attention with one projection and view/transpose.

Expected values come from :class:`utils.attention.MultiHeadAttention` (its ``split_heads``,
``merge_heads`` and parameters) and from :func:`utils.attention.scaled_dot_product_attention`
with :func:`utils.attention.causal_mask`.
"""

from __future__ import annotations

import torch

from utils.attention import MultiHeadAttention, causal_mask, scaled_dot_product_attention
from utils.exercises import exercise


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# (B, T, n_heads, head_dim): the lecture's example first, then shapes where a wrong axis order shows
_SHAPES = [(1, 3, 2, 3), (2, 4, 3, 2), (3, 5, 4, 3), (2, 6, 1, 5), (1, 2, 6, 1)]


@exercise("08.1", "split (B, T, d_out) into heads (B, H, T, d_h)")
def _cases_split_heads():
    cases = []
    for i, (B, T, H, d_h) in enumerate(_SHAPES):
        x = _randn(B, T, H * d_h, seed=800 + i)
        layer = MultiHeadAttention(H * d_h, H * d_h, context_length=T, n_heads=H)
        cases.append(((x, H), layer.split_heads(x)))
    return cases


@exercise("08.2", "merge heads (B, H, T, d_h) back into (B, T, d_out)")
def _cases_merge_heads():
    cases = []
    for i, (B, T, H, d_h) in enumerate(_SHAPES):
        x = _randn(B, H, T, d_h, seed=810 + i)
        layer = MultiHeadAttention(H * d_h, H * d_h, context_length=T, n_heads=H)
        cases.append(((x,), layer.merge_heads(x)))
    return cases


def _mha_parameters(d_in: int, d_out: int, qkv_bias: bool) -> int:
    with torch.device("meta"):  # shapes only: no memory is allocated, even for DeepSeek-V3's width
        layer = MultiHeadAttention(d_in, d_out, context_length=1, n_heads=1, qkv_bias=qkv_bias)
    return sum(p.numel() for p in layer.parameters())


@exercise("08.3", "parameters of one multi-head attention layer", atol=0)
def _cases_mha_parameters():
    settings = [
        (6, 6, False),  # the lecture's example
        (768, 768, True),  # GPT-2 small: biased Q/K/V
        (768, 768, False),
        (512, 512, False),  # the original Transformer (base)
        (8, 4, True),  # d_in differs from d_out
        (7168, 7168, False),  # a plain MHA layer as wide as DeepSeek-V3
    ]
    return [(s, _mha_parameters(*s)) for s in settings]


@exercise("08.4", "causal attention weights for all heads at once")
def _cases_causal_weights():
    cases = []
    for i, (B, T, H, d_h) in enumerate(_SHAPES):
        q, k = 2 * _randn(B, H, T, d_h, seed=820 + i), 2 * _randn(B, H, T, d_h, seed=830 + i)
        _, weights = scaled_dot_product_attention(q, k, torch.zeros(B, H, T, 1), causal_mask(T),
                                                  return_weights=True)
        cases.append(((q, k), weights))
    return cases

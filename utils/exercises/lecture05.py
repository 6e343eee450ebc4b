"""Exercises of Lecture 05: scaled dot-product attention and the size of SelfAttention."""

from __future__ import annotations

import torch

from utils.attention import SelfAttention, scaled_dot_product_attention
from utils.exercises import exercise


def _qkv_shapes():
    """(q, k, v) shapes: the lecture's (5, 4) example, a batch, T_q != T_k and d_v != d_k."""
    return [((5, 4), (5, 4), (5, 4)), ((2, 6, 8), (2, 6, 8), (2, 6, 8)),
            ((3, 16), (7, 16), (7, 5)), ((2, 3, 4, 64), (2, 3, 4, 64), (2, 3, 4, 64))]


def _random(shape, g, scale=1.0):
    return scale * torch.randn(*shape, generator=g)


@exercise("05.1", "scaled dot-product attention by hand")
def _cases_attention():
    g = torch.Generator().manual_seed(5)
    cases = []
    for sq, sk, sv in _qkv_shapes():
        q, k, v = _random(sq, g), _random(sk, g), _random(sv, g)
        cases.append(((q, k, v), scaled_dot_product_attention(q, k, v)))
    return cases


@exercise("05.2", "the attention weights")
def _cases_weights():
    g = torch.Generator().manual_seed(6)
    cases = []
    for sq, sk, _ in _qkv_shapes():
        q, k = _random(sq, g), _random(sk, g)
        _, weights = scaled_dot_product_attention(q, k, k, return_weights=True)
        cases.append(((q, k), weights))
    return cases


@exercise("05.3", "the parameters of SelfAttention")
def _cases_parameters():
    sizes = [(8, 4, False), (8, 4, True), (3, 2, False), (3, 2, True), (768, 64, False),
             (768, 768, True), (7168, 128, False)]
    cases = []
    for d_in, d_out, bias in sizes:
        with torch.device("meta"):  # shapes only: no memory, no draw from the random generator
            layer = SelfAttention(d_in, d_out, bias)
        cases.append(((d_in, d_out, bias), sum(p.numel() for p in layer.parameters())))
    return cases

"""Exercises of Lecture 08: multi-head attention with one projection and view/transpose.

Expected values come from :class:`utils.attention.MultiHeadAttention`: its ``split_heads`` (on a
layer built on the meta device, which draws no random numbers), its forward pass with weights
drawn inside ``torch.random.fork_rng`` (so the learner's random state is never touched), and
its own parameter count.
"""

from __future__ import annotations

import torch

from utils.attention import MultiHeadAttention
from utils.exercises import Case, exercise, module_case, module_cases, randn, run_module




def _meta_layer(d_in: int, d_out: int, n_heads: int, qkv_bias: bool = False) -> MultiHeadAttention:
    with torch.device("meta"):  # shapes only: no memory, no random draws, even for DeepSeek-V3's width
        return MultiHeadAttention(d_in, d_out, context_length=1, n_heads=n_heads, qkv_bias=qkv_bias)


# --- 08.1: split a projection into heads ---------------------------------------------------------

_SPLIT = [  # (label, (B, T, H, d_h))
    ("the lecture's shape: (1, 3, 6) into 2 heads of 3", (1, 3, 2, 3)),
    ("batch of 2, 4 tokens, 3 heads of 2", (2, 4, 3, 2)),
    ("3 heads of 4: head width differs from the head count", (3, 5, 3, 4)),
    ("1 head of 5: only a new axis", (2, 6, 1, 5)),
    ("6 heads of width 1", (1, 2, 6, 1)),
]


@exercise("08.1", "split (B, T, d_out) into heads (B, H, T, d_h)")
def _cases_split_heads():
    cases = []
    for i, (label, (B, T, H, d_h)) in enumerate(_SPLIT):
        x = randn(B, T, H * d_h, seed=800 + i)
        cases.append(Case(label, (x, H), _meta_layer(H * d_h, H * d_h, H).split_heads(x)))
    return cases


# --- 08.2: the learner writes MultiHeadAttention.forward ------------------------------------------

LECTURE_X = torch.tensor([[[0.3, -0.2, 0.1, 0.9, 0.6, 0.4],
                           [0.5, 0.8, -0.6, 0.2, 0.1, 0.7],
                           [-0.4, 0.2, 0.9, -0.5, 0.3, 0.8]]])  # the lecture's (1, 3, 6) input

_FORWARD = [  # (label, (d_in, d_out, context_length, n_heads), kwargs, input shape or None, train)
    ("the lecture's X (1, 3, 6), d_out 6, 2 heads of 3", (6, 6, 3, 2), {}, None, False),
    ("batch of 2, T = 4 < context_length 7, 3 heads of 2", (6, 6, 7, 3), {}, (2, 4, 6), False),
    ("d_in 5 != d_out 8, 4 heads of 2, Q/K/V with biases", (5, 8, 5, 4), {"qkv_bias": True}, (2, 5, 5), False),
    ("1 head of width 4 (d_h = d_out)", (4, 4, 6, 1), {}, (3, 6, 4), False),
    ("training mode: dropout 0.5 on the attention weights (seeded)", (6, 6, 5, 2), {"dropout": 0.5},
     (2, 5, 6), True),
]


@exercise("08.2", "MultiHeadAttention.forward with split and merge", call=run_module)
def _cases_forward():
    return module_cases(MultiHeadAttention, _FORWARD, LECTURE_X, seed=810)


# --- 08.3: count the parameters --------------------------------------------------------------------

def _mha_parameters(d_in: int, d_out: int, qkv_bias: bool) -> int:
    return sum(p.numel() for p in _meta_layer(d_in, d_out, n_heads=1, qkv_bias=qkv_bias).parameters())


@exercise("08.3", "parameters of one multi-head attention layer", atol=0)
def _cases_mha_parameters():
    settings = [
        ("the lecture's layer: d_in = d_out = 6, no Q/K/V bias", (6, 6, False)),
        ("GPT-2 small: 768 wide, biased Q/K/V", (768, 768, True)),
        ("768 wide, no Q/K/V bias", (768, 768, False)),
        ("the original Transformer (base): 512 wide", (512, 512, False)),
        ("d_in 8 != d_out 4, biased Q/K/V", (8, 4, True)),
        ("a plain MHA layer as wide as DeepSeek-V3 (7168)", (7168, 7168, False)),
    ]
    return [Case(label, s, _mha_parameters(*s)) for label, s in settings]

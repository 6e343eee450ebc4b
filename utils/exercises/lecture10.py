"""Exercises of Lecture 10: multi-query attention.

10.1 the forward pass of :class:`utils.attention.MultiQueryAttention` (all query heads share one
key head and one value head), 10.2 the KV-cache bytes of a model with MHA and with MQA, 10.3 the
parameters of one MQA layer. Expected values come from the library layer's own forward pass
(weights drawn inside ``torch.random.fork_rng``, so the learner's random state is never
touched), from :func:`utils.kv_cache.kv_cache_bytes` and from the layer's parameter count (built
on the meta device: shapes only, no random draws).
"""

from __future__ import annotations

import torch

from utils.attention import MultiQueryAttention
from utils.exercises import Case, exercise, module_case, module_cases, randn, run_module
from utils.kv_cache import AttentionShape, kv_cache_bytes




def lecture_example() -> torch.Tensor:
    """The notebook's small example: 9 tokens ("The quick brown fox jumps over the lazy dog") of width 8, seed 1000."""
    return randn(1, 9, 8, seed=1000)


# --- 10.1: the learner writes MultiQueryAttention.forward ---------------------------------------------

_FORWARD = [  # (label, (d_in, d_out, context_length, n_heads), kwargs, input shape or None, train)
    ("the notebook's example: X (1, 9, 8), 4 query heads of 2, one K/V head", (8, 8, 9, 4), {}, None, False),
    ("batch of 3, T = 5 < context_length 9, 2 heads of 4", (8, 8, 9, 2), {}, (3, 5, 8), False),
    ("d_in 6 != d_out 12, 3 heads of 4, Q/K/V with biases", (6, 12, 6, 3), {"qkv_bias": True}, (2, 6, 6), False),
    ("a single head of width 6 (MQA = MHA)", (6, 6, 4, 1), {}, (2, 4, 6), False),
    ("training mode: dropout 0.5 on the attention weights (seeded)", (8, 8, 7, 4), {"dropout": 0.5},
     (2, 7, 8), True),
]


@exercise("10.1", "MultiQueryAttention.forward: one K/V head shared by all query heads", call=run_module)
def _cases_forward():
    return module_cases(MultiQueryAttention, _FORWARD, lecture_example(), seed=1010)


# --- 10.2: cache bytes with MHA and with MQA ---------------------------------------------------------

_CACHE = [  # (label, (n_layers, n_heads, head_dim, seq_len, batch, bytes_per_element))
    ("GPT-3 175B: 96 layers, 96 heads of 128, 1024 tokens, batch 1, fp16", (96, 96, 128, 1024, 1, 2)),
    ("GPT-2 small: 12 layers, 12 heads of 64, 1024 tokens, batch 8, fp32", (12, 12, 64, 1024, 8, 4)),
    ("the notebook's small GPT: 2 layers, 4 heads of 16, 64 tokens, fp32", (2, 4, 16, 64, 1, 4)),
    ("the lecture-09 30B model: 48 layers, 56 heads of 128, 1024 tokens, batch 128, fp16",
     (48, 56, 128, 1024, 128, 2)),
    ("one head (MQA = MHA), 3 layers, FP8 (1 byte)", (3, 1, 32, 100, 2, 1)),
    ("an empty cache: 0 tokens", (4, 8, 16, 0, 1, 2)),
]


def _cache_pair(n_layers: int, n_heads: int, head_dim: int, seq_len: int, batch: int, nbytes: int):
    mha = kv_cache_bytes(AttentionShape(n_layers, n_heads, head_dim), seq_len, batch, nbytes)
    mqa = kv_cache_bytes(AttentionShape(n_layers, n_heads, head_dim, n_kv_heads=1), seq_len, batch, nbytes)
    return mha, mqa


@exercise("10.2", "KV-cache bytes with MHA and with MQA (ints)", atol=0)
def _cases_cache_bytes():
    return [Case(label, args, _cache_pair(*args)) for label, args in _CACHE]


# --- 10.3: parameters of one MQA layer -------------------------------------------------------------------

def _mqa_parameters(d_in: int, d_out: int, n_heads: int, qkv_bias: bool) -> int:
    with torch.device("meta"):  # shapes only: no memory, no random draws, even for GPT-3's width
        layer = MultiQueryAttention(d_in, d_out, context_length=1, n_heads=n_heads, qkv_bias=qkv_bias)
    return sum(p.numel() for p in layer.parameters())


@exercise("10.3", "parameters of one multi-query attention layer (int)", atol=0)
def _cases_mqa_parameters():
    settings = [
        ("the notebook's small GPT: 64 wide, 4 heads of 16, no Q/K/V bias", (64, 64, 4, False)),
        ("GPT-2 small's width: 768, 12 heads of 64, biased Q/K/V", (768, 768, 12, True)),
        ("GPT-3 175B's width: 12288, 96 heads of 128, biased Q/K/V", (12288, 12288, 96, True)),
        ("d_in 10 != d_out 8, 2 heads of 4, biased Q/K/V", (10, 8, 2, True)),
        ("one head (MQA = MHA): 16 wide", (16, 16, 1, False)),
    ]
    return [Case(label, s, _mqa_parameters(*s)) for label, s in settings]

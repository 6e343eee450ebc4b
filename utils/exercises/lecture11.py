"""Exercises of Lecture 11: grouped-query attention.

11.1 share each K/V head with its group of query heads (``repeat_kv``), 11.2 the forward pass
of :class:`utils.attention.GroupedQueryAttention`, 11.3 the number of groups that fits a memory
budget. Expected values come from ``GroupedQueryAttention.repeat_kv``, from the layer's own
forward pass with weights drawn inside ``torch.random.fork_rng`` (the learner's random state is
never touched), and from :func:`utils.kv_cache.kv_cache_bytes`.
"""

from __future__ import annotations

import torch

from utils.attention import GroupedQueryAttention
from utils.exercises import Case, exercise, module_case, module_cases, randn, run_module
from utils.kv_cache import AttentionShape, kv_cache_bytes




def lecture_example() -> torch.Tensor:
    """The lecture's input for 4 heads in 2 groups: 5 tokens of width 8, X (1, 5, 8), seed 1100."""
    return randn(1, 5, 8, seed=1100)


# --- 11.1: share each K/V head with its group ---------------------------------------------------------

_REPEAT = [  # (label, (B, G, T, d_h), group_size)
    ("the lecture's keys: 2 K/V heads for 4 query heads, (1, 2, 5, 2)", (1, 2, 5, 2), 2),
    ("3 groups of 2 (head order g0 g0 g1 g1 g2 g2), batch 2", (2, 3, 4, 3), 2),
    ("2 groups of 3 query heads, d_h 4", (2, 2, 3, 4), 3),
    ("one K/V head for 4 query heads (multi-query)", (2, 1, 6, 2), 4),
    ("group size 1 (multi-head): nothing to share", (1, 4, 3, 2), 1),
]


def _reference_repeat(kv: torch.Tensor, group_size: int) -> torch.Tensor:
    B, G, T, d_h = kv.shape
    with torch.device("meta"):  # the library layer's repeat_kv; building it on meta draws no random numbers
        layer = GroupedQueryAttention(d_h, G * group_size * d_h, 1, G * group_size, G)
    return layer.repeat_kv(kv).clone()


@exercise("11.1", "share each K/V head with its group: (B, G, T, d_h) -> (B, H, T, d_h)")
def _cases_repeat_kv():
    cases = []
    for i, (label, shape, group_size) in enumerate(_REPEAT):
        kv = randn(*shape, seed=1110 + i)
        cases.append(Case(label, (kv, group_size), _reference_repeat(kv, group_size)))
    return cases


# --- 11.2: the learner writes GroupedQueryAttention.forward ---------------------------------------------

_FORWARD = [  # (label, (d_in, d_out, context_length, n_heads, n_kv_groups), kwargs, input shape or None, train)
    ("the lecture's X (1, 5, 8): 4 heads of 2 in 2 groups", (8, 8, 5, 4, 2), {}, None, False),
    ("6 heads in 3 groups, batch 2, T = 4 < context_length 7", (12, 12, 7, 6, 3), {}, (2, 4, 12), False),
    ("d_in 5 != d_out 12, 6 heads in 2 groups of 3, Q/K/V with biases", (5, 12, 6, 6, 2), {"qkv_bias": True},
     (2, 6, 5), False),
    ("one group (multi-query): 4 heads share one K/V head", (8, 8, 6, 4, 1), {}, (2, 6, 8), False),
    ("groups = heads (multi-head): 3 heads, 3 groups", (6, 6, 4, 3, 3), {}, (1, 4, 6), False),
    ("training mode: dropout 0.5 on the attention weights (seeded)", (8, 8, 5, 4, 2), {"dropout": 0.5},
     (2, 5, 8), True),
]


@exercise("11.2", "GroupedQueryAttention.forward: query heads share K/V heads in groups", call=run_module)
def _cases_forward():
    return module_cases(GroupedQueryAttention, _FORWARD, lecture_example(), seed=1120)


# --- 11.3: how many groups fit a memory budget ------------------------------------------------------------

def groups_for_budget_reference(n_layers: int, n_heads: int, head_dim: int, seq_len: int, batch: int,
                                budget_bytes: int, bytes_per_element: int = 2) -> int:
    """The largest divisor G of n_heads whose K/V cache fits ``budget_bytes`` (0 if not even G = 1 fits)."""
    best = 0
    for groups in range(1, n_heads + 1):
        if n_heads % groups == 0:
            shape = AttentionShape(n_layers, n_heads, head_dim, groups)
            if kv_cache_bytes(shape, seq_len, batch, bytes_per_element) <= budget_bytes:
                best = groups
    return best


_BUDGETS = [  # (label, (n_layers, n_heads, head_dim, seq_len, batch, budget_bytes, bytes_per_element))
    ("Llama-3-8B shape, 8k tokens, batch 16, 16 GB in bf16 (7.45 groups would fit: not a divisor)",
     (32, 32, 128, 8192, 16, 16 * 10**9, 2)),
    ("the same, budget exactly the cache of 8 groups (a cache that fills the budget fits)",
     (32, 32, 128, 8192, 16, 8 * 2 * 128 * 32 * 8192 * 16 * 2, 2)),
    ("Llama-3-70B shape, 8k tokens, batch 1, 80 GB: even multi-head attention fits",
     (80, 64, 128, 8192, 1, 80 * 10**9, 2)),
    ("Llama-3-70B shape, 128k tokens, batch 8, 10 GB: not even one K/V head fits",
     (80, 64, 128, 131072, 8, 10 * 10**9, 2)),
    ("12 heads (divisors 1 2 3 4 6 12), 1-byte elements, 6 MB", (4, 12, 64, 1024, 2, 6 * 10**6, 1)),
    ("the lecture's 4 heads: 2 layers, d_h 2, 5 tokens, fp32, 320 bytes", (2, 4, 2, 5, 1, 320, 4)),
]


@exercise("11.3", "the number of K/V groups that fits a memory budget", atol=0)
def _cases_groups_for_budget():
    return [Case(label, args, groups_for_budget_reference(*args)) for label, args in _BUDGETS]

"""Exercises of Lecture 20: balancing a mixture of experts.

20.1 the Switch Transformer's load-balancing loss with its two factors f_i and P_i,
20.2 the capacity mask (first come, first served, per expert).
Expected values come from :mod:`utils.moe.balancing`; inputs come from private generators.
"""

from __future__ import annotations

import torch

from utils.exercises import Case, exercise
from utils.moe.balancing import capacity_mask, expert_fractions, load_balancing_loss, mean_probabilities


def _router(n_tokens: int, n_experts: int, k: int, seed: int, skew: float = 0.0):
    """Softmax probabilities (n_tokens, n_experts) and their top-k indices (n_tokens, k)."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n_tokens, n_experts, generator=gen) + skew * torch.linspace(1, 0, n_experts)
    probs = torch.softmax(logits, dim=-1)
    return probs, probs.topk(k, dim=-1).indices


# --- 20.1: f_i, P_i and alpha * N * sum_i f_i P_i ------------------------------------------------------

def _lecture_balanced():
    probs = torch.tensor([[0.6, 0.4], [0.4, 0.6], [0.6, 0.4], [0.4, 0.6]])
    return probs, probs.argmax(-1, keepdim=True)


def _collapsed():
    probs = torch.tensor([[0.9, 0.05, 0.05]] * 6)
    return probs, torch.zeros(6, 1, dtype=torch.long)


_LOSS = [  # (label, (probs, indices) factory, n_experts, alpha)
    ("the lecture's balanced two-expert router: loss = alpha", _lecture_balanced, 2, 0.01),
    ("every token on expert 0 (3 experts)", _collapsed, 3, 0.01),
    ("random router, 32 tokens, 8 experts, top-1", lambda: _router(32, 8, 1, 2001), 8, 0.01),
    ("skewed router, 40 tokens, 4 experts, top-1, alpha = 0.1", lambda: _router(40, 4, 1, 2002, 2.0), 4, 0.1),
    ("top-2 routing: f_i counts token-slots (20 tokens, 6 experts)", lambda: _router(20, 6, 2, 2003), 6, 0.01),
]


@exercise("20.1", "f_i, P_i and the Switch load-balancing loss alpha * N * sum f_i P_i")
def _cases_load_balancing():
    cases = []
    for label, make, n_experts, alpha in _LOSS:
        probs, indices = make()
        expected = (expert_fractions(indices, n_experts), mean_probabilities(probs),
                    load_balancing_loss(probs, indices, n_experts, alpha))
        cases.append(Case(label, (probs, indices, n_experts, alpha), expected))
    return cases


# --- 20.2: the capacity mask -----------------------------------------------------------------------------

_MASK = [  # (label, indices factory, n_experts, capacity)
    ("the lecture's picture: 4 tokens want expert 0, capacity 2",
     lambda: torch.tensor([[0], [0], [1], [0], [0], [2]]), 3, 2),
    ("room for everyone: nothing dropped", lambda: torch.tensor([[0], [1], [2], [1]]), 3, 2),
    ("top-2, slots taken in token order", lambda: torch.tensor([[0, 1], [1, 0], [0, 2], [2, 0]]), 3, 2),
    ("skewed router, 48 tokens, 4 experts, capacity 9 (CF 0.75)", lambda: _router(48, 4, 1, 2011, 2.5)[1], 4, 9),
    ("top-2, 30 tokens, 5 experts, capacity 13 (CF 1.0)", lambda: _router(30, 5, 2, 2012, 1.5)[1], 5, 13),
    ("capacity 0 drops every token", lambda: torch.tensor([[1], [0]]), 2, 0),
]


@exercise("20.2", "the capacity mask: each expert keeps its first `capacity` token-slots")
def _cases_capacity_mask():
    return [Case(label, (make(), n_experts, capacity), capacity_mask(make(), n_experts, capacity)[0])
            for label, make, n_experts, capacity in _MASK]

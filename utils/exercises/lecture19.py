"""Exercises of Lecture 19: mixture of experts hands on.

19.1 the top-k gate (scores -> weights and indices, softmax over the selected experts only),
19.2 the forward pass of :class:`utils.moe.SparseMoE`: the router and the weighted combination of
the selected experts. Expected values come from :func:`utils.moe.top_k_gates` and from the library
layer with weights drawn inside ``torch.random.fork_rng``.
"""

from __future__ import annotations

import torch

from utils.exercises import Case, exercise, module_cases, randn, run_module
from utils.moe import SparseMoE, top_k_gates


def lecture_example() -> torch.Tensor:
    """The lecture's input: 4 tokens of width 8, X (4, 8), seed 1900."""
    return randn(4, 8, seed=1900)


# --- 19.1: the top-k gate -------------------------------------------------------------------------------

_GATES = [  # (label, scores shape, top_k)
    ("the lecture's scores (4, 3), top-2", (4, 3), 2),
    ("8 experts, top-2, batch of sequences (2, 5, 8)", (2, 5, 8), 2),
    ("top-1: the single weight is 1", (6, 4), 1),
    ("top-3 of 5 experts, scores far apart (scale 5)", (3, 5), 3),
]


@exercise("19.1", "top-k gate: scores (..., E) -> weights (..., k) summing to 1, indices (..., k), largest first")
def _cases_gates():
    cases = []
    for i, (label, shape, k) in enumerate(_GATES):
        scores = randn(*shape, seed=1910 + i, scale=5.0 if "far apart" in label else 1.0)
        weights, indices = top_k_gates(scores, k)
        cases.append(Case(label, (scores, k), (weights, indices)))
    return cases


# --- 19.2: the learner writes SparseMoE.forward ------------------------------------------------------------

_FORWARD = [  # (label, (d_model, d_hidden, n_experts, top_k), kwargs, input shape or None, train)
    ("the lecture's X (4, 8): 3 experts, top-2", (8, 16, 3, 2), {}, None, False),
    ("batch of sequences (2, 5, 8): 4 experts, top-2", (8, 12, 4, 2), {}, (2, 5, 8), False),
    ("top-1 of 4 experts (Switch routing)", (8, 12, 4, 1), {}, (6, 8), False),
    ("8 experts, top-3, d_model 12 != d_hidden 20", (12, 20, 8, 3), {}, (2, 6, 12), False),
]


@exercise("19.2", "SparseMoE.forward: route each token to its top-k experts and sum their weighted outputs",
          call=run_module)
def _cases_forward():
    return module_cases(SparseMoE, _FORWARD, lecture_example(), seed=1920)

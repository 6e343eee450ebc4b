"""Exercises of Lecture 21: DeepSeek's auxiliary-loss-free balancing.

21.1 biased selection: choose the top-k on ``s + b``, weigh with the unbiased ``s`` (normalised),
21.2 the bias update ``b_i + gamma * sign(mean load - load_i)``,
21.3 MaxVio, the load-imbalance measure.
Expected values come from :mod:`utils.moe.deepseek`; inputs come from private generators.
"""

from __future__ import annotations

import torch

from utils.exercises import Case, exercise
from utils.moe.deepseek import bias_update, deepseek_gates, max_violation


def _affinities(n_tokens: int, n_experts: int, seed: int, skew: float = 0.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.sigmoid(torch.randn(n_tokens, n_experts, generator=gen) + skew * torch.linspace(1, -1, n_experts))


def _bias(n_experts: int, seed: int, scale: float) -> torch.Tensor:
    return scale * torch.randn(n_experts, generator=torch.Generator().manual_seed(seed))


# --- 21.1: select on s + b, weigh with s ----------------------------------------------------------------

_SELECT = [  # (label, scores factory, bias factory, top_k)
    ("the lecture's token: bias -0.6 on expert 1 swaps it for expert 2",
     lambda: torch.tensor([[0.9, 0.8, 0.3, 0.1]]), lambda: torch.tensor([0.0, -0.6, 0.0, 0.0]), 2),
    ("zero bias: plain top-k of the affinities", lambda: _affinities(6, 5, 2101), lambda: torch.zeros(5), 2),
    ("small bias that keeps every selection", lambda: torch.tensor([[0.9, 0.2, 0.7, 0.1], [0.1, 0.8, 0.3, 0.6]]),
     lambda: torch.tensor([0.01, -0.01, 0.02, 0.0]), 2),
    ("8 experts, top-3, bias of the size of the affinities", lambda: _affinities(10, 8, 2102, 1.0),
     lambda: _bias(8, 2103, 0.3), 3),
    ("top-1: the weight is always 1", lambda: _affinities(5, 4, 2104), lambda: _bias(4, 2105, 0.5), 1),
]


@exercise("21.1", "biased selection: top-k on s + b, gate weights from the unbiased s, normalised")
def _cases_selection():
    cases = []
    for label, scores, bias, k in _SELECT:
        s, b = scores(), bias()
        cases.append(Case(label, (s, b, k), deepseek_gates(s, b, k)))
    return cases


# --- 21.2: the bias update -------------------------------------------------------------------------------

_UPDATE = [  # (label, bias, load, gamma)
    ("loads 10, 2, 4, 4 (mean 5), gamma 0.1", torch.zeros(4), torch.tensor([10., 2., 4., 4.]), 0.1),
    ("an expert exactly at the mean keeps its bias", torch.zeros(4), torch.tensor([6., 4., 5., 5.]), 0.1),
    ("non-zero bias, gamma 0.001 as in DeepSeek-V3", torch.tensor([0.2, -0.1, 0.0, 0.05, 0.0]),
     torch.tensor([300., 20., 90., 100., 90.]), 0.001),
    ("balanced load: nothing moves", torch.tensor([0.3, -0.3, 0.1]), torch.tensor([7., 7., 7.]), 0.01),
    ("8 experts, a skewed load", _bias(8, 2111, 0.1), torch.tensor([40., 1., 3., 9., 12., 0., 30., 1.]), 0.01),
]


@exercise("21.2", "the bias update b_i + gamma * sign(mean load - load_i)")
def _cases_update():
    return [Case(label, (bias.clone(), load.clone(), gamma), bias_update(bias, load, gamma))
            for label, bias, load, gamma in _UPDATE]


# --- 21.3: MaxVio ------------------------------------------------------------------------------------------

_MAXVIO = [
    ("balanced: MaxVio = 0", torch.tensor([5., 5., 5., 5.])),
    ("loads 3, 1, 1, 3: 3 / 2 - 1 = 0.5", torch.tensor([3., 1., 1., 3.])),
    ("one expert takes everything (4 experts)", torch.tensor([8., 0., 0., 0.])),
    ("skewed load over 8 experts", torch.tensor([40., 1., 3., 9., 12., 0., 30., 1.])),
]


@exercise("21.3", "MaxVio = max load / mean load - 1")
def _cases_maxvio():
    return [Case(label, (load.clone(),), max_violation(load)) for label, load in _MAXVIO]

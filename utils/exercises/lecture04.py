"""Exercises of Lecture 04: softmax and the context vector of one query."""

from __future__ import annotations

import torch

from utils.attention import dot_product_context
from utils.exercises import exercise


@exercise("04.1", "softmax by hand")
def _cases_softmax():
    g = torch.Generator().manual_seed(4)
    inputs = [
        torch.tensor([2.0, 1.0, 0.1]),
        torch.tensor([0.1, -0.2, 0.3, -0.2, 0.5]),
        torch.randn(6, generator=g),
        3 * torch.randn(3, 5, generator=g),          # one softmax per row
        torch.tensor([1000.0, 1001.0, 1002.0]),       # exp(1000) overflows float32
        torch.tensor([[-1000.0, 0.0, 3.0], [-5.0, -5.0, -5.0]]),
    ]
    return [((x.clone(),), torch.softmax(x, dim=-1)) for x in inputs]


@exercise("04.2", "the context vector of one query")
def _cases_one_query():
    g = torch.Generator().manual_seed(42)
    next_day = torch.tensor([[0.43, 0.15, 0.89], [0.55, 0.87, 0.66], [0.57, 0.85, 0.64],
                             [0.22, 0.58, 0.33], [0.77, 0.25, 0.10]])
    cases = []
    for inputs, query in ((next_day, 1), (next_day, 4), (torch.randn(7, 4, generator=g), 0),
                          (torch.randn(3, 6, generator=g), 2)):
        weights, context = dot_product_context(inputs)
        cases.append(((inputs.clone(), query), (weights[query], context[query])))
    return cases

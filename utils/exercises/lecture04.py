"""Exercises of Lecture 04: softmax by hand, and the weights and context vector of one query."""

from __future__ import annotations

import torch

from utils.attention import dot_product_context
from utils.exercises import Case, exercise

# The lecture's hand-made 3-dimensional embeddings of "The next day is bright" (time, light, grammar).
NEXT_DAY_TOKENS = ("The", "next", "day", "is", "bright")
NEXT_DAY = ((0.10, 0.05, 0.90),
            (0.70, 0.10, 0.30),
            (0.90, 0.60, 0.05),
            (0.05, 0.10, 0.80),
            (0.20, 0.95, 0.10))


@exercise("04.1", "softmax by hand")
def _cases_softmax():
    g = torch.Generator().manual_seed(4)
    inputs = [
        ("three scores", torch.tensor([2.0, 1.0, 0.1])),
        ("five scores, some negative", torch.tensor([0.1, -0.2, 0.3, -0.2, 0.5])),
        ("3 x 5 matrix: one softmax per row", 3 * torch.randn(3, 5, generator=g)),
        ("3 x 3 matrix, rows with different maxima", torch.tensor([[0.0, 4.0, 1.0], [2.0, -1.0, 0.5],
                                                                   [-3.0, -2.0, -6.0]])),
        ("large scores [1000, 1001, 1002]: exp(1000) overflows", torch.tensor([1000.0, 1001.0, 1002.0])),
        ("two rows far apart: [1000, 1001, 1002] and [-3, 0, 1]",
         torch.tensor([[1000.0, 1001.0, 1002.0], [-3.0, 0.0, 1.0]])),
        ("rows far apart the other way, and a constant row",
         torch.tensor([[-1000.0, 0.0, 3.0], [-5.0, -5.0, -5.0], [500.0, 499.0, 480.0]])),
        ("a batch (2, 2, 4) with very negative rows", torch.tensor([
            [[-900.0, -901.0, -899.0, -950.0], [1.0, 2.0, 3.0, 4.0]],
            [[0.5, 0.5, 0.5, 0.5], [-20.0, 20.0, 0.0, 10.0]]])),
        ("float64 input stays float64", torch.randn(2, 6, generator=g, dtype=torch.float64)),
    ]
    return [Case(label, (x.clone(),), torch.softmax(x, dim=-1)) for label, x in inputs]


@exercise("04.2", "the weights and context vector of one query")
def _cases_one_query():
    g = torch.Generator().manual_seed(42)
    next_day = torch.tensor(NEXT_DAY)
    inputs = [
        ('the lecture\'s "The next day is bright", query "next"', next_day, 1),
        ('the lecture\'s "The next day is bright", query "bright"', next_day, 4),
        ("one token (T = 1)", torch.randn(1, 3, generator=g), 0),
        ("T = 7 > d = 4, first query", torch.randn(7, 4, generator=g), 0),
        ("T = 3 < d = 6, last query", torch.randn(3, 6, generator=g), 2),
        ("T = d = 4 (square inputs)", torch.randn(4, 4, generator=g), 1),
        ("long vectors (scores up to 24): nearly one-hot weights", 5 * torch.randn(6, 2, generator=g), 3),
    ]
    cases = []
    for label, x, query in inputs:
        weights, context = dot_product_context(x)
        cases.append(Case(label, (x.clone(), query), (weights[query], context[query])))
    return cases

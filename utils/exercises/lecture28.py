"""Exercises of Lecture 28: accumulation precision and online quantization.

28.1 the promotion scheme of DeepSeek-V3 (accumulate N_C products in limited precision, add the
partial sum to an FP32 accumulator), 28.2 the first step at which a delayed scale overflows.
Expected values come from :func:`utils.quantization.accumulation.accumulate` and
:func:`utils.quantization.accumulation.first_delayed_overflow`; inputs come from private generators.
"""

from __future__ import annotations

import torch

from utils.exercises import Case, exercise
from utils.quantization.accumulation import accumulate, first_delayed_overflow


def _int_products(n: int, k: int, seed: int) -> torch.Tensor:
    """(n, k) products of two integers in -15..15 (E4M3 values): every sum is exact in FP32,
    so any correct order of adds gives the same partial sums."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randint(-15, 16, (n, k), generator=gen).float()
    b = torch.randint(0, 16, (n, k), generator=gen).float()
    return a * b


def _positive_products(n: int, k: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, 16, (n, k), generator=gen).float() * torch.randint(1, 16, (n, k), generator=gen).float()


# --- 28.1: promotion to an FP32 accumulator every N_C products ---------------------------------------

_PROMOTE = [  # (label, products factory, mantissa_bits, n_c)
    ("4 positive sums, K = 512, 6 mantissa bits, N_C = 128", lambda: _positive_products(4, 512, 2810), 6, 128),
    ("K = 300 not a multiple of N_C = 128: the last group has 44 products",
     lambda: _positive_products(3, 300, 2811), 6, 128),
    ("signed products, K = 256, 8 bits, N_C = 32", lambda: _int_products(5, 256, 2812), 8, 32),
    ("N_C = 1: each product rounded to 4 bits alone, then added in FP32",
     lambda: _positive_products(2, 64, 2813), 4, 1),
    ("N_C >= K: one partial sum, no promotion before the end", lambda: _positive_products(3, 96, 2814), 5, 128),
    ("a (2, 3, 200) batch of sums, 7 bits, N_C = 64",
     lambda: _positive_products(6, 200, 2815).view(2, 3, 200), 7, 64),
]


@exercise("28.1", "promote partial sums to an FP32 accumulator every N_C products", atol=0)
def _cases_promoted_sum():
    cases = []
    for label, make, bits, n_c in _PROMOTE:
        products = make()
        cases.append(Case(label, (products, bits, n_c), accumulate(products, bits, promote_every=n_c)))
    return cases


# --- 28.2: the first step at which a delayed scale overflows ------------------------------------------

_OVERFLOW = [  # (label, amaxes, history_len)
    ("the lecture's spike: old max 240, then 480 at step 4", [240.0, 240.0, 235.0, 240.0, 480.0, 250.0], 16),
    ("a slow rise: every new maximum overflows, the first at step 1", [100.0, 101.0, 102.0, 103.0], 4),
    ("an amax equal to the history's maximum fits exactly", [240.0, 240.0, 240.0, 239.0, 241.0], 8),
    ("history of 3: the step-0 spike of 480 still sets the scale at step 3", [480.0, 100.0, 100.0, 300.0, 300.0], 3),
    ("history of 2: the step-0 spike has left the window at step 3", [480.0, 100.0, 100.0, 300.0, 300.0], 2),
    ("decreasing amax: never overflows", [448.0, 300.0, 200.0, 100.0], 16),
    ("a single step: no history, no overflow", [500.0], 16),
]


@exercise("28.2", "the first step whose delayed scale overflows", atol=0)
def _cases_first_overflow():
    return [Case(label, (list(amaxes), history_len), first_delayed_overflow(amaxes, history_len))
            for label, amaxes, history_len in _OVERFLOW]

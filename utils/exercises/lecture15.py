"""Exercises of Lecture 15: the sinusoidal encoding, and the rotation that shifts it by k positions."""

from __future__ import annotations

from utils.exercises import Case, exercise
from utils.positional import sinusoidal_positions, sinusoid_rotation


@exercise("15.1", "the sinusoidal encoding of Vaswani et al.", atol=2e-4)
def _cases_sinusoidal():
    inputs = [
        ("4 positions, d = 8", 4, 8, 10000.0),
        ("one position (T = 1): sin 0 = 0, cos 0 = 1", 1, 6, 10000.0),
        ("d = 2: one pair, frequency 1", 10, 2, 10000.0),
        ("T = 50, d = 16", 50, 16, 10000.0),
        ("base 100 instead of 10000", 20, 12, 100.0),
        ("GPT-2 size: 1024 positions, d = 768", 1024, 768, 10000.0),
    ]
    return [Case(label, (T, d, base), sinusoidal_positions(T, d, base)) for label, T, d, base in inputs]


@exercise("15.2", "the rotation R_k with PE(p + k) = PE(p) @ R_k")
def _cases_rotation():
    inputs = [
        ("k = 1, d = 4", 1, 4, 10000.0),
        ("k = 5, d = 8", 5, 8, 10000.0),
        ("k = 0: the identity", 0, 6, 10000.0),
        ("k = -3 (a step back), d = 16", -3, 16, 10000.0),
        ("k = 2, d = 2: one block", 2, 2, 10000.0),
        ("k = 7, d = 10, base 100", 7, 10, 100.0),
    ]
    return [Case(label, (k, d, base), sinusoid_rotation(k, d, base)) for label, k, d, base in inputs]

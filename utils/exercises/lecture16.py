"""Exercises of Lecture 16: rotary position embeddings (RoPE), the score table, and the two pairings."""

from __future__ import annotations

from utils.exercises import Case, exercise, randn
from utils.positional import apply_rope, rope_cache, rope_permutation


def _rope(x, offset=0, base=10000.0):
    T, d = x.shape[-2], x.shape[-1]
    cos, sin = rope_cache(offset + T, d, base)
    return apply_rope(x, cos, sin, offset=offset)


@exercise("16.1", "apply_rope: rotate interleaved pairs by p * theta_i")
def _cases_rope():
    inputs = [
        ("T = 4, d = 8, positions 0 ... 3", (4, 8), 0, 10000.0, 1601),
        ("d = 2: one pair, theta = 1", (6, 2), 0, 10000.0, 1602),
        ("offset 5 (decoding after 5 cached tokens): positions 5 ... 7", (3, 8), 5, 10000.0, 1603),
        ("batch and heads: x (2, 3, 5, 16)", (2, 3, 5, 16), 0, 10000.0, 1604),
        ("one new token at position 100, x (2, 4, 1, 8)", (2, 4, 1, 8), 100, 10000.0, 1605),
        ("base 100 instead of 10000", (5, 12), 2, 100.0, 1606),
        ("DeepSeek's RoPE width 64, 20 positions", (20, 64), 0, 10000.0, 1607),
    ]
    return [Case(label, (randn(*shape, seed=seed), offset, base), _rope(randn(*shape, seed=seed), offset, base))
            for label, shape, offset, base, seed in inputs]


def _score_table(q, k, P, base=10000.0):
    cos, sin = rope_cache(P, q.shape[-1], base)
    qs = apply_rope(q.expand(P, -1), cos, sin)                    # (P, d): q at positions 0 ... P-1
    ks = apply_rope(k.expand(P, -1), cos, sin)                    # (P, d)
    return qs @ ks.T                                              # (P, P): [m, n] = q_m . k_n


@exercise("16.2", "the score table q_m . k_n for positions 0 ... P-1", atol=1e-4)
def _cases_scores():
    inputs = [
        ("d = 4, P = 6", 4, 6, 10000.0, 1611),
        ("d = 2, P = 5: one pair", 2, 5, 10000.0, 1612),
        ("d = 16, P = 12", 16, 12, 10000.0, 1613),
        ("d = 8, P = 9, base 100", 8, 9, 100.0, 1614),
    ]
    cases = []
    for label, d, P, base, seed in inputs:
        q, k = randn(d, seed=seed), randn(d, seed=seed + 100)
        cases.append(Case(label, (q, k, P, base), _score_table(q, k, P, base)))
    return cases


@exercise("16.3", "to_halves: reorder W's columns so split-halves RoPE gives the same scores")
def _cases_permutation():
    inputs = [
        ("W (3, 4): d = 4", (3, 4), 1621),
        ("W (5, 2): d = 2, nothing to reorder", (5, 2), 1622),
        ("W (6, 8)", (6, 8), 1623),
        ("W (16, 64): DeepSeek's RoPE width", (16, 64), 1624),
    ]
    return [Case(label, (randn(*shape, seed=seed),), randn(*shape, seed=seed)[:, rope_permutation(shape[1])])
            for label, shape, seed in inputs]

"""Exercises for Lecture 07 (multi-head attention, visually): expected values come from :mod:`utils.attention`."""

from __future__ import annotations

import torch

from utils.attention import MultiHeadAttention
from utils.exercises import exercise


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@exercise("07.1", "merge per-head contexts")
def _merge_heads():
    """merge_heads([ (T, d_h) ] * n_heads) -> (T, n_heads * d_h), head 0's columns first.

    Expected: ``MultiHeadAttention.merge_heads`` (Lecture 08's layout) on the stacked heads.
    """
    cases = []
    for n_heads, T, d_h, seed in ((2, 11, 2, 0), (3, 5, 4, 1), (1, 4, 3, 2)):
        heads = [_randn(T, d_h, seed=seed * 10 + h) for h in range(n_heads)]
        with torch.random.fork_rng(devices=[]):  # building a layer draws weights: leave the global RNG alone
            mha = MultiHeadAttention(1, n_heads * d_h, T, n_heads)
        expected = mha.merge_heads(torch.stack(heads).unsqueeze(0))[0]  # (1, H, T, d_h) -> (T, H * d_h)
        cases.append(((heads,), expected))
    return cases


@exercise("07.2", "split a projection matrix into heads")
def _split_projection():
    """split_projection(W (d_in, d_out), n_heads) -> list of n_heads blocks (d_in, d_out // n_heads).

    Block h must give head h's queries: ``x @ blocks[h]`` equals the h-th head of ``split_heads(x @ W)``.
    """
    cases = []
    for d_in, d_out, n_heads, seed in ((8, 4, 2, 0), (6, 6, 3, 1), (5, 8, 4, 2), (3, 6, 1, 3)):
        W = _randn(d_in, d_out, seed=seed)
        with torch.random.fork_rng(devices=[]):
            mha = MultiHeadAttention(d_in, d_out, 4, n_heads)
        eye = torch.eye(d_in).unsqueeze(0)  # (1, d_in, d_in): the rows of W are eye @ W
        per_head = mha.split_heads(eye @ W)[0]  # (n_heads, d_in, d_out // n_heads)
        cases.append(((W.clone(), n_heads), list(per_head.unbind(0))))
    return cases


@exercise("07.3", "attention weights computed and used")
def _weights_count():
    """weights_count(n_heads, T) -> (computed, allowed): entries of all score matrices, and those not masked.

    Expected: counted on the weights a real causal MultiHeadAttention returns for one sequence.
    """
    cases = []
    for n_heads, T in ((1, 1), (2, 11), (4, 6), (12, 32)):
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(0)
            mha = MultiHeadAttention(n_heads, n_heads, T, n_heads).eval()
            _, weights = mha(torch.randn(1, T, n_heads), return_weights=True)  # (1, H, T, T)
        cases.append(((n_heads, T), (weights.numel(), int((weights > 0).sum()))))
    return cases

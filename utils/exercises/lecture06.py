"""Exercises for Lecture 06 (causal attention): expected values come from :mod:`utils.attention` and :mod:`utils.data`."""

from __future__ import annotations

import torch

from utils.attention import causal_mask
from utils.data import WindowDataset
from utils.exercises import exercise


def _scores(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 2.0


def _masked_softmax(scores: torch.Tensor) -> torch.Tensor:
    T = scores.shape[-1]
    return torch.softmax(scores.masked_fill(causal_mask(T), float("-inf")), dim=-1)


@exercise("06.1", "additive causal mask with -inf")
def _additive_mask():
    """additive_mask(T) -> (T, T) float: 0 on and below the diagonal, -inf above."""
    return [((T,), torch.zeros(T, T).masked_fill(causal_mask(T), float("-inf"))) for T in (1, 4, 7)]


@exercise("06.2", "causal softmax weights from scores")
def _causal_weights():
    """causal_weights(scores (..., T, T)) -> softmax over keys with the future masked out."""
    cases = []
    for shape, seed in (((4, 4), 0), ((6, 6), 1), ((2, 5, 5), 2)):
        scores = _scores(shape, seed)
        cases.append(((scores.clone(),), _masked_softmax(scores)))
    return cases


@exercise("06.3", "mask after softmax, then renormalise")
def _renormalise():
    """renormalise(weights (..., T, T)): zero the future in full softmax weights, rescale rows to sum 1.

    The expected result is the -inf-before-softmax weights of the same scores (utils' causal_mask).
    """
    cases = []
    for shape, seed in (((4, 4), 3), ((6, 6), 4), ((3, 5, 5), 5)):
        scores = _scores(shape, seed)
        cases.append(((torch.softmax(scores, dim=-1),), _masked_softmax(scores)))
    return cases


@exercise("06.4", "number of input/target windows")
def _n_windows():
    """n_windows(n_tokens, context_length, stride) -> int, as utils.data.WindowDataset counts them."""
    cases = []
    for n, T, stride in ((10, 4, 1), (10, 4, 4), (203, 4, 1), (203, 4, 4), (203, 8, 3), (5, 4, 2)):
        cases.append(((n, T, stride), len(WindowDataset(torch.arange(n), T, stride))))
    return cases

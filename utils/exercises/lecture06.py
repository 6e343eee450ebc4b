"""Exercises for Lecture 06 (causal attention): expected values come from :mod:`utils.attention` and :mod:`utils.data`.

06.1 causal weights from scores (-inf before the softmax), 06.2 the same weights by zeroing
after the softmax and renormalising, 06.3 ``CausalAttention.forward`` (the lecture's layer,
checked against :class:`utils.attention.CausalAttention` with copied weights, dropout
replayed from a seed), 06.4 the number of input/target windows.
"""

from __future__ import annotations

import torch

from utils.attention import CausalAttention, causal_mask
from utils.data import WindowDataset
from utils.exercises import Case, exercise, module_case, randn, run_module, seeded

# "Your journey starts with one step": the lecture's six 3-dimensional embeddings
# (from Raschka, Build a Large Language Model (From Scratch), chapter 3).
JOURNEY = torch.tensor([[0.43, 0.15, 0.89], [0.55, 0.87, 0.66], [0.57, 0.85, 0.64],
                        [0.22, 0.58, 0.33], [0.77, 0.25, 0.10], [0.05, 0.80, 0.55]])




def _masked_softmax(scores: torch.Tensor) -> torch.Tensor:
    T = scores.shape[-1]
    return torch.softmax(scores.masked_fill(causal_mask(T), float("-inf")), dim=-1)


def _score_cases(seed0: int) -> list[tuple[str, torch.Tensor]]:
    """Scores whose causal weights differ clearly from the unmasked ones, and from a mask that hides the diagonal."""
    return [("T = 4", randn(4, 4, seed=seed0, scale=2.0)),
            ("T = 6, future scores larger than past ones", randn(6, 6, seed=seed0 + 1, scale=2.0)
             + 3.0 * torch.triu(torch.ones(6, 6), diagonal=1)),
            ("a batch (2, 5, 5): the mask broadcasts over leading axes", randn(2, 5, 5, seed=seed0 + 2, scale=2.0))]


@exercise("06.1", "causal softmax weights from scores")
def _causal_weights():
    """causal_weights(scores (..., T, T)) -> softmax over keys with the future masked out (-inf before the softmax)."""
    return [Case(label, (scores.clone(),), _masked_softmax(scores)) for label, scores in _score_cases(0)]


@exercise("06.2", "mask after softmax, then renormalise")
def _renormalise():
    """renormalise(weights (..., T, T)): zero the future in full softmax weights, rescale rows to sum 1.

    The expected result is the -inf-before-softmax weights of the same scores (utils' causal_mask).
    """
    return [Case(label, (torch.softmax(scores, dim=-1),), _masked_softmax(scores))
            for label, scores in _score_cases(10)]




@exercise("06.3", "CausalAttention.forward: mask, scale, softmax, dropout", call=run_module)
def _causal_attention():
    """The learner's class is built like ``CausalAttention(d_in, d_out, context_length, dropout, qkv_bias)``,
    gets the reference's weights, and must return the same (B, T, d_out) context vectors, in eval mode
    and in training mode (dropout applied once to the attention weights, masks replayed from a seed)."""
    batch = torch.stack((JOURNEY, JOURNEY))  # (2, 6, 3)
    return [
        module_case("the lecture's batch: 'Your journey starts with one step' twice, (2, 6, 3) -> (2, 6, 2)",
                    seeded(CausalAttention, 3, 2, 6, seed=789), (3, 2, 6), (batch,)),
        module_case("T = 4 < context_length = 6: the mask is cut to [:T, :T]",
                    seeded(CausalAttention, 3, 2, 6, seed=1), (3, 2, 6), (randn(2, 4, 3, seed=2),)),
        module_case("qkv_bias=True, d_in = 5, d_out = 3, T = 5 < context_length = 8",
                    seeded(CausalAttention, 5, 3, 8, qkv_bias=True, seed=3), (5, 3, 8), (randn(3, 5, 5, seed=4),),
                    init_kwargs={"qkv_bias": True}),
        module_case("training mode, dropout 0.5 on the attention weights (same seed, same dropout masks)",
                    seeded(CausalAttention, 3, 4, 6, 0.5, seed=5), (3, 4, 6, 0.5), (randn(2, 6, 3, seed=6),),
                    train=True, seed=7),
    ]


@exercise("06.4", "number of input/target windows")
def _n_windows():
    """n_windows(n_tokens, context_length, stride) -> int, as utils.data.WindowDataset counts them."""
    cases = []
    for label, n, T, stride in (("10 tokens, context 4, stride 1", 10, 4, 1),
                                ("10 tokens, context 4, stride 4 (no overlap)", 10, 4, 4),
                                ("203 tokens, context 4, stride 1", 203, 4, 1),
                                ("203 tokens, context 4, stride 4", 203, 4, 4),
                                ("203 tokens, context 8, stride 3 (does not divide)", 203, 8, 3),
                                ("exactly context + 1 tokens: one window", 5, 4, 2),
                                ("160 tokens (the first story), context 4, stride 1", 160, 4, 1)):
        cases.append(Case(label, (n, T, stride), len(WindowDataset(torch.arange(n), T, stride))))
    return cases

"""Exercises of Lecture 23: multi-token prediction with parallel heads.

23.1 the shifted targets (B, T, n) of n-token prediction, with ``ignore_index`` past the end,
23.2 the multi-token loss: the mean of the n heads' cross-entropies, each over its own targets.
Expected values come from :mod:`utils.mtp`; inputs come from private generators.
"""

from __future__ import annotations

import torch

from utils.exercises import Case, exercise
from utils.mtp import multi_token_loss, multi_token_targets


def _ids(B: int, T: int, V: int, seed: int) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


# --- 23.1: targets[b, t, j] = idx[b, t + 1 + j], or IGNORE_INDEX past the end -------------------------

_TARGETS = [  # (label, ids factory, n)
    ("the lecture's toy sequence 10 11 12 13 14, n = 3", lambda: torch.tensor([[10, 11, 12, 13, 14]]), 3),
    ("n = 1: the next-token targets, last position ignored", lambda: torch.tensor([[4, 8, 15, 16, 23, 42]]), 1),
    ("batch of 3 random sequences, T = 9, n = 4", lambda: _ids(3, 9, 50, 2301), 4),
    ("shortest allowed sequence: T = n + 1 = 3, n = 2", lambda: _ids(2, 3, 20, 2302), 2),
    ("distinct ids 0..11 (a wrong shift shows at once), n = 2", lambda: torch.arange(12).reshape(2, 6), 2),
]


@exercise("23.1", "multi-token targets (B, T, n): token t + 1 + j for head j, IGNORE_INDEX past the end")
def _cases_targets():
    return [Case(label, (make(), n), multi_token_targets(make(), n)) for label, make, n in _TARGETS]


# --- 23.2: the mean over heads of each head's cross-entropy -------------------------------------------

def _loss_case(B: int, T: int, n: int, V: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, n, V, generator=g)
    targets = multi_token_targets(torch.randint(0, V, (B, T), generator=g), n)
    return logits, targets


_LOSS = [  # (label, B, T, n, V, seed)
    ("n = 1: the plain next-token loss", 2, 6, 1, 7, 2311),
    ("n = 2, T = 5: head 1 has one target fewer per sequence", 2, 5, 2, 7, 2312),
    ("n = 4, T = 6: the heads have 5, 4, 3, 2 targets per sequence", 3, 6, 4, 11, 2313),
    ("n = 3, longer sequences (T = 16), vocabulary 30", 2, 16, 3, 30, 2314),
]


@exercise("23.2", "multi-token loss: mean over the n heads of each head's cross-entropy over its targets")
def _cases_loss():
    cases = []
    for label, B, T, n, V, seed in _LOSS:
        logits, targets = _loss_case(B, T, n, V, seed)
        cases.append(Case(label, (logits, targets), multi_token_loss(logits, targets)))
    return cases



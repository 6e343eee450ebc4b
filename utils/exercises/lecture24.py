"""Exercises of Lecture 24: DeepSeek-V3's sequential MTP modules.

24.1 one MTP step of depth k: h^k = block(eh_proj([hnorm(h^{k-1}); enorm(Emb(t_{i+k}))])), with the
     reference module's own weights passed in,
24.2 the number of parameters D MTP modules add (embedding and head are shared).
Expected values come from :mod:`utils.deepseek_mtp`; inputs come from private generators.
"""

from __future__ import annotations

import torch

from utils.deepseek_mtp import MTPModule
from utils.exercises import Case, exercise
from utils.gpt import GPTConfig


def _step_case(label, d, n_heads, B, n, T, k, seed):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cfg = GPTConfig(vocab_size=50, context_length=16, d_model=d, n_heads=n_heads, n_layers=1, dropout=0.0)
        module = MTPModule(cfg).eval()
        for norm in (module.hnorm, module.enorm):  # non-trivial norm weights, so a missing norm shows
            torch.nn.init.uniform_(norm.weight, 0.5, 1.5)
        embedding = torch.nn.Embedding(50, d)
        g = torch.Generator().manual_seed(seed + 1)
        h_prev = 3.0 * torch.randn(B, n, d, generator=g)
        idx = torch.randint(0, 50, (B, T), generator=g)
        with torch.no_grad():
            expected = module(h_prev, embedding(idx[:, k:k + n]))
    return Case(label, (module, embedding, h_prev, idx, k), expected)


@exercise("24.1", "one MTP step: block(eh_proj([hnorm(h); enorm(Emb(t_{i+k}))])) -> h^k (B, n, d)")
def _cases_step():
    return [
        _step_case("the lecture's sizes: d = 8, 3 positions, depth k = 1", 8, 2, 1, 3, 8, 1, 2401),
        _step_case("depth k = 2 of a T = 8 sequence, 5 positions", 8, 2, 1, 5, 8, 2, 2402),
        _step_case("batch of 2, d = 16, depth k = 3", 16, 4, 2, 4, 8, 3, 2403),
    ]


def extra_parameters(d_model: int, vocab_size: int, block_params: int, depth: int) -> int:
    return depth * (2 * d_model + 2 * d_model * d_model + block_params)


_COUNTS = [  # (label, d_model, vocab, block params, depth)
    ("the lecture's model: d = 8, vocab 5000, depth 3", 8, 5000, 848, 3),
    ("D = 1 (DeepSeek-V3's depth), d = 64", 64, 1000, 49_792, 1),
    ("d = 128, depth 2", 128, 4000, 197_888, 2),
]


@exercise("24.2", "parameters added by D MTP modules (shared embedding and head not counted), an int")
def _cases_count():
    return [Case(label, (d, V, bp, D), extra_parameters(d, V, bp, D)) for label, d, V, bp, D in _COUNTS]

"""Exercises of Lecture 05: scaled dot-product attention, SelfAttention.forward, the size of SelfAttention."""

from __future__ import annotations

import math

import torch

from utils.attention import SelfAttention, scaled_dot_product_attention
from utils.exercises import Case, exercise, module_case, run_module


def _random(shape, g, scale=1.0):
    return scale * torch.randn(*shape, generator=g)


@exercise("05.1", "scaled dot-product attention by hand")
def _cases_attention():
    g = torch.Generator().manual_seed(5)
    shapes = [
        ("the lecture's sizes: q, k, v (5, 4)", (5, 4), (5, 4), (5, 4)),
        ("a batch: (2, 6, 8) each", (2, 6, 8), (2, 6, 8), (2, 6, 8)),
        ("T_q = 3 != T_k = 7, d_v = 5 != d_k = 16", (3, 16), (7, 16), (7, 5)),
        ("batch and heads (2, 3, 4, 64): d_k = 64", (2, 3, 4, 64), (2, 3, 4, 64), (2, 3, 4, 64)),
        ("one query (T_q = 1), batch of 2, d_v = 2", (2, 1, 8), (2, 5, 8), (2, 5, 2)),
    ]
    cases = []
    for label, sq, sk, sv in shapes:
        q, k, v = _random(sq, g), _random(sk, g), _random(sv, g)
        cases.append(Case(label, (q, k, v), scaled_dot_product_attention(q, k, v)))
    return cases


def _reference(d_in, d_out, qkv_bias=False, seed=0):
    """A utils SelfAttention with weights of unit-variance scores (like the lecture's), drawn from its own generator."""
    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):  # build without drawing from the global generator; real weights follow
        module = SelfAttention(d_in, d_out, qkv_bias)
    module = module.to_empty(device="cpu")
    with torch.no_grad():
        for name, p in module.named_parameters():
            scale = 1 / math.sqrt(d_in) if name.endswith("weight") else 0.5
            p.copy_(_random(p.shape, g, scale))
    return module


def _lecture_example():
    """The lecture's X (5, 8) and W_q, W_k, W_v (8, 4): seed 123, in this order."""
    g = torch.Generator().manual_seed(123)
    X = torch.randn(5, 8, generator=g)
    W_q, W_k, W_v = (torch.randn(8, 4, generator=g) / math.sqrt(8) for _ in range(3))
    module = _reference(8, 4)
    with torch.no_grad():  # nn.Linear stores W^T
        module.W_query.weight.copy_(W_q.T)
        module.W_key.weight.copy_(W_k.T)
        module.W_value.weight.copy_(W_v.T)
    return module, X


@exercise("05.2", "SelfAttention.forward", call=run_module)
def _cases_self_attention():
    g = torch.Generator().manual_seed(52)
    lecture, X = _lecture_example()
    cases = [module_case("the lecture's X (5, 8), d_out 4, no batch", lecture, (8, 4), (X,))]
    settings = [  # label, d_in, d_out, qkv_bias, input shape
        ("a batch (2, 6, 8), d_out 4", 8, 4, False, (2, 6, 8)),
        ("d_in 6 != d_out 10, batch (2, 5, 6)", 6, 10, False, (2, 5, 6)),
        ("d_in = d_out = 6 (square weights), batch (3, 4, 6)", 6, 6, False, (3, 4, 6)),
        ("qkv_bias=True, d_in 8, d_out 3, batch (2, 5, 8)", 8, 3, True, (2, 5, 8)),
        ("one token (T = 1), d_in 5, d_out 2", 5, 2, False, (1, 1, 5)),
    ]
    for n, (label, d_in, d_out, bias, shape) in enumerate(settings, start=1):
        kwargs = {"qkv_bias": True} if bias else None
        cases.append(module_case(label, _reference(d_in, d_out, bias, seed=n), (d_in, d_out),
                                 (_random(shape, g),), init_kwargs=kwargs))
    return cases


@exercise("05.3", "the parameters of SelfAttention")
def _cases_parameters():
    sizes = [("the lecture's d_in 8, d_out 4", 8, 4, False), ("d_in 8, d_out 4, with biases", 8, 4, True),
             ("d_in 3, d_out 2", 3, 2, False), ("d_in 3, d_out 2, with biases", 3, 2, True),
             ("one GPT-2 head: d_in 768, d_out 64", 768, 64, False),
             ("GPT-2 width: d_in = d_out = 768, with biases", 768, 768, True),
             ("a DeepSeek-V3-sized head: d_in 7168, d_out 128", 7168, 128, False)]
    cases = []
    for label, d_in, d_out, bias in sizes:
        with torch.device("meta"):  # shapes only: no memory, no draw from the random generator
            layer = SelfAttention(d_in, d_out, bias)
        cases.append(Case(label, (d_in, d_out, bias), sum(p.numel() for p in layer.parameters())))
    return cases

"""Exercises of Lecture 12: multi-head latent attention from scratch.

12.1 the absorbed scores (W_uK folded into each head's query, scored against the latent cache),
12.2 one absorbed decoding step (append the new latent, attend per head in latent space, then
W_uV and W_o), 12.3 the cache elements of an MLA model (an int). Expected values come from the
naive expanded path of :class:`utils.mla.LatentProjections` (keys and values formed per head)
and from :func:`utils.mla.mla_cache_elements`; weights come from private generators, so the
learner's random state is never touched. Convention: row vectors, ``x @ W``.
"""

from __future__ import annotations

import math

import torch

from utils.configs import MLASpec, ModelSpec, get_config
from utils.exercises import Case, exercise, randn
from utils.mla import LatentProjections, mla_cache_elements


def lecture_example() -> torch.Tensor:
    """The lecture's input: 4 tokens of width 8, X (4, 8), seed 1200."""
    return randn(4, 8, seed=1200)


def _naive_scores(x, W_q, W_uK, c_kv, n_heads):
    """(H, T_q, T_k): queries x W_q,h against expanded keys C W_uK,h, scaled by 1/sqrt(d_h)."""
    proj = LatentProjections(W_q.shape[0], c_kv.shape[-1], n_heads, W_q.shape[1] // n_heads)
    with torch.no_grad():
        proj.W_uK.copy_(W_uK)
        q = (x @ W_q).unflatten(-1, (n_heads, -1)).transpose(0, 1)  # (H, T_q, d_h)
        k = proj.keys(c_kv)                                          # (H, T_k, d_h)
        return q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])


def _naive_decode(x_new, c_cache, W_dKV, W_q, W_uK, W_uV, W_o, n_heads):
    """The naive step: append the latent, expand K and V for every cached token, attend, project."""
    d, d_c = W_dKV.shape
    proj = LatentProjections(d, d_c, n_heads, W_q.shape[1] // n_heads, W_uV.shape[1] // n_heads)
    with torch.no_grad():
        for name, W in (("W_dKV", W_dKV), ("W_uK", W_uK), ("W_uV", W_uV)):
            getattr(proj, name).copy_(W)
        c_all = torch.cat([c_cache, proj.latent(x_new)])             # (T + 1, d_c)
        weights = torch.softmax(_naive_scores(x_new, W_q, W_uK, c_all, n_heads), dim=-1)  # (H, 1, T + 1)
        context = weights @ proj.values(c_all)                       # (H, 1, d_v)
        return context.transpose(0, 1).flatten(1) @ W_o, c_all       # (1, d_out), (T + 1, d_c)


# --- 12.1: absorbed scores ------------------------------------------------------------------------

_SCORES = [  # (label, d, H, d_h, d_c, T_q, T_k)
    ("the lecture's sizes: d 8, 2 heads of 2, latent 4 (W_uK square), new token vs 5 cached", 8, 2, 2, 4, 1, 5),
    ("the lecture's X (4, 8) against its own latent (4, 4)", 8, 2, 2, 4, 4, 4),
    ("4 heads of 3, latent 5, d 6: no width equals another, T_q 2 != T_k 7", 6, 4, 3, 5, 2, 7),
    ("3 heads with d_h = d_c = 4 (each head's W_uK block is square)", 10, 3, 4, 4, 3, 6),
    ("a single head, d_h 3, latent 2", 5, 1, 3, 2, 2, 3),
]


@exercise("12.1", "absorbed scores: fold W_uK into each head's query, score against the latent cache")
def _cases_absorbed_scores():
    cases = []
    for i, (label, d, H, d_h, d_c, T_q, T_k) in enumerate(_SCORES):
        s = 1210 + 10 * i
        x = lecture_example() if i == 1 else randn(T_q, d, seed=s)
        W_q, W_uK = randn(d, H * d_h, seed=s + 1), randn(d_c, H * d_h, seed=s + 2)
        c_kv = x @ randn(d, d_c, seed=s + 3) if i == 1 else randn(T_k, d_c, seed=s + 4)
        cases.append(Case(label, (x, W_q, W_uK, c_kv, H), _naive_scores(x, W_q, W_uK, c_kv, H)))
    return cases


# --- 12.2: one absorbed decoding step --------------------------------------------------------------

_DECODE = [  # (label, d, H, d_h, d_v, d_c, d_out, cached tokens)
    ("the lecture's sizes: cache (4, 4) grows to (5, 4), d 8, 2 heads of 2", 8, 2, 2, 2, 4, 8, 4),
    ("d_v 3 != d_h 2, d_out 5 != d 6, 3 heads, latent 4, 6 cached", 6, 3, 2, 3, 4, 5, 6),
    ("4 heads of 2, latent 3, d 8, 9 cached tokens", 8, 4, 2, 2, 3, 8, 9),
    ("the first token: an empty cache (0, 4) grows to (1, 4)", 8, 2, 2, 2, 4, 8, 0),
]


@exercise("12.2", "one absorbed decoding step: append the latent, attend per head in latent space, W_uV, W_o")
def _cases_decode():
    cases = []
    for i, (label, d, H, d_h, d_v, d_c, d_out, T) in enumerate(_DECODE):
        s = 1260 + 10 * i
        W_dKV = randn(d, d_c, seed=s)
        if i == 0:  # the lecture's X (4, 8): its first 4 latents are cached, a fifth token arrives
            c_cache, x_new = lecture_example() @ W_dKV, randn(1, d, seed=s + 1)
        else:
            c_cache, x_new = randn(T, d_c, seed=s + 2), randn(1, d, seed=s + 3)
        weights = (W_dKV, randn(d, H * d_h, seed=s + 4), randn(d_c, H * d_h, seed=s + 5),
                   randn(d_c, H * d_v, seed=s + 6), randn(H * d_v, d_out, seed=s + 7))
        args = (x_new, c_cache) + weights + (H,)
        cases.append(Case(label, args, _naive_decode(*args)))
    return cases


# --- 12.3: the cache of an MLA model ----------------------------------------------------------------

_TOY = ModelSpec("toy MLA: d 8, 2 heads, latent 4, RoPE key 2, 3 layers", "2026-01", 1000, 8, 3, 2, 64, 32,
                 ffn="swiglu", bias=False, tied_embeddings=False, learned_positions=False,
                 mla=MLASpec(kv_lora_rank=4, qk_nope_head_dim=4, qk_rope_head_dim=2, v_head_dim=4))
_SPECS = [  # (label, spec, seq_len, batch)
    ("DeepSeek-V3, one token of one sequence", get_config("DeepSeek-V3"), 1, 1),
    ("DeepSeek-V2, 4,096 tokens, batch 8", get_config("DeepSeek-V2"), 4096, 8),
    ("DeepSeek-V2-Lite (27 layers), 32,768 tokens", get_config("DeepSeek-V2-Lite"), 32768, 1),
    ("a toy MLA model: 2 heads, latent 4, RoPE key 2, 3 layers, 10 tokens, batch 2", _TOY, 10, 2),
]


def cache_elements_reference(spec: ModelSpec, seq_len: int, batch: int) -> int:
    m = spec.mla
    return mla_cache_elements(m.kv_lora_rank, m.qk_rope_head_dim, spec.n_layers) * seq_len * batch


@exercise("12.3", "numbers an MLA model caches for batch sequences of seq_len tokens", atol=0)
def _cases_cache_elements():
    return [Case(label, (spec, seq_len, batch), cache_elements_reference(spec, seq_len, batch))
            for label, spec, seq_len, batch in _SPECS]

"""Exercises of Lecture 09: the KV cache.

09.1 one cached attention step for a single head (plain tensors), 09.2 the cached forward pass
of multi-head attention (a module that returns its grown K/V caches), 09.3 the size of a cache
in bytes. Expected values come from :func:`utils.attention.scaled_dot_product_attention` with
:func:`utils.attention.causal_mask` on the whole sequence (the uncached attention's last row),
from :class:`utils.attention.MultiHeadAttention` running with a :class:`utils.kv_cache.LayerKVCache`,
and from :func:`utils.kv_cache.kv_cache_bytes`.
"""

from __future__ import annotations

import math

import torch

from utils.attention import MultiHeadAttention, causal_mask, scaled_dot_product_attention
from utils.exercises import Case, exercise, module_case, randn, run_module
from utils.kv_cache import AttentionShape, kv_cache_bytes




def lecture_example() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """"The next day is bright" as in Lecture 05: X (5, 8), W_q, W_k, W_v (8, 4), drawn from seed 123."""
    g = torch.Generator().manual_seed(123)
    X = torch.randn(5, 8, generator=g)
    W_q, W_k, W_v = (torch.randn(8, 4, generator=g) / math.sqrt(8) for _ in range(3))
    return X, W_q, W_k, W_v


# --- 09.1: one cached attention step (one head, plain tensors) -------------------------------------

def _step_case(label: str, X: torch.Tensor, W_q: torch.Tensor, W_k: torch.Tensor, W_v: torch.Tensor) -> Case:
    """The last row of X is the new token; the rows before it are already cached as K and V."""
    Q, K, V = X @ W_q, X @ W_k, X @ W_v  # the whole sequence, as the uncached model computes it
    T = X.shape[0]
    expected_context = scaled_dot_product_attention(Q, K, V, causal_mask(T))[-1:]  # (1, d_v): the last row
    args = (X[-1:].clone(), W_q, W_k, W_v, K[:-1].clone(), V[:-1].clone())
    return Case(label, args, (expected_context, K, V))


@exercise("09.1", "one cached attention step: append K/V, attend with the new query")
def _cases_cached_step():
    X, W_q, W_k, W_v = lecture_example()
    cases = [_step_case("the lecture's step: 'bright' joins a cache of 4 tokens, (4, 4) -> (5, 4)", X, W_q, W_k, W_v),
             _step_case("an empty cache (0, 4): the first token attends only to itself", X[:1], W_q, W_k, W_v),
             _step_case("one cached token: the cache grows (1, 4) -> (2, 4)", X[:2], W_q, W_k, W_v)]
    settings = [  # (label, T including the new token, d_in, d_k, d_v, input scale)
        ("d_k 3 != d_v 6, 7 cached tokens", 8, 5, 3, 6, 1.0),
        ("large inputs (scores far apart), d_in 6, d_k 8, d_v 2, 3 cached tokens", 4, 6, 8, 2, 4.0),
    ]
    for i, (label, T, d_in, d_k, d_v, scale) in enumerate(settings):
        x = scale * randn(T, d_in, seed=900 + i)
        cases.append(_step_case(label, x, randn(d_in, d_k, seed=910 + i) / math.sqrt(d_in),
                                randn(d_in, d_k, seed=920 + i) / math.sqrt(d_in),
                                randn(d_in, d_v, seed=930 + i) / math.sqrt(d_in)))
    return cases


# --- 09.2: the cached forward pass of multi-head attention -----------------------------------------

class _ReferenceCachedMHA(MultiHeadAttention):
    """``forward(x, k_cache, v_cache) -> (out, k_cache, v_cache)`` computed by the library's cached path."""

    def forward(self, x, k_cache=None, v_cache=None):
        cache = self.new_cache(x.shape[0])
        if k_cache is not None:
            cache.append(k_cache, v_cache)
        out = super().forward(x, cache=cache)
        return out, cache.keys.clone(), cache.values.clone()


def _stepping(cls, chunks: tuple[int, ...]):
    """``cls`` driven over a sequence: each chunk of new tokens goes in with the caches the last call returned."""

    class Stepping(cls):
        def forward(self, x):
            k_cache = v_cache = None
            outs, start = [], 0
            for size in chunks:
                out, k_cache, v_cache = super().forward(x[:, start:start + size], k_cache, v_cache)
                outs.append(out)
                start += size
            return torch.cat(outs, dim=1), k_cache, v_cache

    Stepping.__name__ = getattr(cls, "__name__", "Stepping")
    return Stepping


def _run_steps(cls, args: tuple):
    """Build the learner's class with the reference weights and run it chunk by chunk (see :func:`_stepping`)."""
    if not isinstance(cls, type):
        raise TypeError(f"pass your class itself (e.g. CachedMultiHeadAttention), got {type(cls).__name__} {cls!r}")
    spec, chunks = args
    return run_module(_stepping(cls, chunks), (spec,))




_CACHED_MHA = [  # (label, (d_in, d_out, context_length, n_heads), kwargs, batch, chunks)
    ("one token at a time from an empty cache: 5 tokens, d_in 8, 2 heads of 2", (8, 4, 6, 2), {}, 1,
     (1, 1, 1, 1, 1)),
    ("the lecture's step: prefill 'The next day is' (4 tokens), then 'bright'", (8, 4, 5, 2), {}, 1, (4, 1)),
    ("prefill 3, then a chunk of 2 new tokens (the mask shifts by the cache), then 1", (8, 4, 8, 2), {}, 1,
     (3, 2, 1)),
    ("batch of 2, d_in 5 != d_out 6, 3 heads of 2, Q/K/V with biases", (5, 6, 7, 3), {"qkv_bias": True}, 2,
     (2, 1, 1, 1)),
    ("1 head of width 4, large inputs", (4, 4, 6, 1), {}, 3, (1, 3, 1)),
]


@exercise("09.2", "multi-head attention with a KV cache: forward(x, k_cache, v_cache)", call=_run_steps,
          replayable=False)
def _cases_cached_mha():
    cases = []
    for i, (label, init_args, kwargs, batch, chunks) in enumerate(_CACHED_MHA):
        with torch.random.fork_rng(devices=[]):  # the reference's weights, without touching the caller's state
            torch.manual_seed(940 + i)
            reference = _stepping(_ReferenceCachedMHA, chunks)(*init_args, **kwargs)
        x = (4.0 if "large" in label else 1.0) * randn(batch, sum(chunks), init_args[0], seed=950 + i)
        case = module_case(label, reference, init_args, (x,), init_kwargs=kwargs)
        cases.append(Case(case.label, (case.args[0], chunks), case.expected))
    return cases


# --- 09.3: the size of the cache --------------------------------------------------------------------

@exercise("09.3", "bytes of KV cache: layers x batch x tokens x heads x d_h x 2 x bytes", atol=0)
def _cases_cache_size():
    settings = [  # (label, (n_layers, n_heads, head_dim, seq_len, batch, bytes_per_element))
        ("the lecture's 30B model as stated: 48 layers, 96 heads of 128, 1024 tokens, batch 128, fp16",
         (48, 96, 128, 1024, 128, 2)),
        ("the lecture's 180 GB: 56 heads of 128 (width 7168)", (48, 56, 128, 1024, 128, 2)),
        ("DeepSeek-V3-sized plain MHA: 61 layers, 128 heads of 128, 100,000 tokens, batch 1, bf16",
         (61, 128, 128, 100_000, 1, 2)),
        ("GPT-2 small, 1024 tokens, batch 1, fp32", (12, 12, 64, 1024, 1, 4)),
        ("a tiny model, 8-bit cache: 2 layers, 4 heads of 32, 64 tokens, batch 3", (2, 4, 32, 64, 3, 1)),
    ]
    return [Case(label, s, kv_cache_bytes(AttentionShape(*s[:3]), s[3], s[4], dtype=s[5])) for label, s in settings]

"""Exercises of Lecture 13: multi-head latent attention in code.

13.1 the absorbed path of :class:`utils.mla.MultiHeadLatentAttention` (the learner subclasses it and
writes ``forward_absorbed``: append the latent, fold W_uK into each head's query, attend against the
latent, apply W_uV per head, then W_o), checked against the naive path (K and V expanded per head)
with the same weights, with and without the latent cache; 13.2 the bytes of an MLA cache (an int),
from :func:`utils.kv_cache.kv_cache_bytes`. Weights come from private generators: the learner's
random state is never touched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from utils.exercises import Case, exercise, randn, run_in_chunks
from utils.kv_cache import LatentShape, kv_cache_bytes
from utils.mla import MultiHeadLatentAttention


@dataclass(frozen=True)
class DecodeCall:
    """Build the learner's layer with ``init_args`` (absorb=True), load ``state_dict``, feed ``x`` in ``chunks``."""

    init_args: tuple
    state_dict: dict
    x: torch.Tensor
    chunks: tuple | None  # token counts fed one call after another with a cache; None: one call, no cache


def run_decode(cls, args):
    """The ``call`` of 13.1: the learner's class with the reference's weights, absorbed path on."""
    (spec,) = args
    layer = cls(*spec.init_args, absorb=True)
    if not isinstance(layer, MultiHeadLatentAttention):
        raise TypeError(f"{getattr(cls, '__name__', cls)} must subclass MultiHeadLatentAttention (see the template)")
    layer.load_state_dict(spec.state_dict)
    layer.eval()
    with torch.no_grad():
        return run_in_chunks(layer, spec.x, spec.chunks)


def toy_layer(d_in=8, d_out=8, context_length=16, n_heads=2, d_latent=4, seed=1300, absorb=False):
    """The lecture's toy layer (d_model 8, 2 heads, latent 4) with weights of order 1/sqrt(fan-in),
    large enough that every head's scores matter (the course's 0.02 init makes softmax nearly uniform)."""
    layer = MultiHeadLatentAttention(d_in, d_out, context_length, n_heads, d_latent, absorb=absorb)
    with torch.no_grad():
        for i, (name, p) in enumerate(sorted(layer.named_parameters())):
            fan_in = p.shape[0] if name.startswith("proj.") else p.shape[-1]
            p.copy_(randn(*p.shape, seed=seed + i, scale=fan_in ** -0.5))
    return layer.eval()


_DECODE = [  # (label, d_in, d_out, n_heads, d_latent, batch, T, chunks)
    ("the lecture's toy (d_model 8, 2 heads, latent 4), 6 tokens at once, no cache", 8, 8, 2, 4, 1, 6, None),
    ("the toy with the cache: prefill 3 tokens, then 3 steps (latent cache (1, 3, 4) -> (1, 6, 4))",
     8, 8, 2, 4, 1, 6, (3, 1, 1, 1)),
    ("3 heads of 4, latent 6 (d_latent != head width), d_in 10, batch 2, prefill 4 then 5 steps",
     10, 12, 3, 6, 2, 9, (4, 1, 1, 1, 1, 1)),
    ("d_out 12 != d_in 6, 4 heads of 3, latent 16 wider than a head, no cache", 6, 12, 4, 16, 2, 7, None),
    ("from an empty cache, one token per step, 2 heads of 8, latent 3", 8, 16, 2, 3, 1, 5, (1, 1, 1, 1, 1)),
]


@exercise("13.1", "the absorbed path of MultiHeadLatentAttention, checked against the naive path",
          call=run_decode, replayable=False)
def _cases_absorbed():
    cases = []
    for i, (label, d_in, d_out, H, d_c, B, T, chunks) in enumerate(_DECODE):
        ref = toy_layer(d_in, d_out, 16, H, d_c, seed=1310 + 10 * i)
        x = randn(B, T, d_in, seed=1315 + 10 * i)
        with torch.no_grad():
            out = ref(x)  # the naive path, whole sequence
            expected = out if chunks is None else (out, x @ ref.proj.W_dKV)
        state = {k: v.detach().clone() for k, v in ref.state_dict().items()}
        cases.append(Case(label, (DecodeCall((d_in, d_out, 16, H, d_c), state, x, chunks),), expected))
    return cases


# --- 13.2: bytes of an MLA cache ------------------------------------------------------------------

_BYTES = [  # (label, n_layers, d_latent, rope_dim, seq_len, batch, bytes per element)
    ("the toy: 1 layer, latent 4, no RoPE, 10 tokens, fp32", 1, 4, 0, 10, 1, 4),
    ("the lecture's layer: latent 256, 1,024 tokens, fp16", 1, 256, 0, 1024, 1, 2),
    ("DeepSeek-V3: 61 layers, 512 + 64, 100,000 tokens, bf16", 61, 512, 64, 100_000, 1, 2),
    ("DeepSeek-V2-Lite sized: 27 layers, 512 + 64, 4,096 tokens, batch 8, FP8", 27, 512, 64, 4096, 8, 1),
]


@exercise("13.2", "bytes of an MLA cache: layers * batch * tokens * (d_latent + rope_dim) * bytes")
def _cases_bytes():
    return [Case(label, (L, d_c, r, T, B, e), kv_cache_bytes(LatentShape(L, d_c, r), T, batch=B, dtype=e))
            for label, L, d_c, r, T, B, e in _BYTES]

"""Exercises of Lecture 17: DeepSeek's MLA with decoupled RoPE.

17.1 the absorbed decode step of :class:`utils.mla_rope.DeepSeekMLA` (the learner subclasses it and
writes ``forward_absorbed``: each head's query folded into latent space with W_UK,h, scored against
the cached c_KV plus the shared RoPE key k_R with one softmax scale, the attended latent through
W_UV,h, then W_O), checked against the naive path with the same weights, with and without the cache,
with and without query compression; 17.2 the numbers cached per token (an int) for a config and a
number of layers. Weights come from private generators: the learner's random state is never touched.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from utils.exercises import Case, exercise, randn, run_in_chunks
from utils.mla_rope import DeepSeekMLA, DeepSeekMLAConfig


@dataclass(frozen=True)
class DecodeCall:
    """Build the learner's layer from ``cfg`` with absorb=True, load ``state_dict``, feed ``x`` in ``chunks``."""

    cfg: DeepSeekMLAConfig
    state_dict: dict
    x: torch.Tensor
    chunks: tuple | None  # token counts fed one call after another with a cache; None: one call, no cache


def run_decode(cls, args):
    """The ``call`` of 17.1: the learner's class with the reference's weights, absorbed path on."""
    (spec,) = args
    layer = cls(replace(spec.cfg, absorb=True))
    if not isinstance(layer, DeepSeekMLA):
        raise TypeError(f"{getattr(cls, '__name__', cls)} must subclass DeepSeekMLA (see the template)")
    layer.load_state_dict(spec.state_dict)
    layer.eval()
    with torch.no_grad():
        return run_in_chunks(layer, spec.x, spec.chunks)  # (B, T, d), (B, T, d_c + d_h^R)


def toy_layer(cfg: DeepSeekMLAConfig, seed: int) -> DeepSeekMLA:
    """A naive-path layer with weights of order 1/sqrt(fan-in) and norm gains near 1, so every head's
    scores (and the RoPE part of them) matter."""
    layer = DeepSeekMLA(replace(cfg, absorb=False))
    with torch.no_grad():
        for i, (_, p) in enumerate(sorted(layer.named_parameters())):
            if p.dim() == 2:
                p.copy_(randn(*p.shape, seed=seed + i, scale=p.shape[1] ** -0.5))
            else:
                p.copy_(1 + randn(*p.shape, seed=seed + i, scale=0.3))
    return layer.eval()


def _cfg(d, H, d_c, nope, rope, d_v, q_lora):
    return DeepSeekMLAConfig(d_model=d, n_heads=H, kv_lora_rank=d_c, qk_nope_head_dim=nope, qk_rope_head_dim=rope,
                             v_head_dim=d_v, q_lora_rank=q_lora, context_length=16)


_DECODE = [  # (label, config, batch, T, chunks)
    ("2 heads, d_h 4 + d_h^R 2, latent 6, no query compression, 5 tokens at once, no cache",
     _cfg(8, 2, 6, 4, 2, 4, None), 1, 5, None),
    ("query compression d_c' 6, prefill 3 tokens then 3 steps (positions 3, 4, 5 rotate k_R and q_R)",
     _cfg(8, 2, 6, 4, 2, 4, 6), 1, 6, (3, 1, 1, 1)),
    ("3 heads, d_v 5 != d_h 4, d_h^R 4, latent 10, batch 2, prefill 4 then 5 steps",
     _cfg(12, 3, 10, 4, 4, 5, 8), 2, 9, (4, 1, 1, 1, 1, 1)),
    ("4 heads, d_h^R 6 > d_h 3, latent 5, from an empty cache one token per step",
     _cfg(16, 4, 5, 3, 6, 4, None), 1, 6, (1, 1, 1, 1, 1, 1)),
]


@exercise("17.1", "the absorbed decode step of DeepSeekMLA (decoupled RoPE), checked against the naive path",
          call=run_decode, replayable=False)
def _cases_absorbed():
    cases = []
    for i, (label, cfg, B, T, chunks) in enumerate(_DECODE):
        ref = toy_layer(cfg, seed=1710 + 20 * i)
        x = randn(B, T, cfg.d_model, seed=1719 + 20 * i)
        with torch.no_grad():
            out = ref(x)  # the naive path, whole sequence
            if chunks is not None:
                cache = ref.new_cache(B)
                ref(x, cache=cache)
                out = (out, cache.latent.clone())
        state = {k: v.detach().clone() for k, v in ref.state_dict().items()}
        cases.append(Case(label, (DecodeCall(cfg, state, x, chunks),), out))
    return cases


# --- 17.2: numbers cached per token -----------------------------------------------------------------

_ELEMENTS = [  # (label, config, n_layers)
    ("DeepSeek-V3: d_c 512, d_h^R 64, 128 heads, 1 layer", DeepSeekMLAConfig.v3(), 1),
    ("DeepSeek-V3, all 61 layers", DeepSeekMLAConfig.v3(), 61),
    ("DeepSeek-V2-Lite sized: no query compression, 16 heads, 27 layers",
     DeepSeekMLAConfig(d_model=2048, n_heads=16, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
                       v_head_dim=128), 27),
    ("a toy: 4 heads, latent 32, d_h^R 8, d_c' 24, 3 layers",
     DeepSeekMLAConfig(d_model=64, n_heads=4, kv_lora_rank=32, qk_rope_head_dim=8, q_lora_rank=24), 3),
]


@exercise("17.2", "numbers DeepSeek's MLA caches per token: (d_c + d_h^R) * layers")
def _cases_elements():
    return [Case(label, (cfg, L), (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * L) for label, cfg, L in _ELEMENTS]

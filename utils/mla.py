"""Multi-head latent attention, the pieces of Lecture 12 (DeepSeek-V2 section 2.1).

One convention throughout: **row vectors**, a token is a row ``x`` (1, d) and a projection is
``x @ W`` with ``W`` of shape (in, out). Head h owns the columns ``h*d_h:(h+1)*d_h`` of a
per-head projection (as lecture 08's ``view(B, T, H, d_h)`` cuts them), and the rows
``h*d_v:(h+1)*d_v`` of the output projection ``W_o``.

- :class:`LatentProjections`: the down-projection ``W_dKV`` (d, d_c) to the cached latent
  ``C_KV = X W_dKV`` and the per-head up-projections ``W_uK`` (d_c, H d_h), ``W_uV`` (d_c, H d_v):
  every head gets its own keys ``K_h = C_KV W_uK,h`` and values ``V_h = C_KV W_uV,h`` from the
  one shared latent.
- :func:`per_head`: a (in, H d) matrix as H blocks (H, in, d).
- The absorption algebra, **per head**: :func:`absorbed_query_weights` folds ``W_uK,h`` into
  ``W_q,h`` (``q_h k_h^T = (x W_q,h W_uK,h^T) C^T``), :func:`absorbed_output_weights` folds
  ``W_uV,h`` into head h's rows of ``W_o``. Folding across heads (``W_q @ W_uK.T``, a sum over
  heads) is a different computation; Lecture 12 shows the difference.
- :func:`mla_cache_elements`, :func:`mha_cache_elements`, :func:`equivalent_gqa_groups`: the
  cache per token of DeepSeek-V2 Table 1 (V3: 512 + 64 = 576 per layer vs 2 * 128 * 128 = 32,768).

- :class:`MultiHeadLatentAttention` (Lecture 13): the causal layer built on these pieces, with a
  naive path (expand K and V per head) and an absorbed path (per-head folded query against the
  latent, W_uV after attention), a cache of the latent only (:class:`utils.kv_cache.LatentCache`),
  usable as the attention of ``GPTModel`` and with ``generate(..., use_cache=True)``.

Lecture 17 adds DeepSeek's decoupled RoPE key in :mod:`utils.mla_rope`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from utils.attention import _check_causal, _check_length, _check_width, causal_mask
from utils.kv_cache import LatentCache


def _positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def per_head(W: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Cut ``W`` (in, H * d) into its heads' column blocks: (H, in, d), block h = ``W[:, h*d:(h+1)*d]``."""
    _positive_int("n_heads", n_heads)
    if W.dim() != 2:
        raise ValueError(f"per_head expects a matrix (in, n_heads * head_dim), got shape {tuple(W.shape)}.")
    d_in, width = W.shape
    if width % n_heads:
        raise ValueError(f"the {width} columns cannot be split into n_heads={n_heads} equal heads; "
                         f"use a width that is a multiple of n_heads (e.g. {n_heads * max(1, width // n_heads)}).")
    return W.view(d_in, n_heads, width // n_heads).transpose(0, 1)  # (H, in, d)


def scores_against_shared(q: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
    """Every head's queries q (B, H, T, d) against one (B, T_k, d) tensor all heads share -> (B, H, T, T_k).

    One matmul with the heads as rows, (B, H*T, d) @ (B, d, T_k): broadcasting the shared tensor
    over a head axis instead would make torch copy it once per head at every decoding step.
    """
    B, H, T, d = q.shape
    return (q.reshape(B, H * T, d) @ shared.transpose(-2, -1)).view(B, H, T, -1)


def mix_shared(weights: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
    """Attention weights (B, H, T, T_k) times one (B, T_k, d) tensor all heads share -> (B, H, T, d)."""
    B, H, T, T_k = weights.shape
    return (weights.reshape(B, H * T, T_k) @ shared).view(B, H, T, -1)


class LatentProjections(nn.Module):
    """``W_dKV`` (d, d_c), ``W_uK`` (d_c, H d_h), ``W_uV`` (d_c, H d_v), row convention (Lecture 12).

    Weights are drawn from N(0, 0.02^2) (the course's initialisation). ``latent(x)`` gives the
    cached C_KV (..., T, d_c); ``keys(c)`` and ``values(c)`` expand it per head to
    (..., H, T, d_h) and (..., H, T, d_v).
    """

    def __init__(self, d_model: int, d_latent: int, n_heads: int, head_dim: int, v_head_dim: int | None = None):
        super().__init__()
        v_head_dim = head_dim if v_head_dim is None else v_head_dim
        for name, value in (("d_model", d_model), ("d_latent", d_latent), ("n_heads", n_heads),
                            ("head_dim", head_dim), ("v_head_dim", v_head_dim)):
            _positive_int(name, value)
        self.d_model, self.d_latent, self.n_heads = d_model, d_latent, n_heads
        self.head_dim, self.v_head_dim = head_dim, v_head_dim
        self.W_dKV = nn.Parameter(0.02 * torch.randn(d_model, d_latent))              # (d, d_c)
        self.W_uK = nn.Parameter(0.02 * torch.randn(d_latent, n_heads * head_dim))    # (d_c, H d_h)
        self.W_uV = nn.Parameter(0.02 * torch.randn(d_latent, n_heads * v_head_dim))  # (d_c, H d_v)

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """C_KV = X W_dKV: (..., T, d) -> (..., T, d_c), the only thing MLA caches (without RoPE)."""
        if x.shape[-1] != self.d_model:
            raise ValueError(f"expected tokens of width d_model={self.d_model}, got shape {tuple(x.shape)}.")
        return x @ self.W_dKV

    def _expand(self, c: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        if c.shape[-1] != self.d_latent:
            raise ValueError(f"expected latents of width d_latent={self.d_latent}, got shape {tuple(c.shape)}; "
                             "pass C_KV = latent(x), not the hidden states.")
        out = c @ W                                               # (..., T, H d)
        return out.unflatten(-1, (self.n_heads, -1)).transpose(-3, -2)  # (..., H, T, d)

    def keys(self, c: torch.Tensor) -> torch.Tensor:
        """K_h = C_KV W_uK,h for every head: (..., T, d_c) -> (..., H, T, d_h)."""
        return self._expand(c, self.W_uK)

    def values(self, c: torch.Tensor) -> torch.Tensor:
        """V_h = C_KV W_uV,h for every head: (..., T, d_c) -> (..., H, T, d_v)."""
        return self._expand(c, self.W_uV)


def absorbed_query_weights(W_q: torch.Tensor, W_uK: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Fold W_uK into the query weights, head by head: (H, d, d_c), block h = W_q,h W_uK,h^T (Lecture 12).

    ``W_q`` (d, H d_h), ``W_uK`` (d_c, H d_h). Head h's score against the latent cache C (T, d_c)
    is then ``(x @ block_h) @ C.T`` = ``(x W_q,h) (C W_uK,h)^T``, exactly the naive score.
    (``W_q @ W_uK.T`` is the *sum* of the blocks: all heads' scores added, not one head's.)
    """
    if W_q.dim() != 2 or W_uK.dim() != 2 or W_q.shape[1] != W_uK.shape[1]:
        raise ValueError(f"W_q (d, H d_h) and W_uK (d_c, H d_h) must have the same number of columns, got "
                         f"{tuple(W_q.shape)} and {tuple(W_uK.shape)}; pass W_uK untransposed (latent rows).")
    return per_head(W_q, n_heads) @ per_head(W_uK, n_heads).transpose(1, 2)  # (H, d, d_h) @ (H, d_h, d_c)


def absorbed_output_weights(W_uV: torch.Tensor, W_o: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Fold W_uV into the output projection, head by head: (H, d_c, d), block h = W_uV,h W_o[h] (Lecture 12).

    ``W_uV`` (d_c, H d_v), ``W_o`` (H d_v, d_out); ``W_o[h]`` is head h's rows h*d_v:(h+1)*d_v. With
    head h's attention weights A_h (T_q, T), the layer's output is ``sum_h (A_h C) @ block_h``.
    """
    if W_uV.dim() != 2 or W_o.dim() != 2 or W_uV.shape[1] != W_o.shape[0]:
        raise ValueError(f"W_uV (d_c, H d_v) needs as many columns as W_o (H d_v, d) has rows, got "
                         f"{tuple(W_uV.shape)} and {tuple(W_o.shape)}.")
    W_o_rows = per_head(W_o.T, n_heads).transpose(1, 2)  # (H, d_v, d): head h's rows of W_o
    return per_head(W_uV, n_heads) @ W_o_rows            # (H, d_c, d_v) @ (H, d_v, d)


def absorbed_scores(x: torch.Tensor, W_q: torch.Tensor, W_uK: torch.Tensor, c_kv: torch.Tensor,
                    n_heads: int) -> torch.Tensor:
    """Scaled attention scores from the latent cache: (H, T_q, T_k), no causal mask (Lecture 12).

    ``x`` (T_q, d) hidden states of the queries, ``c_kv`` (T_k, d_c) the latent cache. Equal to the
    naive ``(x W_q,h)(C W_uK,h)^T / sqrt(d_h)`` without ever forming the keys.
    """
    d_h = W_q.shape[1] // n_heads
    q_latent = x @ absorbed_query_weights(W_q, W_uK, n_heads)  # (H, T_q, d_c): one folded query per head
    return q_latent @ c_kv.transpose(-2, -1) / math.sqrt(d_h)  # (H, T_q, T_k)


# --- cache size (DeepSeek-V2 Table 1) -------------------------------------------------------------

def mla_cache_elements(d_latent: int, rope_dim: int = 0, n_layers: int = 1) -> int:
    """Numbers MLA caches per token: (d_c + d_h^R) * layers (DeepSeek-V2 Table 1; Lecture 12).

    The latent c_KV and, with decoupled RoPE (Lecture 17), one RoPE key shared by all heads.
    DeepSeek-V3: ``mla_cache_elements(512, 64)`` = 576 per layer.
    """
    _positive_int("d_latent", d_latent)
    _positive_int("n_layers", n_layers)
    if not isinstance(rope_dim, int) or isinstance(rope_dim, bool) or rope_dim < 0:
        raise ValueError(f"rope_dim must be a non-negative integer (0 without decoupled RoPE), got {rope_dim!r}.")
    return (d_latent + rope_dim) * n_layers


def mha_cache_elements(n_heads: int, head_dim: int, n_layers: int = 1) -> int:
    """Numbers multi-head attention caches per token: 2 * n_h * d_h * layers (one key, one value)."""
    for name, value in (("n_heads", n_heads), ("head_dim", head_dim), ("n_layers", n_layers)):
        _positive_int(name, value)
    return 2 * n_heads * head_dim * n_layers


def equivalent_gqa_groups(d_latent: int, rope_dim: int, head_dim: int) -> float:
    """The number of GQA groups whose cache equals MLA's: (d_c + d_h^R) / (2 d_h).

    DeepSeek-V2 (d_c = 4 d_h, d_h^R = d_h / 2): 2.25 groups (Table 1).
    """
    _positive_int("head_dim", head_dim)
    return mla_cache_elements(d_latent, rope_dim) / (2 * head_dim)


# --- the layer (Lecture 13) -----------------------------------------------------------------------

class MultiHeadLatentAttention(nn.Module):
    """Causal multi-head latent attention without RoPE (Lecture 13; DeepSeek-V2 section 2.1).

    ``W_q`` (nn.Linear d_in -> d_out, no bias) gives the queries; ``proj``
    (:class:`LatentProjections`) holds ``W_dKV`` (d_in, d_latent), ``W_uK`` and ``W_uV``
    (d_latent, d_out); ``out_proj`` is W_o. Heads have width ``d_out // n_heads``.

    - naive path (``absorb=False``): K_h = C W_uK,h and V_h = C W_uV,h for every cached token,
      then ordinary attention (:meth:`forward_naive`).
    - absorbed path (``absorb=True``): each head's query is folded into latent space,
      q_h W_uK,h^T, and scored against C itself; the weights average C, and W_uV,h is applied
      after attention (:meth:`forward_absorbed`). Same numbers, no K or V ever formed.

    With ``cache`` (a :class:`utils.kv_cache.LatentCache` from :meth:`new_cache`), ``x`` holds
    only the new tokens; their latents (B, T, d_latent) are appended, and that is all the cache holds.
    """

    def __init__(self, d_in: int, d_out: int, context_length: int, n_heads: int, d_latent: int,
                 dropout: float = 0.0, absorb: bool = False):
        super().__init__()
        for name, value in (("d_in", d_in), ("d_out", d_out), ("n_heads", n_heads), ("d_latent", d_latent)):
            _positive_int(name, value)
        if d_out % n_heads:
            raise ValueError(f"d_out={d_out} must be divisible by n_heads={n_heads}; choose n_heads among "
                             f"{[h for h in range(1, d_out + 1) if d_out % h == 0]}.")
        _check_causal(context_length, dropout)
        self.d_in, self.d_out, self.n_heads, self.d_latent = d_in, d_out, n_heads, d_latent
        self.head_dim = d_out // n_heads
        self.context_length, self.absorb = context_length, absorb
        self.W_q = nn.Linear(d_in, d_out, bias=False)
        self.proj = LatentProjections(d_in, d_latent, n_heads, self.head_dim)
        self.out_proj = nn.Linear(d_out, d_out)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("mask", causal_mask(context_length), persistent=False)

    def new_cache(self, batch_size: int, capacity: int | None = None, dtype: torch.dtype | None = None,
                  device=None) -> LatentCache:
        """An empty latent cache (B, capacity, d_latent) for this layer (Lecture 13)."""
        capacity = self.context_length if capacity is None else capacity
        if capacity > self.context_length:
            raise ValueError(f"capacity {capacity} exceeds context_length={self.context_length}; "
                             f"use capacity <= {self.context_length}.")
        weight = self.proj.W_dKV
        return LatentCache(batch_size, capacity, self.d_latent, dtype=dtype or weight.dtype,
                           device=device if device is not None else weight.device)

    def merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, T, d_h) -> (B, T, d_out)."""
        return x.transpose(1, 2).flatten(2)

    def forward_naive(self, x: torch.Tensor, cache: LatentCache | None = None):
        """Expand K, V from the latent per head; returns (out (B, T, d_out), weights (B, H, T, T_k))."""
        T, start = x.shape[1], 0 if cache is None else cache.position
        c_kv = self.proj.latent(x)                                    # (B, T, d_c)
        if cache is not None:
            c_kv = cache.append(c_kv)                                 # (B, T_k, d_c), T_k = start + T
        q = self.W_q(x).unflatten(-1, (self.n_heads, -1)).transpose(1, 2)  # (B, H, T, d_h)
        k, v = self.proj.keys(c_kv), self.proj.values(c_kv)           # (B, H, T_k, d_h) each
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)   # (B, H, T, T_k)
        scores = scores.masked_fill(self.mask[start:start + T, :start + T], float("-inf"))
        weights = self.dropout(torch.softmax(scores, dim=-1))
        return self.out_proj(self.merge_heads(weights @ v)), weights

    def forward_absorbed(self, x: torch.Tensor, cache: LatentCache | None = None):
        """Attend in latent space, head by head; returns (out (B, T, d_out), weights (B, H, T, T_k))."""
        T, start = x.shape[1], 0 if cache is None else cache.position
        c_kv = self.proj.latent(x)                                    # (B, T, d_c)
        if cache is not None:
            c_kv = cache.append(c_kv)                                 # (B, T_k, d_c)
        W_qk = absorbed_query_weights(self.W_q.weight.T, self.proj.W_uK, self.n_heads)  # (H, d_in, d_c)
        q_latent = x.unsqueeze(1) @ W_qk                              # (B, H, T, d_c): one query per head
        scores = scores_against_shared(q_latent, c_kv) / math.sqrt(self.head_dim)  # (B, H, T, T_k), d_h not d_c
        scores = scores.masked_fill(self.mask[start:start + T, :start + T], float("-inf"))
        weights = self.dropout(torch.softmax(scores, dim=-1))
        context = mix_shared(weights, c_kv) @ per_head(self.proj.W_uV, self.n_heads)  # (B, H, T, d_c) -> (B, H, T, d_h)
        return self.out_proj(self.merge_heads(context)), weights

    def forward(self, x: torch.Tensor, return_weights: bool = False, cache: LatentCache | None = None):
        name = type(self).__name__
        _check_width(x, self.d_in, name)
        if x.dim() != 3:
            raise ValueError(f"{name} expects (batch, tokens, d_in), got shape {tuple(x.shape)}; "
                             "add a batch axis with x.unsqueeze(0).")
        start = 0 if cache is None else cache.position
        if start + x.shape[1] > self.context_length:
            raise ValueError(f"{name}: {start} cached + {x.shape[1]} new tokens pass context_length="
                             f"{self.context_length}; call cache.reset() and prefill the last tokens, or build "
                             "the layer with a larger context_length.")
        _check_length(x.shape[1], self.context_length, name)
        out, weights = (self.forward_absorbed if self.absorb else self.forward_naive)(x, cache)
        return (out, weights) if return_weights else out


def mla_attention(d_latent: int, absorb: bool = False):
    """An attention factory for ``GPTModel``: MLA with latent width ``d_latent`` (Lecture 13).

    ``GPTModel(cfg, attention=mla_attention(32))`` gives every block a
    :class:`MultiHeadLatentAttention` sized by ``cfg`` (d_model, context_length, n_heads, dropout).
    """
    _positive_int("d_latent", d_latent)

    def factory(cfg) -> MultiHeadLatentAttention:
        return MultiHeadLatentAttention(cfg.d_model, cfg.d_model, cfg.context_length, cfg.n_heads, d_latent,
                                        cfg.dropout, absorb)
    return factory

"""Attention, built up over Lectures 04-11.

04 :func:`dot_product_context` (context vectors from raw dot products),
05 :class:`SelfAttention` (trainable W_q, W_k, W_v, scaled softmax),
06 :func:`causal_mask` and :class:`CausalAttention`,
07 :class:`MultiHeadAttentionWrapper` (stacked causal heads),
08 :class:`MultiHeadAttention` (one fused projection, heads by view/transpose),
09 a KV cache in ``forward(x, cache=...)`` (:mod:`utils.kv_cache`),
10 :class:`MultiQueryAttention` (one key/value head shared by all query heads),
11 :class:`GroupedQueryAttention` (query heads in groups sharing K/V heads); MHA and MQA are
its two extremes and subclass it.
All of them share one core, :func:`scaled_dot_product_attention`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from utils.kv_cache import LayerKVCache


def dot_product_context(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention with no trainable weights: softmax(X X^T) X (Lecture 04).

    ``inputs``: (T, d). Returns ``(weights (T, T), context (T, d))``.
    """
    scores = inputs @ inputs.transpose(-2, -1)  # (T, T)
    weights = torch.softmax(scores, dim=-1)
    return weights, weights @ inputs


def causal_mask(n: int, device=None) -> torch.Tensor:
    """Boolean (n, n) mask that is True above the diagonal: the future a token may not see (Lecture 06)."""
    return torch.triu(torch.ones(n, n, dtype=torch.bool, device=device), diagonal=1)


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 mask: torch.Tensor | None = None, dropout: nn.Module | None = None,
                                 return_weights: bool = False):
    """softmax(Q K^T / sqrt(d_k)) V, written out (Lectures 05, 06, 08).

    ``q``: (..., T_q, d_k), ``k``: (..., T_k, d_k), ``v``: (..., T_k, d_v); ``mask`` is True where
    attention is forbidden (broadcast to (..., T_q, T_k)); ``dropout`` acts on the weights.
    Returns the context (..., T_q, d_v), and the weights (..., T_q, T_k) if asked.
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., T_q, T_k)
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if dropout is not None:
        weights = dropout(weights)
    context = weights @ v  # (..., T_q, d_v)
    return (context, weights) if return_weights else context


def _check_width(x: torch.Tensor, d_in: int, name: str) -> None:
    if x.shape[-1] != d_in:
        raise ValueError(f"{name} expects inputs of width d_in={d_in}, got shape {tuple(x.shape)}; "
                         f"project the input to {d_in} features or build the layer with d_in={x.shape[-1]}.")


def _check_length(T: int, context_length: int, name: str) -> None:
    if T > context_length:
        raise ValueError(f"{name}: sequence length {T} exceeds context_length={context_length}; "
                         f"crop the input to the last {context_length} tokens or build the layer "
                         f"with a larger context_length.")


def _check_causal(context_length: int, dropout: float) -> None:
    if context_length <= 0:
        raise ValueError(f"context_length must be positive, got {context_length}.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {dropout}.")


class SelfAttention(nn.Module):
    """Single-head self-attention with trainable W_q, W_k, W_v as ``nn.Linear`` (Lecture 05).

    (T, d_in) or (B, T, d_in) -> same leading shape with d_out features.
    """

    def __init__(self, d_in: int, d_out: int, qkv_bias: bool = False):
        super().__init__()
        if d_in <= 0 or d_out <= 0:
            raise ValueError(f"d_in and d_out must be positive, got {d_in} and {d_out}.")
        self.d_in = d_in
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_width(x, self.d_in, type(self).__name__)
        return scaled_dot_product_attention(self.W_query(x), self.W_key(x), self.W_value(x))


class CausalAttention(SelfAttention):
    """Self-attention that cannot look ahead, with dropout on the weights (Lecture 06).

    The mask is a registered (non-persistent) buffer of size ``context_length``, so it moves
    with the module between devices. (B, T, d_in) -> (B, T, d_out).
    """

    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float = 0.0,
                 qkv_bias: bool = False):
        super().__init__(d_in, d_out, qkv_bias)
        _check_causal(context_length, dropout)
        self.context_length = context_length
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("mask", causal_mask(context_length), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_width(x, self.d_in, type(self).__name__)
        T = x.shape[-2]
        _check_length(T, self.context_length, type(self).__name__)
        q, k, v = self.W_query(x), self.W_key(x), self.W_value(x)  # (B, T, d_out)
        return scaled_dot_product_attention(q, k, v, self.mask[:T, :T], self.dropout)


def _check_heads(d_out: int, n_heads: int) -> None:
    if n_heads <= 0 or d_out % n_heads:
        raise ValueError(f"d_out={d_out} must be divisible by n_heads={n_heads}; choose n_heads among "
                         f"{[h for h in range(1, d_out + 1) if d_out % h == 0]}.")


class MultiHeadAttentionWrapper(nn.Module):
    """Multi-head attention as a stack of independent causal heads (Lecture 07).

    Each of the ``n_heads`` heads has width ``d_out // n_heads``; their contexts are concatenated
    along the last axis: (B, T, d_in) -> (B, T, d_out). Clear but slow: one matmul per head.
    """

    def __init__(self, d_in: int, d_out: int, context_length: int, n_heads: int,
                 dropout: float = 0.0, qkv_bias: bool = False):
        super().__init__()
        _check_heads(d_out, n_heads)
        self.heads = nn.ModuleList(
            CausalAttention(d_in, d_out // n_heads, context_length, dropout, qkv_bias) for _ in range(n_heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([head(x) for head in self.heads], dim=-1)


def _check_groups(n_heads: int, n_kv_groups: int) -> None:
    if not isinstance(n_kv_groups, int) or n_kv_groups <= 0 or n_heads % n_kv_groups:
        raise ValueError(f"n_heads={n_heads} must be divisible by n_kv_groups={n_kv_groups}; choose n_kv_groups "
                         f"among {[g for g in range(1, n_heads + 1) if n_heads % g == 0]} "
                         f"({n_heads} = multi-head, 1 = multi-query).")


class GroupedQueryAttention(nn.Module):
    """Causal attention whose ``n_heads`` query heads share ``n_kv_groups`` key/value heads (Lecture 11).

    Query heads are split into ``n_kv_groups`` groups of ``n_heads // n_kv_groups`` consecutive
    heads; the heads of group g all use K/V head g. ``n_kv_groups = n_heads`` is multi-head
    attention (:class:`MultiHeadAttention`, Lecture 08), ``n_kv_groups = 1`` multi-query
    attention (:class:`MultiQueryAttention`, Lecture 10). ``qkv`` is one
    ``nn.Linear(d_in, d_out + 2 * n_kv_groups * head_dim)`` whose rows are [W_q; W_k; W_v];
    ``out_proj`` mixes the heads. ``use_sdpa=True`` computes the same core with PyTorch's fused
    ``scaled_dot_product_attention`` (faster; ``return_weights`` is then unavailable).

    With ``cache`` (a :class:`utils.kv_cache.LayerKVCache`, Lecture 09), ``x`` holds only the new
    tokens: their keys and values are appended to the cache, and their queries attend to every
    cached token and to themselves (the causal mask shifted by the cache's position).
    The cache stores K/V before they are repeated across a group, so it shrinks with the groups.
    """

    def __init__(self, d_in: int, d_out: int, context_length: int, n_heads: int, n_kv_groups: int,
                 dropout: float = 0.0, qkv_bias: bool = False, use_sdpa: bool = False):
        super().__init__()
        _check_heads(d_out, n_heads)
        _check_groups(n_heads, n_kv_groups)
        _check_causal(context_length, dropout)
        self.d_in, self.d_out, self.n_heads, self.n_kv_groups = d_in, d_out, n_heads, n_kv_groups
        self.head_dim = d_out // n_heads
        self.kv_dim = n_kv_groups * self.head_dim  # width of K (and of V): n_kv_groups heads of head_dim
        self.context_length, self.use_sdpa, self.dropout_p = context_length, use_sdpa, dropout
        self.qkv = nn.Linear(d_in, d_out + 2 * self.kv_dim, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("mask", causal_mask(context_length), persistent=False)

    @property
    def group_size(self) -> int:
        """Query heads per K/V head."""
        return self.n_heads // self.n_kv_groups

    def split_heads(self, x: torch.Tensor, n_heads: int | None = None) -> torch.Tensor:
        """(B, T, n_heads * head_dim) -> (B, n_heads, T, head_dim); ``n_heads`` defaults to the query heads."""
        B, T, _ = x.shape
        return x.view(B, T, n_heads or self.n_heads, self.head_dim).transpose(1, 2)

    def merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n_heads, T, head_dim) -> (B, T, d_out)."""
        B, _, T, _ = x.shape
        return x.transpose(1, 2).contiguous().view(B, T, self.d_out)

    def repeat_kv(self, x: torch.Tensor) -> torch.Tensor:
        """Share each K/V head with its group: (B, n_kv_groups, T, d_h) -> (B, n_heads, T, d_h).

        Head g is repeated ``group_size`` times in a row (``repeat_interleave``), so query heads
        g * group_size ... (g + 1) * group_size - 1 see it. Nothing is copied for MHA.
        """
        return x if self.group_size == 1 else x.repeat_interleave(self.group_size, dim=1)

    def new_cache(self, batch_size: int, capacity: int | None = None, dtype: torch.dtype | None = None,
                  device=None) -> LayerKVCache:
        """An empty cache for this layer: K and V buffers (B, n_kv_groups, capacity, head_dim) (Lecture 09)."""
        capacity = self.context_length if capacity is None else capacity
        if capacity > self.context_length:
            raise ValueError(f"capacity {capacity} exceeds context_length={self.context_length}: the causal mask "
                             f"has no rows past it; use capacity <= {self.context_length}.")
        return LayerKVCache(batch_size, self.n_kv_groups, capacity, self.head_dim,
                            dtype=dtype or self.qkv.weight.dtype,
                            device=device if device is not None else self.qkv.weight.device)

    def forward(self, x: torch.Tensor, return_weights: bool = False, cache: LayerKVCache | None = None):
        _check_width(x, self.d_in, type(self).__name__)
        if x.dim() != 3:
            raise ValueError(f"{type(self).__name__} expects (batch, tokens, d_in), got shape {tuple(x.shape)}; "
                             "add a batch axis with x.unsqueeze(0).")
        T = x.shape[1]
        start = 0 if cache is None else cache.position  # position of the first new token
        if cache is not None and start + T > self.context_length:
            raise ValueError(f"{type(self).__name__}: the cache holds {start} tokens and {T} new ones would pass "
                             f"context_length={self.context_length}; call cache.reset() and prefill the last "
                             f"{self.context_length} tokens, or build the layer with a larger context_length.")
        _check_length(T, self.context_length, type(self).__name__)
        q, k, v = self.qkv(x).split([self.d_out, self.kv_dim, self.kv_dim], dim=-1)
        q = self.split_heads(q)  # (B, H, T, d_h)
        k, v = self.split_heads(k, self.n_kv_groups), self.split_heads(v, self.n_kv_groups)  # (B, G, T, d_h)
        if cache is not None:
            k, v = cache.append(k, v)  # (B, G, start + T, d_h): cached tokens, then the new ones
        k, v = self.repeat_kv(k), self.repeat_kv(v)  # (B, H, T_k, d_h)
        mask = self.mask[start:start + T, :start + T]  # (T, T_k): new queries sit at rows start...
        if self.use_sdpa and not return_weights:
            p = self.dropout_p if self.training else 0.0
            if start == 0:
                context = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
            else:  # torch's is_causal aligns the mask top-left, so pass it explicitly (True = may attend)
                context = F.scaled_dot_product_attention(q, k, v, attn_mask=~mask, dropout_p=p)
            return self.out_proj(self.merge_heads(context))  # (B, T, d_out)
        context, weights = scaled_dot_product_attention(q, k, v, mask, self.dropout, return_weights=True)
        out = self.out_proj(self.merge_heads(context))  # (B, T, d_out)
        return (out, weights) if return_weights else out  # weights: (B, H, T, T_k)


class MultiHeadAttention(GroupedQueryAttention):
    """Causal multi-head attention with one fused Q/K/V projection (Lecture 08).

    ``qkv`` is one ``nn.Linear(d_in, 3 * d_out)`` whose rows are [W_q; W_k; W_v] (the layout of
    ``torch.nn.MultiheadAttention.in_proj_weight`` and GPT-2's ``c_attn``). Heads are formed by
    view/transpose, attention runs per head in one batched matmul, heads are merged and mixed
    by ``out_proj``. ``use_sdpa=True`` computes the same core with PyTorch's fused
    ``scaled_dot_product_attention`` (faster; ``return_weights`` is then unavailable).
    It is :class:`GroupedQueryAttention` with one K/V head per query head (``n_kv_groups = n_heads``);
    ``forward(x, cache=...)`` is the cached step of Lecture 09.
    """

    def __init__(self, d_in: int, d_out: int, context_length: int, n_heads: int,
                 dropout: float = 0.0, qkv_bias: bool = False, use_sdpa: bool = False):
        _check_heads(d_out, n_heads)
        super().__init__(d_in, d_out, context_length, n_heads, n_heads, dropout, qkv_bias, use_sdpa)


class MultiQueryAttention(GroupedQueryAttention):
    """Causal attention in which all query heads share one key head and one value head (Lecture 10).

    :class:`GroupedQueryAttention` with ``n_kv_groups = 1``: ``qkv`` maps d_in to
    d_out + 2 * head_dim, and the cache holds one K/V head per layer, n_heads times less than MHA.
    """

    def __init__(self, d_in: int, d_out: int, context_length: int, n_heads: int,
                 dropout: float = 0.0, qkv_bias: bool = False, use_sdpa: bool = False):
        _check_heads(d_out, n_heads)
        super().__init__(d_in, d_out, context_length, n_heads, 1, dropout, qkv_bias, use_sdpa)

"""Attention, built up over Lectures 04-08.

04 :func:`dot_product_context` (context vectors from raw dot products),
05 :class:`SelfAttention` (trainable W_q, W_k, W_v, scaled softmax),
06 :func:`causal_mask` and :class:`CausalAttention`,
07 :class:`MultiHeadAttentionWrapper` (stacked causal heads),
08 :class:`MultiHeadAttention` (one fused projection, heads by view/transpose).
All of them share one core, :func:`scaled_dot_product_attention`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


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


class MultiHeadAttention(nn.Module):
    """Causal multi-head attention with one fused Q/K/V projection (Lecture 08).

    ``qkv`` is one ``nn.Linear(d_in, 3 * d_out)`` whose rows are [W_q; W_k; W_v] (the layout of
    ``torch.nn.MultiheadAttention.in_proj_weight`` and GPT-2's ``c_attn``). Heads are formed by
    view/transpose, attention runs per head in one batched matmul, heads are merged and mixed
    by ``out_proj``. ``use_sdpa=True`` computes the same core with PyTorch's fused
    ``scaled_dot_product_attention`` (faster; ``return_weights`` is then unavailable).
    """

    def __init__(self, d_in: int, d_out: int, context_length: int, n_heads: int,
                 dropout: float = 0.0, qkv_bias: bool = False, use_sdpa: bool = False):
        super().__init__()
        _check_heads(d_out, n_heads)
        _check_causal(context_length, dropout)
        self.d_in, self.d_out, self.n_heads = d_in, d_out, n_heads
        self.head_dim = d_out // n_heads
        self.context_length, self.use_sdpa, self.dropout_p = context_length, use_sdpa, dropout
        self.qkv = nn.Linear(d_in, 3 * d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("mask", causal_mask(context_length), persistent=False)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, d_out) -> (B, n_heads, T, head_dim)."""
        B, T, _ = x.shape
        return x.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)

    def merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n_heads, T, head_dim) -> (B, T, d_out)."""
        B, _, T, _ = x.shape
        return x.transpose(1, 2).contiguous().view(B, T, self.d_out)

    def forward(self, x: torch.Tensor, return_weights: bool = False) -> torch.Tensor:
        _check_width(x, self.d_in, type(self).__name__)
        if x.dim() != 3:
            raise ValueError(f"MultiHeadAttention expects (batch, tokens, d_in), got shape {tuple(x.shape)}; "
                             "add a batch axis with x.unsqueeze(0).")
        T = x.shape[1]
        _check_length(T, self.context_length, type(self).__name__)
        q, k, v = (self.split_heads(t) for t in self.qkv(x).split(self.d_out, dim=-1))  # 3 x (B, H, T, d_h)
        if self.use_sdpa and not return_weights:
            p = self.dropout_p if self.training else 0.0
            context = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
            return self.out_proj(self.merge_heads(context))  # (B, T, d_out)
        context, weights = scaled_dot_product_attention(q, k, v, self.mask[:T, :T], self.dropout,
                                                        return_weights=True)
        out = self.out_proj(self.merge_heads(context))  # (B, T, d_out)
        return (out, weights) if return_weights else out  # weights: (B, H, T, T)

"""A GPT with pluggable attention and feed-forward modules (Lecture 03).

Token + learned position embeddings, ``n_layers`` pre-norm transformer blocks, a final
norm and an output head (optionally tied to the token embedding). Attention defaults to
our :class:`utils.attention.MultiHeadAttention` (Lecture 08), or multi-query / grouped-query
attention with ``GPTConfig(n_kv_groups=...)`` (Lectures 10-11); later lectures pass their own
factories (MLA, MoE) to :class:`GPTModel`. ``GPTModel.forward(idx, cache=...)`` runs with a
KV cache (Lecture 09, :mod:`utils.kv_cache`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import math

import torch
from torch import nn

from utils.attention import GroupedQueryAttention, MultiHeadAttention, MultiQueryAttention
from utils.kv_cache import KVCache


@dataclass(frozen=True)
class GPTConfig:
    """Sizes of a GPT (Lecture 03). ``d_ff`` defaults to ``4 * d_model``."""

    vocab_size: int = 50257
    context_length: int = 1024
    d_model: int = 768
    n_heads: int = 12
    n_layers: int = 12
    d_ff: int | None = None
    dropout: float = 0.1
    qkv_bias: bool = False
    tie_embeddings: bool = False
    use_sdpa: bool = False  # compute attention with torch's fused kernel (same result, faster)
    n_kv_groups: int | None = None  # K/V heads (Lectures 10-11): None = n_heads (MHA), 1 = MQA, else GQA

    def __post_init__(self):
        for name in ("vocab_size", "context_length", "d_model", "n_heads", "n_layers"):
            if getattr(self, name) <= 0:
                raise ValueError(f"GPTConfig.{name} must be positive, got {getattr(self, name)}.")
        if self.d_ff is not None and self.d_ff <= 0:
            raise ValueError(f"GPTConfig.d_ff must be positive (or None for 4 * d_model), got {self.d_ff}.")
        if self.d_model % self.n_heads:
            raise ValueError(f"GPTConfig: d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                             f"pick n_heads among {[h for h in range(1, self.d_model + 1) if self.d_model % h == 0][:12]}...")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must lie in [0, 1), got {self.dropout}.")
        if self.n_kv_groups is not None and (self.n_kv_groups <= 0 or self.n_heads % self.n_kv_groups):
            raise ValueError(f"GPTConfig: n_heads={self.n_heads} is not divisible by n_kv_groups={self.n_kv_groups}; "
                             f"pick n_kv_groups among {[g for g in range(1, self.n_heads + 1) if self.n_heads % g == 0]} "
                             "(or None for multi-head attention).")

    @property
    def hidden_dim(self) -> int:
        return self.d_ff or 4 * self.d_model

    @classmethod
    def gpt2_small(cls, **overrides) -> "GPTConfig":
        """GPT-2 small (124M): 12 layers, 12 heads, width 768, tied head, biased Q/K/V."""
        return replace(cls(qkv_bias=True, tie_embeddings=True), **overrides)


RESIDUAL_PROJECTIONS = ("attn.out_proj.weight", "ff.net.2.weight")
"""Parameter-name endings of the layers that add into the residual stream (GPT-2's ``c_proj``)."""

AttentionFactory = Callable[[GPTConfig], nn.Module]
FeedForwardFactory = Callable[[GPTConfig], nn.Module]


def default_attention(cfg: GPTConfig) -> nn.Module:
    """Our causal attention sized by ``cfg``: multi-head (Lecture 08) unless ``cfg.n_kv_groups`` asks
    for multi-query (1, Lecture 10) or grouped-query attention (Lecture 11)."""
    args = (cfg.d_model, cfg.d_model, cfg.context_length, cfg.n_heads)
    if cfg.n_kv_groups is None or cfg.n_kv_groups == cfg.n_heads:
        return MultiHeadAttention(*args, cfg.dropout, cfg.qkv_bias, cfg.use_sdpa)
    if cfg.n_kv_groups == 1:
        return MultiQueryAttention(*args, cfg.dropout, cfg.qkv_bias, cfg.use_sdpa)
    return GroupedQueryAttention(*args, cfg.n_kv_groups, cfg.dropout, cfg.qkv_bias, cfg.use_sdpa)


class FeedForward(nn.Module):
    """Position-wise MLP d -> d_ff -> d with GELU (tanh form, as GPT-2) (Lecture 03)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(cfg.d_model, cfg.hidden_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.hidden_dim, cfg.d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, T, d_model)


class TransformerBlock(nn.Module):
    """x + Drop(Attn(Norm(x))), then x + Drop(FFN(Norm(x))) (Lecture 03)."""

    def __init__(self, cfg: GPTConfig, attention: nn.Module, feed_forward: nn.Module):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.attn = attention
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.ff = feed_forward
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache=None) -> torch.Tensor:
        """``cache``: this block's per-layer KV cache (Lecture 09), passed on to the attention."""
        h = self.norm1(x)
        h = self.attn(h) if cache is None else self.attn(h, cache=cache)
        x = x + self.drop(h)  # (B, T, d_model)
        return x + self.drop(self.ff(self.norm2(x)))


class GPTModel(nn.Module):
    """Token ids (B, T) -> next-token logits (B, T, vocab_size) (Lecture 03).

    ``attention`` and ``feed_forward`` are factories called once per block with the config,
    so later lectures can swap in MLA or a mixture of experts without touching this class.
    """

    def __init__(self, cfg: GPTConfig, attention: AttentionFactory = default_attention,
                 feed_forward: FeedForwardFactory = FeedForward):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg, attention(cfg), feed_forward(cfg)) for _ in range(cfg.n_layers))
        self.final_norm = nn.LayerNorm(cfg.d_model)
        self.out_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)
        for name, param in self.named_parameters():  # GPT-2 scales the residual projections
            if name.endswith(RESIDUAL_PROJECTIONS):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))
        if cfg.tie_embeddings:
            self.out_head.weight = self.tok_emb.weight

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """GPT-2's initialisation: weights from N(0, 0.02^2), zero biases. The projections that write
        into the residual stream (``RESIDUAL_PROJECTIONS``) then get std 0.02 / sqrt(2 n_layers),
        so the residual stream's variance does not grow with depth (GPT-2 paper, section 2.3)."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def embed(self, idx: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Token plus position embeddings: ids (B, T) -> (B, T, d_model), before dropout.

        The tokens sit at positions ``start ... start + T - 1`` (``start`` > 0 after a KV cache).
        """
        return self.tok_emb(idx) + self.pos_emb(torch.arange(start, start + idx.shape[1], device=idx.device))

    def new_cache(self, batch_size: int = 1, capacity: int | None = None) -> KVCache:
        """An empty KV cache for this model (Lecture 09): one (B, n_kv_heads, capacity, d_h) K and V
        buffer per block; ``capacity`` defaults to ``context_length``. See :class:`utils.kv_cache.KVCache`."""
        return KVCache.for_model(self, batch_size, capacity)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Ids (B, T) -> logits (B, T, vocab_size).

        With ``cache`` (Lecture 09), ``idx`` holds only the new tokens: they get position ids
        ``cache.position ... cache.position + T - 1``, each block appends their keys and values to
        its layer of the cache and attends over everything stored.
        """
        return self.out_head(self.final_norm(self.hidden_states(idx, cache)))  # (B, T, vocab_size)

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """The last block's output (B, T, d_model), before the final norm (what MTP builds on, Lecture 25)."""
        if idx.dim() != 2 or idx.dtype != torch.long:
            raise ValueError(f"GPTModel expects a (batch, tokens) LongTensor of ids, got {tuple(idx.shape)} "
                             f"{idx.dtype}; add a batch axis with idx.unsqueeze(0).")
        B, T = idx.shape
        start = 0 if cache is None else cache.position
        if cache is not None:
            if len(cache) != len(self.blocks):
                raise ValueError(f"the cache has {len(cache)} layers, the model {len(self.blocks)} blocks; "
                                 "build it with model.new_cache().")
            if start + T > self.cfg.context_length:
                raise ValueError(f"the cache holds {start} tokens and {T} new ones would pass context_length="
                                 f"{self.cfg.context_length}; call cache.reset() and prefill the last "
                                 "context_length tokens.")
        if T > self.cfg.context_length:
            raise ValueError(f"Sequence length {T} exceeds context_length={self.cfg.context_length}; "
                             "crop to the last context_length tokens.")
        if idx.numel() and (idx.min() < 0 or idx.max() >= self.cfg.vocab_size):
            raise ValueError(f"Token ids must lie in [0, {self.cfg.vocab_size}); got "
                             f"[{int(idx.min())}, {int(idx.max())}]. Encode with the model's vocabulary.")
        x = self.drop(self.embed(idx, start))  # (B, T, d_model)
        if cache is None:
            for block in self.blocks:
                x = block(x)
        else:
            for block, layer_cache in zip(self.blocks, cache.layers):
                x = block(x, cache=layer_cache)
        return x  # (B, T, d_model)


@torch.no_grad()
def attention_weights(model: GPTModel, idx: torch.Tensor) -> list[torch.Tensor]:
    """Each block's attention weights (B, n_heads, T, T) for ids (B, T) (Lecture 08).

    Runs the blocks one by one (dropout off) and asks each attention module for its weights
    with ``return_weights=True``.
    """
    was_training = model.training
    model.eval()
    x = model.embed(idx)  # (B, T, d_model)
    weights = []
    for block in model.blocks:
        _, w = block.attn(block.norm1(x), return_weights=True)  # (B, H, T, T)
        weights.append(w)
        x = block(x)
    model.train(was_training)
    return weights

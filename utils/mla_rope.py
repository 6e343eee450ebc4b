"""DeepSeek's multi-head latent attention with decoupled RoPE and query compression (Lecture 17).

DeepSeek-V2 section 2.1.2-2.1.3 (and DeepSeek-V3, which keeps it), in the lecture's symbols:
d (``d_model``), n_h (``n_heads``), d_c (``kv_lora_rank``), d_c' (``q_lora_rank``), d_h
(``qk_nope_head_dim``), d_h^R (``qk_rope_head_dim``), d_v (``v_head_dim``); V3: 7168, 128, 512,
1536, 128, 64, 128.

RoPE rotates the key by its position *after* the up-projection ``W_UK``, so the folded matrix
``W_Q,h R_(n-m) W_UK,h^T`` would depend on the pair of positions and cannot be precomputed
(:func:`rope_matrix` shows it numerically). DeepSeek's fix, one head h, a token at position p::

    c_Q  = RMSNorm(h W_DQ)                     (d_c')   query latent (or no compression: c_Q = h)
    q_C  = c_Q W_UQ,h                          (d_h)    no position
    q_R  = RoPE_p(c_Q W_QR,h)                  (d_h^R)  per head
    c_KV = RMSNorm(h W_DKV)                    (d_c)    cached
    k_R  = RoPE_p(h W_KR)                      (d_h^R)  ONE key for all heads, from h; cached
    k_C  = c_KV W_UK,h,  v = c_KV W_UV,h
    score = (q_C . k_C + q_R . k_R) / sqrt(d_h + d_h^R)     one softmax scale, one score

Row convention as in :mod:`utils.mla` (``x @ W``); the weights live in ``nn.Linear`` modules named
after the paper's matrices. :class:`DeepSeekMLA` has a naive path (expand k_C and v per head) and
an absorbed path (``W_UK,h`` folded into the query, ``W_UV,h`` after attention); both cache
``[c_KV ; k_R]`` per token, (d_c + d_h^R) numbers (576 for V3), in a :class:`utils.kv_cache.LatentCache`.
Training (no cache) takes the absorbed form too when the latent is narrow (2 d_c <= d_h + d_v, Lecture 30):
every head then attends over one shared key and value, nothing expanded per head.
:func:`state_dict_from_transformers` / :func:`state_dict_to_transformers` convert weights from and to
``transformers``' ``DeepseekV3Attention`` (interleaved RoPE pairs, ``rope_interleave=True``).
Not modelled: YaRN's extra softmax factor (``mscale``; V3's long-context extension) and dropout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from utils.attention import causal_mask
from utils.kv_cache import LatentCache
from utils.mla import mix_shared, mla_cache_elements, per_head, scores_against_shared
from utils.positional import apply_rope, rope_cache


@dataclass(frozen=True)
class DeepSeekMLAConfig:
    """Sizes of one DeepSeek MLA layer (Lecture 17); :meth:`v3` gives DeepSeek-V3's."""

    d_model: int = 64
    n_heads: int = 4
    kv_lora_rank: int = 32          # d_c
    qk_nope_head_dim: int = 16      # d_h
    qk_rope_head_dim: int = 8       # d_h^R
    v_head_dim: int = 16            # d_v
    q_lora_rank: int | None = None  # d_c' (None: no query compression, W_Q directly)
    context_length: int = 128
    rope_theta: float = 10000.0
    eps: float = 1e-6               # RMSNorm epsilon of both latents
    absorb: bool = False            # the absorbed path (decoding) instead of the naive one

    def __post_init__(self):
        for name in ("d_model", "n_heads", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
                     "v_head_dim", "context_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"DeepSeekMLAConfig.{name} must be a positive integer, got {value!r}.")
        if self.qk_rope_head_dim % 2:
            raise ValueError(f"qk_rope_head_dim = {self.qk_rope_head_dim} must be even (RoPE rotates pairs): "
                             f"use {self.qk_rope_head_dim + 1} or {max(2, self.qk_rope_head_dim - 1)}.")
        q = self.q_lora_rank
        if q is not None and (not isinstance(q, int) or isinstance(q, bool) or q <= 0):
            raise ValueError(f"q_lora_rank must be a positive integer or None (no query compression), got {q!r}.")
        if not isinstance(self.rope_theta, (int, float)) or not self.rope_theta > 1:
            raise ValueError(f"rope_theta must be a number larger than 1 (DeepSeek uses 10000), got {self.rope_theta!r}.")

    @classmethod
    def v3(cls, **overrides) -> "DeepSeekMLAConfig":
        """DeepSeek-V3's attention sizes (REFERENCE.md): 7168, 128 heads, 512, 1536, 128 + 64, 128."""
        sizes = dict(d_model=7168, n_heads=128, kv_lora_rank=512, q_lora_rank=1536, qk_nope_head_dim=128,
                     qk_rope_head_dim=64, v_head_dim=128, context_length=4096)
        return cls(**{**sizes, **overrides})

    @classmethod
    def from_transformers(cls, hf_config, context_length: int | None = None, absorb: bool = False):
        """The same sizes as a ``transformers`` ``DeepseekV3Config`` (default RoPE only, no YaRN)."""
        rope = getattr(hf_config, "rope_parameters", None) or {  # transformers 5.x, else 4.x's attributes
            "rope_theta": getattr(hf_config, "rope_theta", 10000.0),
            "rope_type": (getattr(hf_config, "rope_scaling", None) or {}).get("rope_type", "default")}
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"only the default RoPE is modelled, got rope_type={rope.get('rope_type')!r}.")
        if not getattr(hf_config, "rope_interleave", True):
            raise ValueError("the converters assume rope_interleave=True (DeepSeek's checkpoints); "
                             "set it on the transformers config.")
        return cls(d_model=hf_config.hidden_size, n_heads=hf_config.num_attention_heads,
                   kv_lora_rank=hf_config.kv_lora_rank, qk_nope_head_dim=hf_config.qk_nope_head_dim,
                   qk_rope_head_dim=hf_config.qk_rope_head_dim, v_head_dim=hf_config.v_head_dim,
                   q_lora_rank=hf_config.q_lora_rank,
                   context_length=context_length or hf_config.max_position_embeddings,
                   rope_theta=float(rope.get("rope_theta", 10000.0)), eps=hf_config.rms_norm_eps, absorb=absorb)

    @property
    def qk_head_dim(self) -> int:
        """d_h + d_h^R: the width of one head's query and key, which sets the one softmax scale."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    def cache_elements_per_token(self) -> int:
        """d_c + d_h^R per token and layer (576 for V3), whatever n_heads is."""
        return mla_cache_elements(self.kv_lora_rank, self.qk_rope_head_dim)


def rope_matrix(position: int, d: int, base: float = 10000.0) -> torch.Tensor:
    """RoPE at ``position`` as a (d, d) matrix R_p acting on rows: ``x @ R_p == apply_rope(x, ..., positions=[p])``.

    Interleaved pairs (Lecture 16). With RoPE on the keys, head h's score of query m against the
    latent of token n is ``x_m W_Q,h R_m R_n^T W_UK,h^T c_n^T``: the middle depends on (m, n),
    so no single folded matrix serves every pair (Lecture 17).
    """
    cos, sin = rope_cache(position + 1, d, base)
    eye = torch.eye(d)                                                       # (d, d): row i is e_i
    return apply_rope(eye, cos, sin, positions=torch.full((d,), position))  # row i: e_i rotated


class DeepSeekMLA(nn.Module):
    """DeepSeek-V2/V3 attention: MLA with decoupled RoPE and query compression (Lecture 17).

    ``forward(x (B, T, d), return_weights=False, cache=None)``: causal, positions ``start ...
    start + T - 1`` with ``start = cache.position`` (0 without a cache). ``cfg.absorb`` picks the
    path; both append ``[c_KV ; k_R]`` (B, T, d_c + d_h^R) to the cache. Without ``return_weights``
    ``forward`` runs :meth:`forward_fast` (the same outputs, fused attention for prompts and the
    absorbed path for decode steps; Lecture 29) unless a subclass rewrote one of the paths. Usable as the attention of
    ``GPTModel`` (:func:`deepseek_mla_attention`) and with ``generate(..., use_cache=True)``.
    """

    ABSORB_MAX_QUERIES = 16  # forward_fast: more new tokens than this run the expanded (prefill) path

    @property
    def _fast_ok(self) -> bool:
        """``forward`` may take :meth:`forward_fast` unless a subclass rewrote a path (Lecture 17's exercise)."""
        cls = type(self)
        return (cls.forward_naive is DeepSeekMLA.forward_naive and cls.forward_absorbed is DeepSeekMLA.forward_absorbed
                and cls.forward_fast is DeepSeekMLA.forward_fast)

    def __init__(self, cfg: DeepSeekMLAConfig):
        super().__init__()
        self.cfg = cfg
        d, H, d_c = cfg.d_model, cfg.n_heads, cfg.kv_lora_rank
        nope, rope, d_v = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        if cfg.q_lora_rank is None:                                  # no query compression: c_Q = h
            self.W_DQ, self.q_norm, d_q = None, None, d
        else:
            self.W_DQ = nn.Linear(d, cfg.q_lora_rank, bias=False)    # d -> d_c'
            self.q_norm = nn.RMSNorm(cfg.q_lora_rank, eps=cfg.eps)
            d_q = cfg.q_lora_rank
        self.W_UQ = nn.Linear(d_q, H * nope, bias=False)             # -> q_C, per head d_h
        self.W_QR = nn.Linear(d_q, H * rope, bias=False)             # -> q_R, per head d_h^R
        self.W_DKV = nn.Linear(d, d_c, bias=False)                   # d -> d_c (cached, after the norm)
        self.kv_norm = nn.RMSNorm(d_c, eps=cfg.eps)
        self.W_KR = nn.Linear(d, rope, bias=False)                   # d -> d_h^R: one key for all heads
        self.W_UK = nn.Linear(d_c, H * nope, bias=False)             # c_KV -> k_C per head
        self.W_UV = nn.Linear(d_c, H * d_v, bias=False)              # c_KV -> v per head
        self.out_proj = nn.Linear(H * d_v, d, bias=False)            # W_O
        self.scale = 1.0 / math.sqrt(cfg.qk_head_dim)                # ONE scale for q_C.k_C + q_R.k_R
        cos, sin = rope_cache(cfg.context_length, rope, cfg.rope_theta)
        self.register_buffer("cos", cos, persistent=False)            # (context_length, d_h^R / 2)
        self.register_buffer("sin", sin, persistent=False)
        self.register_buffer("mask", causal_mask(cfg.context_length), persistent=False)

    def new_cache(self, batch_size: int, capacity: int | None = None, dtype: torch.dtype | None = None,
                  device=None) -> LatentCache:
        """An empty cache (B, capacity, d_c + d_h^R): the latent c_KV and the shared RoPE key k_R."""
        capacity = self.cfg.context_length if capacity is None else capacity
        if capacity > self.cfg.context_length:
            raise ValueError(f"capacity {capacity} exceeds context_length={self.cfg.context_length}; "
                             f"use capacity <= {self.cfg.context_length}.")
        w = self.W_DKV.weight
        return LatentCache(batch_size, capacity, self.cfg.cache_elements_per_token(), dtype=dtype or w.dtype,
                           device=device if device is not None else w.device)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (self.cfg.n_heads, -1)).transpose(1, 2)  # (B, T, H d) -> (B, H, T, d)

    def queries(self, x: torch.Tensor, start: int):
        """q_C (B, H, T, d_h) and RoPE'd q_R (B, H, T, d_h^R) at positions start ... start + T - 1."""
        c_q = x if self.W_DQ is None else self.q_norm(self.W_DQ(x))   # (B, T, d_c') or (B, T, d)
        q_r = apply_rope(self._heads(self.W_QR(c_q)), self.cos, self.sin, offset=start)
        return self._heads(self.W_UQ(c_q)), q_r

    def latents(self, x: torch.Tensor, start: int, cache: LatentCache | None = None):
        """c_KV (B, T_k, d_c) and the RoPE'd shared key k_R (B, T_k, d_h^R), appended to ``cache``."""
        c_kv = self.kv_norm(self.W_DKV(x))                                   # (B, T, d_c)
        k_r = apply_rope(self.W_KR(x), self.cos, self.sin, offset=start)     # (B, T, d_h^R)
        both = torch.cat([c_kv, k_r], dim=-1)                                # (B, T, d_c + d_h^R)
        if cache is not None:
            both = cache.append(both)                                        # (B, T_k, d_c + d_h^R)
        return both.split([self.cfg.kv_lora_rank, self.cfg.qk_rope_head_dim], dim=-1)

    def _attend(self, scores: torch.Tensor, start: int) -> torch.Tensor:
        T = scores.shape[-2]
        scores = scores.masked_fill(self.mask[start:start + T, :start + T], float("-inf"))
        return torch.softmax(scores, dim=-1)                                 # (B, H, T, T_k)

    def forward_naive(self, x: torch.Tensor, cache: LatentCache | None = None):
        """Expand k_C and v per head from c_KV; returns (out (B, T, d), weights (B, H, T, T_k))."""
        start = 0 if cache is None else cache.position
        q_c, q_r = self.queries(x, start)
        c_kv, k_r = self.latents(x, start, cache)
        k_c, v = self._heads(self.W_UK(c_kv)), self._heads(self.W_UV(c_kv))  # (B, H, T_k, d_h), (.., d_v)
        scores = (q_c @ k_c.transpose(-2, -1) + q_r @ k_r.unsqueeze(1).transpose(-2, -1)) * self.scale
        weights = self._attend(scores, start)
        return self.out_proj((weights @ v).transpose(1, 2).flatten(2)), weights

    def forward_absorbed(self, x: torch.Tensor, cache: LatentCache | None = None):
        """Score against the cached c_KV and k_R directly, head by head; W_UV after attention."""
        start = 0 if cache is None else cache.position
        q_c, q_r = self.queries(x, start)
        c_kv, k_r = self.latents(x, start, cache)
        W_UK = per_head(self.W_UK.weight.T, self.cfg.n_heads)               # (H, d_c, d_h)
        q_latent = q_c @ W_UK.transpose(1, 2)                               # (B, H, T, d_c): q_C,h W_UK,h^T
        scores = (scores_against_shared(q_latent, c_kv) + scores_against_shared(q_r, k_r)) * self.scale
        weights = self._attend(scores, start)                               # (B, H, T, T_k)
        context = mix_shared(weights, c_kv) @ per_head(self.W_UV.weight.T, self.cfg.n_heads)  # (B, H, T, d_v)
        return self.out_proj(context.transpose(1, 2).flatten(2)), weights

    def forward_fast(self, x: torch.Tensor, cache: LatentCache | None = None) -> torch.Tensor:
        """The same output as :meth:`forward_naive` / :meth:`forward_absorbed`, without the weights (Lecture 29).

        What ``forward`` runs when no weights are asked for. Without a cache (training) and when the
        latent is narrow enough (:attr:`absorb_in_training`), the absorbed training path
        (:meth:`_absorbed_training`, Lecture 30). Otherwise prompt passes (and any call of more than
        ``ABSORB_MAX_QUERIES`` tokens, or ``cfg.absorb`` False) expand k_C and v per head and call
        ``torch.nn.functional.scaled_dot_product_attention`` (causal, fused: no (T, T) score matrix is
        kept; v is zero-padded to the q/k width because torch's fused CPU kernel needs equal widths).
        With ``cfg.absorb`` and a few new tokens against a cache (decoding), the absorbed path: each head's
        query is folded into latent space (q_C,h W_UK,h^T, next to q_R) and scored against the cached rows
        ``[c_KV ; k_R]`` as they are stored, one matmul for all heads; W_UV,h after the weighted sum. No
        cached token is ever expanded, and the cache is written in place.
        """
        cfg = self.cfg
        if cfg.absorb and cache is not None and x.shape[1] <= self.ABSORB_MAX_QUERIES:
            return self._absorbed_step(x, cache)                               # decoding: checked first, no set-up
        start = 0 if cache is None else cache.position
        B, T, _ = x.shape
        H, nope, rope, d_v, d_c = (cfg.n_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim,
                                   cfg.kv_lora_rank)
        if cache is None and self.absorb_in_training:
            return self._absorbed_training(x)
        q_c, q_r = self.queries(x, start)                                      # (B, H, T, d_h), (B, H, T, d_h^R)
        c_kv = self.kv_norm(self.W_DKV(x))                                     # (B, T, d_c)
        k_r = apply_rope(self.W_KR(x), self.cos, self.sin, offset=start)       # (B, T, d_h^R)
        rows = torch.cat([c_kv, k_r], dim=-1)                                  # (B, T, d_c + d_h^R)
        if cache is not None:
            rows = cache.append(rows)                                          # (B, T_k, d_c + d_h^R), a view
        T_k = rows.shape[1]
        c_all, k_r_all = rows[..., :d_c], rows[..., d_c:]                      # (B, T_k, d_c), (B, T_k, d_h^R)
        k = torch.cat([self._heads(self.W_UK(c_all)),
                       k_r_all.unsqueeze(1).expand(B, H, T_k, rope)], dim=-1)  # (B, H, T_k, d_h + d_h^R)
        v = self._heads(self.W_UV(c_all))                                      # (B, H, T_k, d_v)
        q = torch.cat([q_c, q_r], dim=-1)                                      # (B, H, T, d_h + d_h^R)
        width = max(nope + rope, d_v)
        q, k = (nn.functional.pad(t, (0, width - nope - rope)) for t in (q, k))  # zeros change no score
        v = nn.functional.pad(v, (0, width - d_v))
        if start == 0:
            out = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        else:  # queries start..start+T-1 against keys 0..start+T-1 (is_causal would align them top-left)
            out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=~self.mask[start:start + T, :T_k],
                                                             scale=self.scale)
        return self.out_proj(out[..., :d_v].transpose(1, 2).reshape(B, T, H * d_v))

    @property
    def absorb_in_training(self) -> bool:
        """Whether :meth:`forward_fast` without a cache (training, scoring) takes :meth:`_absorbed_training`.

        With T queries against T keys the projections cost the same on both paths (q_C,h W_UK,h^T and
        W_UV,h after attention instead of expanding k_C and v: T d_c n_h (d_h + d_v) multiply-adds either
        way), so the attention widths decide: absorbed scores and mixes over d_c + d_h^R and d_c numbers per
        head, naive over d_h + d_h^R and d_v. Absorbed when 2 d_c <= d_h + d_v (and then every head shares
        one key and one value, no per-head copies); DeepSeek-V3 (d_c 512, d_h = d_v = 128) trains naive.
        """
        cfg = self.cfg
        return 2 * cfg.kv_lora_rank <= cfg.qk_nope_head_dim + cfg.v_head_dim

    def _absorbed_training(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward_fast` without a cache, absorbed: W_UK,h folded into each head's query, W_UV,h applied
        after attention, so all heads attend over ONE shared key ``[c_KV ; k_R]`` and ONE value ``c_KV``
        (``scaled_dot_product_attention`` with ``enable_gqa``: nothing is expanded per head)."""
        cfg, F = self.cfg, nn.functional
        B, T, _ = x.shape
        H, nope, rope, d_v, d_c = (cfg.n_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim,
                                   cfg.kv_lora_rank)
        q_c, q_r = self.queries(x, 0)                                          # (B, H, T, d_h), (B, H, T, d_h^R)
        c_kv = self.kv_norm(self.W_DKV(x))                                     # (B, T, d_c)
        k_r = apply_rope(self.W_KR(x), self.cos, self.sin, offset=0)           # (B, T, d_h^R)
        q = torch.cat([q_c @ self.W_UK.weight.view(H, nope, d_c), q_r], dim=-1)  # (B, H, T, d_c + d_h^R)
        k = torch.cat([c_kv, k_r], dim=-1).unsqueeze(1)                        # (B, 1, T, d_c + d_h^R): shared
        v = F.pad(c_kv, (0, rope)).unsqueeze(1)                                # (B, 1, T, d_c + d_h^R): zeros pad
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale, enable_gqa=True)
        context = out[..., :d_c] @ self.W_UV.weight.view(H, d_v, d_c).transpose(1, 2)  # (B, H, T, d_v)
        return self.out_proj(context.transpose(1, 2).reshape(B, T, H * d_v))

    FOLD_MAX_COST = 2.0  # _step_weights folds W_UK into W_UQ (W_UV into W_O) up to this many times the flops

    def _absorbed_step(self, x: torch.Tensor, cache: LatentCache) -> torch.Tensor:
        """:meth:`forward_fast`'s decoding path: a few new tokens (B, T, d) against the cache, absorbed.

        The same algebra as :meth:`forward_absorbed`, written for the per-step cost of a small model (every
        op costs microseconds of overhead whatever its size). Without autograd (``torch.no_grad``, as in
        ``generate``) it runs on :meth:`_step_weights`: the cache row [c_KV ; k_R] exactly as the other paths
        compute it (the same bits: RoPE of k_R as one multiply of the pairs and one of the swapped pairs by
        per-position tables); one matmul gives every head's query already in latent space and scaled,
        [q_C,h W_UK,h^T ; q_R,h] head by head, its RoPE one complex multiply in place; one matmul scores all
        heads against the stored rows, one mixes them, one (W_UV,h W_O,h folded) gives the output. With
        autograd (or a layout it does not cover), :meth:`_absorbed_step_autograd`: the same numbers.
        """
        if torch.is_grad_enabled() or x.dtype not in (torch.float32, torch.float64):
            return self._absorbed_step_autograd(x, cache)
        w = self._step_weights(x.dtype)
        if w is None:
            return self._absorbed_step_autograd(x, cache)
        cfg, F = self.cfg, nn.functional
        B, T, d = x.shape
        H, rope, d_v, d_c = cfg.n_heads, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank
        n = d_c + rope
        start = cache.position
        c_kv = F.rms_norm(F.linear(x, w["dkv"]), w["kv_shape"], w["kv_gain"], w["kv_eps"])  # kv_norm(W_DKV(x))
        k_r = F.linear(x, w["kr"]).view(B, T, rope // 2, 2)                             # pairs (a, b)
        k_r = k_r * w["cos2"][start:start + T] + k_r.flip(-1) * w["sin2"][start:start + T]  # (a c - b s, b c + a s)
        rows = cache.append(torch.cat([c_kv, k_r.view(B, T, rope)], dim=-1))           # (B, T_k, d_c + d_h^R)
        T_k = rows.shape[1]
        if w["dq"] is None:
            c_q = x.reshape(B * T, d)
        else:  # RMSNorm's gain is folded into w["q"]: c_Q / RMS(c_Q) with the mean square as a matmul
            c_q = F.linear(x.reshape(B * T, d), w["dq"])                               # (B T, d_c')
            c_q = c_q * torch.addmm(w["q_eps"], c_q * c_q, w["q_mean"]).rsqrt_()
        q = torch.mm(c_q, w["q"])                                                       # scaled
        rot = w["rot"][start:start + T, None]                                           # (T, 1, d_h^R / 2): e^(i p theta)
        if w["uk"] is None:                                                             # per head [q_C,h W_UK,h^T ; q_R,h]
            q = q.view(B, T, H, n)
            torch.view_as_complex(q[..., d_c:].unflatten(-1, (rope // 2, 2))).mul_(rot)
        else:                                                                           # [all q_C,h ; all q_R,h]
            q_r = q[:, -H * rope:].view(B, T, H, rope)
            torch.view_as_complex(q_r.unflatten(-1, (rope // 2, 2))).mul_(rot)
            q_lat = torch.bmm(q[:, :-H * rope].view(B * T, H, -1).transpose(0, 1), w["uk"])  # (H, B T, d_c)
            q = torch.cat([q_lat.transpose(0, 1).reshape(B, T, H, d_c), q_r], dim=-1)
        q = q.transpose(1, 2).reshape(B, H * T, n)                                      # rows: head-major
        scores = torch.bmm(q, rows.transpose(1, 2))                                     # (B, H T, T_k)
        if T > 1:
            scores = scores.view(B, H, T, T_k).masked_fill(self.mask[start:start + T, :T_k], float("-inf"))
            scores = scores.view(B, H * T, T_k)
        latent = torch.bmm(torch.softmax(scores, dim=-1), rows[..., :d_c])              # (B, H T, d_c)
        latent = latent.view(B, H, T, d_c).transpose(1, 2)                              # (B, T, H, d_c)
        if w["uv"] is None:                                                             # W_UV,h folded into W_O
            return torch.mm(latent.reshape(B * T, H * d_c), w["out"]).view(B, T, d)
        context = torch.bmm(latent.reshape(B * T, H, d_c).transpose(0, 1), w["uv"])    # (H, B T, d_v)
        return torch.mm(context.transpose(0, 1).reshape(B * T, H * d_v), w["out"]).view(B, T, d)

    FOLD_MAX_COST = 2.0  # _step_weights folds W_UK into W_UQ (W_UV into W_O) up to this many times the flops

    def _step_weights(self, dtype: torch.dtype) -> dict | None:
        """:meth:`_absorbed_step`'s fused weights, rebuilt whenever a weight changes (None: not covered).

        Built from the current weights under ``torch.no_grad`` and kept with a key of every source tensor's
        identity, storage and version counter (an optimizer step, ``load_state_dict``, ``copy_`` and
        ``.to()`` all change one), so a step never sees stale weights; checking the key costs a few
        attribute reads. Covered: plain bias-free ``nn.Linear`` and affine ``nn.RMSNorm`` modules without
        hooks, all in ``dtype``, and even offsets of the query's RoPE part (complex views).
        """
        ms, bs = self._modules, self._buffers                       # plain dicts: no nn.Module.__getattr__ per step
        mods = [ms.get(name) for name in ("W_DQ", "W_UQ", "W_QR", "W_DKV", "W_KR", "W_UK", "W_UV", "out_proj",
                                          "q_norm", "kv_norm")]
        norms = mods[-2:]
        tensors = [m._parameters.get("weight") for m in mods if m is not None] + [bs["cos"], bs["sin"]]
        key = (dtype, self.scale) + tuple(m is not None and m.eps for m in norms) + tuple(
            t is not None and (id(t), t.data_ptr(), t._version) for t in tensors) + tuple(
            m is None or (type(m) is nn.RMSNorm and m._parameters.get("weight") is not None
                          and not (m._forward_hooks or m._forward_pre_hooks)) for m in norms)
        cached = self.__dict__.get("_step_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        w = None
        if all(m is None or (type(m) is nn.Linear and m.bias is None) for m in mods[:-2]) and all(key[-2:]) \
                and all(t is not None and t.dtype == dtype for t in tensors[:-2]):
            w = self._build_step_weights(dtype)
        self.__dict__["_step_cache"] = (key, w, tensors)  # the tensors kept alive: their ids cannot be reused
        return w

    @torch.no_grad()
    def _build_step_weights(self, dtype: torch.dtype) -> dict | None:
        """``q`` = per head [W_UQ,h W_UK,h^T ; W_QR,h]^T times the softmax scale while folding W_UK costs at
        most ``FOLD_MAX_COST`` times the flops of the bmm it replaces (else [all W_UQ,h ; all W_QR,h]^T, and
        ``uk`` holds W_UK,h^T per head); ``out`` = W_UV,h W_O,h stacked over heads by the same rule (else
        W_O^T, and ``uv`` holds W_UV,h); ``rot`` = cos + i sin per position (the queries); ``cos2``, ``sin2``
        = (cos, cos) and (-sin, sin) per pair and position (the key, bit for bit as :func:`apply_rope`)."""
        cfg = self.cfg
        H, nope, rope, d_v, d_c, d = (cfg.n_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim,
                                      cfg.kv_lora_rank, cfg.d_model)
        d_in = d if self.W_DQ is None else cfg.q_lora_rank
        W_UQ = self.W_UQ.weight.view(H, nope, d_in)                                     # W_UQ,h^T
        W_UK = self.W_UK.weight.view(H, nope, d_c)                                      # W_UK,h^T
        if d_in * d_c <= self.FOLD_MAX_COST * nope * (d_in + d_c):                      # (W_UQ,h W_UK,h^T)^T: (H, d_c, d_in)
            if d_c % 2:
                return None
            folded = torch.bmm(W_UK.transpose(1, 2), W_UQ)
            w_q, uk = torch.cat([folded, self.W_QR.weight.view(H, rope, d_in)], dim=1).flatten(0, 1), None
        else:
            if (H * nope) % 2:
                return None
            w_q, uk = torch.cat([self.W_UQ.weight, self.W_QR.weight]), W_UK.contiguous()  # uk: (H, d_h, d_c)
        W_UV = self.W_UV.weight.view(H, d_v, d_c).transpose(1, 2)                       # W_UV,h: (H, d_c, d_v)
        if d_c * d <= self.FOLD_MAX_COST * d_v * (d_c + d):
            W_O = self.out_proj.weight.t().reshape(H, d_v, d)                           # W_O rows of head h
            out, uv = torch.bmm(W_UV, W_O).reshape(H * d_c, d), None                    # (H d_c, d)
        else:
            out, uv = self.out_proj.weight.t().contiguous(), W_UV.contiguous()
        cos, sin = self.cos.to(dtype), self.sin.to(dtype)                               # (context, d_h^R / 2)
        w_q = w_q * self.scale
        q_mean = q_eps = None
        if self.q_norm is not None:                                                     # c_Q's gain into the query weights
            w_q = w_q * self.q_norm.weight
            q_mean = torch.full((d_in, 1), 1.0 / d_in, dtype=dtype, device=w_q.device)
            eps = torch.finfo(dtype).eps if self.q_norm.eps is None else self.q_norm.eps
            q_eps = torch.full((1,), eps, dtype=dtype, device=w_q.device)
        kv_norm = self.kv_norm  # the source tensors themselves (the key checks they are still these):
        return {"dkv": self.W_DKV.weight, "kr": self.W_KR.weight,
                "dq": None if self.W_DQ is None else self.W_DQ.weight,
                "kv_shape": kv_norm.normalized_shape, "kv_gain": kv_norm.weight, "kv_eps": kv_norm.eps,
                "q": w_q.t().contiguous(), "uk": uk, "out": out, "uv": uv, "q_mean": q_mean, "q_eps": q_eps,
                "rot": torch.complex(cos, sin), "cos2": torch.stack([cos, cos], dim=-1),
                "sin2": torch.stack([-sin, sin], dim=-1)}

    def _absorbed_step_autograd(self, x: torch.Tensor, cache: LatentCache) -> torch.Tensor:
        """:meth:`_absorbed_step` with autograd (or a dtype without complex numbers): from the weights directly.

        The same algebra as :meth:`forward_absorbed`, written for the per-step cost of a small model:
        functional calls on the weights, the query's and the key's RoPE parts rotated together, one
        matmul for every head's scores against the stored rows ``[c_KV ; k_R]``.
        """
        cfg, F = self.cfg, nn.functional
        B, T, _ = x.shape
        H, nope, rope, d_v, d_c = (cfg.n_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim,
                                   cfg.kv_lora_rank)
        start = cache.position
        c_q = x if self.W_DQ is None else self.q_norm(F.linear(x, self.W_DQ.weight))    # (B, T, d_c') or (B, T, d)
        q_c = F.linear(c_q, self.W_UQ.weight).view(B, T, H, nope)                      # (B, T, H, d_h)
        c_kv = self.kv_norm(F.linear(x, self.W_DKV.weight))                             # (B, T, d_c)
        r = torch.cat([F.linear(c_q, self.W_QR.weight).view(B, T, H, rope),
                       F.linear(x, self.W_KR.weight).view(B, T, 1, rope)], dim=2)      # (B, T, H + 1, d_h^R)
        cos = self.cos[start:start + T, None].to(x.dtype)                              # (T, 1, d_h^R / 2)
        sin = self.sin[start:start + T, None].to(x.dtype)
        a, b = r[..., 0::2], r[..., 1::2]                                              # interleaved pairs
        r = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)    # RoPE at start + t
        rows = cache.append(torch.cat([c_kv, r[:, :, H]], dim=-1))                     # (B, T_k, d_c + d_h^R)
        T_k = rows.shape[1]
        W_UK = self.W_UK.weight.view(H, nope, d_c)                                     # W_UK,h^T: (d_h, d_c)
        q_lat = torch.bmm(q_c.transpose(0, 2).reshape(H, T * B, nope), W_UK)          # (H, T B, d_c)
        q = torch.cat([q_lat.view(H, T, B, d_c), r[:, :, :H].permute(2, 1, 0, 3)], dim=-1)  # (H, T, B, d_c + d_h^R)
        q = q.permute(2, 0, 1, 3).reshape(B, H * T, d_c + rope) * self.scale          # rows: head-major
        scores = torch.bmm(q, rows.transpose(1, 2))                                    # (B, H T, T_k)
        if T > 1:
            scores = scores.view(B, H, T, T_k).masked_fill(self.mask[start:start + T, :T_k], float("-inf"))
            scores = scores.view(B, H * T, T_k)
        latent = torch.bmm(torch.softmax(scores, dim=-1), rows[..., :d_c])              # (B, H T, d_c)
        W_UV = self.W_UV.weight.view(H, d_v, d_c).transpose(1, 2)                      # W_UV,h: (d_c, d_v)
        context = torch.bmm(latent.view(B, H, T, d_c).transpose(0, 1).reshape(H, B * T, d_c), W_UV)  # (H, B T, d_v)
        context = context.view(H, B, T, d_v).permute(1, 2, 0, 3).reshape(B, T, H * d_v)
        return F.linear(context, self.out_proj.weight)

    def forward(self, x: torch.Tensor, return_weights: bool = False, cache: LatentCache | None = None):
        name, cfg = type(self).__name__, self.cfg
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != cfg.d_model:
            raise ValueError(f"{name} expects (batch, tokens, d_model={cfg.d_model}), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}.")
        start = 0 if cache is None else cache.position
        if start + x.shape[1] > cfg.context_length:
            raise ValueError(f"{name}: {start} cached + {x.shape[1]} new tokens pass context_length="
                             f"{cfg.context_length} (the RoPE table); build the layer with a larger "
                             "context_length, or call cache.reset() and prefill the last tokens.")
        if not return_weights and self._fast_ok:
            return self.forward_fast(x, cache)
        out, weights = (self.forward_absorbed if cfg.absorb else self.forward_naive)(x, cache)
        return (out, weights) if return_weights else out


def deepseek_mla_attention(kv_lora_rank: int, qk_rope_head_dim: int, q_lora_rank: int | None = None,
                           v_head_dim: int | None = None, absorb: bool = False, rope_theta: float = 10000.0):
    """A ``GPTModel`` attention factory: :class:`DeepSeekMLA` with d_h = d_model / n_heads (Lecture 17).

    ``GPTModel`` still adds its learned position embeddings to the tokens: RoPE then gives the
    rope part of every score its relative position on top (DeepSeek itself has no learned positions).
    """
    def factory(gpt_cfg) -> DeepSeekMLA:
        if gpt_cfg.d_model % gpt_cfg.n_heads:
            raise ValueError(f"d_model={gpt_cfg.d_model} must be a multiple of n_heads={gpt_cfg.n_heads}.")
        d_h = gpt_cfg.d_model // gpt_cfg.n_heads
        return DeepSeekMLA(DeepSeekMLAConfig(
            d_model=gpt_cfg.d_model, n_heads=gpt_cfg.n_heads, kv_lora_rank=kv_lora_rank, qk_nope_head_dim=d_h,
            qk_rope_head_dim=qk_rope_head_dim, v_head_dim=v_head_dim or d_h, q_lora_rank=q_lora_rank,
            context_length=gpt_cfg.context_length, rope_theta=rope_theta, absorb=absorb))
    return factory


# --- transformers' DeepseekV3Attention layout -----------------------------------------------------

def state_dict_from_transformers(hf: dict, cfg: DeepSeekMLAConfig) -> dict:
    """Our state dict from ``DeepseekV3Attention.state_dict()`` (nn.Linear weights are (out, in)).

    ``kv_a_proj_with_mqa`` rows = [W_DKV (d_c) ; W_KR (d_h^R)]; ``kv_b_proj`` rows, head by head,
    [W_UK,h (d_h) ; W_UV,h (d_v)]; ``q_b_proj`` (or ``q_proj``) rows, head by head, [W_UQ,h ; W_QR,h].
    Both sides pair RoPE features interleaved (``rope_interleave=True``), so no permutation is needed.
    """
    H, nope, rope, d_v, d_c = (cfg.n_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim,
                               cfg.kv_lora_rank)
    compressed = cfg.q_lora_rank is not None
    q_key = "q_b_proj.weight" if compressed else "q_proj.weight"
    if q_key not in hf or hf["kv_b_proj.weight"].shape != (H * (nope + d_v), d_c):
        raise ValueError(f"not a DeepseekV3Attention state dict for {cfg}: expected {q_key} and kv_b_proj.weight "
                         f"of shape {(H * (nope + d_v), d_c)}; build the config with DeepSeekMLAConfig.from_transformers.")
    q = hf[q_key].view(H, nope + rope, -1)
    kv = hf["kv_b_proj.weight"].view(H, nope + d_v, d_c)
    out = {"W_UQ.weight": q[:, :nope].reshape(H * nope, -1), "W_QR.weight": q[:, nope:].reshape(H * rope, -1),
           "W_DKV.weight": hf["kv_a_proj_with_mqa.weight"][:d_c], "kv_norm.weight": hf["kv_a_layernorm.weight"],
           "W_KR.weight": hf["kv_a_proj_with_mqa.weight"][d_c:], "W_UK.weight": kv[:, :nope].reshape(H * nope, d_c),
           "W_UV.weight": kv[:, nope:].reshape(H * d_v, d_c), "out_proj.weight": hf["o_proj.weight"]}
    if compressed:
        out.update({"W_DQ.weight": hf["q_a_proj.weight"], "q_norm.weight": hf["q_a_layernorm.weight"]})
    return {k: v.clone() for k, v in out.items()}


def state_dict_to_transformers(ours: dict, cfg: DeepSeekMLAConfig) -> dict:
    """The inverse of :func:`state_dict_from_transformers`: a ``DeepseekV3Attention`` state dict."""
    H, nope, rope, d_v = cfg.n_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
    q = torch.cat([ours["W_UQ.weight"].view(H, nope, -1), ours["W_QR.weight"].view(H, rope, -1)], dim=1)
    kv = torch.cat([ours["W_UK.weight"].view(H, nope, -1), ours["W_UV.weight"].view(H, d_v, -1)], dim=1)
    hf = {"kv_a_proj_with_mqa.weight": torch.cat([ours["W_DKV.weight"], ours["W_KR.weight"]]),
          "kv_a_layernorm.weight": ours["kv_norm.weight"], "kv_b_proj.weight": kv.flatten(0, 1),
          "o_proj.weight": ours["out_proj.weight"]}
    if cfg.q_lora_rank is None:
        hf["q_proj.weight"] = q.flatten(0, 1)
    else:
        hf.update({"q_a_proj.weight": ours["W_DQ.weight"], "q_a_layernorm.weight": ours["q_norm.weight"],
                   "q_b_proj.weight": q.flatten(0, 1)})
    return {k: v.clone() for k, v in hf.items()}

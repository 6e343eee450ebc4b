"""The mini DeepSeek, assembled (Lecture 29): MLA + DeepSeekMoE + MTP, composed from earlier lectures.

Each part is an earlier lecture's ``utils`` class, nothing re-implemented: ``embed_tokens`` (no learned
positions: RoPE lives in the attention); ``n_layers`` :class:`DeepSeekBlock` layers (transformers' names),
``x + Attn(RMSNorm(x))`` then ``x + FFN(RMSNorm(x))``, attention :class:`utils.mla_rope.DeepSeekMLA`
(Lecture 17: decoupled RoPE, optional query compression, latent cache), FFN a dense
:class:`utils.moe.experts.SwiGLUExpert` (``d_ff``) in the first ``first_k_dense`` layers and
:class:`utils.moe.DeepSeekMoE` (Lecture 21) after; final RMSNorm ``norm`` and ``lm_head`` (tied with
``tie_embeddings``); ``mtp_depth`` MTP modules (Lecture 24's :class:`utils.deepseek_mtp.MTPModule` with a
DeepSeekBlock and its own ``shared_head.norm``, V3's layout) sharing the embedding and head tensors.
Loss = main CE + lambda / D * sum_k CE_k + the sequence-wise balance loss of every MoE layer; when only the
loss is needed (``return_logits=False``, what :func:`deepseek_loss` asks for) each cross-entropy runs through
:func:`linear_cross_entropy`, the output head a chunk of rows at a time, never all (B, T, V) logits at once.

Without a cache (training) the attention takes the naive path (or, with a narrow latent, 2 d_c <= d_h + d_v,
the absorbed one: :attr:`utils.mla_rope.DeepSeekMLA.absorb_in_training`); with a cache (generation,
``generate(..., use_cache=True)``) the absorbed path over the latent cache (d_c + d_h^R numbers per token
and layer); both agree within 1e-5. Initialisation N(0, 0.02^2) for every Linear and Embedding (GPT-2's;
DeepSeek-V2/V3 use std 0.006 at their width, V3 report section 4.2), RMSNorm weights 1, correction biases 0.
Not modelled: YaRN.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from utils import configs
from utils.deepseek_mtp import IGNORE_INDEX, MTPModule, mtp_loss, mtp_targets
from utils.kv_cache import KVCache
from utils.mla_rope import DeepSeekMLA, DeepSeekMLAConfig
from utils.moe.deepseek import DeepSeekMoE, DeepSeekMoEConfig, moe_layers
from utils.moe.experts import SwiGLUExpert

__all__ = ["DeepSeekConfig", "DeepSeekBlock", "DeepSeekMTPModule", "DeepSeekModel", "DeepSeekOutput",
           "DeepSeekParameterCount", "model_spec", "count_parameters", "deepseek_loss", "MTPLambdaSchedule",
           "linear_cross_entropy"]


@dataclass(frozen=True)
class DeepSeekConfig:
    """Every size of a DeepSeek-V2/V3-style model (Lecture 29); checked when built (ValueError saying what to change).

    Attention sizes are :class:`utils.mla_rope.DeepSeekMLAConfig`'s, routing options
    :class:`utils.moe.DeepSeekMoEConfig`'s (built by :meth:`mla_config` / :meth:`moe_config`, which check them).
    ``first_k_dense == n_layers`` gives a dense-only model. ``mtp_lambda``: weight of the MTP loss.
    """

    vocab_size: int
    context_length: int
    d_model: int
    n_layers: int
    n_heads: int
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    q_lora_rank: int | None
    d_ff: int
    first_k_dense: int
    n_routed: int
    n_shared: int
    top_k: int
    expert_hidden: int
    n_groups: int = 1
    topk_groups: int = 1
    scoring: str = "sigmoid"
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0
    gamma: float = 0.001
    seq_aux_alpha: float = 0.0
    mtp_depth: int = 0
    mtp_lambda: float = 0.3
    tie_embeddings: bool = False
    rope_theta: float = 10000.0
    eps: float = 1e-6
    dropout: float = 0.0

    def __post_init__(self):
        def need(ok: bool, message: str):
            if not ok:
                raise ValueError(message)

        for name in ("vocab_size", "context_length", "d_model", "n_layers", "n_heads", "d_ff", "first_k_dense",
                     "mtp_depth", "n_shared", "n_routed", "top_k", "expert_hidden", "n_groups", "topk_groups"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool), f"DeepSeekConfig.{name} must be an "
                 f"integer, got {value!r}.")
            need(value > 0 or name in ("first_k_dense", "mtp_depth", "n_shared"),
                 f"DeepSeekConfig.{name} must be a positive integer, got {value!r}.")
        need(0 <= self.first_k_dense <= self.n_layers, f"first_k_dense = {self.first_k_dense} must lie in "
             f"[0, n_layers = {self.n_layers}] (n_layers gives a dense-only model).")
        need(self.mtp_depth >= 0, f"mtp_depth = {self.mtp_depth} must be >= 0 (0: no MTP module; V3 uses 1).")
        need(self.mtp_lambda >= 0, f"mtp_lambda must be >= 0 (V3: 0.3, then 0.1), got {self.mtp_lambda!r}.")
        need(0.0 <= self.dropout < 1.0, f"dropout must lie in [0, 1), got {self.dropout!r}.")
        need(self.eps > 0, f"eps (the RMSNorm epsilon) must be > 0, got {self.eps!r}.")
        self.mla_config()  # the attention's own checks (sizes, even RoPE width, q_lora_rank, rope_theta)
        self.moe_config()  # the MoE's own checks (top-k vs experts and groups, scoring, gamma, alpha)

    def _part(self, kind, **extra):
        return kind(**{f.name: getattr(self, f.name) for f in dataclasses.fields(kind) if hasattr(self, f.name)},
                    **extra)

    def mla_config(self, absorb: bool = False) -> DeepSeekMLAConfig:
        """The attention sizes as a :class:`utils.mla_rope.DeepSeekMLAConfig` (checked by it)."""
        return self._part(DeepSeekMLAConfig, absorb=absorb)

    def moe_config(self) -> DeepSeekMoEConfig:
        """The MoE layers' options as a :class:`utils.moe.DeepSeekMoEConfig` (checked by it)."""
        return self._part(DeepSeekMoEConfig)

    def is_moe_layer(self, index: int) -> bool:
        """Layer ``index`` >= first_k_dense has a DeepSeekMoE FFN (MTP block k is layer n_layers + k - 1);
        a dense-only model (first_k_dense == n_layers) keeps its MTP blocks dense too."""
        return self.first_k_dense <= index and self.first_k_dense < self.n_layers

    def cache_elements_per_token(self) -> int:
        """d_c + d_h^R: numbers cached per token and layer (576 for V3, whatever n_heads is)."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    def cache_bytes_per_token(self, dtype: torch.dtype = torch.bfloat16, per_layer: bool = True) -> int:
        """Latent-cache bytes per token, per layer (V3 in bf16: 1,152) or over all layers (70,272)."""
        n = self.cache_elements_per_token() * torch.empty((), dtype=dtype).element_size()
        return n if per_layer else n * self.n_layers

    # --- named configurations (REFERENCE.md; context 4096, the pre-training length: YaRN is not modelled)
    _REAL = dict(context_length=4096, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128)

    @classmethod
    def v3(cls, **overrides) -> "DeepSeekConfig":
        """DeepSeek-V3 (671B / 37B): 7168 wide, 61 layers (3 dense), 256 routed + 1 shared, top-8, MTP 1."""
        return cls(**{**cls._REAL, **dict(
            vocab_size=129280, d_model=7168, n_layers=61, n_heads=128, q_lora_rank=1536, d_ff=18432, first_k_dense=3,
            n_routed=256, n_shared=1, top_k=8, expert_hidden=2048, n_groups=8, topk_groups=4, scoring="sigmoid",
            routed_scaling_factor=2.5, seq_aux_alpha=0.0001, mtp_depth=1), **overrides})

    @classmethod
    def v2(cls, **overrides) -> "DeepSeekConfig":
        """DeepSeek-V2 (236B / 21B): 5120 wide, 60 layers (1 dense), 160 routed + 2 shared, top-6, softmax.

        Groups are scored by their top-2 sum (as transformers does; V2's own code takes the max)."""
        return cls(**{**cls._REAL, **dict(
            vocab_size=102400, d_model=5120, n_layers=60, n_heads=128, q_lora_rank=1536, d_ff=12288, first_k_dense=1,
            n_routed=160, n_shared=2, top_k=6, expert_hidden=1536, n_groups=8, topk_groups=3, scoring="softmax",
            norm_topk_prob=False, routed_scaling_factor=16.0), **overrides})

    @classmethod
    def v2_lite(cls, **overrides) -> "DeepSeekConfig":
        """DeepSeek-V2-Lite (15.7B / 2.4B): 2048 wide, 27 layers, no query compression, 64 + 2 experts, top-6."""
        return cls(**{**cls._REAL, **dict(
            vocab_size=102400, d_model=2048, n_layers=27, n_heads=16, q_lora_rank=None, d_ff=10944, first_k_dense=1,
            n_routed=64, n_shared=2, top_k=6, expert_hidden=1408, scoring="softmax", norm_topk_prob=False),
            **overrides})

    @classmethod
    def small(cls, tokenizer=None, **overrides) -> "DeepSeekConfig":
        """The capstone's model (Lectures 29-30): 128 wide, 4 layers (first dense), 8 routed top-2 + 1 shared, MTP 1.

        ``tokenizer``: the compact TinyStories tokenizer (its ``vocab_size``) or an int; or ``vocab_size=``.
        """
        vocab = overrides.pop("vocab_size", tokenizer if isinstance(tokenizer, int) else
                              getattr(tokenizer, "vocab_size", None))
        if vocab is None:
            raise ValueError("DeepSeekConfig.small needs the vocabulary: pass the tokenizer "
                             "(DeepSeekConfig.small(tokenizer)) or vocab_size=...")
        return cls(**{**dict(
            vocab_size=vocab, context_length=256, d_model=128, n_layers=4, n_heads=4, kv_lora_rank=64,
            qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32, q_lora_rank=96, d_ff=384, first_k_dense=1,
            n_routed=8, n_shared=1, top_k=2, expert_hidden=96, seq_aux_alpha=0.0001, mtp_depth=1), **overrides})

    @classmethod
    def tiny(cls, **overrides) -> "DeepSeekConfig":
        """A few-thousand-parameter model for checks: 32 wide, 3 layers (first dense), 8 experts top-2, MTP 1."""
        return cls(**{**dict(
            vocab_size=97, context_length=32, d_model=32, n_layers=3, n_heads=4, kv_lora_rank=16,
            qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, q_lora_rank=24, d_ff=64, first_k_dense=1,
            n_routed=8, n_shared=1, top_k=2, expert_hidden=16, seq_aux_alpha=0.0001, mtp_depth=1), **overrides})


# --- parameter accounting -------------------------------------------------------------------------------

@dataclass(frozen=True)
class DeepSeekParameterCount:
    """Total and activated parameters of the main model, embedding counted in both (Lecture 29), and the
    parameters the MTP modules add (their embedding and head are the main model's, so not counted again)."""

    total: int
    activated: int
    mtp_total: int
    mtp_activated: int


def model_spec(cfg: DeepSeekConfig, name: str = "DeepSeekConfig") -> configs.ModelSpec:
    """``cfg`` as Lecture 02's :class:`utils.configs.ModelSpec` (so its counter counts it)."""
    return configs.ModelSpec(
        name, "", cfg.vocab_size, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.context_length, cfg.d_ff,
        ffn="swiglu", bias=False, tied_embeddings=cfg.tie_embeddings, learned_positions=False,
        mla=configs.MLASpec(cfg.kv_lora_rank, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim,
                            cfg.q_lora_rank),
        moe=configs.MoESpec(cfg.n_routed, cfg.n_shared, cfg.top_k, cfg.expert_hidden, cfg.first_k_dense,
                            cfg.n_groups, cfg.topk_groups, cfg.routed_scaling_factor, cfg.scoring,
                            gate_bias=cfg.scoring == "sigmoid"))


def count_parameters(cfg: DeepSeekConfig) -> DeepSeekParameterCount:
    """Count ``cfg`` with :func:`utils.configs.count_parameters` (Lecture 02), embedding counted as activated.

    The MoE correction bias counts for sigmoid scoring (V3 stores it) and not for softmax (V2 has none).
    V3: 671.03B total, 37.55B activated; its MTP module adds 11.6B (embedding and head shared; with
    copies of both, about 13.5B: the published 685B = 671B + 14B).
    """
    main = configs.count_parameters(model_spec(cfg))
    lookup = 0 if cfg.tie_embeddings else cfg.vocab_size * cfg.d_model
    mtp_total = mtp_activated = 0
    if cfg.mtp_depth:
        moe = cfg.is_moe_layer(cfg.n_layers)
        one = configs.count_parameters(model_spec(dataclasses.replace(
            cfg, n_layers=1, first_k_dense=0 if moe else 1, tie_embeddings=True)))  # one layer + embedding + norm
        extra = one.breakdown["embedding"] + cfg.d_model  # the (tied) embedding and the final norm
        own = 2 * cfg.d_model + 2 * cfg.d_model * cfg.d_model + cfg.d_model  # hnorm, enorm, eh_proj, shared_head.norm
        mtp_total = cfg.mtp_depth * (one.total - extra + own)
        mtp_activated = cfg.mtp_depth * (one.activated - extra + own)
    return DeepSeekParameterCount(main.total, main.activated + lookup, mtp_total, mtp_activated)


# --- the output head and the cross-entropy, a chunk of rows at a time ---------------------------------------

LOSS_CHUNK_ELEMENTS = 1 << 21  # logits held at once by linear_cross_entropy: rows per chunk = this // vocab


class _LinearCrossEntropy(torch.autograd.Function):
    """mean CE(h W^T, targets) without the (N, V) logits: each chunk of rows makes its logits, its loss and
    (when a gradient is wanted) its gradients d/dh and d/dW at once, then drops the logits.

    The gradient of the mean CE with respect to a row's logits is (softmax - one_hot(target)) / n_valid,
    so the chunk's logits turn into that gradient in place; backward only scales the stored gradients.
    The same matmuls as the plain head (one forward, two backward), no (N, V) tensor kept for backward.
    """

    @staticmethod
    def forward(ctx, h, weight, targets, chunk_rows: int, ignore_index: int):
        N = h.shape[0]
        valid = targets != ignore_index                                     # (N,)
        n_valid = valid.sum()
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(h) if (want_h or want_w) else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if want_w else None
        total = h.new_zeros((), dtype=torch.float32)
        inv = 1.0 / n_valid.clamp(min=1).to(torch.float32)
        for s in range(0, N, chunk_rows):
            hc, tc, vc = h[s:s + chunk_rows], targets[s:s + chunk_rows], valid[s:s + chunk_rows]
            logits = (hc @ weight.T).float()                                # (c, V): the only logits alive
            safe = tc.clamp(min=0).unsqueeze(1)                             # ignored rows point at id 0 (masked)
            picked = logits.gather(1, safe)                                 # (c, 1): the target's logit
            top = logits.amax(dim=1, keepdim=True)                          # (c, 1)
            e = logits.sub_(top).exp_()                                     # in place: exp(logit - max), one pass
            z = e.sum(dim=1, keepdim=True)                                  # (c, 1)
            weight_row = vc.unsqueeze(1).float()                            # 0 for ignored rows
            total = total + ((top + z.log() - picked) * weight_row).sum()  # log-sum-exp - target logit
            if grad_h is not None:
                row = weight_row * inv                                      # d mean / d row loss
                g = e.mul_(row / z)                                         # softmax / n_valid, in place
                g.scatter_add_(1, safe, -row)                               # - one_hot(target) / n_valid
                g = g.to(h.dtype)
                torch.mm(g, weight, out=grad_h[s:s + chunk_rows])           # (c, d)
                if grad_w is not None:
                    grad_w.addmm_(g.T.float(), hc.float())                  # (V, d)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = (h.dtype, weight.dtype)
        return total / n_valid.to(torch.float32)  # 0 / 0 = nan when no target counts, as F.cross_entropy

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        gh = None if grad_h is None or not ctx.needs_input_grad[0] else (grad_h * grad_out).to(ctx.dtypes[0])
        gw = None if grad_w is None else (grad_w * grad_out).to(ctx.dtypes[1])
        return gh, gw, None, None, None


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         ignore_index: int = IGNORE_INDEX, chunk_rows: int | None = None) -> torch.Tensor:
    """``F.cross_entropy(h @ weight.T, targets, ignore_index=...)`` (the mean over counted targets), computed
    a chunk of rows at a time so the (N, V) logits never exist at once (Lecture 30's training step).

    h (..., d), weight (V, d) (the output head's), targets (...) ids. ``chunk_rows``: rows per chunk
    (default: ``LOSS_CHUNK_ELEMENTS // V``, about 8 MiB of fp32 logits). Peak extra memory: one chunk's
    logits plus the (N, d) and (V, d) gradients, instead of the (N, V) logits, their log-softmax and
    their gradient. Not twice differentiable.
    """
    d, V = weight.shape[1], weight.shape[0]
    if h.shape[-1] != d or targets.shape != h.shape[:-1]:
        raise ValueError(f"linear_cross_entropy: h {tuple(h.shape)} must end in the head's width {d} and targets "
                         f"{tuple(targets.shape)} must have h's leading shape {tuple(h.shape[:-1])}.")
    if targets.dtype != torch.long:
        raise ValueError(f"targets must be a LongTensor of ids, got {targets.dtype}.")
    rows = chunk_rows if chunk_rows is not None else max(1, LOSS_CHUNK_ELEMENTS // V)
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}.")
    return _LinearCrossEntropy.apply(h.reshape(-1, d), weight, targets.reshape(-1), rows, ignore_index)


# --- the model -------------------------------------------------------------------------------------------

class DeepSeekBlock(nn.Module):
    """One DeepSeek decoder layer (Lecture 29): x + Attn(RMSNorm(x)), then x + FFN(RMSNorm(x)).

    ``mlp``: a dense SwiGLU (``d_ff``) or a DeepSeekMoE, by :meth:`DeepSeekConfig.is_moe_layer`.
    ``forward(x (B, T, d), cache=None) -> (B, T, d)``; ``cache``: this layer's LatentCache. ``absorb``:
    None (default) takes the absorbed attention path with a cache and the naive one without.
    """

    def __init__(self, cfg: DeepSeekConfig, layer_index: int = 0):
        super().__init__()
        self.layer_index, self.absorb = layer_index, None
        self.input_layernorm = nn.RMSNorm(cfg.d_model, eps=cfg.eps)
        self.self_attn = DeepSeekMLA(cfg.mla_config())
        self.post_attention_layernorm = nn.RMSNorm(cfg.d_model, eps=cfg.eps)
        self.mlp = DeepSeekMoE(cfg.moe_config()) if cfg.is_moe_layer(layer_index) else SwiGLUExpert(cfg.d_model,
                                                                                                       cfg.d_ff)
        self.drop = nn.Dropout(cfg.dropout)

    @property
    def attn(self) -> DeepSeekMLA:
        """``self_attn`` under GPT's name (``utils.kv_cache.KVCache.for_model`` looks for ``block.attn``)."""
        return self.self_attn

    def forward(self, x: torch.Tensor, cache=None) -> torch.Tensor:
        absorb = (cache is not None) if self.absorb is None else bool(self.absorb)
        if self.self_attn.cfg.absorb != absorb:  # pick DeepSeekMLA's path (its cfg.absorb)
            self.self_attn.cfg = dataclasses.replace(self.self_attn.cfg, absorb=absorb)
        drop = self.training and self.drop.p > 0  # otherwise nn.Dropout is the identity: skip its call
        h = self._norm(self.input_layernorm, x)  # (B, T, d)
        a = self.self_attn(h) if cache is None else self.self_attn(h, cache=cache)
        x = x + (self.drop(a) if drop else a)
        m = self.mlp(self._norm(self.post_attention_layernorm, x))
        return x + (self.drop(m) if drop else m)  # (B, T, d)

    @staticmethod
    def _norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``norm(x)`` for an nn.RMSNorm, called functionally (the same numbers, no module call: a decoding step
        is short enough for the call's overhead to show); the module itself if it has hooks."""
        if type(norm) is not nn.RMSNorm or norm._forward_hooks or norm._forward_pre_hooks:
            return norm(x)
        return F.rms_norm(x, norm.normalized_shape, norm.weight, norm.eps)


class DeepSeekMTPModule(MTPModule):
    """Lecture 24's MTP module with a :class:`DeepSeekBlock` and its own ``shared_head.norm`` (V3's layout)."""

    def __init__(self, cfg: DeepSeekConfig, layer_index: int):
        super().__init__(cfg, block=DeepSeekBlock(cfg, layer_index))
        self.shared_head = nn.ModuleDict({"norm": nn.RMSNorm(cfg.d_model, eps=cfg.eps)})


class DeepSeekOutput(NamedTuple):
    """What ``DeepSeekModel(idx, targets)`` returns: loss = main_loss + mtp_loss + balance_loss."""

    logits: torch.Tensor | None  # (B, T, V); None with return_logits=False
    loss: torch.Tensor
    main_loss: torch.Tensor
    mtp_loss: torch.Tensor
    balance_loss: torch.Tensor


class DeepSeekModel(nn.Module):
    """The mini DeepSeek (Lecture 29): ids (B, T) -> logits (B, T, V), or a :class:`DeepSeekOutput` with targets.

    Also the speculative-decoding protocol of :func:`utils.mtp.speculative_generate` (``hidden_states``,
    ``logits_from_hidden``, ``mtp_draft_logits``, ``new_cache``, ``new_mtp_cache``).
    """

    def __init__(self, cfg: DeepSeekConfig):
        super().__init__()
        if not isinstance(cfg, DeepSeekConfig):
            raise ValueError(f"DeepSeekModel needs a DeepSeekConfig, got {type(cfg).__name__}.")
        self.cfg = cfg
        self.mtp_lambda = cfg.mtp_lambda  # a plain float: MTPLambdaSchedule changes it during training
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(DeepSeekBlock(cfg, i) for i in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.mtp = nn.ModuleList(DeepSeekMTPModule(cfg, cfg.n_layers + k) for k in range(cfg.mtp_depth))
        for module in self.modules():  # N(0, 0.02^2); the meta device (counting V3) holds no values to set
            if isinstance(module, (nn.Linear, nn.Embedding)) and not module.weight.is_meta:
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    @property
    def blocks(self) -> nn.ModuleList:
        """``layers`` under GPT's name (``KVCache.for_model`` and ``generate`` use it)."""
        return self.layers

    @property
    def embedding(self) -> nn.Embedding:
        """The embedding the MTP modules share: ``embed_tokens`` itself."""
        return self.embed_tokens

    @property
    def shared_head(self) -> nn.Linear:
        """The output head the MTP modules share: ``lm_head`` itself."""
        return self.lm_head

    def use_absorbed(self, absorb: bool | None) -> None:
        """Force every attention (MTP blocks too) onto the absorbed (True) or naive (False) path; None: auto."""
        for block in self.modules():
            if isinstance(block, DeepSeekBlock):
                block.absorb = absorb

    def new_cache(self, batch_size: int = 1, capacity: int | None = None) -> KVCache:
        """An empty latent cache: one (B, capacity, d_c + d_h^R) LatentCache per layer."""
        return KVCache.for_model(self, batch_size, capacity)

    def new_mtp_cache(self, batch_size: int = 1, capacity: int | None = None) -> KVCache:
        """An empty one-layer cache for MTP module 1's block (speculative decoding)."""
        if not self.mtp:
            raise ValueError("this model has no MTP module (mtp_depth = 0): build it with mtp_depth >= 1.")
        w = self.embed_tokens.weight
        return KVCache([self.mtp[0].block.self_attn.new_cache(batch_size, capacity, dtype=w.dtype, device=w.device)])

    def _check_ids(self, idx, start: int = 0, values: bool = True) -> None:
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.dtype != torch.long or idx.shape[1] == 0:
            got = f"{tuple(idx.shape)} {idx.dtype}" if isinstance(idx, torch.Tensor) else type(idx).__name__
            raise ValueError(f"idx must be a non-empty (batch, tokens) LongTensor of ids, got {got}; "
                             "add a batch axis with idx.unsqueeze(0).")
        if start + idx.shape[1] > self.cfg.context_length:
            raise ValueError(f"{start} cached + {idx.shape[1]} new tokens exceed context_length="
                             f"{self.cfg.context_length}: crop to the last context_length tokens (or reset the cache).")
        if values and (idx.min() < 0 or idx.max() >= self.cfg.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.cfg.vocab_size}), got [{int(idx.min())}, "
                             f"{int(idx.max())}]; encode with the model's vocabulary.")

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Ids (B, T) -> the last layer's output h (B, T, d) BEFORE the final norm; appends to ``cache``."""
        start = 0 if cache is None else cache.position
        # ids out of range: on the CPU the embedding's own bounds check finds them at no extra cost (its IndexError
        # becomes the ValueError below); elsewhere (CUDA would fail with a device-side assert) check first
        on_cpu = isinstance(idx, torch.Tensor) and idx.device.type == "cpu"
        self._check_ids(idx, start, values=not on_cpu)
        if cache is not None and len(cache) != len(self.layers):
            raise ValueError(f"the cache has {len(cache)} layers, the model {len(self.layers)}: use model.new_cache().")
        try:
            x = self.embed_tokens(idx)  # (B, T, d)
        except IndexError:
            try:
                self._check_ids(idx, start)  # the ValueError when an id is out of range
            except ValueError as bad:
                raise bad from None
            raise
        if self.training and self.drop.p > 0:
            x = self.drop(x)
        for i, layer in enumerate(self.layers):
            x = layer(x, cache=None if cache is None else cache.layers[i])
        return x

    def logits_from_hidden(self, h: torch.Tensor) -> torch.Tensor:
        """h (B, T, d) -> logits (B, T, V): final norm, then the output head."""
        return self.lm_head(self.norm(h))

    def mtp_draft_logits(self, h: torch.Tensor, next_ids: torch.Tensor, cache=None) -> torch.Tensor:
        """MTP module 1 on (h_i, Emb(next_ids_i)) (B, T, d), (B, T) -> draft logits (B, T, V) for token i + 2."""
        if not self.mtp:
            raise ValueError("this model has no MTP module (mtp_depth = 0): build it with mtp_depth >= 1.")
        module = self.mtp[0]
        layer_cache = cache.layers[0] if isinstance(cache, KVCache) else cache
        h1 = module(h, self.embed_tokens(next_ids), cache=layer_cache)  # (B, T, d)
        return self.lm_head(module.shared_head["norm"](h1))

    def mtp_logits(self, h: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        """The D modules' logits (B, n, D, V), n = len(seq) - D: [:, i, k-1] scores seq[i + k + 1] (Lecture 24).

        ``h`` (B, >= n, d): the trunk's hidden states of seq's first tokens; ``seq`` (B, n + D) the full sequence.
        """
        return torch.stack([self.lm_head(x) for x in self._mtp_normed(h, seq)], dim=2)

    def _mtp_normed(self, h: torch.Tensor, seq: torch.Tensor) -> list[torch.Tensor]:
        """Each MTP module's output after its ``shared_head.norm`` (B, n, d), the input of the shared head."""
        D = len(self.mtp)
        n = seq.shape[1] - D
        x, out = h[:, :n], []  # h^0 at the positions where every depth has its input token seq[i + k]
        for k, module in enumerate(self.mtp, start=1):
            x = module(x, self.embed_tokens(seq[:, k:k + n]))  # h^k (B, n, d)
            out.append(module.shared_head["norm"](x))
        return out

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None, *,
                return_logits: bool = True):
        """Ids (B, T) -> logits (B, T, V); with ``targets`` (B, T) a :class:`DeepSeekOutput`.

        MTP needs the whole sequence: ``targets`` must be ``idx`` shifted by one (``targets[:, i] = t_{i+1}``),
        so the full sequence is ``[idx[:, 0], targets]`` and depth k's target t_{i+k+1} is ``targets[:, i + k]``.
        ``return_logits=False`` (with targets; what :func:`deepseek_loss` uses): the losses only, each head's
        logits made and dropped a chunk of rows at a time (:func:`linear_cross_entropy`), ``logits`` None.
        """
        h = self.hidden_states(idx, cache)  # (B, T, d)
        if targets is None:
            return self.logits_from_hidden(h)  # (B, T, V)
        logits = self.logits_from_hidden(h) if return_logits else None  # (B, T, V)
        if cache is not None:
            raise ValueError("targets and a cache do not go together: compute losses without a cache.")
        if not isinstance(targets, torch.Tensor) or targets.shape != idx.shape or targets.dtype != torch.long:
            got = tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__
            raise ValueError(f"targets must be a LongTensor of the ids' shape {tuple(idx.shape)}, got {got}.")
        if logits is not None:
            main = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        else:
            main = linear_cross_entropy(self.norm(h), self.lm_head.weight, targets)
        mtp = main.new_zeros(())
        if self.mtp:
            if not torch.equal(targets[:, :-1], idx[:, 1:]):
                raise ValueError("with MTP modules the targets must be the ids shifted by one "
                                 "(targets[:, :-1] == idx[:, 1:]), as the course's data loaders yield them.")
            seq = torch.cat([idx[:, :1], targets], dim=1)  # (B, T + 1): the full sequence
            depth_targets = mtp_targets(seq, len(self.mtp))  # (B, n, D)
            if logits is not None:
                mtp = mtp_loss(self.mtp_logits(h, seq), depth_targets, self.mtp_lambda)
            else:  # lam / D * sum_k CE_k, as mtp_loss, each CE_k chunked
                losses = [linear_cross_entropy(x, self.lm_head.weight, depth_targets[:, :, k])
                          for k, x in enumerate(self._mtp_normed(h, seq))]
                mtp = self.mtp_lambda / len(losses) * torch.stack(losses).sum()
        aux = [m.aux_loss for m in moe_layers(self, DeepSeekMoE)]
        balance = torch.stack(aux).sum().to(main.dtype) if aux else main.new_zeros(())
        return DeepSeekOutput(logits, main + mtp + balance, main, mtp, balance)


def deepseek_loss(model: DeepSeekModel, x: torch.Tensor, y: torch.Tensor):
    """A :class:`utils.trainer.Trainer` ``loss_fn`` (Lecture 29): (loss, {"lm", "mtp", "balance"}).

    The losses only: no (B, T, V) logits are kept (``return_logits=False``, the chunked head + cross-entropy).
    """
    out = model(x, y, return_logits=False)
    return out.loss, {"lm": out.main_loss.item(), "mtp": out.mtp_loss.item(), "balance": out.balance_loss.item()}


class MTPLambdaSchedule:
    """A Trainer hook (Lecture 29): MTP weight ``before`` (V3: 0.3) for steps < ``switch_step``, then ``after`` (0.1).

    Its state (the current weight and the schedule) goes into the Trainer's checkpoints.
    """

    def __init__(self, switch_step: int, before: float = 0.3, after: float = 0.1):
        if isinstance(switch_step, bool) or not isinstance(switch_step, int) or switch_step < 1:
            raise ValueError(f"switch_step must be a positive integer step, got {switch_step!r}.")
        if before < 0 or after < 0:
            raise ValueError(f"the MTP weights must be >= 0, got before={before}, after={after}.")
        self.switch_step, self.before, self.after = switch_step, float(before), float(after)
        self.current = self.before

    def before_step(self, step: int, model: nn.Module, history=None) -> None:
        self.current = self.before if step < self.switch_step else self.after
        model.mtp_lambda = self.current

    def state_dict(self) -> dict:
        return {"switch_step": self.switch_step, "before": self.before, "after": self.after, "current": self.current}

    def load_state_dict(self, state: dict) -> None:
        saved = (state["switch_step"], state["before"], state["after"])
        mine = (self.switch_step, self.before, self.after)
        if saved != mine:
            raise ValueError(f"the checkpoint's MTP schedule (switch_step, before, after) = {saved} differs from "
                             f"this one {mine}: resume with the same schedule.")
        self.current = float(state["current"])

"""DeepSeek-V3's sequential multi-token prediction modules (Lecture 24; V3 report, section 2.2).

Depth k = 1 ... D keeps the causal chain: it combines the previous depth's hidden state at
position i with the embedding of token t_{i+k} and predicts token t_{i+k+1}::

    h'^k_i = M_k [RMSNorm(h^{k-1}_i) ; RMSNorm(Emb(t_{i+k}))]     M_k: Linear(2d -> d, bias=False)
    h^k    = TRM_k(h'^k)                                          one transformer block
    P^k    = OutHead(h^k)                                         the main model's norm + head, shared
    L_MTP  = lambda / D * sum_k CE_k

The parts carry the names of DeepSeek-V3's checkpoint (``hnorm``, ``enorm``, ``eh_proj``,
``block``); the embedding and the output head are the main model's own tensors, not copies.
Our GPT's token embedding (without the learned positions: the hidden state already carries the
position) plays ``Emb``; its ``final_norm`` + ``out_head`` play ``OutHead``.

Logits convention: ``mtp_logits[:, i, k - 1]`` scores token ``t_{i+k+1}`` for positions
``i = 0 ... T - D - 1`` (every depth has its input token there), so ids (B, T) give
(B, T - D, D, V); the lecture's model (T = 8, D = 3) gives (1, 5, 3, 5000). Where
``i + k + 1 >= T`` (the last position of depth D) there is no target: ``IGNORE_INDEX``.

Lecture 25: :class:`DeepSeekMTP` also implements the speculative-decoding protocol of
:func:`utils.mtp.speculative_generate` (``new_cache``, ``new_mtp_cache``, ``hidden_states``,
``logits_from_hidden``, ``mtp_draft_logits``): module 1 drafts the token after next.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from utils.gpt import FeedForward, GPTConfig, GPTModel, TransformerBlock, default_attention
from utils.kv_cache import KVCache, supports_cache

IGNORE_INDEX = -100
"""Target of positions without a target; ``F.cross_entropy``'s default (as in :mod:`utils.mtp`)."""

RMS_EPS = 1e-6  # DeepSeek-V3's rms_norm_eps


def _check_depth(depth) -> None:
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth (the number of MTP modules D) must be an integer >= 1, got {depth!r}; "
                         "DeepSeek-V3 uses D = 1.")


def _check_ids(idx, depth: int, need: int) -> None:
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.dtype != torch.long:
        shape = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise ValueError(f"idx must be a (batch, tokens) LongTensor of ids, got {shape}; "
                         "add a batch axis with idx.unsqueeze(0).")
    if idx.shape[1] < need:
        raise ValueError(f"a sequence of {idx.shape[1]} tokens is too short for MTP depth {depth}: use at least "
                         f"{need} tokens (depth + {need - depth}) or a smaller depth.")


class MTPModule(nn.Module):
    """One MTP module of depth k (Lecture 24): (h^{k-1}, Emb(t_{i+k})) (B, n, d) each -> h^k (B, n, d).

    ``hnorm``/``enorm``: RMSNorms of the hidden state and of the embedding; ``eh_proj``: the
    projection M_k from the concatenation [hnorm(h); enorm(emb)] (2d) back to d; ``block``: one
    transformer block of the main model's kind. It holds no embedding and no head.
    ``block``: a ready-made block (Lecture 29's DeepSeek decoder block) instead of a GPT
    :class:`utils.gpt.TransformerBlock` built from ``attention`` and ``feed_forward``; it must accept
    ``block(x)`` and ``block(x, cache=layer_cache)``.
    """

    def __init__(self, cfg, attention=default_attention, feed_forward=FeedForward, block: nn.Module | None = None):
        super().__init__()
        d = cfg.d_model
        self.hnorm = nn.RMSNorm(d, eps=RMS_EPS)
        self.enorm = nn.RMSNorm(d, eps=RMS_EPS)
        self.eh_proj = nn.Linear(2 * d, d, bias=False)
        self.block = block if block is not None else TransformerBlock(cfg, attention(cfg), feed_forward(cfg))

    def combine(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """h'^k = M_k [RMSNorm(h); RMSNorm(emb)]: (B, n, d) and (B, n, d) -> (B, n, d). Paper order: hidden first."""
        if h.shape != emb.shape:
            raise ValueError(f"h {tuple(h.shape)} and emb {tuple(emb.shape)} must have the same shape "
                             "(one embedded token t_{i+k} per hidden state h_i).")
        return self.eh_proj(torch.cat([self.hnorm(h), self.enorm(emb)], dim=-1))  # (B, n, 2d) -> (B, n, d)

    def forward(self, h: torch.Tensor, emb: torch.Tensor, cache=None) -> torch.Tensor:
        """h^k (B, n, d); ``cache``: the block's own per-layer KV cache (speculative decoding, Lecture 25)."""
        x = self.combine(h, emb)
        return self.block(x) if cache is None else self.block(x, cache=cache)  # (B, n, d)


class DeepSeekMTP(nn.Module):
    """A :class:`utils.gpt.GPTModel` plus D sequential MTP modules (Lecture 24).

    The modules share ``model.tok_emb`` and ``model.final_norm`` + ``model.out_head`` (the same
    tensors). ``forward(idx)`` returns the main logits (B, T, V), identical to ``model(idx)``, and
    the MTP logits (B, T - D, D, V). At inference the modules are dropped: ``self.model`` alone is
    the next-token model, unchanged.
    """

    def __init__(self, model: GPTModel, depth: int, attention=default_attention, feed_forward=FeedForward):
        super().__init__()
        if not isinstance(model, GPTModel):
            raise ValueError(f"DeepSeekMTP wraps a utils.gpt.GPTModel, got {type(model).__name__}.")
        if not isinstance(getattr(model, "out_head", None), nn.Linear) or not isinstance(
                getattr(model, "tok_emb", None), nn.Embedding):
            raise ValueError("the main model has no shared output head (out_head) or embedding (tok_emb); "
                             "the MTP modules reuse both, so build the model with utils.gpt.GPTModel.")
        _check_depth(depth)
        self.model = model
        self.depth = depth
        self.mtp = nn.ModuleList(MTPModule(model.cfg, attention, feed_forward) for _ in range(depth))
        for module in self.mtp:  # GPT-2 initialisation, as the main model's
            module.apply(GPTModel._init_weights)

    @property
    def embedding(self) -> nn.Embedding:
        """The shared embedding: the main model's ``tok_emb`` itself."""
        return self.model.tok_emb

    @property
    def shared_head(self) -> nn.Linear:
        """The shared output head: the main model's ``out_head`` itself (after its ``final_norm``)."""
        return self.model.out_head

    # --- the speculative-decoding protocol of utils.mtp.speculative_generate (Lecture 25) ---------------
    @property
    def cfg(self) -> GPTConfig:
        """The main model's config (``context_length``, ``vocab_size``)."""
        return self.model.cfg

    def new_cache(self, batch_size: int = 1) -> KVCache:
        """An empty KV cache of the main model's blocks (as ``GPTModel.new_cache``)."""
        return self.model.new_cache(batch_size)

    def new_mtp_cache(self, batch_size: int = 1) -> KVCache:
        """An empty one-layer KV cache for MTP module 1's block (capacity ``context_length``)."""
        attn = self.mtp[0].block.attn
        if not supports_cache(attn):
            raise ValueError(f"MTP module 1's attention ({type(attn).__name__}) has no KV-cache support; "
                             "use speculative_generate(..., use_cache=False).")
        w = next(self.parameters())
        return KVCache([attn.new_cache(batch_size, self.cfg.context_length, dtype=w.dtype, device=w.device)])

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """The trunk's last hidden state h (B, T, d) BEFORE the final norm, for ids (B, T) at positions
        ``cache.position ...`` (0 without a cache); with ``cache`` each block appends to its layer."""
        return self.model.hidden_states(idx, cache)  # (B, T, d)

    def logits_from_hidden(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm + output head: h (B, T, d) -> logits (B, T, V)."""
        return self.model.out_head(self.model.final_norm(h))

    def mtp_draft_logits(self, h: torch.Tensor, next_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """MTP module 1 on (h_i, Emb(next_ids_i)) -> logits (B, T, V) scoring the token after next_ids_i.

        ``next_ids[:, i]`` is the token at position i + 1 (the one after h_i's); ``cache``: from
        :meth:`new_mtp_cache`, appended to by the module's block.
        """
        if next_ids.shape != h.shape[:2]:
            raise ValueError(f"next_ids {tuple(next_ids.shape)} must hold one token per hidden state "
                             f"{tuple(h.shape[:2])} (the token at position i + 1 for h_i).")
        module = self.mtp[0]
        x = module(h, self.model.tok_emb(next_ids), cache=None if cache is None else cache.layers[0])
        return self.logits_from_hidden(x)  # the shared final norm and head

    def extra_parameters(self) -> int:
        """Parameters the D modules add (embedding and head are shared, so not counted)."""
        return sum(p.numel() for p in self.mtp.parameters())

    def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Ids (B, T) -> main logits (B, T, V) and MTP logits (B, T - D, D, V); [:, i, k-1] scores t_{i+k+1}."""
        _check_ids(idx, self.depth, self.depth + 1)
        g, D = self.model, self.depth
        T = idx.shape[1]
        if T > g.cfg.context_length:
            raise ValueError(f"Sequence length {T} exceeds context_length={g.cfg.context_length}; "
                             "crop to the last context_length tokens.")
        h = self.hidden_states(idx)  # (B, T, d): the trunk, as GPTModel.forward runs it
        main = self.logits_from_hidden(h)  # (B, T, V)
        n = T - D  # positions where every depth has its input token t_{i+k}
        h = h[:, :n]  # h^0 (B, n, d); causal blocks: cropping first changes no kept position
        per_depth = []
        for k, module in enumerate(self.mtp, start=1):
            h = module(h, g.tok_emb(idx[:, k:k + n]))  # h^k from h^{k-1} and Emb(t_{i+k})
            per_depth.append(g.out_head(g.final_norm(h)))  # (B, n, V), scores t_{i+k+1}
        return main, torch.stack(per_depth, dim=2)  # (B, T, V), (B, n, D, V)

    def loss(self, idx: torch.Tensor, lam: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
        """(next-token loss, L_MTP) of ids (B, T); train on their sum (Lecture 24)."""
        main, mtp_logits = self(idx)
        main_loss = F.cross_entropy(main[:, :-1].flatten(0, 1), idx[:, 1:].flatten())
        return main_loss, mtp_loss(mtp_logits, mtp_targets(idx, self.depth), lam)


def mtp_targets(idx: torch.Tensor, depth: int) -> torch.Tensor:
    """Targets (B, T - D, D): ``targets[:, i, k - 1] = idx[:, i + k + 1]``, ``IGNORE_INDEX`` past the end."""
    _check_depth(depth)
    _check_ids(idx, depth, depth + 2)
    B, T = idx.shape
    n = T - depth
    targets = idx.new_full((B, n, depth), IGNORE_INDEX)
    for k in range(1, depth + 1):
        m = min(n, T - k - 1)  # positions i with i + k + 1 <= T - 1
        targets[:, :m, k - 1] = idx[:, k + 1:k + 1 + m]
    return targets


def mtp_loss(mtp_logits: torch.Tensor, targets: torch.Tensor, lam: float = 0.3) -> torch.Tensor:
    """L_MTP = lam / D * sum_k CE_k (Lecture 24): logits (B, n, D, V), targets (B, n, D) -> scalar.

    Each CE_k is the mean over depth k's positions with a target. DeepSeek-V3: lam = 0.3 for the
    first 10T tokens, then 0.1; D = 1.
    """
    if mtp_logits.dim() != 4:
        raise ValueError(f"mtp_logits must have shape (batch, positions, depth, vocab), got {tuple(mtp_logits.shape)}.")
    if targets.shape != mtp_logits.shape[:3] or targets.dtype != torch.long:
        raise ValueError(f"targets must be a LongTensor of shape {tuple(mtp_logits.shape[:3])}, got "
                         f"{tuple(targets.shape)} {targets.dtype}; build them with mtp_targets(idx, depth).")
    if not 0.0 <= lam:
        raise ValueError(f"the loss weight lam must be >= 0 (DeepSeek-V3: 0.3, then 0.1), got {lam}.")
    D = mtp_logits.shape[2]
    losses = [F.cross_entropy(mtp_logits[:, :, k].flatten(0, 1), targets[:, :, k].flatten(),
                              ignore_index=IGNORE_INDEX) for k in range(D)]
    return lam / D * torch.stack(losses).sum()

"""Multi-token prediction (Lectures 23-25).

Lecture 23: Meta's parallel heads (Gloeckle et al. 2024, "Better & Faster Large Language Models
via Multi-token Prediction"). A shared trunk (the first ``n_layers - 1`` blocks of a
:class:`utils.gpt.GPTModel`) feeds ``n_future`` independent heads; head ``j`` is one transformer
block followed by the model's shared final norm and unembedding (``out_head``), and predicts the
token ``t + 1 + j`` from position ``t``. Head 0 is the GPT's own last block, so the wrapped GPT
still is an ordinary next-token model. :func:`multi_token_targets` builds the shifted targets,
:func:`multi_token_loss` averages the heads' cross-entropies.
"""

from __future__ import annotations

import copy
import math
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from utils.gpt import RESIDUAL_PROJECTIONS, GPTModel
from utils.train import cycle

IGNORE_INDEX = -100
"""Target id of positions without a target (past the end of the sequence); ``F.cross_entropy``'s default."""


def _check_ids(idx: torch.Tensor, what: str = "idx") -> None:
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.dtype != torch.long:
        shape = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise ValueError(f"{what} must be a (batch, tokens) LongTensor of ids, got {shape}"
                         f"{' ' + str(idx.dtype) if isinstance(idx, torch.Tensor) else ''}; "
                         "add a batch axis with idx.unsqueeze(0).")


def _check_n(n_future) -> None:
    if isinstance(n_future, bool) or not isinstance(n_future, int) or n_future < 1:
        raise ValueError(f"n_future (the number of predicted tokens) must be an integer >= 1, got {n_future!r}.")


def multi_token_targets(idx: torch.Tensor, n_future: int, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Targets (B, T, n_future) for ids (B, T) (Lecture 23).

    ``targets[b, t, j] = idx[b, t + 1 + j]`` (head ``j`` predicts the token ``1 + j`` steps ahead);
    where ``t + 1 + j >= T`` there is no such token and the target is ``ignore_index`` (no wrap-around).
    With ``n_future = 1`` column 0 is the usual next-token target (the last position is ignored).
    """
    _check_ids(idx)
    _check_n(n_future)
    B, T = idx.shape
    if T < n_future + 1:
        raise ValueError(f"a sequence of {T} tokens gives head {n_future - 1} no target; use sequences of at "
                         f"least n_future + 1 = {n_future + 1} tokens or a smaller n_future.")
    targets = idx.new_full((B, T, n_future), ignore_index)
    for j in range(n_future):
        targets[:, : T - 1 - j, j] = idx[:, 1 + j:]  # positions t = 0 ... T-2-j have token t+1+j
    return targets


def per_head_losses(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Cross-entropy of each head: logits (B, T, n, V), targets (B, T, n) -> (n,) (Lecture 23).

    Head ``j``'s loss is the mean over the positions that have a target; positions whose target is
    ``ignore_index`` (the last ``j + 1`` of each sequence) are left out of both sum and count.
    """
    if logits.dim() != 4:
        raise ValueError(f"logits must have shape (batch, tokens, n_future, vocab), got {tuple(logits.shape)}; "
                         "for a next-token model's (B, T, V) logits use logits.unsqueeze(2).")
    if targets.shape != logits.shape[:3]:
        raise ValueError(f"targets {tuple(targets.shape)} must have the logits' first three dimensions "
                         f"{tuple(logits.shape[:3])}; build them with multi_token_targets(idx, n_future).")
    if targets.dtype != torch.long:
        raise ValueError(f"targets must be a LongTensor of ids, got {targets.dtype}.")
    if ((targets != ignore_index).sum(dim=(0, 1)) == 0).any():
        raise ValueError("some head has no target at all (every entry is ignore_index); "
                         "use longer sequences or fewer heads.")
    return torch.stack([F.cross_entropy(logits[:, :, j].flatten(0, 1), targets[:, :, j].flatten(),
                                        ignore_index=ignore_index) for j in range(logits.shape[2])])


def multi_token_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean of the n heads' cross-entropies (Lecture 23; Gloeckle et al.'s L_n, divided by n).

    Each head is first averaged over its own positions with a target (:func:`per_head_losses`), then
    the n head losses are averaged with equal weight, so with n = 1 this is the next-token loss.
    """
    return per_head_losses(logits, targets, ignore_index).mean()


def _reinit_like_gpt(module: nn.Module, n_layers: int) -> None:
    """GPTModel's initialisation (Lecture 03) applied to a freshly copied block."""
    module.apply(GPTModel._init_weights)
    for name, param in module.named_parameters():
        if name.endswith(RESIDUAL_PROJECTIONS):
            nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * n_layers))
    for sub in module.modules():
        if isinstance(sub, nn.LayerNorm):
            sub.reset_parameters()


class MultiTokenGPT(nn.Module):
    """A GPT with ``n_future`` parallel output heads on a shared trunk (Lecture 23, Gloeckle et al. 2024).

    ``gpt``'s first ``n_layers - 1`` blocks are the trunk; head 0 is ``gpt``'s last block and heads
    1 ... n_future-1 are new blocks of the same kind (deep copies, re-initialised as GPTModel does).
    Every head ends in ``gpt``'s final norm and output head (shared, not copied). ``self.gpt`` stays a
    plain next-token model: ``self.gpt(idx)`` equals head 0 of ``self(idx)``, so the extra heads can be
    dropped at inference.
    """

    def __init__(self, gpt: GPTModel, n_future: int):
        super().__init__()
        if not isinstance(gpt, GPTModel):
            raise ValueError(f"MultiTokenGPT wraps a utils.gpt.GPTModel, got {type(gpt).__name__}.")
        _check_n(n_future)
        self.gpt = gpt
        self.n_future = n_future
        self.extra_heads = nn.ModuleList()
        for _ in range(n_future - 1):
            block = copy.deepcopy(gpt.blocks[-1])
            _reinit_like_gpt(block, gpt.cfg.n_layers)
            self.extra_heads.append(block)

    @property
    def cfg(self):
        return self.gpt.cfg

    @property
    def trunk(self) -> nn.ModuleList:
        return self.gpt.blocks[:-1]

    @property
    def heads(self) -> list[nn.Module]:
        """The n head blocks: [gpt.blocks[-1], *extra_heads]."""
        return [self.gpt.blocks[-1], *self.extra_heads]

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Ids (B, T) -> logits (B, T, n_future, vocab_size); ``[:, t, j]`` scores token t + 1 + j."""
        _check_ids(idx)
        cfg = self.gpt.cfg
        if idx.shape[1] > cfg.context_length:
            raise ValueError(f"Sequence length {idx.shape[1]} exceeds context_length={cfg.context_length}; "
                             "crop to the last context_length tokens.")
        if idx.numel() and (idx.min() < 0 or idx.max() >= cfg.vocab_size):
            raise ValueError(f"Token ids must lie in [0, {cfg.vocab_size}); got [{int(idx.min())}, {int(idx.max())}].")
        z = self.gpt.drop(self.gpt.embed(idx))  # (B, T, d_model)
        for block in self.trunk:
            z = block(z)  # the shared trunk, run once
        g = self.gpt
        return torch.stack([g.out_head(g.final_norm(head(z))) for head in self.heads], dim=2)  # (B, T, n, V)

    def loss(self, idx: torch.Tensor) -> torch.Tensor:
        """The multi-token loss of ids (B, T) against themselves shifted (:func:`multi_token_loss`)."""
        return multi_token_loss(self(idx), multi_token_targets(idx, self.n_future))


def train_multi_token(model: MultiTokenGPT, loader: Iterable, optimizer: torch.optim.Optimizer,
                      steps: int) -> list[float]:
    """``steps`` AdamW-style steps on :meth:`MultiTokenGPT.loss` of the loader's inputs (Lecture 23).

    Uses only ``x`` of each ``(x, y)`` batch: the targets of all heads come from ``x`` itself, so
    the last position of every window has no next-token target (one fewer than with ``y``).
    Returns the training losses, one per step.
    """
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}.")
    device = next(model.parameters()).device
    model.train()
    batches, losses = cycle(loader), []
    for _ in range(steps):
        x, _ = next(batches)
        loss = model.loss(x.to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def expected_tokens_per_step(acceptance: float, n_future: int) -> float:
    """Tokens produced per forward pass in self-speculative decoding with n heads (Lecture 23).

    Heads 1 ... n-1 draft n - 1 tokens; if each draft is accepted with probability ``acceptance``
    (independently, and stopping at the first rejection), one step yields the verified token plus
    the accepted prefix: 1 + a + a^2 + ... + a^(n-1) tokens on average.
    """
    _check_n(n_future)
    if not 0.0 <= acceptance <= 1.0:
        raise ValueError(f"acceptance must be a probability in [0, 1], got {acceptance}.")
    return sum(acceptance ** k for k in range(n_future))

"""Multi-token prediction (Lectures 23-25).

Lecture 23: Meta's parallel heads (Gloeckle et al. 2024, "Better & Faster Large Language Models
via Multi-token Prediction"). A shared trunk (the first ``n_layers - 1`` blocks of a
:class:`utils.gpt.GPTModel`) feeds ``n_future`` independent heads; head ``j`` is one transformer
block followed by the model's shared final norm and unembedding (``out_head``), and predicts the
token ``t + 1 + j`` from position ``t``. Head 0 is the GPT's own last block, so the wrapped GPT
still is an ordinary next-token model. :func:`multi_token_targets` builds the shifted targets,
:func:`multi_token_loss` averages the heads' cross-entropies.

Lecture 25: :func:`speculative_generate` decodes greedily with DeepSeek's MTP module 1 as the
drafter and the main model as the verifier (:func:`greedy_accept`); it returns exactly what greedy
:func:`utils.generation.generate` returns, plus :class:`SpeculativeStats` (the acceptance rate).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
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


# --- Lecture 25: speculative decoding with an MTP module ---------------------------------------------

PROTOCOL = ("new_cache", "new_mtp_cache", "hidden_states", "logits_from_hidden", "mtp_draft_logits")
"""What :func:`speculative_generate` calls on a model (besides ``cfg.context_length`` and ``cfg.vocab_size``)."""


@dataclass
class SpeculativeStats:
    """What one :func:`speculative_generate` run did (Lecture 25).

    ``drafted``: drafts the main model verified; ``accepted``: those equal to its own greedy token;
    ``main_passes``: forward passes of the main model (the prefill plus one per verification);
    ``new_tokens``: tokens generated (always ``max_new_tokens``).
    """

    drafted: int = 0
    accepted: int = 0
    main_passes: int = 0
    new_tokens: int = 0

    @property
    def acceptance_rate(self) -> float:
        """accepted / drafted (0.0 when nothing was drafted)."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_pass(self) -> float:
        """New tokens per main-model pass: 1.0 for plain greedy decoding, up to 2.0 with one draft per pass."""
        return self.new_tokens / self.main_passes if self.main_passes else 0.0


def greedy_accept(draft: torch.Tensor, verify_logits: torch.Tensor) -> tuple[int, int]:
    """The greedy acceptance rule (Lecture 25): how many draft tokens stand, and the next token.

    ``draft`` (n,): the drafted ids for positions p+1 ... p+n; ``verify_logits`` (n + 1, V): the main
    model's logits at positions p ... p+n (row j predicts the token at p+1+j). Draft j is accepted
    iff it equals row j's argmax and every earlier draft was accepted; the next token is the argmax
    of the first row whose draft was rejected (the main model's correction) or, when all n are
    accepted, of row n (a token the main model gives for free). Returns ``(n_accepted, next_id)``.
    """
    if draft.dim() != 1 or verify_logits.dim() != 2 or verify_logits.shape[0] != draft.shape[0] + 1:
        raise ValueError(f"draft must be (n,) and verify_logits (n + 1, V); got {tuple(draft.shape)} and "
                         f"{tuple(verify_logits.shape)}.")
    greedy = verify_logits.argmax(dim=-1)  # (n + 1,): the main model's own choice at each position
    n_accepted = 0
    while n_accepted < draft.shape[0] and int(draft[n_accepted]) == int(greedy[n_accepted]):
        n_accepted += 1
    return n_accepted, int(greedy[n_accepted])


def _check_speculative(model, idx, max_new_tokens) -> None:
    missing = [name for name in PROTOCOL if not callable(getattr(model, name, None))]
    if missing or getattr(model, "cfg", None) is None:
        raise ValueError(f"{type(model).__name__} lacks {', '.join(missing) or 'cfg'} of the speculative-decoding "
                         "protocol; wrap a GPTModel with utils.deepseek_mtp.DeepSeekMTP(model, depth=1) (the MTP "
                         "module reuses its embedding and shared head) or use utils.model.DeepSeekModel with "
                         "mtp_depth >= 1.")
    mtp = getattr(model, "mtp", None)
    if mtp is not None and len(mtp) < 1:
        raise ValueError("the model has no MTP module (depth 0) to draft with; build it with depth (mtp_depth) >= 1.")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}.")
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.dtype != torch.long or idx.shape[1] == 0:
        raise ValueError("idx must be a non-empty (1, tokens) LongTensor of ids; add a batch axis with "
                         "idx.unsqueeze(0).")
    if idx.shape[0] != 1:
        raise ValueError(f"speculative_generate decodes one sequence (batch size 1), got a batch of {idx.shape[0]}; "
                         "call it once per row (rows accept different numbers of drafts).")
    cfg = model.cfg
    if idx.min() < 0 or idx.max() >= cfg.vocab_size:
        raise ValueError(f"Token ids must lie in [0, {cfg.vocab_size}); got [{int(idx.min())}, {int(idx.max())}].")
    if idx.shape[1] + max_new_tokens > cfg.context_length:
        raise ValueError(f"prompt ({idx.shape[1]} tokens) + max_new_tokens ({max_new_tokens}) exceeds "
                         f"context_length={cfg.context_length}: shorten the prompt or ask for at most "
                         f"{cfg.context_length - idx.shape[1]} new tokens.")


@torch.no_grad()
def speculative_generate(model: nn.Module, idx: torch.Tensor, max_new_tokens: int,
                         use_cache: bool = True) -> tuple[torch.Tensor, SpeculativeStats]:
    """Greedy self-speculative decoding with MTP module 1 as the drafter (Lecture 25; V3 section 5.4.3).

    ``model`` implements the protocol (:data:`PROTOCOL`; :class:`utils.deepseek_mtp.DeepSeekMTP`,
    Lecture 29's ``DeepSeekModel``). Returns ``(ids, stats)``: ``ids`` (1, T + max_new_tokens) equal
    :func:`utils.generation.generate` of the main model (greedy) token for token.

    Invariant: with L tokens known, the main trunk has seen positions 0 ... L-2 (cached, or
    recomputed) and the MTP module has combined h_i with t_{i+1} for i = 0 ... L-2; its output at
    i = L-2 drafts t_L. One step runs the main model on [t_{L-1}, draft] (positions L-1, L): its
    argmax at L-1 is its own t_L. If that equals the draft, the draft is accepted and the argmax at
    L is t_{L+1} as well: two tokens from one pass. Otherwise t_L is the main model's token and the
    draft's keys and values are truncated from the main cache. The MTP module then combines the
    new hidden states with the new tokens (so it only ever sees verified tokens and its cache needs
    no truncation) and drafts the next token. Stopping inside an accepted pair keeps exactly
    ``max_new_tokens``. Batch size 1; ``use_cache=False`` recomputes every position each step.
    """
    _check_speculative(model, idx, max_new_tokens)
    stats = SpeculativeStats()
    if max_new_tokens == 0:
        return idx.clone(), stats
    was_training = model.training
    model.eval()
    try:
        cache = model.new_cache(1) if use_cache else None
        mtp_cache = model.new_mtp_cache(1) if use_cache else None
        tokens = idx.clone()  # (1, L)
        h = model.hidden_states(tokens, cache)  # prefill: positions 0 ... T-1
        stats.main_passes += 1
        tokens = torch.cat([tokens, model.logits_from_hidden(h[:, -1:]).argmax(-1)], dim=1)
        h_new = h  # hidden states of positions not yet combined by the MTP module
        while tokens.shape[1] - idx.shape[1] < max_new_tokens:
            L = tokens.shape[1]
            # draft t_L: MTP on (h_i, t_{i+1}) for the new positions, up to i = L - 2
            if use_cache:
                start = mtp_cache.position
                logits = model.mtp_draft_logits(h_new, tokens[:, start + 1:L], mtp_cache)
            else:
                logits = model.mtp_draft_logits(h_new[:, :L - 1], tokens[:, 1:L])
            draft = logits[:, -1].argmax(-1, keepdim=True)  # (1, 1)
            # verify: main model on [t_{L-1}, draft] at positions L-1, L
            pair = torch.cat([tokens[:, -1:], draft], dim=1)
            if use_cache:
                h = model.hidden_states(pair, cache)  # (1, 2, d)
            else:
                h = model.hidden_states(torch.cat([tokens, draft], dim=1))  # (1, L + 1, d)
            stats.main_passes += 1
            stats.drafted += 1
            n_accepted, next_id = greedy_accept(draft[0], model.logits_from_hidden(h[:, -2:])[0])
            stats.accepted += n_accepted
            new = [int(draft)] * n_accepted + [next_id]
            tokens = torch.cat([tokens, torch.tensor([new], dtype=tokens.dtype, device=tokens.device)], dim=1)
            if use_cache:
                if not n_accepted:
                    cache.truncate(L)  # drop the rejected draft at position L
                h_new = h[:, :len(new)]  # positions L-1 (and L): the MTP module's next inputs
            else:
                h_new = h[:, :tokens.shape[1] - 1]
        tokens = tokens[:, :idx.shape[1] + max_new_tokens]  # stop exactly at max_new_tokens
    finally:
        model.train(was_training)
    stats.new_tokens = tokens.shape[1] - idx.shape[1]
    return tokens, stats

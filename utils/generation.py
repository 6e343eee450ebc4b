"""Text generation from a next-token model (Lecture 03)."""

from __future__ import annotations

import torch
from torch import nn


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick the next id from logits (B, V): argmax when ``temperature`` is 0, else sample (Lecture 03).

    ``top_k`` keeps the k largest logits before sampling. Returns (B, 1).
    """
    if top_k is not None:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if temperature == 0.0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = torch.softmax(logits / temperature, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


@torch.no_grad()
def generate(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, eos_id: int | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Extend ``idx`` (B, T) by up to ``max_new_tokens`` ids (Lecture 03).

    Greedy when ``temperature`` is 0. The model sees at most its last ``cfg.context_length``
    tokens. Generation stops early once every row has produced ``eos_id``. The model runs in
    eval mode (dropout off) and is put back in the mode it was in.
    """
    cfg = model.cfg
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}.")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}.")
    if top_k is not None and not 1 <= top_k <= cfg.vocab_size:
        raise ValueError(f"top_k must lie in [1, {cfg.vocab_size}] or be None, got {top_k}.")
    if idx.dim() != 2 or idx.shape[1] == 0:
        raise ValueError(f"idx must be a non-empty (batch, tokens) tensor, got shape {tuple(idx.shape)}.")
    if idx.min() < 0 or idx.max() >= cfg.vocab_size:
        raise ValueError(f"Token ids must lie in [0, {cfg.vocab_size}); got [{int(idx.min())}, "
                         f"{int(idx.max())}]. Encode the prompt with the model's vocabulary.")
    was_training = model.training
    model.eval()
    try:
        finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
        for _ in range(max_new_tokens):
            logits = model(idx[:, -cfg.context_length:])[:, -1, :]  # (B, V)
            next_id = sample_next(logits, temperature, top_k, generator)  # (B, 1)
            idx = torch.cat([idx, next_id], dim=1)
            if eos_id is not None:
                finished |= next_id.squeeze(1) == eos_id
                if finished.all():
                    break
    finally:
        model.train(was_training)
    return idx

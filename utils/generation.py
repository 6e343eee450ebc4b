"""Text generation from a next-token model (Lecture 03), optionally with a KV cache (Lecture 09)."""

from __future__ import annotations

import torch
from torch import nn

from utils.kv_cache import KVCache


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
             generator: torch.Generator | None = None, use_cache: bool = False,
             cache: KVCache | None = None) -> torch.Tensor:
    """Extend ``idx`` (B, T) by up to ``max_new_tokens`` ids (Lecture 03; KV cache: Lecture 09).

    Greedy when ``temperature`` is 0. The model sees at most its last ``cfg.context_length``
    tokens. Generation stops early once every row has produced ``eos_id``. The model runs in
    eval mode (dropout off) and is put back in the mode it was in.

    Without the cache, every step runs the model on the whole (cropped) sequence: step t costs
    a forward pass over up to ``context_length`` tokens.

    With ``use_cache=True`` (or a ``cache`` to reuse, e.g. from ``model.new_cache(B)``; it is
    reset first, so one cache serves any number of calls), the last ``context_length`` tokens of
    the prompt are run once (the prefill, which fills the cache), then each step feeds only the
    newest token, whose keys and values are appended to the cache: a step costs one token's
    forward pass plus attention over the cached tokens. The tokens and logits are the same as
    without the cache (up to float rounding, within 1e-5).

    Past the context: once the sequence is longer than ``context_length`` the uncached model
    sees only the last ``context_length`` tokens, at positions 0 ... context_length - 1, so
    every token's position (and hence its keys and values, in every layer above the first)
    changes at each step. To give exactly the same tokens, the cached path then crops and
    rebuilds: it resets the cache and prefills the last ``context_length`` tokens, at every
    step from then on. Past the context a step therefore costs as much as without the cache
    (a full forward pass over ``context_length`` tokens); the cache speeds up generation only
    while the sequence fits in the context. (A sliding window that keeps the old keys would be
    cheaper but would change the outputs of a model with learned absolute positions.)
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
    ctx = cfg.context_length
    if cache is None and use_cache:
        cache = KVCache.for_model(model, batch_size=idx.shape[0])  # ValueError if the attention has no cache
    if cache is not None:
        if cache.batch_size != idx.shape[0]:
            raise ValueError(f"the cache was built for batch size {cache.batch_size}, the prompt has "
                             f"{idx.shape[0]} rows; build one with model.new_cache({idx.shape[0]}).")
        if cache.capacity < ctx:
            raise ValueError(f"the cache holds {cache.capacity} tokens, fewer than context_length={ctx}; "
                             f"build it with model.new_cache(batch_size, capacity={ctx}).")
    was_training = model.training
    model.eval()
    try:
        finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
        if cache is not None and max_new_tokens > 0:
            cache.reset()
            logits = model(idx[:, -ctx:], cache=cache)[:, -1, :]  # prefill: (B, V)
        for step in range(max_new_tokens):
            if cache is None:
                logits = model(idx[:, -ctx:])[:, -1, :]  # (B, V)
            elif step > 0:
                if cache.position < ctx:  # room for one more token: feed only the newest
                    logits = model(idx[:, -1:], cache=cache)[:, -1, :]
                else:  # past the context: crop and rebuild (positions shift, see the docstring)
                    cache.reset()
                    logits = model(idx[:, -ctx:], cache=cache)[:, -1, :]
            next_id = sample_next(logits, temperature, top_k, generator)  # (B, 1)
            idx = torch.cat([idx, next_id], dim=1)
            if eos_id is not None:
                finished |= next_id.squeeze(1) == eos_id
                if finished.all():
                    break
    finally:
        model.train(was_training)
    return idx

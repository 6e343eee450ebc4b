"""Lecture 20: keeping a mixture of experts balanced.

Everything here works on plain tensors, so it fits any router: ``gates`` or ``probs`` are the
router's weights or probabilities, shape (N_tokens, n_experts); ``indices`` are the selected
experts, shape (N_tokens, k) (k = 1 for the Switch Transformer, 2 for GShard).

- :func:`importance` and :func:`cv_squared_loss`: Shazeer et al. 2017's importance loss,
  ``lambda * CV(importance)^2``;
- :func:`expert_fractions`, :func:`mean_probabilities` and :func:`load_balancing_loss`: the Switch
  Transformer's ``alpha * N * sum_i f_i P_i`` (Fedus et al. 2021, equation 4);
- :func:`expert_capacity` and :func:`capacity_mask`: the capacity factor and token dropping;
- :func:`top_k_softmax` and :func:`noisy_top_k`: plain and noisy top-k gating (Shazeer et al. 2017).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "importance", "cv_squared", "cv_squared_loss", "expert_fractions", "mean_probabilities",
    "load_balancing_loss", "expert_capacity", "capacity_mask", "top_k_softmax", "noisy_top_k",
]


def _check_matrix(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a 2-D tensor (N_tokens, n_experts), got {shape}: "
                         "flatten batch and sequence first, e.g. x.reshape(-1, n_experts)")


def _check_indices(indices: torch.Tensor, n_experts: int) -> None:
    if not isinstance(indices, torch.Tensor) or indices.dim() != 2 or indices.is_floating_point():
        raise ValueError("indices must be an integer tensor (N_tokens, k) of selected experts, got "
                         f"{tuple(indices.shape) if isinstance(indices, torch.Tensor) else type(indices).__name__}"
                         ": use the indices returned by torch.topk(...).indices")
    if indices.numel() and (indices.min() < 0 or indices.max() >= n_experts):
        raise ValueError(f"indices must lie in 0..{n_experts - 1} (n_experts = {n_experts}), got values "
                         f"{int(indices.min())}..{int(indices.max())}: pass the right n_experts")


# --- Shazeer et al. 2017: the importance (CV^2) loss ------------------------------------------------

def importance(gates: torch.Tensor) -> torch.Tensor:
    """Importance of each expert: the column sums of the gate matrix. (N, E) -> (E,)."""
    _check_matrix("gates", gates)
    return gates.sum(dim=0)


def cv_squared(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Squared coefficient of variation, ``var(x) / (mean(x)^2 + eps)``, of a 1-D tensor.

    The variance is the *population* variance (divide by n, not n - 1), as in Shazeer et al.'s
    own code (tensor2tensor ``expert_utils.cv_squared``) and in the lecture's example
    (importances 1.4, 1.0, 1.6 give CV = 0.187). Some PyTorch ports use ``x.var()``, the
    sample variance, which is larger by n / (n - 1).
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 1 or x.numel() == 0:
        raise ValueError("cv_squared takes a non-empty 1-D tensor (one value per expert), "
                         f"got {tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    x = x.float()
    mean = x.mean()
    variance = ((x - mean) ** 2).mean()
    return variance / (mean**2 + eps)


def cv_squared_loss(gates: torch.Tensor, weight: float = 0.01) -> torch.Tensor:
    """Shazeer et al. 2017's importance loss ``weight * CV(importance(gates))^2`` (a scalar).

    ``weight`` is the paper's w_importance (lambda in the lecture); it is 0 for perfectly equal
    importances and grows with their spread.
    """
    if weight < 0:
        raise ValueError(f"weight must be >= 0, got {weight}: it scales a penalty")
    return weight * cv_squared(importance(gates))


# --- Fedus et al. 2021 (Switch Transformer): the load-balancing loss -------------------------------

def expert_fractions(indices: torch.Tensor, n_experts: int) -> torch.Tensor:
    """f_i: the fraction of token-slots sent to expert i. (N, k) -> (E,), sums to 1.

    Counted from the *assignments* (the argmax / top-k), so it has no gradient.
    """
    _check_indices(indices, n_experts)
    counts = torch.bincount(indices.reshape(-1), minlength=n_experts).float()
    return counts / max(indices.numel(), 1)


def mean_probabilities(probs: torch.Tensor) -> torch.Tensor:
    """P_i: the router probability of expert i averaged over the tokens. (N, E) -> (E,).

    Differentiable: this factor carries the load-balancing loss's gradient to the router.
    """
    _check_matrix("probs", probs)
    return probs.mean(dim=0)


def load_balancing_loss(probs: torch.Tensor, indices: torch.Tensor, n_experts: int,
                        alpha: float = 0.01) -> torch.Tensor:
    """The Switch Transformer's auxiliary loss ``alpha * N * sum_i f_i * P_i`` (a scalar).

    ``probs`` (N_tokens, E): softmax router probabilities over all experts; ``indices``
    (N_tokens, k): the experts each token was sent to; ``n_experts`` is N in the formula.
    A perfectly uniform router gives ``alpha``; everything on one expert with probability 1
    gives ``alpha * N``. For k > 1, f_i counts token-slots, so it still sums to 1.
    Fedus et al. use alpha = 0.01.
    """
    _check_matrix("probs", probs)
    if probs.shape[1] != n_experts:
        raise ValueError(f"probs has {probs.shape[1]} columns but n_experts = {n_experts}: "
                         "pass one probability per expert")
    f = expert_fractions(indices, n_experts)  # checks indices
    if indices.shape[0] != probs.shape[0]:
        raise ValueError(f"probs has {probs.shape[0]} tokens, indices {indices.shape[0]}: use the same tokens")
    P = mean_probabilities(probs)
    return alpha * n_experts * (f * P).sum()


# --- capacity factor and token dropping --------------------------------------------------------------

def expert_capacity(n_tokens: int, top_k: int, n_experts: int, capacity_factor: float) -> int:
    """How many token-slots one expert may take: ``ceil(n_tokens * top_k / n_experts * capacity_factor)``.

    ``n_tokens`` is batch * sequence length; multiplying by ``top_k`` counts each token once per
    expert it is sent to (the lecture's "tokens per batch"). Rounded *up*, so capacity factor 1
    with a perfectly even router drops nothing (1,000 tokens, 4 experts, top-1, CF 1 -> 250).
    """
    if capacity_factor <= 0:
        raise ValueError(f"capacity_factor must be > 0, got {capacity_factor}: "
                         "use 1.0 for an even share, 1.25 for 25 % headroom")
    if n_experts < 1 or top_k < 1 or top_k > n_experts:
        raise ValueError(f"need 1 <= top_k <= n_experts, got top_k = {top_k}, n_experts = {n_experts}: "
                         "lower top_k or add experts")
    if n_tokens < 0:
        raise ValueError(f"n_tokens must be >= 0, got {n_tokens}")
    share = n_tokens * top_k * capacity_factor / n_experts
    return int(math.ceil(round(share, 9)))  # round first: 2.5000000001 must not become 3


def capacity_mask(indices: torch.Tensor, n_experts: int, capacity: int) -> tuple[torch.Tensor, float]:
    """Which assignments fit in their expert's capacity; first come, first served in token order.

    ``indices`` (N_tokens, k); slots are taken in row-major order (token 0's choices, then
    token 1's, ...). Each expert keeps its first ``capacity`` slots and drops the rest (a dropped
    token skips the layer through the residual connection). Returns the keep mask (N_tokens, k)
    (bool) and the dropped fraction of slots (a float).
    """
    _check_indices(indices, n_experts)
    if not isinstance(capacity, int) or capacity < 0:
        raise ValueError(f"capacity must be an int >= 0, got {capacity!r}: use expert_capacity(...)")
    flat = indices.reshape(-1)                                   # (N*k,)
    one_hot = F.one_hot(flat, n_experts)                         # (N*k, E)
    position = (one_hot.cumsum(dim=0) * one_hot).sum(dim=1) - 1  # (N*k,) place in its expert's queue
    keep = (position < capacity).reshape(indices.shape)          # (N, k)
    dropped = 1.0 - keep.sum().item() / keep.numel() if keep.numel() else 0.0
    return keep, float(dropped)


# --- top-k and noisy top-k gating (Shazeer et al. 2017) --------------------------------------------

def top_k_softmax(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the k largest logits per token, softmax over them, zeros elsewhere.

    (N, E) -> gates (N, E) (each row sums to 1, k non-zeros), indices (N, k).
    """
    _check_matrix("logits", logits)
    if not 1 <= k <= logits.shape[1]:
        raise ValueError(f"k must be in 1..{logits.shape[1]} (the number of experts), got {k}: lower k")
    top, indices = logits.topk(k, dim=-1)                                       # (N, k)
    masked = torch.full_like(logits, float("-inf")).scatter(-1, indices, top)   # (N, E)
    return torch.softmax(masked, dim=-1), indices


def noisy_top_k(clean_logits: torch.Tensor, noise_logits: torch.Tensor | None, k: int,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shazeer et al. 2017's noisy top-k gating on precomputed logits.

    ``clean_logits`` = x W_g and ``noise_logits`` = x W_noise, both (N, E). The noisy scores are
    ``H = clean + N(0, 1) * softplus(noise_logits)`` (the normal draws come from ``generator``,
    so a seeded generator makes the routing reproducible); then top-k of H and a softmax over the
    kept ones. ``noise_logits=None`` means no noise (inference, or plain top-k).
    Returns gates (N, E), indices (N, k) and H (N, E).
    """
    _check_matrix("clean_logits", clean_logits)
    if noise_logits is None:
        noisy = clean_logits
    else:
        if noise_logits.shape != clean_logits.shape:
            raise ValueError(f"noise_logits {tuple(noise_logits.shape)} must have the shape of clean_logits "
                             f"{tuple(clean_logits.shape)}: both are (N_tokens, n_experts)")
        z = torch.randn(clean_logits.shape, generator=generator, dtype=clean_logits.dtype,
                        device=clean_logits.device)
        noisy = clean_logits + z * F.softplus(noise_logits)
    gates, indices = top_k_softmax(noisy, k)
    return gates, indices, noisy

"""Top-k routing and a sparse mixture-of-experts layer (Lecture 19).

The router scores each token against every expert, ``scores = x W_r`` (tokens, n_experts),
keeps the ``top_k`` largest, masks the rest with ``-inf`` and takes the softmax, so the
weights of the selected experts sum to 1 and the others get exactly 0 (Shazeer et al. 2017).
:class:`SparseMoE` runs each selected expert on its tokens only and sums the weighted outputs.
Two dispatches give the same result: a loop over experts (each gathers its tokens), and a
batched one that sorts the (token, slot) pairs by expert and runs each expert once on a
contiguous group (the layout grouped-matmul kernels use).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from utils.moe.experts import SwiGLUExpert

__all__ = ["TopKRouter", "SparseMoE", "top_k_gates"]


def _plain_weights(expert: nn.Module):
    """The (gate, up, down) weights of a :class:`SwiGLUExpert` made of bias-free ``nn.Linear`` layers with no
    forward hooks (none global either), else None (then the expert must be called as a module)."""
    from torch.nn.modules import module as m
    if (type(expert) is not SwiGLUExpert or expert._forward_hooks or expert._forward_pre_hooks
            or m._global_forward_hooks or m._global_forward_pre_hooks):
        return None
    weights = []
    for name in ("gate_proj", "up_proj", "down_proj"):
        lin = expert._modules[name]
        if type(lin) is not nn.Linear or lin.bias is not None or lin._forward_hooks or lin._forward_pre_hooks:
            return None
        weights.append(lin.weight)
    return weights


def swiglu(expert: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``expert(x)`` for a :class:`SwiGLUExpert`, as three functional matmuls: the same numbers without the four
    ``nn.Module`` calls, whose Python overhead outweighs a single token's matmuls (decoding). Any other module,
    or one with hooks, is simply called."""
    weights = _plain_weights(expert)
    if weights is None:
        return expert(x)
    F = nn.functional
    gate, up, down = weights
    return F.linear(F.silu(F.linear(x, gate)) * F.linear(x, up), down)


def _check_top_k(n_experts: int, top_k: int) -> None:
    if n_experts < 1:
        raise ValueError(f"n_experts must be at least 1, got {n_experts}.")
    if not 1 <= top_k <= n_experts:
        raise ValueError(f"top_k {top_k} must be between 1 and n_experts {n_experts}: choose top_k <= "
                         f"{n_experts} or add experts.")


def top_k_gates(scores: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gate weights and expert indices from router scores (Lecture 19).

    scores (..., n_experts) -> weights (..., top_k), indices (..., top_k), largest score first.
    Equal to masking the unselected scores with ``-inf`` and taking the softmax over all experts:
    the masked experts get weight exactly 0 and the selected ones sum to 1.
    """
    _check_top_k(scores.shape[-1], top_k)
    values, indices = scores.topk(top_k, dim=-1)  # (..., k)
    return torch.softmax(values, dim=-1), indices


class TopKRouter(nn.Module):
    """``scores = x W_r``; keep the top-k per token, softmax over the kept ones (Lecture 19).

    forward: x (..., d_model) -> weights (..., top_k), indices (..., top_k).
    """

    def __init__(self, d_model: int, n_experts: int, top_k: int):
        super().__init__()
        _check_top_k(n_experts, top_k)
        self.n_experts, self.top_k = n_experts, top_k
        self.gate = nn.Linear(d_model, n_experts, bias=False)  # W_r, stored as (n_experts, d_model)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(x)  # (..., n_experts)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return top_k_gates(self.scores(x), self.top_k)

    def dense_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The gate weights of every expert, 0 for the unselected: (..., n_experts)."""
        weights, indices = self(x)
        return torch.zeros(*weights.shape[:-1], self.n_experts, dtype=weights.dtype,
                           device=weights.device).scatter(-1, indices, weights)


class SparseMoE(nn.Module):
    """A mixture of ``n_experts`` SwiGLU experts, ``top_k`` per token (Lecture 19).

    forward: x (..., d_model) -> (..., d_model), ``sum_j weight_j * expert_{index_j}(x)`` over the
    token's ``top_k`` selected experts; unselected experts are never called. ``dispatch`` is
    ``"batched"`` (sort by expert, one call per used expert) or ``"loop"``; both give the same
    output. A single token (a decoding step) takes :meth:`forward_one` whatever the dispatch.
    ``last_indices`` keeps the expert indices of the last forward (tokens, top_k).
    Use it as GPTModel's feed forward with :meth:`factory`.
    """

    def __init__(self, d_model: int, d_hidden: int, n_experts: int, top_k: int, dispatch: str = "batched"):
        super().__init__()
        _check_top_k(n_experts, top_k)
        if dispatch not in ("batched", "loop"):
            raise ValueError(f"dispatch must be 'batched' or 'loop', got {dispatch!r}.")
        self.d_model, self.n_experts, self.top_k, self.dispatch = d_model, n_experts, top_k, dispatch
        self.router = TopKRouter(d_model, n_experts, top_k)
        self.experts = nn.ModuleList(SwiGLUExpert(d_model, d_hidden) for _ in range(n_experts))
        self.last_indices: torch.Tensor | None = None

    @classmethod
    def factory(cls, n_experts: int, top_k: int, d_hidden: int | None = None,
                dispatch: str = "batched") -> Callable:
        """``feed_forward=SparseMoE.factory(4, 2)`` for :class:`utils.gpt.GPTModel`; ``d_hidden``
        defaults to the config's ``hidden_dim``."""
        return lambda cfg: cls(cfg.d_model, d_hidden or cfg.hidden_dim, n_experts, top_k, dispatch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # (N, d)
        weights, indices = self.router(flat)  # (N, k), (N, k)
        self.last_indices = indices.detach()
        if flat.shape[0] == 1:  # one token (decoding): its k experts in turn
            return self.forward_one(flat, weights, indices).reshape(shape)
        run = self.forward_loop if self.dispatch == "loop" else self.forward_batched
        return run(flat, weights, indices).reshape(shape)

    def forward_loop(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """x (N, d), weights and indices (N, k) -> (N, d): each expert gathers its tokens."""
        N, k = indices.shape
        slots = x.new_zeros(N, k, x.shape[-1])  # each (token, slot) pair's expert output
        for e, expert in enumerate(self.experts):
            token, slot = torch.nonzero(indices == e, as_tuple=True)  # tokens in increasing order
            if token.numel():
                slots[token, slot] = expert(x[token])
        return (weights.unsqueeze(-1) * slots).sum(dim=1)

    def forward_one(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """x (1, d), weights and indices (1, k) -> (1, d): one token (a decoding step) calls its k experts in
        turn and sums ``weight_j * expert_{i_j}(x)``; the same output as the other dispatches, without their
        sort, bincount and scatter (which cost more than the experts themselves for a single token)."""
        chosen, gates = indices.tolist()[0], weights.tolist()[0]  # Python ints and floats (the same values)
        if weights.requires_grad:  # training through one token: keep the weights in the graph
            gates = [weights[:, j:j + 1] for j in range(len(chosen))]
        out = swiglu(self.experts[chosen[0]], x) * gates[0]
        for j in range(1, len(chosen)):
            out = out + swiglu(self.experts[chosen[j]], x) * gates[j]
        return out

    def forward_batched(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """x (N, d), weights and indices (N, k) -> (N, d): sort the N*k pairs by expert, run each
        expert once on its contiguous group, put the outputs back in place."""
        N, k = indices.shape
        order = indices.reshape(-1).argsort(stable=True)  # (N*k,) pairs grouped by expert
        counts = torch.bincount(indices.reshape(-1), minlength=self.n_experts).tolist()
        grouped = x[order // k]  # (N*k, d) the token of each pair, in expert order
        outputs = [self.experts[e](chunk) for e, chunk in enumerate(grouped.split(counts)) if counts[e]]
        slots = torch.empty_like(grouped)
        slots[order] = torch.cat(outputs)  # back to (token, slot) order
        return (weights.unsqueeze(-1) * slots.reshape(N, k, -1)).sum(dim=1)

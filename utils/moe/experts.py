"""The SwiGLU expert and dense vs sparse cost accounting (Lecture 18).

An expert is an ordinary SwiGLU feed-forward network (Shazeer 2020, "GLU Variants Improve
Transformer"): ``down_proj(silu(gate_proj(x)) * up_proj(x))``, with the weight names of
Hugging Face ``transformers`` (DeepSeek's code calls them w1 = gate, w3 = up, w2 = down).
The cost helpers count parameters and matrix-multiply FLOPs of a dense FFN and of a mixture
of experts layer, so the gap between *total* and *activated* parameters can be computed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SwiGLUExpert", "LayerCost", "swiglu_parameters", "dense_ffn_cost", "moe_layer_cost"]


class SwiGLUExpert(nn.Module):
    """One expert: ``down_proj(silu(gate_proj(x)) * up_proj(x))``, no biases (Lecture 18).

    Shapes: x (..., d_model) -> gate, up (..., d_hidden) -> out (..., d_model).
    """

    def __init__(self, d_model: int, d_hidden: int):
        super().__init__()
        if d_model <= 0 or d_hidden <= 0:
            raise ValueError(f"SwiGLUExpert needs positive sizes, got d_model={d_model}, d_hidden={d_hidden}.")
        self.d_model, self.d_hidden = d_model, d_hidden
        self.gate_proj = nn.Linear(d_model, d_hidden, bias=False)  # w1
        self.up_proj = nn.Linear(d_model, d_hidden, bias=False)  # w3
        self.down_proj = nn.Linear(d_hidden, d_model, bias=False)  # w2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # (..., d_model)


def swiglu_parameters(d_model: int, d_hidden: int) -> int:
    """Weights of one SwiGLU FFN without biases: three matrices, ``3 * d_model * d_hidden`` (Lecture 18)."""
    return 3 * d_model * d_hidden


@dataclass(frozen=True)
class LayerCost:
    """Parameters of a feed-forward layer, and what one token uses of them (Lecture 18).

    ``flops_per_token`` counts the matrix multiplies only: 2 FLOPs (a multiply and an add) per
    activated weight; the SiLU, the gating product and the softmax are left out (they are
    a few FLOPs per hidden unit, against ``2 * d_model`` per hidden unit for the matmuls).
    """

    total_params: int
    active_params: int

    @property
    def flops_per_token(self) -> int:
        return 2 * self.active_params

    @property
    def active_fraction(self) -> float:
        return self.active_params / self.total_params


def dense_ffn_cost(d_model: int, d_hidden: int) -> LayerCost:
    """A dense SwiGLU FFN: every token uses every weight (Lecture 18)."""
    n = swiglu_parameters(d_model, d_hidden)
    return LayerCost(n, n)


def moe_layer_cost(d_model: int, expert_hidden: int, n_experts: int, top_k: int, n_shared: int = 0,
                   gate_bias: bool = False) -> LayerCost:
    """A mixture-of-experts FFN layer: ``n_experts`` routed SwiGLU experts of width ``expert_hidden``,
    of which each token uses ``top_k``, plus ``n_shared`` always-on experts and the router
    (``n_experts * d_model`` weights, plus one bias per expert in DeepSeek-V3), which every
    token uses (Lecture 18). Agrees with :func:`utils.configs.count_parameters` per MoE layer.
    """
    if n_experts <= 0 or top_k <= 0 or n_shared < 0:
        raise ValueError(f"need n_experts >= 1, top_k >= 1, n_shared >= 0; got {n_experts}, {top_k}, {n_shared}.")
    if top_k > n_experts:
        raise ValueError(f"top_k {top_k} exceeds n_experts {n_experts}: choose top_k <= {n_experts} "
                         "or add experts.")
    expert = swiglu_parameters(d_model, expert_hidden)
    router = n_experts * (d_model + (1 if gate_bias else 0))
    total = (n_experts + n_shared) * expert + router
    return LayerCost(total, (top_k + n_shared) * expert + router)

"""Exercises of Lecture 18: mixture of experts introduction.

18.1 the activated parameters of an MoE layer (an int), 18.2 the forward pass of the SwiGLU expert
(:class:`utils.moe.SwiGLUExpert`). Expected values come from :func:`utils.moe.moe_layer_cost` and
from the library expert with weights drawn inside ``torch.random.fork_rng``.
"""

from __future__ import annotations

from utils.exercises import Case, exercise, module_cases, randn, run_module
from utils.moe import SwiGLUExpert, moe_layer_cost

# --- 18.1: activated parameters of an MoE layer -------------------------------------------------------

_COSTS = [  # (label, (d_model, expert_hidden, n_experts, top_k, n_shared))
    ("DeepSeek-V3 layer: d 7168, 256 routed experts of 2048, top-8, 1 shared", (7168, 2048, 256, 8, 1)),
    ("DeepSeek-V2 layer: d 5120, 160 routed experts of 1536, top-6, 2 shared", (5120, 1536, 160, 6, 2)),
    ("Mixtral-8x7B-sized layer: d 4096, 8 experts of 14336, top-2, no shared", (4096, 14336, 8, 2, 0)),
    ("the lecture's toy layer: d 8, 3 experts of 16, top-2", (8, 16, 3, 2, 0)),
    ("top-1 of 4 experts, d_model != expert_hidden (d 6, hidden 10)", (6, 10, 4, 1, 0)),
]


@exercise("18.1", "activated parameters of an MoE layer (routed experts used + shared experts + router), an int")
def _cases_activated():
    return [Case(label, args, moe_layer_cost(*args[:4], n_shared=args[4]).active_params) for label, args in _COSTS]


# --- 18.2: the SwiGLU expert's forward pass --------------------------------------------------------------

_EXPERT = [  # (label, (d_model, d_hidden), kwargs, input shape or None, train)
    ("one token row per expert input, (4, 8) -> hidden 16", (8, 16), {}, None, False),
    ("batch of sequences (2, 5, 6), hidden 10 (d_model != d_hidden)", (6, 10), {}, (2, 5, 6), False),
    ("hidden narrower than d_model: (3, 12) -> hidden 4", (12, 4), {}, (3, 12), False),
]


@exercise("18.2", "SwiGLUExpert.forward: down_proj(silu(gate_proj(x)) * up_proj(x))", call=run_module)
def _cases_expert():
    return module_cases(SwiGLUExpert, _EXPERT, randn(4, 8, seed=1800, scale=2.0), seed=1820)

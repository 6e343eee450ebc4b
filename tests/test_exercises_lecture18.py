"""Lecture 18's checkers accept the right answers and reject the wrong answers learners write."""

import pytest
import torch
import torch.nn.functional as F

from checker_tools import assert_accepts, assert_rejects
from utils.moe import SwiGLUExpert

# --- 18.1: activated parameters of an MoE layer ------------------------------------------------------


def activated_right(d_model, expert_hidden, n_experts, top_k, n_shared):
    return (top_k + n_shared) * 3 * d_model * expert_hidden + n_experts * d_model


def test_18_1_accepts():
    assert_accepts("18.1", activated_right)


@pytest.mark.parametrize("wrong, fragment", [
    # the total, every expert counted
    (lambda d, h, n, k, s: (n + s) * 3 * d * h + n * d, "case 1 (DeepSeek-V3 layer"),
    # the shared experts forgotten
    (lambda d, h, n, k, s: k * 3 * d * h + n * d, "case 1 (DeepSeek-V3 layer"),
    # two matrices per expert (a GELU FFN) instead of SwiGLU's three
    (lambda d, h, n, k, s: (k + s) * 2 * d * h + n * d, "case 1 (DeepSeek-V3 layer"),
    # the router left out
    (lambda d, h, n, k, s: (k + s) * 3 * d * h, "case 1 (DeepSeek-V3 layer"),
    # the router counted only for the selected experts
    (lambda d, h, n, k, s: (k + s) * 3 * d * h + k * d, "case 1 (DeepSeek-V3 layer"),
    # a float (a fraction times the total)
    (lambda d, h, n, k, s: ((n + s) * 3 * d * h + n * d) * (k + s) / (n + s) * 1.0, "return an int"),
])
def test_18_1_rejects(wrong, fragment):
    assert_rejects("18.1", wrong, fragment)


# --- 18.2: SwiGLUExpert.forward --------------------------------------------------------------------


def make_expert(kind="right"):
    class Answer(SwiGLUExpert):
        def forward(self, x):
            gate, up = self.gate_proj(x), self.up_proj(x)
            if kind == "swapped":  # SiLU on the up projection instead of the gate
                return self.down_proj(gate * F.silu(up))
            if kind == "relu":
                return self.down_proj(F.relu(gate) * up)
            if kind == "sigmoid":  # sigmoid (GLU) instead of SiLU = x * sigmoid(x)
                return self.down_proj(torch.sigmoid(gate) * up)
            if kind == "no_up":  # a plain SiLU MLP, the up projection unused
                return self.down_proj(F.silu(gate))
            if kind == "silu_after":  # SiLU of the product
                return self.down_proj(F.silu(gate * up))
            return self.down_proj(F.silu(gate) * up)
    return Answer


class TemplateExpert(torch.nn.Module):  # the notebook's template: own attributes, same names
    def __init__(self, d_model, d_hidden):
        super().__init__()
        self.gate_proj = torch.nn.Linear(d_model, d_hidden, bias=False)
        self.up_proj = torch.nn.Linear(d_model, d_hidden, bias=False)
        self.down_proj = torch.nn.Linear(d_hidden, d_model, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def test_18_2_accepts():
    for answer in (make_expert(), TemplateExpert):
        assert_accepts("18.2", answer)


@pytest.mark.parametrize("kind", ["swapped", "relu", "sigmoid", "no_up", "silu_after"])
def test_18_2_rejects(kind):
    assert_rejects("18.2", make_expert(kind), "case 1 (one token row per expert input")


def test_18_2_rejects_biases():
    class WithBias(TemplateExpert):
        def __init__(self, d_model, d_hidden):
            super().__init__(d_model, d_hidden)
            self.gate_proj = torch.nn.Linear(d_model, d_hidden)

    assert_rejects("18.2", WithBias, "keep the attribute names")

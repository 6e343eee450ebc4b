"""Lecture 19's checkers accept the right answers and reject the wrong answers learners write."""

import pytest
import torch

from checker_tools import assert_accepts, assert_rejects
from utils.moe import SparseMoE

# --- 19.1: the top-k gate -----------------------------------------------------------------------------


def gates_right(scores, k):
    values, indices = scores.topk(k, dim=-1)
    return torch.softmax(values, dim=-1), indices


def gates_mask(scores, k):  # the lecture's way: mask the rest with -inf, softmax over all, gather
    indices = scores.topk(k, dim=-1).indices
    masked = torch.full_like(scores, float("-inf")).scatter(-1, indices, scores.gather(-1, indices))
    return torch.softmax(masked, dim=-1).gather(-1, indices), indices


def gates_softmax_first(scores, k):  # softmax over all experts, then top-k, not renormalised
    values, indices = torch.softmax(scores, dim=-1).topk(k, dim=-1)
    return values, indices


def gates_zero_mask(scores, k):  # masked with 0 instead of -inf: the unselected still get weight
    indices = scores.topk(k, dim=-1).indices
    masked = torch.zeros_like(scores).scatter(-1, indices, scores.gather(-1, indices))
    return torch.softmax(masked, dim=-1).gather(-1, indices), indices


def gates_wrong_axis(scores, k):  # top-k over the tokens instead of the experts
    values, indices = scores.topk(k, dim=0)
    return torch.softmax(values, dim=0), indices


def gates_float_indices(scores, k):
    weights, indices = gates_right(scores, k)
    return weights, indices.float()


def test_19_1_accepts():
    for answer in (gates_right, gates_mask):
        assert_accepts("19.1", answer)


@pytest.mark.parametrize("wrong, fragment", [
    (gates_softmax_first, "case 1 (the lecture's scores (4, 3), top-2) is wrong: result 0"),
    (gates_zero_mask, "case 1 (the lecture's scores (4, 3), top-2) is wrong: result 0"),
    (gates_wrong_axis, "expected shape (4, 2), got (2, 3)"),
    (gates_float_indices, "result 1: expected dtype torch.int64"),
    (lambda s, k: (torch.softmax(s.topk(k, dim=-1).values, dim=-1), s.topk(k, dim=-1, largest=False).indices),
     "result 1"),
])
def test_19_1_rejects(wrong, fragment):
    assert_rejects("19.1", wrong, fragment)


# --- 19.2: SparseMoE.forward ------------------------------------------------------------------------------


def make_forward(mistake=None):
    """The right forward pass (a loop over each token's selected experts), or one with a mistake."""

    class Answer(SparseMoE):
        def forward(self, x):
            shape = x.shape
            x = x.reshape(-1, shape[-1])  # (N, d)
            scores = x @ self.router.gate.weight.T  # (N, E)
            k = self.top_k
            if mistake == "wrong_axis":
                values, indices = scores.topk(k, dim=0)
                weights = torch.softmax(values, dim=0)
            else:
                values, indices = scores.topk(k, dim=-1)  # (N, k)
                if mistake == "softmax_first":
                    weights = torch.softmax(scores, dim=-1).gather(-1, indices)
                elif mistake == "zero_mask":
                    masked = torch.zeros_like(scores).scatter(-1, indices, values)
                    weights = torch.softmax(masked, dim=-1).gather(-1, indices)
                elif mistake == "uniform":  # the experts' outputs averaged, the gate ignored
                    weights = torch.full_like(values, 1.0 / k)
                else:
                    weights = torch.softmax(values, dim=-1)
            out = torch.zeros_like(x)
            for t in range(x.shape[0]):
                for j in range(indices.shape[1]):
                    e = int(indices[t, j]) if mistake != "wrong_axis" else int(indices[j, t % indices.shape[1]])
                    out[t] += weights[t % weights.shape[0], j] * self.experts[e](x[t])
            return out.reshape(shape)

    return Answer


def forward_dense(self, x):  # every expert on every token, weighted by the dense gate: same result, more work
    gates = self.router.dense_weights(x)  # (..., E)
    return sum(gates[..., e:e + 1] * expert(x) for e, expert in enumerate(self.experts))


def test_19_2_accepts():
    assert_accepts("19.2", make_forward())
    assert_accepts("19.2", type("Dense", (SparseMoE,), {"forward": forward_dense}))


@pytest.mark.parametrize("mistake", ["softmax_first", "zero_mask", "uniform", "wrong_axis"])
def test_19_2_rejects(mistake):
    assert_rejects("19.2", make_forward(mistake), "case 1 (the lecture's X (4, 8): 3 experts, top-2)")

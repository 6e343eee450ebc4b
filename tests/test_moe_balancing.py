"""utils.moe.balancing (Lecture 20) against hand-computed values, torch's own functions and the papers' formulas."""

import math

import numpy as np
import pytest
import torch

from utils.moe.balancing import (capacity_mask, cv_squared, cv_squared_loss, expert_capacity, expert_fractions,
                                 importance, load_balancing_loss, mean_probabilities, noisy_top_k, top_k_softmax)

LECTURE_GATES = torch.tensor([[0.6, 0.0, 0.4], [0.0, 0.5, 0.5], [0.8, 0.0, 0.2], [0.0, 0.5, 0.5]])


# --- importance and CV^2 ---------------------------------------------------------------------------

def test_importance_is_the_column_sum_and_the_lectures_cv():
    imp = importance(LECTURE_GATES)
    torch.testing.assert_close(imp, torch.tensor([1.4, 1.0, 1.6]))
    # the lecture: CV = 0.187 (population std / mean); numpy's std with ddof=0 agrees
    values = np.array([1.4, 1.0, 1.6])
    assert round(float(cv_squared(imp).sqrt()), 3) == 0.187
    assert float(cv_squared(imp)) == pytest.approx((values.std(ddof=0) / values.mean()) ** 2, rel=1e-5)
    assert float(cv_squared_loss(LECTURE_GATES, 0.1)) == pytest.approx(0.1 * 0.187**2, abs=1e-4)


def test_equal_importance_gives_zero_cv_loss():
    gates = torch.full((6, 4), 0.25)
    assert float(cv_squared_loss(gates, 1.0)) == pytest.approx(0.0, abs=1e-12)


def test_cv_squared_loss_has_a_gradient_that_evens_importance():
    gates = LECTURE_GATES.clone().requires_grad_(True)
    cv_squared_loss(gates, 1.0).backward()
    col = gates.grad[0]  # same for every row: d/d importance
    assert col[2] > 0 and col[1] < 0  # push the most important expert down, the least up


# --- Switch load-balancing loss --------------------------------------------------------------------

@pytest.mark.parametrize("n_experts", [2, 4, 8])
def test_perfect_balance_gives_alpha_and_one_expert_gives_alpha_times_n(n_experts):
    n_tokens, alpha = 4 * n_experts, 0.01
    uniform = torch.full((n_tokens, n_experts), 1.0 / n_experts)
    round_robin = (torch.arange(n_tokens) % n_experts).unsqueeze(1)
    assert float(load_balancing_loss(uniform, round_robin, n_experts, alpha)) == pytest.approx(alpha)
    one_hot = torch.zeros(n_tokens, n_experts)
    one_hot[:, 0] = 1.0
    to_zero = torch.zeros(n_tokens, 1, dtype=torch.long)
    assert float(load_balancing_loss(one_hot, to_zero, n_experts, alpha)) == pytest.approx(alpha * n_experts)


def test_the_lectures_two_expert_scenarios_by_hand():
    collapsed = torch.tensor([[1.0, 0.0]] * 4)
    balanced = torch.tensor([[0.6, 0.4], [0.4, 0.6], [0.6, 0.4], [0.4, 0.6]])
    idx_c, idx_b = collapsed.argmax(1, keepdim=True), balanced.argmax(1, keepdim=True)
    torch.testing.assert_close(expert_fractions(idx_b, 2), torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(mean_probabilities(balanced), torch.tensor([0.5, 0.5]))
    assert float(load_balancing_loss(collapsed, idx_c, 2, 1.0)) == pytest.approx(2.0)  # 1 * 2 * (1*1 + 0*0)
    assert float(load_balancing_loss(balanced, idx_b, 2, 1.0)) == pytest.approx(1.0)   # 1 * 2 * (.5*.5 * 2)


def test_top2_fractions_count_token_slots_and_gradient_flows_through_p_only():
    probs = torch.softmax(torch.randn(10, 4, generator=torch.Generator().manual_seed(0)), -1).requires_grad_(True)
    idx = probs.topk(2, -1).indices
    f = expert_fractions(idx, 4)
    assert float(f.sum()) == pytest.approx(1.0)
    torch.testing.assert_close(f, torch.bincount(idx.flatten(), minlength=4).float() / 20)
    loss = load_balancing_loss(probs, idx, 4, 0.01)
    loss.backward()
    # d loss / d probs[t, i] = alpha * N * f_i / T: the same for every token
    torch.testing.assert_close(probs.grad, (0.01 * 4 * f / 10).expand(10, 4))


# --- capacity ----------------------------------------------------------------------------------------

def test_expert_capacity_matches_the_formula():
    assert expert_capacity(1000, 1, 4, 1.0) == 250  # the lecture's example
    assert expert_capacity(8, 1, 4, 1.25) == 3      # 2.5 rounded up
    assert expert_capacity(12, 2, 4, 1.0) == 6      # top-2 doubles the slots
    assert expert_capacity(100, 1, 8, 0.5) == 7     # 6.25 -> 7
    assert expert_capacity(10, 1, 4, 2.0) == 5      # exact, no float rounding surprise
    for n, k, e, cf in [(37, 2, 6, 1.25), (1000, 2, 64, 1.1), (3, 1, 5, 0.3)]:
        assert expert_capacity(n, k, e, cf) == math.ceil(n * k * cf / e - 1e-9)


def test_capacity_mask_keeps_the_first_tokens_of_each_expert():
    # the lecture's picture: 4 tokens want expert 0, capacity 2 -> tokens 2 and 3 are dropped
    idx = torch.tensor([[0], [0], [1], [0], [0], [2]])
    keep, dropped = capacity_mask(idx, 3, 2)
    assert keep.dtype == torch.bool and keep.shape == (6, 1)
    assert keep.flatten().tolist() == [True, True, True, False, False, True]
    assert dropped == pytest.approx(2 / 6)
    keep, dropped = capacity_mask(idx, 3, 10)
    assert keep.all() and dropped == 0.0
    keep, dropped = capacity_mask(idx, 3, 0)
    assert not keep.any() and dropped == 1.0


def test_capacity_mask_top2_counts_slots_in_token_order_and_matches_a_loop():
    idx = torch.tensor([[0, 1], [1, 0], [0, 2], [2, 0]])
    keep, dropped = capacity_mask(idx, 3, 2)
    assert keep.tolist() == [[True, True], [True, True], [False, True], [True, False]]
    assert dropped == pytest.approx(2 / 8)
    gen = torch.Generator().manual_seed(3)
    idx = torch.randint(0, 5, (50, 2), generator=gen)
    keep, _ = capacity_mask(idx, 5, 9)
    counts, expected = [0] * 5, []
    for row in idx.tolist():
        for e in row:
            expected.append(counts[e] < 9)
            counts[e] += 1
    assert keep.flatten().tolist() == expected


# --- top-k and noisy top-k ---------------------------------------------------------------------------

def test_top_k_softmax_is_softmax_over_the_kept_logits():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [0.5, -1.0, 0.7, 2.0]])
    gates, idx = top_k_softmax(logits, 2)
    assert idx.tolist() == [[1, 2], [3, 2]]
    torch.testing.assert_close(gates[0], torch.tensor([0.0, *torch.softmax(torch.tensor([3.0, 2.0]), 0), 0.0]))
    torch.testing.assert_close(gates.sum(-1), torch.ones(2))
    assert ((gates > 0).sum(-1) == 2).all()


def test_noisy_top_k_without_noise_is_plain_top_k_and_is_reproducible():
    gen = torch.Generator().manual_seed(1)
    clean, noise = torch.randn(16, 6, generator=gen), torch.randn(16, 6, generator=gen)
    plain, idx = top_k_softmax(clean, 2)
    g0, i0, h0 = noisy_top_k(clean, None, 2)
    torch.testing.assert_close(g0, plain)
    assert torch.equal(i0, idx) and torch.equal(h0, clean)
    _, i_tiny, _ = noisy_top_k(clean, torch.full_like(clean, -100.0), 2, torch.Generator().manual_seed(5))
    assert torch.equal(i_tiny, idx)  # softplus(-100) ~ 4e-44: no noise left
    a = noisy_top_k(clean, noise, 2, torch.Generator().manual_seed(7))
    b = noisy_top_k(clean, noise, 2, torch.Generator().manual_seed(7))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    z = torch.randn(clean.shape, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a[2], clean + z * torch.nn.functional.softplus(noise))  # H(x) of the paper


# --- bad input -------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, fragment", [
    (lambda: expert_capacity(100, 1, 4, 0.0), "capacity_factor must be > 0"),
    (lambda: expert_capacity(100, 1, 4, -1.0), "capacity_factor must be > 0"),
    (lambda: expert_capacity(100, 5, 4, 1.0), "lower top_k"),
    (lambda: importance(torch.ones(2, 3, 4)), "flatten batch and sequence"),
    (lambda: cv_squared(torch.ones(2, 2)), "1-D"),
    (lambda: load_balancing_loss(torch.ones(4, 3) / 3, torch.zeros(4, 1, dtype=torch.long), 4), "one probability"),
    (lambda: load_balancing_loss(torch.ones(4, 3) / 3, torch.zeros(5, 1, dtype=torch.long), 3), "same tokens"),
    (lambda: expert_fractions(torch.tensor([[0], [4]]), 4), "0..3"),
    (lambda: expert_fractions(torch.tensor([[0.0], [1.0]]), 4), "integer tensor"),
    (lambda: capacity_mask(torch.tensor([[0]]), 2, -1), "capacity must be an int >= 0"),
    (lambda: capacity_mask(torch.tensor([[0]]), 2, 1.5), "capacity must be an int >= 0"),
    (lambda: top_k_softmax(torch.zeros(3, 4), 5), "lower k"),
    (lambda: noisy_top_k(torch.zeros(3, 4), torch.zeros(3, 5), 2), "shape of clean_logits"),
])
def test_bad_input_says_what_to_change(call, fragment):
    with pytest.raises(ValueError, match=fragment.replace(".", r"\.")):
        call()

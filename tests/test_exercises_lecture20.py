"""Lecture 20's checkers accept the right answers and reject the wrong answers learners write."""

import torch
import torch.nn.functional as F

from checker_tools import assert_accepts, assert_rejects

# --- 20.1: f_i, P_i and the load-balancing loss ----------------------------------------------------


def make_switch(f_from_probs=False, forget_n=False, mean_not_sum=False, f_per_token=False, p_from_selected=False):
    """The right answer, or one with a mistake learners make."""

    def switch(probs, indices, n_experts, alpha):
        T, k = indices.shape
        if f_from_probs:  # the probabilities instead of the assignments
            f = probs.mean(0)
        else:
            counts = F.one_hot(indices, n_experts).sum(dim=(0, 1)).float()
            f = counts / (T if f_per_token else T * k)
        if p_from_selected:  # P only over the selected experts
            P = torch.zeros(n_experts).index_add(0, indices.flatten(), probs.gather(1, indices).flatten()) / T
        else:
            P = probs.mean(0)
        total = (f * P).mean() if mean_not_sum else (f * P).sum()
        loss = alpha * total if forget_n else alpha * n_experts * total
        return f, P, loss

    return switch


def test_20_1_accepts():
    assert_accepts("20.1", make_switch())

    def with_bincount(probs, indices, n_experts, alpha):
        f = torch.bincount(indices.reshape(-1), minlength=n_experts).float() / indices.numel()
        P = probs.sum(0) / probs.shape[0]
        return f, P, alpha * n_experts * torch.dot(f, P)

    assert_accepts("20.1", with_bincount)


def test_20_1_rejects_f_from_probabilities():
    assert_rejects("20.1", make_switch(f_from_probs=True), "result 0")


def test_20_1_rejects_forgetting_n():
    assert_rejects("20.1", make_switch(forget_n=True), "result 2")


def test_20_1_rejects_mean_instead_of_sum():
    assert_rejects("20.1", make_switch(mean_not_sum=True), "result 2")


def test_20_1_rejects_top2_fractions_per_token():
    text = assert_rejects("20.1", make_switch(f_per_token=True), "result 0")
    assert "top-2" in text


def test_20_1_rejects_p_from_the_selected_experts_only():
    assert_rejects("20.1", make_switch(p_from_selected=True), "result 1")


def test_20_1_rejects_a_python_float_loss():
    def float_loss(probs, indices, n_experts, alpha):
        f, P, loss = make_switch()(probs, indices, n_experts, alpha)
        return f, P, float(loss)

    assert_rejects("20.1", float_loss, "expected a tensor")


# --- 20.2: the capacity mask -------------------------------------------------------------------------


def make_mask(keep_last=False, off_by_one=False, global_count=False, expert_major=False):
    """The right capacity mask (a loop over slots), or one with a mistake learners make."""

    def mask(indices, n_experts, capacity):
        T, k = indices.shape
        order = [(t, j) for j in range(k) for t in range(T)] if expert_major else \
            [(t, j) for t in range(T) for j in range(k)]
        if keep_last:
            order = order[::-1]
        keep = torch.zeros(T, k, dtype=torch.bool)
        counts, seen = [0] * n_experts, 0
        for t, j in order:
            e = int(indices[t, j])
            used = seen if global_count else counts[e]
            keep[t, j] = used <= capacity if off_by_one else used < capacity
            counts[e] += 1
            seen += 1
        return keep

    return mask


def vectorised(indices, n_experts, capacity):
    one_hot = F.one_hot(indices.reshape(-1), n_experts)
    position = (one_hot.cumsum(0) * one_hot).sum(1) - 1
    return (position < capacity).reshape(indices.shape)


def test_20_2_accepts():
    assert_accepts("20.2", make_mask())
    assert_accepts("20.2", vectorised)


def test_20_2_rejects_dropping_the_first_tokens():
    text = assert_rejects("20.2", make_mask(keep_last=True), "entries differ")
    assert "capacity 2" in text


def test_20_2_rejects_capacity_off_by_one():
    assert_rejects("20.2", make_mask(off_by_one=True), "entries differ")


def test_20_2_rejects_one_counter_for_all_experts():
    assert_rejects("20.2", make_mask(global_count=True), "entries differ")


def test_20_2_rejects_first_choices_before_second_choices():
    text = assert_rejects("20.2", make_mask(expert_major=True), "entries differ")
    assert "top-2" in text


def test_20_2_rejects_a_float_mask():
    assert_rejects("20.2", lambda i, n, c: vectorised(i, n, c).float(), "dtype")

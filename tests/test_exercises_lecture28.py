"""Lecture 28's checkers accept the right answers and reject the wrong answers learners write."""

import pytest
import torch

from checker_tools import assert_accepts, assert_rejects
from utils.quantization import round_mantissa

# --- 28.1: promotion every N_C products --------------------------------------------------------------


def make_promoted(no_reset=False, round_total=False, drop_last=False, round_at_end=False, float32_partial=False,
                  promote_before=False):
    """The right promotion scheme, or one with a mistake learners make."""

    def promoted_sum(products, mantissa_bits, n_c):
        K = products.shape[-1]
        dtype = torch.float32 if float32_partial else torch.float64
        total = torch.zeros(products.shape[:-1], dtype=torch.float32)
        partial = torch.zeros(products.shape[:-1], dtype=dtype)
        for i in range(K):
            if promote_before and i > 0 and i % n_c == 0:
                total = total + partial.float()
                partial = torch.zeros_like(partial)
            partial = partial + products[..., i].to(dtype)
            if not round_at_end:
                partial = round_mantissa(partial, mantissa_bits)
            end_of_group = (i + 1) % n_c == 0 or (i == K - 1 and not drop_last)
            if not promote_before and end_of_group:
                if round_at_end:
                    partial = round_mantissa(partial, mantissa_bits)
                total = total + partial.float()
                if round_total:
                    total = round_mantissa(total, mantissa_bits)
                if not no_reset:
                    partial = torch.zeros_like(partial)
        if promote_before:
            total = total + partial.float()
        return total

    return promoted_sum


def promoted_vectorised(products, mantissa_bits, n_c):  # all groups at once, padded with zeros
    K = products.shape[-1]
    p = torch.nn.functional.pad(products.double(), (0, (-K) % n_c))
    p = p.reshape(*p.shape[:-1], -1, n_c)
    partial = torch.zeros(p.shape[:-1], dtype=torch.float64)
    for i in range(n_c):
        partial = round_mantissa(partial + p[..., i], mantissa_bits)
    total = torch.zeros(p.shape[:-2], dtype=torch.float32)
    for g in range(p.shape[-2]):
        total = total + partial[..., g].float()
    return total


def test_28_1_accepts():
    for answer in (make_promoted(), make_promoted(float32_partial=True), make_promoted(promote_before=True),
                   promoted_vectorised):
        assert_accepts("28.1", answer)


@pytest.mark.parametrize("wrong, fragment", [
    (make_promoted(no_reset=True), "case 1 (4 positive sums, K = 512, 6 mantissa bits, N_C = 128) is wrong"),
    (make_promoted(round_total=True), "case 1 (4 positive sums"),
    (make_promoted(drop_last=True), "case 2 (K = 300 not a multiple of N_C = 128: the last group has 44 products)"),
    (make_promoted(round_at_end=True), "case 1 (4 positive sums"),
    # no promotion at all: one limited-precision running sum
    (lambda p, m, n_c: make_promoted()(p, m, p.shape[-1]), "case 1 (4 positive sums"),
    # the exact sum: no limited precision at all
    (lambda p, m, n_c: p.sum(-1), "case 1 (4 positive sums"),
    # the FP32 total returned as float64
    (lambda p, m, n_c: make_promoted()(p, m, n_c).double(), "expected dtype torch.float32, got torch.float64"),
])
def test_28_1_rejects(wrong, fragment):
    assert_rejects("28.1", wrong, fragment)


# --- 28.2: the first overflowing step of delayed scaling -------------------------------------------------


def overflow_right(amaxes, history_len):
    for t in range(1, len(amaxes)):
        if amaxes[t] > max(amaxes[max(0, t - history_len):t]):
            return t
    return -1


def overflow_scales(amaxes, history_len):  # through the scales and the 448 threshold, with a margin
    for t in range(1, len(amaxes)):
        scale = max(amaxes[max(0, t - history_len):t]) / 448.0
        if amaxes[t] / scale > 448.0 * (1 + 1e-9):
            return t
    return -1


def overflow_off_by_one(amaxes, history_len):  # reports the step after the spike (the scale that reacts)
    t = overflow_right(amaxes, history_len)
    return t if t < 0 else t + 1


def overflow_current_amax(amaxes, history_len):  # the history includes this step: an online scale
    for t in range(1, len(amaxes)):
        if amaxes[t] > max(amaxes[max(0, t - history_len + 1):t + 1]):
            return t
    return -1


def overflow_long_window(amaxes, history_len):  # history_len + 1 earlier steps
    for t in range(1, len(amaxes)):
        if amaxes[t] > max(amaxes[max(0, t - history_len - 1):t]):
            return t
    return -1


def overflow_short_window(amaxes, history_len):  # history_len - 1 earlier steps
    for t in range(1, len(amaxes)):
        if amaxes[t] > max(amaxes[max(0, t - history_len + 1):t] or [0.0]):
            return t
    return -1


def overflow_greater_equal(amaxes, history_len):
    for t in range(1, len(amaxes)):
        if amaxes[t] >= max(amaxes[max(0, t - history_len):t]):
            return t
    return -1


def overflow_none(amaxes, history_len):  # None instead of -1
    t = overflow_right(amaxes, history_len)
    return None if t < 0 else t


def test_28_2_accepts():
    for answer in (overflow_right, overflow_scales):
        assert_accepts("28.2", answer)


@pytest.mark.parametrize("wrong, fragment", [
    (overflow_off_by_one, "case 1 (the lecture's spike: old max 240, then 480 at step 4) is wrong: expected 4, got 5"),
    (overflow_current_amax,
     "case 1 (the lecture's spike: old max 240, then 480 at step 4) is wrong: expected 4, got -1"),
    (overflow_long_window, "case 5 (history of 2: the step-0 spike has left the window at step 3)"),
    (overflow_short_window, "case 4 (history of 3: the step-0 spike of 480 still sets the scale at step 3)"),
    (overflow_greater_equal,
     "case 1 (the lecture's spike: old max 240, then 480 at step 4) is wrong: expected 4, got 1"),
    (overflow_none, "case 4 (history of 3"),
    (lambda a, h: float(overflow_right(a, h)), "return an int"),
])
def test_28_2_rejects(wrong, fragment):
    assert_rejects("28.2", wrong, fragment)

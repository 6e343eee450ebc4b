"""Lecture 15's checkers accept the right answers and reject the wrong answers learners write."""

import math

import numpy as np
import pytest
import torch

from checker_tools import assert_accepts, assert_rejects


def make_pe(swap=False, exponent="2i/d", fixed_base=None, halves=False, dtype=torch.float32, positions_from=0):
    """The sinusoidal encoding, or one with a mistake learners make."""

    def answer(T, d, base=10000.0):
        b = fixed_base if fixed_base is not None else base
        p = torch.arange(positions_from, positions_from + T, dtype=torch.float32)[:, None]  # (T, 1)
        i = torch.arange(d // 2, dtype=torch.float32)                                      # (d/2,)
        power = 2 * i / d if exponent == "2i/d" else i / d
        angles = p / b ** power                                                            # (T, d/2)
        first, second = (angles.cos(), angles.sin()) if swap else (angles.sin(), angles.cos())
        if halves:
            pe = torch.cat([first, second], dim=-1)
        else:
            pe = torch.stack([first, second], dim=-1).reshape(T, d)
        return pe.to(dtype)

    return answer


def pe_numpy(T, d, base=10000.0):  # the paper's formula, column by column, in float64
    pe = np.zeros((T, d))
    for pos in range(T):
        for i in range(d // 2):
            pe[pos, 2 * i] = math.sin(pos / base ** (2 * i / d))
            pe[pos, 2 * i + 1] = math.cos(pos / base ** (2 * i / d))
    return torch.from_numpy(pe).float()


def pe_exp_log(T, d, base=10000.0):  # the "exp(-log(base) 2i/d)" form of many implementations
    pe = torch.zeros(T, d)
    pos = torch.arange(T).float()[:, None]
    div = torch.exp(torch.arange(0, d, 2).float() * (-math.log(base) / d))
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
    return pe


def test_15_1_accepts():
    for answer in (make_pe(), pe_exp_log, pe_numpy):
        assert_accepts("15.1", answer)


@pytest.mark.parametrize("wrong, fragment", [
    (make_pe(swap=True), "case 1 (4 positions, d = 8) is wrong"),          # cos in the even columns
    (make_pe(exponent="i/d"), "case 1 (4 positions, d = 8) is wrong"),     # exponent i/d instead of 2i/d
    (make_pe(fixed_base=1000.0), "case 1 (4 positions, d = 8) is wrong"),  # base 1000
    (make_pe(fixed_base=10000.0), "case 5 (base 100 instead of 10000)"),   # ignores the base argument
    (make_pe(halves=True), "case 1 (4 positions, d = 8) is wrong"),        # all sines, then all cosines
    (make_pe(dtype=torch.float64), "expected dtype torch.float32, got torch.float64"),
    (make_pe(positions_from=1), "case 1 (4 positions, d = 8) is wrong"),   # positions 1 ... T
])
def test_15_1_rejects(wrong, fragment):
    assert_rejects("15.1", wrong, fragment)


def make_rotation(transpose=False, angle_k=False, pairing="interleaved", dtype=torch.float32):
    """R_k, or one with a mistake learners make."""

    def answer(k, d, base=10000.0):
        omega = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
        a = k * (torch.ones_like(omega) if angle_k else omega)
        R = torch.zeros(d, d, dtype=torch.float64)
        for i in range(d // 2):
            r, c = (2 * i, 2 * i + 1) if pairing == "interleaved" else (i, i + d // 2)
            R[r, r], R[c, c] = math.cos(a[i]), math.cos(a[i])
            R[r, c], R[c, r] = -math.sin(a[i]), math.sin(a[i])
            if transpose:  # the column-vector convention: R_k^T, which shifts by -k
                R[r, c], R[c, r] = R[c, r].item(), R[r, c].item()
        return R.to(dtype)

    return answer


def test_15_2_accepts():
    assert_accepts("15.2", make_rotation())


@pytest.mark.parametrize("wrong, fragment", [
    (make_rotation(transpose=True), "case 1 (k = 1, d = 4) is wrong"),       # PE(p) @ R^T = PE(p - k)
    (make_rotation(angle_k=True), "case 1 (k = 1, d = 4) is wrong"),         # every pair turned by k
    (make_rotation(pairing="halves"), "case 1 (k = 1, d = 4) is wrong"),     # pairs (i, i + d/2)
    (make_rotation(dtype=torch.float64), "expected dtype torch.float32, got torch.float64"),
    (lambda k, d, base=10000.0: torch.eye(d), "case 1 (k = 1, d = 4) is wrong"),
])
def test_15_2_rejects(wrong, fragment):
    assert_rejects("15.2", wrong, fragment)

"""Lecture 16's checkers accept the right answers and reject the wrong answers learners write."""

import pytest
import torch

from checker_tools import assert_accepts, assert_rejects


def make_rope(sign=1.0, pairing="interleaved", exponent="2i/d", start=0, use_offset=True, fixed_base=None):
    """RoPE written the way learners write it, with one optional mistake."""

    def answer(x, offset=0, base=10000.0):
        T, d = x.shape[-2], x.shape[-1]
        b = fixed_base if fixed_base is not None else base
        i = torch.arange(d // 2, dtype=torch.float64)
        theta = b ** (-(2 * i if exponent == "2i/d" else i) / d)                       # (d/2,)
        p = torch.arange(T, dtype=torch.float64) + start + (offset if use_offset else 0)
        angle = p[:, None] * theta                                                     # (T, d/2)
        c, s = angle.cos().to(x.dtype), (sign * angle.sin()).to(x.dtype)
        if pairing == "interleaved":
            a, bb = x[..., 0::2], x[..., 1::2]
            return torch.stack([a * c - bb * s, a * s + bb * c], dim=-1).flatten(-2)
        a, bb = x[..., : d // 2], x[..., d // 2:]
        return torch.cat([a * c - bb * s, a * s + bb * c], dim=-1)

    return answer


def rope_complex(x, offset=0, base=10000.0):  # the complex-number form, as in DeepSeek's and Meta's code
    T, d = x.shape[-2], x.shape[-1]
    theta = 1.0 / base ** (torch.arange(0, d, 2).float() / d)
    freqs = torch.polar(torch.ones(T, d // 2), torch.outer(torch.arange(offset, offset + T).float(), theta))
    z = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(z * freqs).flatten(-2)


def test_16_1_accepts():
    for answer in (make_rope(), rope_complex):
        assert_accepts("16.1", answer)


@pytest.mark.parametrize("wrong, fragment", [
    (make_rope(sign=-1.0), "case 1 (T = 4, d = 8, positions 0 ... 3) is wrong"),           # rotates by -p
    (make_rope(pairing="halves"), "case 1 (T = 4, d = 8, positions 0 ... 3) is wrong"),    # (x_i, x_i+d/2)
    (make_rope(exponent="i/d"), "case 1 (T = 4, d = 8, positions 0 ... 3) is wrong"),      # theta = base^(-i/d)
    (make_rope(start=1), "case 1 (T = 4, d = 8, positions 0 ... 3) is wrong"),             # positions 1 ... T
    (make_rope(use_offset=False), "case 3 (offset 5"),                                     # ignores the offset
    (make_rope(fixed_base=10000.0), "case 6 (base 100 instead of 10000)"),                 # ignores base
])
def test_16_1_rejects(wrong, fragment):
    assert_rejects("16.1", wrong, fragment)


def make_table(rotate_k=True, transpose=False, sign=1.0):
    def answer(q, k, P, base=10000.0):
        d = q.shape[-1]
        theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
        angle = torch.arange(P, dtype=torch.float64)[:, None] * theta                 # (P, d/2)
        c, s = angle.cos().float(), (sign * angle.sin()).float()

        def rot(v):                                                                    # (d,) -> (P, d)
            a, b = v[0::2], v[1::2]
            return torch.stack([a * c - b * s, a * s + b * c], dim=-1).flatten(-2)

        qs = rot(q)
        ks = rot(k) if rotate_k else k.expand(P, -1)
        table = qs @ ks.T
        return table.T if transpose else table

    return answer


def test_16_2_accepts():
    assert_accepts("16.2", make_table())

    def via_lecture_15(q, k, P, base=10000.0):  # q_m . k_n = q R_(n-m) k with Lecture 15's rotation
        from utils.positional import sinusoid_rotation
        return torch.stack([torch.stack([q @ sinusoid_rotation(n - m, q.shape[-1], base) @ k for n in range(P)])
                            for m in range(P)])

    assert_accepts("16.2", via_lecture_15)


@pytest.mark.parametrize("wrong, fragment", [
    (make_table(rotate_k=False), "case 1 (d = 4, P = 6) is wrong"),      # only the query rotated
    (make_table(transpose=True), "case 1 (d = 4, P = 6) is wrong"),      # [n, m] instead of [m, n]
    (make_table(sign=-1.0), "case 1 (d = 4, P = 6) is wrong"),           # both rotated by -p: the table transposed
    (lambda q, k, P, base=10000.0: (q @ k).expand(P, P).clone(), "case 1 (d = 4, P = 6) is wrong"),  # no RoPE
])
def test_16_2_rejects(wrong, fragment):
    assert_rejects("16.2", wrong, fragment)


def test_16_3_accepts():
    assert_accepts("16.3", lambda W: torch.cat([W[:, 0::2], W[:, 1::2]], dim=1))
    assert_accepts("16.3", lambda W: W[:, torch.arange(W.shape[1]).view(-1, 2).T.reshape(-1)])


def inverse_perm(W):  # halves -> interleaved: the permutation's inverse
    d = W.shape[1]
    return torch.stack([W[:, : d // 2], W[:, d // 2:]], dim=-1).reshape(W.shape[0], d)


@pytest.mark.parametrize("wrong, fragment", [
    (inverse_perm, "case 3 (W (6, 8)) is wrong"),                        # for d = 4 the inverse is the same
    (lambda W: W.clone(), "case 1 (W (3, 4): d = 4) is wrong"),          # no reordering
    (lambda W: torch.cat([W[0::2], W[1::2]], dim=0), "case 1 (W (3, 4): d = 4)"),   # rows instead of columns
])
def test_16_3_rejects(wrong, fragment):
    assert_rejects("16.3", wrong, fragment)

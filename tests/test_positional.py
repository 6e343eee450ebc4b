"""utils.positional (Lectures 14-16): identities, independent formulas, and bad input."""

import math

import numpy as np
import pytest
import torch

from utils.positional import (apply_rope, binary_positions, integer_positions, rope_cache, rope_permutation,
                              sinusoid_frequencies, sinusoid_rotation, sinusoidal_positions)

# --- Lecture 14 -----------------------------------------------------------------------------------


def test_integer_positions():
    pe = integer_positions(300, 5)
    assert pe.shape == (300, 5) and pe.dtype == torch.float32
    assert torch.equal(pe[200], torch.full((5,), 200.0))


def test_binary_200_is_11001000():
    bits = binary_positions(256, 8)
    assert bits.dtype == torch.int64 and bits.shape == (256, 8)
    assert "".join(map(str, bits[200].tolist())) == "11001000" == format(200, "08b")


def test_binary_matches_python_format_and_reads_back():
    bits = binary_positions(1000, 10)
    for p in (0, 1, 2, 511, 512, 999):
        assert "".join(map(str, bits[p].tolist())) == format(p, "010b")
    weights = 2 ** torch.arange(9, -1, -1)
    assert torch.equal(bits @ weights, torch.arange(1000))            # the rows are the numbers 0 ... 999
    assert set(bits.unique().tolist()) == {0, 1}


def test_binary_lowest_bit_flips_every_step_highest_once():
    bits = binary_positions(256, 8)
    flips = (bits[1:] != bits[:-1]).sum(dim=0)                         # per column, MSB first
    assert flips.tolist() == [2 ** j - 1 for j in range(1, 9)]       # 1, 3, 7, ..., 255


# --- Lecture 15 -----------------------------------------------------------------------------------


def pe_paper(T, d, base=10000.0):
    """Vaswani et al. (2017), section 3.5, written independently in numpy (float64)."""
    pos = np.arange(T)[:, None]
    i = np.arange(d)[None, :]
    angle = pos / np.power(base, (2 * (i // 2)) / d)
    return np.where(i % 2 == 0, np.sin(angle), np.cos(angle))


@pytest.mark.parametrize("T, d, base", [(1024, 768, 10000.0), (50, 2, 10000.0), (17, 10, 100.0)])
def test_sinusoidal_matches_the_papers_formula(T, d, base):
    pe = sinusoidal_positions(T, d, base, dtype=torch.float64)
    np.testing.assert_allclose(pe.numpy(), pe_paper(T, d, base), atol=1e-12)
    assert sinusoidal_positions(T, d, base).dtype == torch.float32


def test_sinusoidal_is_bounded_with_constant_norm():
    pe = sinusoidal_positions(1024, 768, dtype=torch.float64)
    assert pe.abs().max() <= 1.0
    torch.testing.assert_close(pe.norm(dim=-1), torch.full((1024,), math.sqrt(384.0), dtype=torch.float64))
    torch.testing.assert_close(pe[0], torch.tensor([0.0, 1.0] * 384, dtype=torch.float64))


def test_frequencies_geometric_from_1_to_nearly_1_over_base():
    w = sinusoid_frequencies(768)
    assert w.shape == (384,) and w[0] == 1.0
    torch.testing.assert_close(w[1:] / w[:-1], torch.full((383,), 10000.0 ** (-2 / 768), dtype=torch.float64))
    assert math.isclose(w[-1].item(), 10000.0 ** (-766 / 768))


@pytest.mark.parametrize("d", [2, 8, 64, 768])
def test_rotation_property_for_many_p_and_k(d):
    pe = sinusoidal_positions(1200, d, dtype=torch.float64)
    for k in (0, 1, 2, 7, 50, 129):
        R = sinusoid_rotation(k, d, dtype=torch.float64)
        torch.testing.assert_close(pe[: 1200 - k] @ R, pe[k:])             # every p at once
        torch.testing.assert_close(R @ R.T, torch.eye(d, dtype=torch.float64))  # orthogonal
        torch.testing.assert_close(torch.linalg.det(R), torch.tensor(1.0, dtype=torch.float64))
    for k in (-1, -40):
        torch.testing.assert_close(pe[-k:] @ sinusoid_rotation(k, d, dtype=torch.float64), pe[: 1200 + k])


def test_rotation_composes_and_inverts():
    R2, R3, R5 = (sinusoid_rotation(k, 16, dtype=torch.float64) for k in (2, 3, 5))
    torch.testing.assert_close(R2 @ R3, R5)
    torch.testing.assert_close(sinusoid_rotation(-5, 16, dtype=torch.float64), R5.T)
    half = sinusoid_rotation(2.5, 16, dtype=torch.float64)            # a fractional offset works too
    torch.testing.assert_close(half @ half, R5)


def test_dot_products_depend_only_on_the_offset():
    pe = sinusoidal_positions(600, 64, dtype=torch.float64)
    w = sinusoid_frequencies(64)
    for k in (0, 1, 10, 100):
        dots = (pe[: 600 - k] * pe[k:]).sum(dim=-1)                        # PE(p) . PE(p + k) for every p
        torch.testing.assert_close(dots, torch.full_like(dots, torch.cos(k * w).sum().item()))


# --- Lecture 16: RoPE ------------------------------------------------------------------------------


def rope_paper(x, positions, base=10000.0):
    """RoFormer (Su et al. 2021), eq. (34): R^d_{Theta,m} x = x * cos(m theta) + x' * sin(m theta) with
    x' = (-x_2, x_1, -x_4, x_3, ...), theta_i = base^(-2(i-1)/d); written independently in numpy."""
    x = np.asarray(x, dtype=np.float64)                       # (T, d)
    d = x.shape[-1]
    theta = base ** (-2 * np.arange(d // 2) / d)              # (d/2,)
    out = np.empty_like(x)
    for t, m in enumerate(positions):
        ang = np.repeat(m * theta, 2)                         # theta_1, theta_1, theta_2, theta_2, ...
        x_rot = np.empty(d)
        x_rot[0::2], x_rot[1::2] = -x[t, 1::2], x[t, 0::2]
        out[t] = x[t] * np.cos(ang) + x_rot * np.sin(ang)
    return out


def rope_complex(x, positions, base=10000.0):
    """The complex-number form: pair (x_2i, x_2i+1) is x_2i + j x_2i+1, multiplied by e^{j p theta_i}."""
    d = x.shape[-1]
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    z = torch.view_as_complex(x.double().reshape(*x.shape[:-1], d // 2, 2).contiguous())
    rot = torch.polar(torch.ones_like(theta), positions.double()[:, None] * theta)  # (T, d/2)
    return torch.view_as_real(z * rot).flatten(-2).to(x.dtype)


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("d, base", [(2, 10000.0), (8, 10000.0), (64, 10000.0), (10, 500.0)])
def test_rope_matches_the_roformer_formula(d, base):
    x = randn(7, d)
    positions = torch.tensor([0, 1, 2, 5, 17, 100, 999])
    cos, sin = rope_cache(1000, d, base, dtype=torch.float64)
    got = apply_rope(x, cos, sin, positions=positions)
    np.testing.assert_allclose(got.numpy(), rope_paper(x.numpy(), positions.tolist(), base), atol=1e-12)
    torch.testing.assert_close(got, rope_complex(x, positions, base))       # complex == real cos/sin


def test_rope_cache_values_and_dtype():
    cos, sin = rope_cache(50, 6)
    assert cos.shape == sin.shape == (50, 3) and cos.dtype == torch.float32
    w = sinusoid_frequencies(6)
    torch.testing.assert_close(cos[7], torch.cos(7 * w).float())
    torch.testing.assert_close(sin[0], torch.zeros(3))
    # the sines and cosines are the columns of Lecture 15's table
    pe = sinusoidal_positions(50, 6)
    torch.testing.assert_close(sin, pe[:, 0::2])
    torch.testing.assert_close(cos, pe[:, 1::2])


def test_rope_preserves_norms_and_position_zero_is_identity():
    x = randn(2, 3, 40, 16)
    cos, sin = rope_cache(64, 16, dtype=torch.float64)
    for interleaved in (True, False):
        y = apply_rope(x, cos, sin, interleaved=interleaved)
        torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
        torch.testing.assert_close(y[..., 0, :], x[..., 0, :])
        assert y.shape == x.shape and y.dtype == x.dtype


@pytest.mark.parametrize("interleaved", [True, False])
def test_scores_depend_only_on_the_offset(interleaved):
    d = 32
    q, k = randn(d, seed=1), randn(d, seed=2)
    cos, sin = rope_cache(600, d, dtype=torch.float64)

    def score(m, n):
        qm = apply_rope(q[None], cos, sin, positions=torch.tensor([m]), interleaved=interleaved)[0]
        kn = apply_rope(k[None], cos, sin, positions=torch.tensor([n]), interleaved=interleaved)[0]
        return qm @ kn

    for delta in (0, 1, 5, -3, 200):
        ref = score(max(delta, 0), max(-delta, 0))
        for shift in (1, 10, 300):
            torch.testing.assert_close(score(max(delta, 0) + shift, max(-delta, 0) + shift), ref)
    if interleaved:  # q_m . k_n = q R_(n-m) k^T with Lecture 15's rotation (row-vector convention)
        torch.testing.assert_close(score(9, 4), q @ sinusoid_rotation(4 - 9, d, dtype=torch.float64) @ k)


def test_rope_is_lecture_15_rotation_transposed():
    d = 12
    x = randn(5, d)
    cos, sin = rope_cache(100, d, dtype=torch.float64)
    for p in (0, 1, 3, 77):
        got = apply_rope(x, cos, sin, positions=torch.full((5,), p))
        torch.testing.assert_close(got, x @ sinusoid_rotation(p, d, dtype=torch.float64).T)
        torch.testing.assert_close(got, x @ sinusoid_rotation(-p, d, dtype=torch.float64))


def test_offset_equals_explicit_positions_and_slicing():
    x = randn(2, 4, 6, 8)
    cos, sin = rope_cache(32, 8, dtype=torch.float64)
    full = apply_rope(torch.cat([randn(2, 4, 10, 8, seed=5), x], dim=-2), cos, sin)
    torch.testing.assert_close(apply_rope(x, cos, sin, offset=10), full[..., 10:, :])
    torch.testing.assert_close(apply_rope(x, cos, sin, positions=torch.arange(10, 16)), full[..., 10:, :])
    per_batch = torch.tensor([[0, 1, 2, 3, 4, 5], [20, 21, 22, 23, 24, 25]])[:, None, :]  # (B, 1, T)
    y = apply_rope(x, cos, sin, positions=per_batch)
    torch.testing.assert_close(y[1], apply_rope(x[1], cos, sin, offset=20))


def test_pairings_agree_up_to_a_fixed_permutation():
    d = 16
    perm = rope_permutation(d)
    assert perm.tolist() == [0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15]
    X = randn(10, 24, seed=3)
    W_q, W_k = randn(24, d, seed=4), randn(24, d, seed=5)
    cos, sin = rope_cache(10, d, dtype=torch.float64)
    q_i, k_i = apply_rope(X @ W_q, cos, sin), apply_rope(X @ W_k, cos, sin)
    q_h, k_h = (apply_rope(X @ W[:, perm], cos, sin, interleaved=False) for W in (W_q, W_k))
    torch.testing.assert_close(q_i[:, perm], q_h)
    torch.testing.assert_close(q_i @ k_i.T, q_h @ k_h.T)                      # same scores
    k_wrong = apply_rope(X @ W_k, cos, sin, interleaved=False)                 # same weights, other pairing
    assert (q_i @ k_i.T - apply_rope(X @ W_q, cos, sin, interleaved=False) @ k_wrong.T).abs().max() > 1e-2


def test_rope_half_precision_and_float32():
    x = randn(3, 8, dtype=torch.float32)
    cos, sin = rope_cache(8, 8)
    assert apply_rope(x.to(torch.bfloat16), cos, sin).dtype == torch.bfloat16
    torch.testing.assert_close(apply_rope(x, cos, sin), apply_rope(x.double(), *rope_cache(8, 8, dtype=torch.float64)).float())


# --- bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize("call, fragment", [
    (lambda: sinusoidal_positions(10, 7), "use an even width"),
    (lambda: sinusoid_rotation(1, 5), "use an even width"),
    (lambda: sinusoidal_positions(0, 8), "T must be positive"),
    (lambda: sinusoidal_positions(-3, 8), "T must be positive"),
    (lambda: sinusoidal_positions(4.0, 8), "T must be a positive int"),
    (lambda: sinusoidal_positions(4, 0), "d must be positive"),
    (lambda: sinusoidal_positions(4, 8, base=1.0), "base must be a number larger than 1"),
    (lambda: sinusoidal_positions(4, 8, base=-10.0), "base must be a number larger than 1"),
    (lambda: sinusoid_rotation(float("nan"), 8), "k must be a finite number"),
    (lambda: integer_positions(0, 8), "T must be positive"),
    (lambda: integer_positions(5, True), "d must be a positive int"),
    (lambda: binary_positions(300, 8), "use n_bits >= 9"),
    (lambda: binary_positions(10, 0), "n_bits must be positive"),
    (lambda: rope_cache(16, 7), "use an even width"),
    (lambda: rope_cache(0, 8), "T_max must be positive"),
    (lambda: rope_permutation(5), "use an even width"),
    (lambda: apply_rope(torch.zeros(4, 7), *rope_cache(8, 8)), "must be even and positive"),
    (lambda: apply_rope(torch.zeros(4, 8), *rope_cache(8, 6)), "build them with rope_cache"),
    (lambda: apply_rope(torch.zeros(8), *rope_cache(8, 8)), "x must be a tensor of shape"),
    (lambda: apply_rope(torch.zeros(4, 8), *rope_cache(8, 8), offset=5), "rope_cache\\(T_max >= 9, 8\\)"),
    (lambda: apply_rope(torch.zeros(4, 8), *rope_cache(8, 8), offset=-1), "offset must be a non-negative int"),
    (lambda: apply_rope(torch.zeros(2, 8), *rope_cache(8, 8), positions=torch.tensor([3, 12])),
     "rope_cache\\(T_max >= 13, 8\\)"),
    (lambda: apply_rope(torch.zeros(2, 8), *rope_cache(8, 8), positions=torch.tensor([-1, 0])), "must lie in 0 ... 7"),
    (lambda: apply_rope(torch.zeros(2, 8), *rope_cache(8, 8), positions=torch.tensor([0.0, 1.0])), "int tensor"),
    (lambda: apply_rope(torch.zeros(2, 8), *rope_cache(8, 8), positions=torch.tensor([0, 1, 2])), "T = 2"),
])
def test_bad_input_says_what_to_change(call, fragment):
    with pytest.raises(ValueError, match=fragment):
        call()

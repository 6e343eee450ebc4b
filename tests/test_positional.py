"""utils.positional (Lectures 14-15): identities, an independent formula, and bad input."""

import math

import numpy as np
import pytest
import torch

from utils.positional import (binary_positions, integer_positions, sinusoid_frequencies, sinusoid_rotation,
                              sinusoidal_positions)

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
])
def test_bad_input_says_what_to_change(call, fragment):
    with pytest.raises(ValueError, match=fragment):
        call()

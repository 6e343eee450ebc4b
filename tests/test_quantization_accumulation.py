"""Lecture 28's library: limited-precision accumulation, promotion, delayed vs online scaling."""

import pytest
import torch

from utils.quantization.accumulation import (
    DEEPSEEK_PROMOTION_INTERVAL, DelayedScaler, accumulate, accumulation_inputs, first_delayed_overflow,
    online_scale, quantize_e4m3_saturating, relative_errors, round_mantissa, saturated_fraction, scaling_trace)

K = 4096


@pytest.fixture(scope="module")
def inputs():
    return accumulation_inputs(128, K, seed=0)  # |N(0, 1)| cast to E4M3


def max_error(inputs, bits, n_c=None, rounding="nearest"):
    return float(relative_errors(*inputs, bits, n_c, rounding).max())


def test_round_mantissa_matches_float32_bfloat16_and_float16():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(10000, dtype=torch.float64, generator=gen) * 10
    x = x[x.abs() > 1e-3]  # FP16's normal range: no subnormals
    assert torch.equal(round_mantissa(x, 23), x.float().double())  # FP32: 23 fraction bits, ties to even
    # torch casts float64 to 16-bit formats through float32 (two roundings): start from float32
    x32 = x.float()
    assert torch.equal(round_mantissa(x32, 7), x32.to(torch.bfloat16).float())  # BF16: 7
    assert torch.equal(round_mantissa(x32, 10), x32.half().float())  # FP16: 10


def test_round_mantissa_ties_to_even_and_truncation():
    x = torch.tensor([1.25, 1.75, 1.375, -1.375, 0.0, 3.0])
    assert round_mantissa(x, 1).tolist() == [1.0, 2.0, 1.5, -1.5, 0.0, 3.0]
    assert round_mantissa(x, 1, "toward_zero").tolist() == [1.0, 1.5, 1.0, -1.0, 0.0, 3.0]


def test_accumulate_exact_cases():
    p = torch.randn(3, 300)
    torch.testing.assert_close(accumulate(p, 50), p.double().sum(-1).float())  # float64-like accumulator
    ints = torch.randint(-100, 100, (4, 1000)).float()  # sums below 2**17: exact with 17+ bits
    assert torch.equal(accumulate(ints, 20), ints.sum(-1))
    assert torch.equal(accumulate(ints, 20, promote_every=128), ints.sum(-1))
    assert accumulate(torch.zeros(2, 3, 0), 10).shape == (2, 3)


def test_stagnation_of_a_short_accumulator():
    ones = torch.ones(1, 64)
    # 3 fraction bits: 16 + 1 = 17 needs 4 fraction bits, so 17 rounds to 16 (a tie, to even): stuck at 16
    assert accumulate(ones, 3).item() == 16.0
    assert accumulate(ones, 3, promote_every=8).item() == 64.0  # each group of 8 is exact


def test_error_grows_as_mantissa_bits_shrink(inputs):
    errors = [max_error(inputs, bits) for bits in (16, 14, 12, 10)]
    assert errors == sorted(errors) and errors[-1] > 10 * errors[0]


def test_promotion_removes_most_of_the_error(inputs):
    for bits in (12, 13, 14):
        assert max_error(inputs, bits, DEEPSEEK_PROMOTION_INTERVAL) < max_error(inputs, bits) / 10
    e = [max_error(inputs, 12, n_c) for n_c in (512, 128, 32)]
    assert e == sorted(e, reverse=True)  # shorter groups, smaller error


def test_about_14_bits_gives_the_papers_nearly_2_percent(inputs):
    # "about 14 bits" read as a signed 14-bit significand: sign, leading one, 12 fraction bits.
    assert 0.01 < max_error(inputs, 12) < 0.03
    # 13 or 14 fraction bits with round-to-nearest: below 2 %; truncating 14: above it.
    assert 0.001 < max_error(inputs, 14) < max_error(inputs, 13) < 0.02 < max_error(inputs, 14, None, "toward_zero")


def test_bad_input():
    with pytest.raises(ValueError, match="mantissa_bits"):
        accumulate(torch.ones(2, 4), 0)
    with pytest.raises(ValueError, match="mantissa_bits"):
        round_mantissa(torch.ones(2), 2.5)
    with pytest.raises(ValueError, match="promote_every"):
        accumulate(torch.ones(2, 4), 10, promote_every=0)
    with pytest.raises(ValueError, match="rounding"):
        accumulate(torch.ones(2, 4), 10, rounding="up")
    with pytest.raises(ValueError, match="inf or NaN"):
        accumulate(torch.tensor([[1.0, float("inf")]]), 10)
    with pytest.raises(ValueError, match="floating-point"):
        accumulate(torch.ones(2, 4, dtype=torch.int64), 10)
    with pytest.raises(ValueError, match="history_len"):
        DelayedScaler(history_len=0)
    with pytest.raises(ValueError, match="history_len"):
        first_delayed_overflow([1.0, 2.0], 0)
    with pytest.raises(ValueError, match="inf or NaN"):
        online_scale(torch.tensor([1.0, float("nan")]))


def test_lecture_example_delayed_overflows_online_does_not():
    old = torch.tensor([-240.0, 17.0, 240.0])
    new = torch.tensor([-100.0, 480.0, 3.0])
    scaler = DelayedScaler(history_len=16)
    scaler.update(old)
    delayed = scaler.scale()
    assert delayed == 240.0 / 448.0
    assert saturated_fraction(new, delayed) == pytest.approx(1 / 3)  # 480 / (240 / 448) = 896 > 448
    assert quantize_e4m3_saturating(new, delayed)[1].item() == 240.0  # clipped: half the value lost
    online = online_scale(new)
    assert online == 480.0 / 448.0 and saturated_fraction(new, online) == 0.0
    assert quantize_e4m3_saturating(new, online)[1].item() == 480.0
    assert first_delayed_overflow([240.0, 240.0, 480.0], 16) == 2


def test_online_scale_official_semantics():
    assert online_scale(torch.zeros(5)) == 1e-4 / 448.0  # amax clamped to 1e-4, as act_quant
    assert online_scale(torch.tensor([-896.0, 1.0])) == 2.0


def test_scaling_trace():
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(4096, generator=gen)
    amaxes = [240.0, 240.0, 480.0, 240.0]
    tensors = [base / base.abs().max() * a for a in amaxes]
    delayed = scaling_trace(tensors, "delayed", history_len=4)
    online = scaling_trace(tensors, "online")
    assert delayed["overflow"] == [False, False, True, False] and not any(online["overflow"])
    assert delayed["saturated"][2] > 0.01 and delayed["rel_error"][2] > 3 * online["rel_error"][2]
    assert online["amax"] == pytest.approx(amaxes)
    with pytest.raises(ValueError, match="mode"):
        scaling_trace(tensors, "current")

"""Lecture 26's checkers accept the right answers and reject the wrong answers learners write."""

import pytest
import torch

from checker_tools import assert_accepts, assert_rejects

# --- 26.1: absmax int8 quantize ------------------------------------------------------------------------


def make_absmax(rounding=torch.round, divisor=127, use_abs=True, to_int8=True, clamp=True):
    def answer(x):
        m = x.abs().max() if use_abs else x.max()
        scale = m / divisor
        q = rounding(x / scale)
        if clamp:
            q = q.clamp(-127, 127)
        return (q.to(torch.int8) if to_int8 else q), scale
    return answer


def test_26_1_accepts():
    assert_accepts("26.1", make_absmax())
    assert_accepts("26.1", lambda x: ((x * 127 / x.abs().max()).round().to(torch.int8), x.abs().amax() / 127))


@pytest.mark.parametrize("wrong, fragment", [
    (make_absmax(rounding=torch.floor), "case 1 (the lecture's [2.5, 3.7, 10.8, 1.2]: scale 10.8 / 127, 3.7 -> 43.51 "
                                        "-> 44) is wrong: result 0: 1 of 4 entries differ"),
    (make_absmax(rounding=torch.trunc), "case 1 (the lecture's"),
    (lambda x: ((x / (x.abs().max() / 127)).to(torch.int8), x.abs().max() / 127), "case 1 (the lecture's"),  # cast truncates
    (make_absmax(divisor=128), "case 1 (the lecture's"),
    (make_absmax(divisor=255), "case 1 (the lecture's"),
    (make_absmax(use_abs=False), "case 2 (the largest magnitude is negative"),
    (make_absmax(use_abs=False, clamp=False), "case 2 (the largest magnitude is negative"),
    (make_absmax(to_int8=False), "result 0: expected dtype torch.int8, got torch.float32"),
    (lambda x: (make_absmax()(x)[0], (x.abs().max() / 127).item()), "result 1: expected a tensor, got float"),
    (lambda x: (make_absmax()(x)[0], (x.abs().max() / 127).double()), "expected dtype torch.float32"),
    (lambda x: make_absmax()(x)[0], "expected 2 results"),
])
def test_26_1_rejects(wrong, fragment):
    assert_rejects("26.1", wrong, fragment)


# --- 26.2: quantize with a given scale and dequantize -------------------------------------------------


def make_given(clamp=(-127, 127), rounding=torch.round, dequant="mul", q_int8=True):
    def answer(x, scale):
        q = rounding(x / scale)
        if clamp:
            q = q.clamp(*clamp)
        q = q.to(torch.int8) if q_int8 else q
        x_hat = q.float() * scale if dequant == "mul" else q.float() / scale if dequant == "div" else q
        return q, x_hat
    return answer


def test_26_2_accepts():
    assert_accepts("26.2", make_given())


@pytest.mark.parametrize("wrong, fragment", [
    (make_given(clamp=None), "case 2 (a calibrated scale 4 / 127 smaller than the data"),
    (make_given(clamp=(-128, 127)), "case 2 (a calibrated scale 4 / 127 smaller than the data [-6, -1, 0.3, 2.2, 9]: "
                                    "clip both ends) is wrong: result 0: 1 of 5 entries differ"),
    (make_given(rounding=torch.floor), "case 1 (the lecture's vector with its own scale 10.8 / 127) is wrong"),
    (make_given(dequant="div"), "case 1 (the lecture's vector"),
    (make_given(dequant="none"), "result 1: expected dtype torch.float32, got torch.int8"),
    (make_given(q_int8=False), "result 0: expected dtype torch.int8"),
])
def test_26_2_rejects(wrong, fragment):
    assert_rejects("26.2", wrong, fragment)


# --- 26.3: per-channel scales -------------------------------------------------------------------------


def per_channel_right(W):
    scale = W.abs().amax(dim=1, keepdim=True) / 127  # (out, 1)
    return torch.round(W / scale).clamp(-127, 127).to(torch.int8), scale


def test_26_3_accepts():
    assert_accepts("26.3", per_channel_right)


@pytest.mark.parametrize("wrong, fragment", [
    # one scale for the whole matrix
    (lambda W: (torch.round(W / (W.abs().max() / 127)).to(torch.int8), W.abs().max() / 127),
     "case 1 (a (4, 4) weight whose output channel 2 is 40 times larger) is wrong: result 0"),
    # one scale per input column
    (lambda W: (torch.round(W / (W.abs().amax(0, keepdim=True) / 127)).to(torch.int8),
                W.abs().amax(0, keepdim=True) / 127), "case 1 (a (4, 4) weight"),
    # the row max without keepdim: divides column j by row j's max on a square weight
    (lambda W: (torch.round(W / (W.abs().amax(1) / 127)).clamp(-127, 127).to(torch.int8), W.abs().amax(1) / 127),
     "case 1 (a (4, 4) weight"),
    # signed row max instead of the largest magnitude
    (lambda W: (torch.round(W / (W.amax(1, keepdim=True) / 127)).clamp(-127, 127).to(torch.int8),
                W.amax(1, keepdim=True) / 127), "case 1 (a (4, 4) weight"),
    # right q, but the scale returned flat
    (lambda W: (per_channel_right(W)[0], per_channel_right(W)[1].flatten()), "result 1: expected shape (4, 1), got (4,)"),
])
def test_26_3_rejects(wrong, fragment):
    assert_rejects("26.3", wrong, fragment)


# --- 26.4: zero-point uint8 ---------------------------------------------------------------------------


def make_zeropoint(include_zero=True, levels=255, round_zp=True, sign=-1):
    def answer(x):
        lo, hi = x.min(), x.max()
        if include_zero:
            lo, hi = lo.clamp(max=0), hi.clamp(min=0)
        scale = (hi - lo) / levels
        zp = sign * lo / scale
        zp = zp.round().clamp(0, 255) if round_zp else zp
        q = (torch.round(x / scale) + zp).clamp(0, 255).to(torch.uint8)
        return q, scale, zp.to(torch.int32) if round_zp else zp
    return answer


def test_26_4_accepts():
    assert_accepts("26.4", make_zeropoint())


@pytest.mark.parametrize("wrong, fragment", [
    (make_zeropoint(include_zero=False), "case 2 (all positive [2, 3, 4, 6]: the range is [0, 6]"),
    (make_zeropoint(levels=256), "case 1 (mixed signs [-1.0, 0.5, 2.0, 3.5]) is wrong: result 0"),
    (make_zeropoint(round_zp=False), "case 1 (mixed signs"),
    (make_zeropoint(sign=1), "case 1 (mixed signs"),
    (lambda x: tuple(make_zeropoint()(x)[:2]), "expected 3 results"),
])
def test_26_4_rejects(wrong, fragment):
    assert_rejects("26.4", wrong, fragment)

"""Exercises of Lecture 26: int8 quantization.

26.1 absmax int8 quantization of a tensor (``q`` int8, ``scale`` float32), 26.2 quantize with a
given (calibrated or clipped) scale and dequantize, 26.3 one absmax scale per output channel of
a weight matrix, 26.4 asymmetric (zero-point) quantization to uint8. Expected values come from
:mod:`utils.quantization.int8`; inputs are drawn from private generators.
"""

from __future__ import annotations

import torch

from utils.exercises import Case, exercise, randn
from utils.quantization.int8 import (absmax_dequantize, absmax_quantize, quantize_int8,
                                     zeropoint_quantize)

LECTURE_VECTOR = (2.5, 3.7, 10.8, 1.2)
OUTLIER_VECTOR = (2.0, 3.0, 4.0, 500.0)


def _t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


# --- 26.1: absmax quantize ----------------------------------------------------------------------------

def _absmax_inputs():
    return [
        ("the lecture's [2.5, 3.7, 10.8, 1.2]: scale 10.8 / 127, 3.7 -> 43.51 -> 44", _t(LECTURE_VECTOR)),
        ("the largest magnitude is negative: [1.0, -10.0, 2.0, 4.5]", _t((1.0, -10.0, 2.0, 4.5))),
        ("the outlier example [2, 3, 4, 500]", _t(OUTLIER_VECTOR)),
        ("a (4, 6) matrix of normal values times 3 (one scale for all)", randn(4, 6, seed=2610, scale=3.0)),
        ("small values: a (8,) vector times 0.01", randn(8, seed=2611, scale=0.01)),
    ]


@exercise("26.1", "absmax int8: scale = max|x| / 127, q = round(x / scale) as int8", atol=1e-6)
def _cases_absmax():
    return [Case(label, (x,), absmax_quantize(x)) for label, x in _absmax_inputs()]


# --- 26.2: quantize with a given scale, then dequantize ----------------------------------------------

def _given_scale_inputs():
    return [
        ("the lecture's vector with its own scale 10.8 / 127", _t(LECTURE_VECTOR), _t(10.8 / 127)),
        ("a calibrated scale 4 / 127 smaller than the data [-6, -1, 0.3, 2.2, 9]: clip both ends",
         _t((-6.0, -1.0, 0.3, 2.2, 9.0)), _t(4.0 / 127)),
        ("the outlier [2, 3, 4, 500] with the scale clipped at 4: the outlier saturates",
         _t(OUTLIER_VECTOR), _t(4.0 / 127)),
        ("a (3, 5) matrix with a scale calibrated on other data", randn(3, 5, seed=2620, scale=2.0),
         randn(50, seed=2621, scale=1.5).abs().max() / 127),
    ]


def fake_quantize_reference(x: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, q * scale)`` with ``q = clamp(round(x / scale), -127, 127)`` as int8 (Lecture 26)."""
    q = quantize_int8(x, scale)
    return q, absmax_dequantize(q, scale)


@exercise("26.2", "quantize with a given scale (clamp to [-127, 127]) and dequantize", atol=1e-6)
def _cases_given_scale():
    return [Case(label, (x, s), fake_quantize_reference(x, s)) for label, x, s in _given_scale_inputs()]


# --- 26.3: per-channel scales -------------------------------------------------------------------------

def _outlier_weight() -> torch.Tensor:
    W = randn(4, 4, seed=2630, scale=0.5)
    W[2] *= 40.0  # output channel 2 is an outlier channel
    return W


def _channel_inputs():
    W_neg = randn(3, 5, seed=2631)
    W_neg[1, 3] = -6.0  # row 1's extreme is negative
    rows = randn(6, 4, seed=2632) * torch.tensor([0.01, 0.1, 1.0, 10.0, 100.0, 1.0])[:, None]
    return [
        ("a (4, 4) weight whose output channel 2 is 40 times larger", _outlier_weight()),
        ("a (3, 5) weight (out 3, in 5) whose row 1 has the extreme -6.0", W_neg),
        ("a (6, 4) weight with rows from 0.01 to 100 in size", rows),
        ("a (2, 8) weight", randn(2, 8, seed=2633)),
    ]


@exercise("26.3", "absmax int8 with one scale per output channel (row): scale of shape (out, 1)", atol=1e-6)
def _cases_per_channel():
    return [Case(label, (W,), absmax_quantize(W, axis=0)) for label, W in _channel_inputs()]


# --- 26.4: zero-point (asymmetric) uint8 ----------------------------------------------------------------

def _zeropoint_inputs():
    return [
        ("mixed signs [-1.0, 0.5, 2.0, 3.5]", _t((-1.0, 0.5, 2.0, 3.5))),
        ("all positive [2, 3, 4, 6]: the range is [0, 6], so 0 stays representable", _t((2.0, 3.0, 4.0, 6.0))),
        ("all negative [-4.0, -2.5, -0.5]: the range is [-4, 0]", _t((-4.0, -2.5, -0.5))),
        ("a (3, 6) matrix of ReLU-like skewed values", randn(3, 6, seed=2640).abs() * 2.0 - 0.3),
    ]


@exercise("26.4", "zero-point uint8: scale = (max - min) / 255, zero_point = round(-min / scale)", atol=1e-6)
def _cases_zeropoint():
    return [Case(label, (x,), zeropoint_quantize(x, torch.uint8)) for label, x in _zeropoint_inputs()]

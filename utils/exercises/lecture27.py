"""Exercises of Lecture 27: FP8 with DeepSeek's fine-grained scaling.

27.1 ``act_quant``: scale activations per 1 x 128 tile (the official semantics: amax clamped to at
least 1e-4, ``s = amax / 448``, ``y = x / s`` cast to ``float8_e4m3fn``), 27.2 ``weight_dequant``:
FP32 weights from 128 x 128 FP8 blocks, 27.3 the bytes of a weight in FP8 with its block scales.
Expected values come from :mod:`utils.quantization.fp8`; inputs come from private generators.
"""

from __future__ import annotations

import torch

from utils.exercises import Case, exercise, randn
from utils.quantization.fp8 import act_quant, fp8_weight_bytes, weight_dequant, weight_quant


# --- 27.1: act_quant's 1 x 128 tile scaling ----------------------------------------------------------

def _run_act_quant(fn, args):
    """Call the learner's act_quant; compare FP8 values as floats and scales on a log2 scale
    (so a scale that is 0, NaN or off by a factor shows, however small the scale is)."""
    result = fn(*args)
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise TypeError(f"return a pair (y, s), got {type(result).__name__}")
    y, s = result
    if not isinstance(y, torch.Tensor) or y.dtype != torch.float8_e4m3fn:
        raise TypeError(f"y must be a torch.float8_e4m3fn tensor, got {getattr(y, 'dtype', type(y).__name__)}: "
                        "cast x / s with .to(torch.float8_e4m3fn)")
    if not isinstance(s, torch.Tensor):
        raise TypeError(f"s must be a tensor of scales, got {type(s).__name__}")
    return y.float(), s.log2()


# The call converts the learner's FP8 answer (compare cannot read float8 on CPU), so the generic
# feed-the-expected-answer-back check does not apply: tests/test_exercises_lecture27.py checks it.


def _act_expected(x, block_size):
    y, s = act_quant(x, block_size)
    return y.float(), s.log2()


def _act_inputs():
    loud = torch.cat([randn(1, 128, seed=2701), randn(1, 128, seed=2702, scale=1000.0)], dim=-1)
    zero = torch.cat([torch.zeros(1, 128), randn(1, 128, seed=2703, scale=50.0)], dim=-1)
    negative = randn(2, 128, seed=2704).abs()
    negative[0, 7], negative[1, 100] = -900.0, -3.5  # the largest magnitude is a negative value
    rows = randn(4, 256, seed=2705) * torch.tensor([[1e-3], [1.0], [30.0], [1e3]])
    square = randn(128, 128, seed=2706) * torch.logspace(-2, 2, 128).unsqueeze(1)  # row i has its own size
    return [
        ("the lecture's [2, 3, 4, 500] as one 1 x 4 tile (block_size=4)", torch.tensor([[2.0, 3.0, 4.0, 500.0]]), 4),
        ("two tiles: an ordinary one, then one with values far beyond 448", loud, 128),
        ("a zero tile next to a loud one (its amax is clamped to 1e-4)", zero, 128),
        ("negative extremes: each row's largest magnitude is negative", negative, 128),
        ("4 rows whose sizes range from 1e-3 to 1e3 (one scale per row and tile)", rows, 128),
        ("a batch of sequences (2, 3, 384): three tiles per token", randn(2, 3, 384, seed=2707, scale=5.0), 128),
        ("a square (128, 128) input whose rows differ in size: tiles run along the last dim", square, 128),
    ]


@exercise("27.1", "act_quant: FP8 values and one FP32 scale per 1 x 128 tile", atol=1e-5,
          call=_run_act_quant, replayable=False)
def _cases_act_quant():
    return [Case(label, (x, bs), _act_expected(x, bs)) for label, x, bs in _act_inputs()]


# --- 27.2: weight_dequant -----------------------------------------------------------------------------

def _weight_case(label, rows, cols, block_size, seed):
    w = randn(rows, cols, seed=seed, scale=0.05)
    w[: min(rows, block_size), : min(cols, block_size)] *= 100.0  # one block much louder than the others
    q, s = weight_quant(w, block_size)
    return Case(label, (q, s, block_size), weight_dequant(q, s, block_size))


@exercise("27.2", "weight_dequant: w[i, j] * s[i // 128, j // 128] in FP32")
def _cases_weight_dequant():
    hand_q = torch.tensor([[1.0, -2.0, 448.0], [0.5, 0.0, -448.0]]).to(torch.float8_e4m3fn)
    hand_s = torch.tensor([[2.0, 3.0]])
    return [
        Case("by hand: a (2, 3) weight in 2 x 2 blocks, scales [[2, 3]] (block_size=2)", (hand_q, hand_s, 2),
             weight_dequant(hand_q, hand_s, 2)),
        _weight_case("a (256, 256) weight: 2 x 2 blocks of 128", 256, 256, 128, 2711),
        _weight_case("a wide (128, 384) weight: 1 x 3 blocks (row and column block indices differ)", 128, 384, 128, 2712),
        _weight_case("a tall (384, 128) weight: 3 x 1 blocks", 384, 128, 128, 2713),
        _weight_case("ragged edges: (300, 200) in blocks of 128, scales (3, 2)", 300, 200, 128, 2714),
        _weight_case("block_size=64: a (192, 128) weight, scales (3, 2)", 192, 128, 64, 2715),
    ]


# --- 27.3: bytes of FP8 weights with their block scales -------------------------------------------------

_BYTES = [  # (label, (rows, cols, block_size))
    ("one 128 x 128 block", (128, 128, 128)),
    ("a DeepSeek-V3 dense FFN matrix: 18432 x 7168", (18432, 7168, 128)),
    ("a DeepSeek-V3 expert matrix: 2048 x 7168", (2048, 7168, 128)),
    ("ragged edges: 300 x 200 (partial blocks get a scale too)", (300, 200, 128)),
    ("smaller than a block: 3 x 5", (3, 5, 128)),
    ("block_size=64: 256 x 192", (256, 192, 64)),
]


@exercise("27.3", "bytes of an FP8 weight plus its FP32 block scales (int)", atol=0)
def _cases_fp8_bytes():
    return [Case(label, args, fp8_weight_bytes(*args)) for label, args in _BYTES]

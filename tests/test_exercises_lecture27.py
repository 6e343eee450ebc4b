"""Lecture 27's checkers accept the right answers and reject the wrong answers learners write."""

import math

import pytest
import torch

from checker_tools import assert_accepts, assert_rejects
from utils.quantization.fp8 import act_quant, fp8_weight_bytes, weight_dequant

# --- 27.1: act_quant ----------------------------------------------------------------------------------


def make_act_quant(scale_rule="tile", divisor=448.0, floor=1e-4, axis="last", multiply=False, dtype=None):
    """The right act_quant, or one with a mistake learners make."""

    def answer(x, block_size=128):
        x = x.float()
        if axis == "last":
            tiles = x.unflatten(-1, (-1, block_size))  # (..., K / bs, bs)
            amax = tiles.abs().amax(dim=-1) if scale_rule == "tile" else x.abs().amax().expand(tiles.shape[:-1])
        else:  # tiles of 128 rows along the second-to-last dim: amax per column block
            tiles = x.unflatten(-2, (-1, min(block_size, x.shape[-2])))  # (..., M / bs, bs, K)
            amax = tiles.abs().amax(dim=-2)  # (..., M / bs, K)
        if floor is not None:
            amax = amax.clamp(min=floor)
        s = amax / divisor
        if axis == "last":
            y = (tiles * (1.0 / s.unsqueeze(-1)) if multiply else tiles / s.unsqueeze(-1)).flatten(-2)
        else:
            y = (tiles / s.unsqueeze(-2)).flatten(-3, -2)
        y = y.to(torch.float8_e4m3fn)
        return (y if dtype is None else y.to(dtype)), s

    return answer


def test_27_1_accepts_act_quant():
    assert_accepts("27.1", make_act_quant())
    assert_accepts("27.1", act_quant)  # the library's own


@pytest.mark.parametrize("flaw, fragment", [
    ({"scale_rule": "tensor"}, "case 2 (two tiles: an ordinary one, then one with values far beyond 448) is wrong"),
    ({"divisor": 127.0}, "case 1 (the lecture's [2, 3, 4, 500] as one 1 x 4 tile (block_size=4)) is wrong"),
    ({"floor": None}, "case 3 (a zero tile next to a loud one (its amax is clamped to 1e-4)) is wrong: "
                      "result 0: infinite or NaN entries"),
    ({"floor": 1e-12}, "case 3 (a zero tile next to a loud one"),
    ({"axis": "rows"}, "case 1 (the lecture's [2, 3, 4, 500]"),
    ({"dtype": torch.float32}, "y must be a torch.float8_e4m3fn tensor"),
    ({"dtype": torch.float8_e5m2}, "y must be a torch.float8_e4m3fn tensor"),
])
def test_27_1_rejects(flaw, fragment):
    assert_rejects("27.1", make_act_quant(**flaw), fragment)


def test_27_1_rejects_tiles_along_the_wrong_axis_on_a_square_input():
    # with a block as tall as the input, column tiles only show on the square case
    def columns(x, block_size=128):
        if x.dim() == 2 and x.shape[0] == x.shape[1] == block_size:
            return make_act_quant(axis="rows")(x, block_size)
        return act_quant(x, block_size)

    assert_rejects("27.1", columns, "case 7 (a square (128, 128) input whose rows differ in size")


def test_27_1_rejects_unclamped_scale_and_no_cast():
    def no_cast(x, block_size=128):
        y, s = act_quant(x, block_size)
        return y.float(), s

    assert_rejects("27.1", no_cast, "y must be a torch.float8_e4m3fn tensor")
    assert_rejects("27.1", lambda x, block_size=128: act_quant(x, block_size)[0], "return a pair (y, s)")


def test_27_1_rejects_float64_scales():
    def double_scales(x, block_size=128):
        y, s = act_quant(x, block_size)
        return y, s.double()

    assert_rejects("27.1", double_scales, "expected dtype torch.float32, got torch.float64")


# --- 27.2: weight_dequant ---------------------------------------------------------------------------


def dequant_right(w_fp8, s, block_size=128):
    N, K = w_fp8.shape
    full = s.repeat_interleave(block_size, 0)[:N].repeat_interleave(block_size, 1)[:, :K]  # (N, K)
    return w_fp8.float() * full


def dequant_loop(w_fp8, s, block_size=128):
    out = torch.empty(w_fp8.shape)
    for i in range(w_fp8.shape[0]):
        for j in range(0, w_fp8.shape[1]):
            out[i, j] = w_fp8[i, j].float() * s[i // block_size, j // block_size]
    return out


def test_27_2_accepts():
    assert_accepts("27.2", dequant_right)
    assert_accepts("27.2", weight_dequant)


@pytest.mark.parametrize("wrong, fragment", [
    (lambda q, s, bs=128: q.float() / dequant_right(torch.ones(q.shape).to(q.dtype), s, bs), "case 1 (by hand"),
    (lambda q, s, bs=128: dequant_right(q, s.T.contiguous(), bs), "case 1 (by hand"),  # transposed block indices
    (lambda q, s, bs=128: q.float() * s.repeat_interleave(bs, 0).repeat_interleave(bs, 1), "case 1 (by hand"),  # no crop
    (lambda q, s, bs=128: dequant_right(q, s, bs).bfloat16(), "expected dtype torch.float32"),
    (lambda q, s, bs=128: q.float() * s.max(), "case 1 (by hand"),  # one scale for all
    (lambda q, s, bs=128: q.float() * s.repeat(bs, bs)[:q.shape[0], :q.shape[1]], "case 1 (by hand"),
    (lambda q, s, bs=128: dequant_right(q, s, 128), "case 1 (by hand"),  # ignores block_size
])
def test_27_2_rejects(wrong, fragment):
    assert_rejects("27.2", wrong, fragment)


# --- 27.3: FP8 bytes plus scales --------------------------------------------------------------------


def bytes_right(rows, cols, block_size=128):
    return rows * cols + 4 * math.ceil(rows / block_size) * math.ceil(cols / block_size)


def test_27_3_accepts():
    assert_accepts("27.3", bytes_right)
    assert_accepts("27.3", fp8_weight_bytes)
    assert_accepts("27.3", lambda r, c, bs=128: r * c + 4 * (-(-r // bs)) * (-(-c // bs)))


@pytest.mark.parametrize("wrong, fragment", [
    (lambda r, c, bs=128: r * c, "case 1 (one 128 x 128 block)"),  # the scales forgotten
    (lambda r, c, bs=128: r * c + 4 * (r // bs) * (c // bs), "case 4 (ragged edges"),  # floor
    (lambda r, c, bs=128: r * c + 2 * math.ceil(r / bs) * math.ceil(c / bs), "case 1 (one 128 x 128 block)"),  # BF16
    (lambda r, c, bs=128: r * c + 4 * r * c, "case 1 (one 128 x 128 block)"),  # a scale per element
    (lambda r, c, bs=128: r * c + 4 * math.ceil(r / bs), "case 2 (a DeepSeek-V3 dense FFN matrix"),  # per row block (1 x 128 rule)
    (lambda r, c, bs=128: r * c + 4 * r * math.ceil(c / bs), "case 1 (one 128 x 128 block)"),  # activations' tiles
    (lambda r, c, bs=128: r * c + 4 * r * c / (bs * bs), "return an int"),
])
def test_27_3_rejects(wrong, fragment):
    assert_rejects("27.3", wrong, fragment)

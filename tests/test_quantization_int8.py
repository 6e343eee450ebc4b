"""utils.quantization.int8 (Lecture 26) against exact values, torch's own quantized tensors and observers."""

import pytest
import torch
from torch import nn
from torch.ao.quantization.observer import MinMaxObserver

from utils.quantization import (INT8_MAX, absmax_dequantize, absmax_quantize, absmax_scale,
                                fake_quantize_linear_weights, int8_weight_bytes, number_formats,
                                quantize_int8, zeropoint_dequantize, zeropoint_quantize)


def randn(*shape, seed=0, scale=1.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- the lecture's numbers --------------------------------------------------------------------------


def test_lecture_example_exact_values():
    x = torch.tensor([2.5, 3.7, 10.8, 1.2])
    q, scale = absmax_quantize(x)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == ()
    torch.testing.assert_close(scale, torch.tensor(10.8 / 127))
    # 2.5 / 0.08504 = 29.40, 3.7 / 0.08504 = 43.51, 10.8 -> 127, 1.2 / 0.08504 = 14.11
    assert q.tolist() == [29, 44, 127, 14]
    x_hat = absmax_dequantize(q, scale)
    torch.testing.assert_close(x_hat, torch.tensor([29, 44, 127, 14]) * torch.tensor(10.8 / 127))
    assert x_hat[2].item() == pytest.approx(10.8, abs=1e-6)  # the largest value comes back exactly


def test_outlier_example_collapses_small_values():
    x = torch.tensor([2.0, 3.0, 4.0, 500.0])
    q, scale = absmax_quantize(x)
    torch.testing.assert_close(scale, torch.tensor(500 / 127))
    assert q.tolist() == [1, 1, 1, 127]  # 2, 3 and 4 all become one step of 3.94
    assert len(set(absmax_dequantize(q, scale)[:3].tolist())) == 1


# --- round trips ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{}, {"axis": 0}, {"axis": 1}, {"axis": -1}, {"group_size": 4},
                                    {"group_size": 16}])
def test_round_trip_error_within_half_a_step(kwargs):
    x = randn(6, 16, seed=1, scale=3.0)
    x[2, 5] = 40.0  # an outlier
    q, scale = absmax_quantize(x, **kwargs)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and q.abs().max() <= INT8_MAX
    x_hat = absmax_dequantize(q, scale)
    g = kwargs.get("group_size", 1)
    step = torch.broadcast_to(scale.repeat_interleave(g, -1) if scale.dim() else scale, x.shape)
    assert ((x - x_hat).abs() <= step / 2 + 1e-6).all()


def test_scale_shapes_and_what_they_reduce_over():
    x = randn(3, 4, 8, seed=2)
    assert absmax_scale(x).shape == ()
    assert absmax_scale(x, axis=1).shape == (1, 4, 1)
    torch.testing.assert_close(absmax_scale(x, axis=1).flatten(), x.abs().amax(dim=(0, 2)) / 127)
    assert absmax_scale(x, group_size=2).shape == (3, 4, 4)
    torch.testing.assert_close(absmax_scale(x, group_size=2), x.abs().view(3, 4, 4, 2).amax(-1) / 127)
    # a group as long as the last axis is one scale per row: the same as axis=... on every other axis
    torch.testing.assert_close(absmax_scale(x[0], group_size=8), absmax_scale(x[0], axis=0))


def test_negative_extreme_sets_the_scale():
    x = torch.tensor([1.0, -10.0, 2.0])
    q, scale = absmax_quantize(x)
    torch.testing.assert_close(scale, torch.tensor(10 / 127))
    assert q.tolist() == [13, -127, 25]


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")  # deprecated in torch, still a good oracle
def test_matches_torch_quantize_per_tensor_and_per_channel():
    x = randn(64, seed=3, scale=2.0)
    q, scale = absmax_quantize(x)
    assert torch.equal(q, torch.quantize_per_tensor(x, float(scale), 0, torch.qint8).int_repr())
    W = randn(5, 12, seed=4)
    q, scale = absmax_quantize(W, axis=0)
    ref = torch.quantize_per_channel(W, scale.flatten().double(), torch.zeros(5, dtype=torch.long), 0, torch.qint8)
    assert torch.equal(q, ref.int_repr())


def test_quantize_with_a_given_scale_clips():
    x = torch.tensor([-5.0, -1.0, 0.5, 5.0])
    q = quantize_int8(x, torch.tensor(2.0 / 127))
    assert q.tolist() == [-127, -64, 32, 127]  # beyond +-2 clipped to +-127, never -128


def test_zero_tensor_scale_zero_no_nan():
    for kwargs in ({}, {"axis": 0}, {"group_size": 2}):
        x = torch.zeros(2, 4)
        q, scale = absmax_quantize(x, **kwargs)
        assert (scale == 0).all() and (q == 0).all()
        assert torch.equal(absmax_dequantize(q, scale), x)
    # one all-zero row among others: only that row gets scale 0
    W = randn(3, 4, seed=5)
    W[1] = 0
    q, scale = absmax_quantize(W, axis=0)
    assert scale[1].item() == 0 and (q[1] == 0).all() and (scale[[0, 2]] > 0).all()
    assert torch.isfinite(absmax_dequantize(q, scale)).all()
    q, scale, zp = zeropoint_quantize(torch.zeros(5))
    assert scale.item() == 0 and torch.equal(zeropoint_dequantize(q, scale, zp), torch.zeros(5))


def test_low_precision_inputs_give_float32_scales():
    x = randn(4, 8, seed=6).to(torch.bfloat16)
    q, scale = absmax_quantize(x, axis=0)
    assert scale.dtype == torch.float32 and q.dtype == torch.int8
    assert absmax_dequantize(q, scale, dtype=torch.bfloat16).dtype == torch.bfloat16


# --- zero-point -----------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")  # deprecated in torch, still a good oracle
def test_zeropoint_matches_torch_observer_and_quantize_per_tensor():
    x = randn(200, seed=7, scale=3.0) + 1.0
    q, scale, zero_point = zeropoint_quantize(x)
    observer = MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine)
    observer(x)
    ref_scale, ref_zp = observer.calculate_qparams()
    torch.testing.assert_close(scale, ref_scale[0])
    assert zero_point.item() == ref_zp.item()
    assert torch.equal(q, torch.quantize_per_tensor(x, float(scale), int(zero_point), torch.quint8).int_repr())


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8])
def test_zeropoint_round_trip_and_exact_zero(dtype):
    x = torch.cat([randn(30, seed=8).abs() * 4, torch.tensor([0.0, -0.7])])  # skewed: mostly positive
    q, scale, zero_point = zeropoint_quantize(x, dtype=dtype)
    assert q.dtype == dtype and scale.dtype == torch.float32 and zero_point.dtype == torch.int32
    x_hat = zeropoint_dequantize(q, scale, zero_point)
    assert ((x - x_hat).abs() <= scale / 2 + 1e-6).all()
    assert x_hat[30].item() == 0.0  # the real zero is an integer step: represented exactly
    assert q.min().item() == torch.iinfo(dtype).min and q.max().item() == torch.iinfo(dtype).max


def test_zeropoint_uses_the_range_better_than_absmax_on_skewed_data():
    x = randn(1000, seed=9).abs() + 2.0  # all in [2, 6]: absmax wastes the negative half of int8
    err_sym = (x - absmax_dequantize(*absmax_quantize(x))).abs().mean()
    err_asym = (x - zeropoint_dequantize(*zeropoint_quantize(x))).abs().mean()
    assert err_asym < err_sym


def test_zeropoint_per_group_and_per_channel():
    W = randn(4, 8, seed=10) + torch.arange(4.0)[:, None]
    for kwargs in ({"axis": 0}, {"group_size": 4}):
        q, scale, zp = zeropoint_quantize(W, **kwargs)
        x_hat = zeropoint_dequantize(q, scale, zp)
        step = scale if "axis" in kwargs else scale.repeat_interleave(4, -1)
        assert ((W - x_hat).abs() <= step / 2 + 1e-6).all()


# --- formats -----------------------------------------------------------------------------------------


def test_number_formats_bit_layouts():
    layout = {f.name: (f.bits, f.exponent_bits, f.mantissa_bits, f.max) for f in number_formats()}
    assert layout["FP32"][:3] == (32, 8, 23)
    assert layout["FP16"] == (16, 5, 10, 65504.0)
    assert layout["BF16"][:3] == (16, 8, 7)
    assert layout["FP8 E4M3"] == (8, 4, 3, 448.0)  # REFERENCE.md: max 448, smallest normal 2^-6
    assert layout["FP8 E5M2"] == (8, 5, 2, 57344.0)
    assert layout["INT8"] == (8, 0, 7, 127.0)
    e4m3 = next(f for f in number_formats() if f.name == "FP8 E4M3")
    assert e4m3.smallest_normal == 2.0 ** -6


# --- models ----------------------------------------------------------------------------------------


def test_fake_quantize_linear_weights_leaves_the_original_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for granularity in ("per_tensor", "per_channel", "per_group"):
        fq = fake_quantize_linear_weights(model, granularity, group_size=8)
        for k, v in model.state_dict().items():
            assert torch.equal(v, before[k])
        assert torch.equal(fq[0].weight, model[0].weight) and torch.equal(fq[1].bias, model[1].bias)
        kwargs = {"per_tensor": {}, "per_channel": {"axis": 0}, "per_group": {"group_size": 8}}[granularity]
        q, scale = absmax_quantize(model[3].weight.detach(), **kwargs)
        assert torch.equal(fq[3].weight.detach(), absmax_dequantize(q, scale))


def test_int8_weight_bytes():
    model = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 4))
    params = 8 * 16 + 16 * 4
    assert int8_weight_bytes(model, "per_tensor") == {"params": params, "fp32": 4 * params, "bf16": 2 * params,
                                                       "int8": params, "scales": 8}
    assert int8_weight_bytes(model, "per_channel")["scales"] == 4 * (16 + 4)
    assert int8_weight_bytes(model, "per_group", group_size=4)["scales"] == 4 * (16 * 2 + 4 * 4)


# --- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [absmax_quantize, zeropoint_quantize])
def test_rejects_integer_tensors(fn):
    with pytest.raises(ValueError, match=r"floating-point tensor.*\.float\(\)"):
        fn(torch.arange(4))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("fn", [absmax_quantize, zeropoint_quantize])
def test_rejects_non_finite(fn, bad):
    with pytest.raises(ValueError, match="NaN or infinite"):
        fn(torch.tensor([1.0, bad, 2.0]))


def test_group_size_must_divide_the_last_axis():
    with pytest.raises(ValueError, match=r"10 entries, not a multiple of group_size=4: choose a group size that "
                                         r"divides 10"):
        absmax_quantize(torch.ones(3, 10), group_size=4)
    with pytest.raises(ValueError, match="positive int"):
        absmax_quantize(torch.ones(3, 10), group_size=0)


def test_other_bad_arguments():
    with pytest.raises(ValueError, match="not both"):
        absmax_quantize(torch.ones(2, 4), axis=0, group_size=2)
    with pytest.raises(ValueError, match="not an axis"):
        absmax_quantize(torch.ones(2, 4), axis=2)
    with pytest.raises(ValueError, match="uint8 or torch.int8"):
        zeropoint_quantize(torch.ones(3), dtype=torch.int16)
    with pytest.raises(ValueError, match="granularity"):
        fake_quantize_linear_weights(nn.Linear(2, 2), "per_row")
    with pytest.raises(ValueError, match="integer tensor"):
        absmax_dequantize(torch.ones(3), torch.tensor(1.0))
    with pytest.raises(ValueError, match="dequantize it to float32"):
        absmax_quantize(torch.ones(3).to(torch.float8_e4m3fn))

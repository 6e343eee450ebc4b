"""utils.quantization.fp8 (Lecture 27) against torch's float8 dtypes, torch._scaled_mm, exact identities
and the official DeepSeek-V3 kernel semantics (REFERENCE.md: amax clamped to >= 1e-4, s = amax / 448)."""

import pytest
import torch
from torch import nn

from utils.quantization.fp8 import (
    AMAX_FLOOR, E4M3_MAX, E5M2_MAX, FP8Linear, act_dequant, act_quant, convert_linears_to_fp8, fp8_block_matmul,
    fp8_linear, fp8_weight_bytes, per_tensor_quant, to_fp8, weight_dequant, weight_quant,
)


def randn(*shape, seed=0, scale=1.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def official_act_quant(x, block_size=128):
    """The official kernel's semantics, written out tile by tile with plain Python loops."""
    rows = x.reshape(-1, x.shape[-1]).float()
    y = torch.empty_like(rows, dtype=torch.float8_e4m3fn)
    s = torch.empty(rows.shape[0], rows.shape[1] // block_size)
    for i in range(rows.shape[0]):
        for j in range(s.shape[1]):
            tile = rows[i, j * block_size:(j + 1) * block_size]
            amax = max(float(tile.abs().max()), 1e-4)
            s[i, j] = torch.tensor(amax, dtype=torch.float32) / 448.0
            y[i, j * block_size:(j + 1) * block_size] = (tile / s[i, j]).to(torch.float8_e4m3fn)
    return y.view(x.shape), s.view(*x.shape[:-1], -1)


def test_format_limits_match_torch():
    assert E4M3_MAX == 448.0 and E5M2_MAX == 57344.0
    assert torch.finfo(torch.float8_e4m3fn).smallest_normal == 2.0 ** -6


def test_to_fp8_saturates_both_formats():
    x = torch.tensor([1.0, 500.0, -1000.0, 1e5, -1e5])
    assert to_fp8(x).float().tolist() == [1.0, 448.0, -448.0, 448.0, -448.0]
    assert to_fp8(x, torch.float8_e5m2).float().tolist() == [1.0, 512.0, -1024.0, 57344.0, -57344.0]


def test_act_quant_matches_official_semantics_on_crafted_tiles():
    x = torch.zeros(3, 512)
    x[0, :128] = randn(128, seed=1)  # ordinary tile
    x[0, 128:256] = 0.0  # zero tile: amax clamped to 1e-4, values stay 0
    x[0, 256:384] = randn(128, seed=2, scale=1000.0)  # values far beyond 448
    x[0, 384:] = -randn(128, seed=3).abs() - 1.0
    x[0, 400] = -1e6  # a negative extreme
    x[1] = randn(512, seed=4, scale=1e-3)
    x[2, :] = 1e-7  # below the floor: tile scale from 1e-4, not from the values
    y, s = act_quant(x)
    y_ref, s_ref = official_act_quant(x)
    assert y.dtype == torch.float8_e4m3fn and s.dtype == torch.float32 and tuple(s.shape) == (3, 4)
    assert torch.equal(y.float(), y_ref.float()) and torch.equal(s, s_ref)
    assert s[0, 1] == torch.tensor(AMAX_FLOOR) / 448 and torch.equal(y[0, 128:256].float(), torch.zeros(128))
    assert y[0, 400].float() == -448.0  # the extreme sits exactly on the edge of the format
    assert y.float().abs().max() <= 448.0 and torch.isfinite(y.float()).all()
    assert torch.isclose(s[0, 3], torch.tensor(1e6 / 448))


def test_act_quant_round_trip_within_e4m3_error_and_batched_shapes():
    x = randn(2, 5, 256, seed=5)
    y, s = act_quant(x)
    assert tuple(y.shape) == (2, 5, 256) and tuple(s.shape) == (2, 5, 2)
    back = act_dequant(y, s)
    # E4M3 keeps 3 mantissa bits: rounding error at most 2^-4 relative for normal numbers;
    # values below the smallest normal (2^-6 * s) have an absolute error of at most 2^-10 * s
    tile_s = s.repeat_interleave(128, dim=-1)
    assert ((back - x).abs() <= torch.maximum(x.abs() * 2.0 ** -4, tile_s * 2.0 ** -10) + 1e-7).all()
    y16, s16 = act_quant(x.bfloat16())
    assert s16.dtype == torch.float32


def test_act_quant_scales_are_per_tile_along_the_last_dim():
    x = torch.ones(2, 256)
    x[0, 128:] *= 10.0
    x[1] *= 100.0
    _, s = act_quant(x)
    torch.testing.assert_close(s * 448, torch.tensor([[1.0, 10.0], [100.0, 100.0]]))


def test_weight_quant_and_dequant_official_indexing_with_ragged_edges():
    w = randn(300, 200, seed=6, scale=0.05)
    w[:128, :128] *= 1000.0  # one loud block
    w[128:256, 128:] = 0.0  # one zero block
    q, s = weight_quant(w)
    assert q.dtype == torch.float8_e4m3fn and tuple(s.shape) == (3, 2)
    for bi in range(3):
        for bj in range(2):
            block = w[bi * 128:(bi + 1) * 128, bj * 128:(bj + 1) * 128]
            amax = max(float(block.abs().max()), 1e-4)
            assert s[bi, bj] == torch.tensor(amax, dtype=torch.float32) / 448
    deq = weight_dequant(q, s)
    expected = torch.empty(300, 200)
    for i in range(0, 300, 37):  # the official rule w[i, j] * s[i // 128, j // 128], spot-checked
        for j in range(0, 200, 23):
            expected[i, j] = q[i, j].float() * s[i // 128, j // 128]
            assert deq[i, j] == expected[i, j]
    assert torch.equal(deq[128:256, 128:], torch.zeros(128, 72))
    assert ((deq - w).abs() <= w.abs() * 2.0 ** -4 + s.max() * 2.0 ** -10).all()


def test_weight_dequant_of_hand_made_blocks():
    q = torch.tensor([[1.0, -2.0, 448.0], [0.5, 0.0, -448.0]]).to(torch.float8_e4m3fn)
    s = torch.tensor([[2.0, 3.0]])
    assert weight_dequant(q, s, block_size=2).tolist() == [[2.0, -4.0, 1344.0], [1.0, 0.0, -1344.0]]


def _quantized(M, K, N, seed):
    x, w = randn(M, K, seed=seed), randn(N, K, seed=seed + 1, scale=0.05)
    return x, w, act_quant(x), weight_quant(w)


@pytest.mark.parametrize("K", [128, 256, 512])
def test_block_matmul_equals_dequantize_then_matmul_exactly(K):
    x, w, (xq, xs), (wq, ws) = _quantized(48, K, 200, seed=K)
    y = fp8_block_matmul(xq, xs, wq, ws)
    a, b = act_dequant(xq, xs), weight_dequant(wq, ws)
    reference = torch.zeros(48, 200)
    for k in range(0, K, 128):  # dequantize, matmul each 128-wide K block, accumulate in FP32
        reference = reference + a[:, k:k + 128] @ b[:, k:k + 128].T
    assert torch.equal(y, reference)
    torch.testing.assert_close(y, a @ b.T, rtol=1e-5, atol=1e-5)  # one big matmul: other summation order


def test_block_matmul_within_fp8_error_of_fp32():
    x, w, (xq, xs), (wq, ws) = _quantized(64, 512, 256, seed=10)
    y, ref = fp8_block_matmul(xq, xs, wq, ws), x @ w.T
    rel = float((y - ref).norm() / ref.norm())
    # two E4M3 roundings (relative error <= 2^-4 each, about 2^-4 / sqrt(3) RMS): a few percent overall
    assert 0.01 < rel < 0.06


def test_block_matmul_matches_torch_scaled_mm():
    # one 128-wide K block: act tiles are per-row scales, weight blocks repeat per column -> row-wise _scaled_mm
    x, w, (xq, xs), (wq, ws) = _quantized(64, 128, 384, seed=20)
    y = fp8_block_matmul(xq, xs, wq, ws)
    col_scales = ws.repeat_interleave(128, dim=0).T  # (1, N)
    try:
        z = torch._scaled_mm(xq, wq.t(), scale_a=xs, scale_b=col_scales, out_dtype=torch.float32)
    except (RuntimeError, NotImplementedError) as err:  # pragma: no cover - depends on the torch build
        pytest.skip(f"torch._scaled_mm with row-wise scales is not available here: {err}")
    assert torch.equal(y, z)
    # tensor-wise scales: per-tensor quantization, checked against its own dequantize-then-matmul
    (pq, ps), (qq, qs) = per_tensor_quant(x), per_tensor_quant(w)
    z2 = torch._scaled_mm(pq, qq.t(), scale_a=ps, scale_b=qs, out_dtype=torch.float32)
    assert torch.equal(z2, (pq.float() * ps) @ (qq.float() * qs).T)


def test_fine_grained_beats_per_tensor_with_an_outlier():
    x = randn(4, 1024, seed=30)
    x[0, 5] = 1e5
    (pq, ps), (tq, ts) = per_tensor_quant(x), act_quant(x)
    quiet = torch.ones_like(x, dtype=torch.bool)
    quiet[0, :128] = False  # every tile but the outlier's
    err_tensor = ((pq.float() * ps - x)[quiet]).norm() / x[quiet].norm()
    err_tile = ((act_dequant(tq, ts) - x)[quiet]).norm() / x[quiet].norm()
    assert err_tile < 0.05 < err_tensor


def test_fp8_linear_straight_through_gradients():
    torch.manual_seed(0)
    x = randn(3, 4, 256, seed=40).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    layer = FP8Linear(256, 130)
    ref = nn.Linear(256, 130)
    ref.load_state_dict(layer.state_dict())
    g = randn(3, 4, 130, seed=41)
    y = layer(x)
    (y * g).sum().backward()
    (ref(x_ref) * g).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(layer.weight.grad, ref.weight.grad)
    torch.testing.assert_close(layer.bias.grad, ref.bias.grad)
    assert not torch.equal(y.detach(), ref(x_ref).detach())  # the forward did quantize...
    torch.testing.assert_close(y.detach(), ref(x_ref).detach(), rtol=0.1, atol=0.1)  # ...and stays close
    # forward == quantize both, block matmul, add the bias
    (xq, xs), (wq, ws) = act_quant(x.detach()), weight_quant(layer.weight.detach())
    assert torch.equal(y.detach(), fp8_block_matmul(xq, xs, wq, ws) + layer.bias.detach())
    assert fp8_linear(x, layer.weight).shape == (3, 4, 130)  # the functional form, no bias


def test_convert_linears_shares_parameters_and_skips_the_head():
    model = nn.Sequential(nn.Linear(128, 256), nn.GELU(), nn.Linear(256, 100), nn.Linear(100, 7))
    model.out_head = nn.Linear(128, 10)
    weight = model[0].weight
    names = convert_linears_to_fp8(model)
    assert names == ["0", "2"]  # 100 inputs is not a multiple of 128; the head stays FP32
    assert isinstance(model[0], FP8Linear) and model[0].weight is weight
    assert type(model[3]) is nn.Linear and type(model.out_head) is nn.Linear


def test_fp8_weight_bytes():
    assert fp8_weight_bytes(128, 128) == 128 * 128 + 4
    assert fp8_weight_bytes(300, 200) == 300 * 200 + 4 * 3 * 2
    q, s = weight_quant(randn(300, 200, seed=50))
    assert fp8_weight_bytes(300, 200) == q.numel() * q.element_size() + s.numel() * s.element_size()


@pytest.mark.parametrize("call, fragment", [
    (lambda: act_quant(torch.ones(2, 100)), "pad it with zeros to a multiple of 128"),
    (lambda: act_quant(torch.ones(2, 64), block_size=0), "block_size must be a positive int"),
    (lambda: act_quant(torch.ones(2, 128, dtype=torch.int32)), "dtype torch.int32"),
    (lambda: act_quant(torch.ones(2, 128).to(torch.float8_e4m3fn)), "already quantized"),
    (lambda: act_quant(torch.tensor([float("inf")] + [1.0] * 127)), "contains inf or NaN"),
    (lambda: act_quant(torch.tensor([float("nan")] * 128)), "contains inf or NaN"),
    (lambda: weight_quant(torch.ones(128)), "2-D weight"),
    (lambda: weight_quant(torch.full((4, 4), float("-inf"))), "contains inf or NaN"),
    (lambda: weight_dequant(torch.ones(256, 128).to(torch.float8_e4m3fn), torch.ones(1, 1)), "scales of shape (2, 1)"),
    (lambda: to_fp8(torch.ones(3), torch.bfloat16), "float8_e4m3fn or torch.float8_e5m2"),
    (lambda: fp8_block_matmul(torch.ones(2, 128), torch.ones(2, 1), torch.ones(4, 128), torch.ones(1, 1)),
     "must be an FP8 tensor"),
    (lambda: FP8Linear(100, 10), "multiple of block_size=128"),
    (lambda: fp8_weight_bytes(10, 2.5), "non-negative int"),
])
def test_bad_input_says_what_to_change(call, fragment):
    with pytest.raises(ValueError) as info:
        call()
    assert fragment in str(info.value)

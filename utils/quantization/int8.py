"""Lecture 26: number formats and int8 quantization (absmax and zero-point).

- :func:`number_formats`: bit layout, range and precision of FP32, FP16, BF16, FP8 (E4M3, E5M2)
  and INT8, read from ``torch.finfo`` / ``torch.iinfo``.
- Symmetric (absmax) int8: ``scale = max|x| / 127``, ``q = clamp(round(x / scale), -127, 127)``,
  dequantized ``q * scale`` (:func:`absmax_quantize`, :func:`quantize_int8`,
  :func:`absmax_dequantize`), with one scale per tensor, per channel (``axis``) or per group of
  ``group_size`` consecutive entries along the last axis.
- Asymmetric (zero-point, affine) quantization to uint8 or int8: ``scale = (max - min) / (q_max - q_min)``,
  ``zero_point = round(q_min - min / scale)``, ``q = clamp(round(x / scale) + zero_point)``, dequantized
  ``(q - zero_point) * scale`` (:func:`zeropoint_quantize`, :func:`zeropoint_dequantize`); the range
  always contains 0, so a real zero is represented exactly (Jacob et al. 2018).
- :func:`fake_quantize_linear_weights`: a copy of a model whose ``nn.Linear`` weights went through
  int8 and back, to measure what quantization costs in loss; :func:`int8_weight_bytes` its memory.

Scale shapes: per tensor a 0-d tensor; per channel the input's shape with 1 on every axis but
``axis``; per group the input's shape with the last axis divided by ``group_size``. Scales are
float32, ``q`` is int8 (uint8 for zero-point ``dtype=torch.uint8``).

Zero tensors: a tensor (or channel, or group) whose entries are all 0 gets ``scale = 0`` and
``q = 0``; dequantizing gives exact zeros (never NaN: the division uses 1 where the scale is 0).
Inputs must be floating point and finite; anything else raises ``ValueError`` saying what to do.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "INT8_MAX",
    "NumberFormat",
    "number_formats",
    "absmax_scale",
    "quantize_int8",
    "absmax_quantize",
    "absmax_dequantize",
    "zeropoint_quantize",
    "zeropoint_dequantize",
    "fake_quantize_linear_weights",
    "int8_weight_bytes",
]

INT8_MAX = 127
"""Symmetric int8 uses [-127, 127]: -128 is left out so that the range is symmetric (Lecture 26)."""


# --- number formats -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class NumberFormat:
    """Bit layout and range of one number format (Lecture 26), read from torch.finfo / torch.iinfo."""

    name: str
    dtype: torch.dtype
    bits: int
    exponent_bits: int  # 0 for integers
    mantissa_bits: int  # stored fraction bits (integers: the value bits, sign excluded)
    max: float
    smallest_normal: float  # integers: 1
    eps: float  # gap between 1 and the next number (integers: 1)


_FORMATS = (("FP32", torch.float32), ("FP16", torch.float16), ("BF16", torch.bfloat16),
            ("FP8 E4M3", torch.float8_e4m3fn), ("FP8 E5M2", torch.float8_e5m2), ("INT8", torch.int8))


def number_formats() -> list[NumberFormat]:
    """FP32, FP16, BF16, FP8 E4M3, FP8 E5M2 and INT8 with 1 sign bit, exponent and mantissa bits (Lecture 26).

    The mantissa bits come from ``eps = 2**-mantissa_bits``; the exponent bits are what is left.
    """
    rows = []
    for name, dtype in _FORMATS:
        if dtype.is_floating_point:
            info = torch.finfo(dtype)
            mantissa = round(-math.log2(info.eps))
            rows.append(NumberFormat(name, dtype, info.bits, info.bits - 1 - mantissa, mantissa,
                                     float(info.max), float(info.smallest_normal), float(info.eps)))
        else:
            info = torch.iinfo(dtype)
            rows.append(NumberFormat(name, dtype, info.bits, 0, info.bits - 1, float(info.max), 1.0, 1.0))
    return rows


# --- checks -------------------------------------------------------------------------------------------

def _check_float(x: torch.Tensor, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}: wrap it with torch.tensor(...).")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}: convert it first, e.g. {name}.float().")
    if x.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        raise ValueError(f"{name} is already {x.dtype}: dequantize it to float32 first ({name}.float()).")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values: the scale max|{name}| would not be finite. "
                         "Remove or clip them first (torch.nan_to_num, or clamp to a finite range).")


def _groups(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """(..., K) -> (..., K / group_size, group_size); ValueError if group_size does not divide K."""
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size <= 0:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}.")
    if x.dim() == 0:
        raise ValueError("per-group scales need a tensor with at least one axis; use group_size=None for a scalar.")
    K = x.shape[-1]
    if K % group_size:
        divisors = [d for d in range(1, K + 1) if K % d == 0]
        raise ValueError(f"the last axis has {K} entries, not a multiple of group_size={group_size}: "
                         f"choose a group size that divides {K} (one of {divisors[-6:]}) or pad the last axis.")
    return x.reshape(*x.shape[:-1], K // group_size, group_size)


def _expand(scale: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A scale as stored (0-d, per channel or per group) broadcast to ``shape``."""
    if scale.dim() == 0:
        return scale
    if scale.dim() != len(shape):
        raise ValueError(f"scale of shape {tuple(scale.shape)} does not fit a tensor of shape {tuple(shape)}: "
                         "pass the scale returned by the quantize function.")
    if scale.shape[-1] not in (1, shape[-1]):  # per group: repeat each group's scale group_size times
        if shape[-1] % scale.shape[-1]:
            raise ValueError(f"scale of shape {tuple(scale.shape)} does not fit a tensor of shape {tuple(shape)}.")
        scale = scale.repeat_interleave(shape[-1] // scale.shape[-1], dim=-1)
    return scale


def _reduce_amax(x: torch.Tensor, axis: int | None, group_size: int | None, fn) -> torch.Tensor:
    """Reduce with ``fn`` (amax / amin) per tensor, per channel ``axis`` or per group; keeps x's ndim."""
    if axis is not None and group_size is not None:
        raise ValueError("give either axis (one scale per channel) or group_size (per group), not both.")
    if group_size is not None:
        return fn(_groups(x, group_size), dim=-1)  # (..., K / group_size)
    if axis is None:
        return fn(x)  # 0-d
    if not isinstance(axis, int) or not -x.dim() <= axis < x.dim():
        raise ValueError(f"axis={axis!r} is not an axis of a tensor of shape {tuple(x.shape)}.")
    others = [d for d in range(x.dim()) if d != axis % x.dim()]
    return fn(x, dim=others, keepdim=True) if others else x.clone()


# --- symmetric (absmax) int8 --------------------------------------------------------------------------

def absmax_scale(x: torch.Tensor, axis: int | None = None, group_size: int | None = None) -> torch.Tensor:
    """``max|x| / 127`` per tensor, per channel ``axis`` or per group of the last axis, float32 (Lecture 26)."""
    _check_float(x)
    return (_reduce_amax(x.float().abs(), axis, group_size, torch.amax) / INT8_MAX).float()


def quantize_int8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``clamp(round(x / scale), -127, 127)`` as int8 with a given (e.g. calibrated) scale (Lecture 26).

    Values beyond ``127 * scale`` are clipped. Where the scale is 0, q is 0.
    """
    _check_float(x)
    scale = torch.as_tensor(scale, dtype=torch.float32)
    _check_float(scale, "scale")
    if (scale < 0).any():
        raise ValueError("scale must be >= 0.")
    s = _expand(scale, x.shape)
    safe = torch.where(s == 0, torch.ones_like(s), s)  # all-zero channel: 0 / 1 = 0, not 0 / 0 = NaN
    return torch.round(x.float() / safe).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)


def absmax_quantize(x: torch.Tensor, axis: int | None = None,
                    group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantization (Lecture 26): returns ``(q int8, scale float32)``.

    ``scale = max|x| / 127`` over the whole tensor (default), over everything but ``axis`` (one
    scale per channel; for an ``nn.Linear`` weight (out, in), ``axis=0`` is one per output row), or
    over groups of ``group_size`` consecutive entries of the last axis. ``q = round(x / scale)``;
    an all-zero tensor/channel/group gets scale 0 and q 0.
    """
    scale = absmax_scale(x, axis, group_size)
    return quantize_int8(x, scale), scale


def absmax_dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``q * scale`` in ``dtype`` (Lecture 26); ``scale`` as returned by :func:`absmax_quantize`."""
    if not isinstance(q, torch.Tensor) or q.is_floating_point():
        raise ValueError("q must be the integer tensor returned by absmax_quantize.")
    scale = torch.as_tensor(scale, dtype=torch.float32)
    return (q.float() * _expand(scale, q.shape)).to(dtype)


# --- asymmetric (zero-point) --------------------------------------------------------------------------

_QRANGE = {torch.uint8: (0, 255), torch.int8: (-128, 127)}


def zeropoint_quantize(x: torch.Tensor, dtype: torch.dtype = torch.uint8, axis: int | None = None,
                       group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric (affine) quantization (Lecture 26): returns ``(q, scale float32, zero_point int32)``.

    The range ``[min(x, 0), max(x, 0)]`` is mapped onto all ``q_max - q_min`` steps of ``dtype``
    (uint8: 0..255, int8: -128..127): ``scale = (max - min) / (q_max - q_min)``,
    ``zero_point = clamp(round(q_min - min / scale), q_min, q_max)`` (the integer that stands for
    the real 0), ``q = clamp(round(x / scale) + zero_point, q_min, q_max)``. Same ``axis`` /
    ``group_size`` options and scale shapes as :func:`absmax_quantize`; an all-zero tensor gets
    scale 0 and dequantizes to zeros.
    """
    _check_float(x)
    if dtype not in _QRANGE:
        raise ValueError(f"dtype must be torch.uint8 or torch.int8, got {dtype}.")
    q_min, q_max = _QRANGE[dtype]
    xf = x.float()
    lo = _reduce_amax(xf, axis, group_size, torch.amin).clamp(max=0.0)
    hi = _reduce_amax(xf, axis, group_size, torch.amax).clamp(min=0.0)
    scale = ((hi - lo) / (q_max - q_min)).float()
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)
    zero_point = torch.round(q_min - lo / safe).clamp(q_min, q_max).to(torch.int32)
    s, z = _expand(safe, x.shape), _expand(zero_point, x.shape)
    q = (torch.round(xf / s) + z).clamp(q_min, q_max).to(dtype)
    return q, scale, zero_point


def zeropoint_dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(q - zero_point) * scale`` in ``dtype`` (Lecture 26)."""
    if not isinstance(q, torch.Tensor) or q.is_floating_point():
        raise ValueError("q must be the integer tensor returned by zeropoint_quantize.")
    scale = torch.as_tensor(scale, dtype=torch.float32)
    zero_point = torch.as_tensor(zero_point)
    diff = q.to(torch.int32) - _expand(zero_point, q.shape)
    return (diff.float() * _expand(scale, q.shape)).to(dtype)


# --- whole models -------------------------------------------------------------------------------------

def _granularity(granularity: str, group_size: int) -> dict:
    if granularity == "per_tensor":
        return {}
    if granularity == "per_channel":
        return {"axis": 0}  # one scale per output row of the (out, in) weight
    if granularity == "per_group":
        return {"group_size": group_size}
    raise ValueError(f"granularity must be 'per_tensor', 'per_channel' or 'per_group', got {granularity!r}.")


@torch.no_grad()
def fake_quantize_linear_weights(model: nn.Module, granularity: str = "per_channel",
                                 group_size: int = 64) -> nn.Module:
    """A deep copy of ``model`` whose ``nn.Linear`` weights are absmax int8-quantized and dequantized (Lecture 26).

    "Fake" quantization: the copy still computes in float32, but every Linear weight now holds
    only the values int8 can represent (``per_tensor``, ``per_channel`` = one scale per output row,
    or ``per_group`` = groups of ``group_size`` along the input axis). Biases, embeddings and norms
    are left alone. Comparing the two models' losses measures what int8 weights cost. The
    original model is not changed (a weight tied to an embedding is changed in the copy only).
    """
    kwargs = _granularity(granularity, group_size)
    quantized = copy.deepcopy(model)
    for module in quantized.modules():
        if isinstance(module, nn.Linear):
            w = module.weight
            q, scale = absmax_quantize(w, **kwargs)
            w.copy_(absmax_dequantize(q, scale, dtype=w.dtype))
    return quantized


def int8_weight_bytes(model: nn.Module, granularity: str = "per_channel", group_size: int = 64) -> dict[str, int]:
    """Bytes of the ``nn.Linear`` weights stored as int8 + float32 scales, vs float32 and bfloat16 (Lecture 26).

    Returns ``{"params", "fp32", "bf16", "int8", "scales"}`` (``int8`` counts 1 byte per weight,
    ``scales`` 4 bytes per scale). Other parameters (embeddings, norms, biases) are not counted.
    """
    kwargs = _granularity(granularity, group_size)
    params = scales = 0
    seen = set()
    for module in model.modules():
        if isinstance(module, nn.Linear) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            w = module.weight
            params += w.numel()
            scales += absmax_scale(w.detach(), **kwargs).numel()
    return {"params": params, "fp32": 4 * params, "bf16": 2 * params, "int8": params, "scales": 4 * scales}

"""FP8 with DeepSeek's fine-grained scaling (Lecture 27).

DeepSeek-V3 (technical report, section 3.3) runs the big matrix multiplications of training in
FP8 E4M3 with FP32 accumulation, and scales finely: activations per 1 x 128 tile (one scale per
token and per 128 channels), weights per 128 x 128 block. This module follows the semantics of
the official DeepSeek-V3 inference kernel (``inference/kernel.py``):

- :func:`act_quant`: amax of each 1 x 128 tile, clamped to at least ``1e-4``; ``s = amax / 448``;
  ``y = (x / s)`` cast to ``float8_e4m3fn``; FP32 scales of shape ``(..., K / 128)``.
- :func:`weight_dequant`: ``w[i, j] * s[i // 128, j // 128]``.
- :func:`fp8_block_matmul` (the kernel's ``fp8_gemm``): per 128-wide K block,
  ``acc += dot(a, b) * a_s * b_s`` in FP32.

:func:`weight_quant` makes the weight blocks with the same rule as :func:`act_quant`;
:class:`FP8Linear` quantizes both in its forward pass and passes gradients straight through
to its FP32 master weights. Elementwise FP8 arithmetic is not implemented on CPU, so every
computation here casts FP8 values back to FP32 first; the products of two E4M3 values are
exact in FP32, as on a tensor core.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "E4M3_MAX", "E5M2_MAX", "FP8_MAX", "AMAX_FLOOR", "to_fp8", "per_tensor_quant", "act_quant", "act_dequant",
    "weight_quant", "weight_dequant", "fp8_block_matmul", "fp8_linear", "FP8Linear", "convert_linears_to_fp8",
    "fp8_weight_bytes",
]

E4M3_MAX = float(torch.finfo(torch.float8_e4m3fn).max)  # 448.0
E5M2_MAX = float(torch.finfo(torch.float8_e5m2).max)  # 57344.0
FP8_MAX = {torch.float8_e4m3fn: E4M3_MAX, torch.float8_e5m2: E5M2_MAX}
AMAX_FLOOR = 1e-4  # the official kernel clamps each tile's amax to at least this (an all-zero tile gets s = 1e-4 / 448)

_HIGH_PRECISION = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _check_input(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    if x.dtype not in _HIGH_PRECISION:
        raise ValueError(f"{name} has dtype {x.dtype}; quantize a float32, bfloat16, float16 or float64 tensor "
                         "(convert integers with .float(); FP8 tensors are already quantized).")
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains inf or NaN: its amax (and so its scale) would be non-finite. "
                         "Find where the overflow comes from (or clip the values) before quantizing.")


def _check_block_size(block_size: int) -> None:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(f"block_size must be a positive int (DeepSeek uses 128), got {block_size!r}.")


def to_fp8(x: torch.Tensor, dtype: torch.dtype = torch.float8_e4m3fn) -> torch.Tensor:
    """Saturating cast to FP8 (Lecture 27): values beyond the format's max become +-max.

    E4M3 (``torch.float8_e4m3fn``) saturates at 448, E5M2 (``torch.float8_e5m2``) at 57344.
    A plain ``.to(torch.float8_e5m2)`` would turn an overflow into inf; we clamp first, so
    both formats saturate on every device. inf or NaN inputs raise a ValueError.
    """
    if dtype not in FP8_MAX:
        raise ValueError(f"dtype must be torch.float8_e4m3fn or torch.float8_e5m2, got {dtype}.")
    _check_input(x, "x")
    limit = FP8_MAX[dtype]
    return x.float().clamp(-limit, limit).to(dtype)


def per_tensor_quant(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One scale for the whole tensor (the coarse baseline of Lecture 27): ``s = amax / 448``.

    Returns (``float8_e4m3fn`` values of x's shape, a 0-dim FP32 scale); amax is clamped to
    at least ``AMAX_FLOOR`` as in :func:`act_quant`, so ``y.float() * s`` approximates x.
    """
    _check_input(x, "x")
    x = x.float()
    s = x.abs().amax().clamp(min=AMAX_FLOOR) / E4M3_MAX  # ()
    return (x / s).to(torch.float8_e4m3fn), s


def act_quant(x: torch.Tensor, block_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations in 1 x ``block_size`` tiles along the last dim (Lecture 27; official ``act_quant``).

    x (..., K) -> (y (..., K) ``float8_e4m3fn``, s (..., K / block_size) float32), with per tile
    ``s = max(amax, 1e-4) / 448`` and ``y = x / s``; so ``y.float() * s`` (repeated over the tile)
    approximates x. K must be a multiple of ``block_size`` (the official kernel asserts it too):
    pad the last dim with zeros to the next multiple and drop the padding after the matmul.
    """
    _check_block_size(block_size)
    _check_input(x, "x")
    if x.dim() == 0 or x.shape[-1] % block_size:
        last = x.shape[-1] if x.dim() else "none (a 0-dim tensor)"
        raise ValueError(f"act_quant: the last dim ({last}) must be a multiple of block_size={block_size}; "
                         f"pad it with zeros to a multiple of {block_size} (F.pad(x, (0, pad))).")
    tiles = x.float().unflatten(-1, (-1, block_size))  # (..., K / bs, bs)
    s = tiles.abs().amax(dim=-1).clamp(min=AMAX_FLOOR) / E4M3_MAX  # (..., K / bs)
    y = (tiles / s.unsqueeze(-1)).to(torch.float8_e4m3fn).flatten(-2)  # (..., K)
    return y, s


def act_dequant(y: torch.Tensor, s: torch.Tensor, block_size: int = 128) -> torch.Tensor:
    """The inverse of :func:`act_quant` up to rounding: ``y.float() * s`` per 1 x ``block_size`` tile (Lecture 27)."""
    _check_block_size(block_size)
    if y.shape[:-1] != s.shape[:-1] or y.shape[-1] != s.shape[-1] * block_size:
        raise ValueError(f"act_dequant: values {tuple(y.shape)} and scales {tuple(s.shape)} do not match "
                         f"1 x {block_size} tiles (scales should be {tuple(y.shape[:-1])} + (K / {block_size},)).")
    return (y.float().unflatten(-1, (-1, block_size)) * s.float().unsqueeze(-1)).flatten(-2)


def _blocks(rows: int, cols: int, block_size: int) -> tuple[int, int]:
    return math.ceil(rows / block_size), math.ceil(cols / block_size)


def weight_quant(w: torch.Tensor, block_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights in ``block_size`` x ``block_size`` blocks (Lecture 27), with :func:`act_quant`'s rule.

    w (N, K) -> (w_fp8 (N, K) ``float8_e4m3fn``, s (ceil(N / bs), ceil(K / bs)) float32). Edges
    that are not a multiple of the block size form smaller blocks (as the official
    ``weight_dequant`` grid does): nothing needs padding.
    """
    _check_block_size(block_size)
    _check_input(w, "w")
    if w.dim() != 2:
        raise ValueError(f"weight_quant expects a 2-D weight (out_features, in_features), got {tuple(w.shape)}.")
    N, K = w.shape
    nN, nK = _blocks(N, K, block_size)
    padded = F.pad(w.float(), (0, nK * block_size - K, 0, nN * block_size - N))  # zeros do not change amax
    blocks = padded.view(nN, block_size, nK, block_size)  # (nN, bs, nK, bs)
    s = blocks.abs().amax(dim=(1, 3)).clamp(min=AMAX_FLOOR) / E4M3_MAX  # (nN, nK)
    q = (blocks / s[:, None, :, None]).to(torch.float8_e4m3fn).view(nN * block_size, nK * block_size)
    return q[:N, :K].contiguous(), s


def _expand_scales(s: torch.Tensor, rows: int, cols: int, block_size: int) -> torch.Tensor:
    """(ceil(rows / bs), ceil(cols / bs)) block scales -> (rows, cols), one per element."""
    return s.repeat_interleave(block_size, dim=0)[:rows].repeat_interleave(block_size, dim=1)[:, :cols]


def weight_dequant(w_fp8: torch.Tensor, s: torch.Tensor, block_size: int = 128) -> torch.Tensor:
    """FP32 weights from FP8 blocks (Lecture 27; official ``weight_dequant``): ``w[i, j] * s[i // bs, j // bs]``."""
    _check_block_size(block_size)
    if w_fp8.dim() != 2 or s.dim() != 2:
        raise ValueError(f"weight_dequant expects 2-D values and scales, got {tuple(w_fp8.shape)} and {tuple(s.shape)}.")
    N, K = w_fp8.shape
    if tuple(s.shape) != _blocks(N, K, block_size):
        raise ValueError(f"weight_dequant: weight {(N, K)} in {block_size} x {block_size} blocks needs scales of shape "
                         f"{_blocks(N, K, block_size)}, got {tuple(s.shape)}.")
    return w_fp8.float() * _expand_scales(s.float(), N, K, block_size)


def fp8_block_matmul(a: torch.Tensor, a_s: torch.Tensor, b: torch.Tensor, b_s: torch.Tensor,
                     block_size: int = 128) -> torch.Tensor:
    """``a @ b.T`` from FP8 tiles and blocks, accumulated in FP32 (Lecture 27; official ``fp8_gemm``).

    a (..., K) FP8 with tile scales a_s (..., K / bs) from :func:`act_quant`; b (N, K) FP8 with
    block scales b_s (ceil(N / bs), K / bs) from :func:`weight_quant`. For each 128-wide K block
    k: ``acc += (a_k * a_s[..., k]) @ (b_k * b_s[n // bs, k]).T``; returns acc (..., N) in FP32.

    The official kernel multiplies the scales in after each block's dot product
    (``dot(a_k, b_k) * a_s * b_s``); we multiply them into the operands first: the same sum in
    exact arithmetic, and the order ``torch._scaled_mm`` uses on CPU, so with a single K block
    the two agree bit for bit.
    """
    _check_block_size(block_size)
    for name, t in (("a", a), ("b", b)):
        if t.dtype not in FP8_MAX:
            raise ValueError(f"fp8_block_matmul: {name} must be an FP8 tensor (from act_quant / weight_quant), "
                             f"got {t.dtype}.")
    K = a.shape[-1]
    if b.dim() != 2 or b.shape[1] != K or K % block_size:
        raise ValueError(f"fp8_block_matmul: a (..., K) and b (N, K) need the same K, a multiple of {block_size}; "
                         f"got a {tuple(a.shape)} and b {tuple(b.shape)}.")
    N, nK = b.shape[0], K // block_size
    if a_s.shape != a.shape[:-1] + (nK,) or tuple(b_s.shape) != _blocks(N, K, block_size):
        raise ValueError(f"fp8_block_matmul: scales {tuple(a_s.shape)} and {tuple(b_s.shape)} do not match the tiles "
                         f"of a {tuple(a.shape)} and the blocks of b {tuple(b.shape)}.")
    lead = a.shape[:-1]
    a_k = a.float().reshape(-1, nK, block_size) * a_s.float().reshape(-1, nK, 1)  # (M, nK, bs) dequantized tiles
    b_scales = b_s.float().repeat_interleave(block_size, dim=0)[:N]  # (N, nK): each row's block scales
    b_k = b.float().view(N, nK, block_size) * b_scales.unsqueeze(-1)  # (N, nK, bs) dequantized blocks
    partial = torch.bmm(a_k.transpose(0, 1), b_k.permute(1, 2, 0))  # (nK, M, N): one K block each
    acc = torch.zeros(partial.shape[1:], dtype=torch.float32)
    for k in range(nK):  # promote each block's partial sums to the FP32 accumulator
        acc = acc + partial[k]
    return acc.reshape(*lead, N)


class _FP8LinearFunction(torch.autograd.Function):
    """Forward through FP8 (tiles x blocks); backward straight through, as if the forward were FP32."""

    @staticmethod
    def forward(ctx, x, weight, bias, block_size):
        x_q, x_s = act_quant(x, block_size)  # (..., K), (..., K / bs)
        w_q, w_s = weight_quant(weight, block_size)  # (N, K), (ceil(N / bs), K / bs)
        y = fp8_block_matmul(x_q, x_s, w_q, w_s, block_size)  # (..., N), FP32
        if bias is not None:
            y = y + bias
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        grad_x = grad_y @ weight.to(grad_y.dtype)  # Dgrad (..., K)
        g2 = grad_y.reshape(-1, grad_y.shape[-1])
        grad_w = g2.T @ x.reshape(-1, x.shape[-1]).to(g2.dtype)  # Wgrad (N, K)
        grad_b = g2.sum(0) if ctx.has_bias else None
        return grad_x, grad_w.to(weight.dtype), grad_b, None


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
               block_size: int = 128) -> torch.Tensor:
    """``x @ weight.T + bias`` with x in 1 x bs tiles and weight in bs x bs blocks of FP8 (Lecture 27).

    Gradients are straight-through: the backward pass is that of the FP32 linear layer, computed
    with the FP32 master weight and input (DeepSeek also runs Dgrad and Wgrad in FP8; here they
    stay FP32 so only the forward quantization differs from the baseline).
    """
    return _FP8LinearFunction.apply(x, weight, bias, block_size)


class FP8Linear(nn.Linear):
    """An ``nn.Linear`` whose forward runs through FP8 (Lecture 27): same parameters, FP32 master weights.

    ``in_features`` must be a multiple of ``block_size`` (the activation tiles); ``out_features``
    may be anything. The state dict is that of ``nn.Linear``, so weights load either way.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, block_size: int = 128,
                 device=None, dtype=None):
        _check_block_size(block_size)
        if in_features % block_size:
            raise ValueError(f"FP8Linear: in_features={in_features} must be a multiple of block_size={block_size} "
                             "(activations are scaled in 1 x block_size tiles); keep this layer in high precision "
                             "or pick a width that is a multiple.")
        super().__init__(in_features, out_features, bias, device, dtype)
        self.block_size = block_size

    @classmethod
    def from_linear(cls, linear: nn.Linear, block_size: int = 128) -> "FP8Linear":
        """An FP8Linear holding (sharing) ``linear``'s weight and bias parameters."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, block_size,
                    device="meta")
        layer.weight, layer.bias = linear.weight, linear.bias
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp8_linear(x, self.weight, self.bias, self.block_size)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", block_size={self.block_size}"


def convert_linears_to_fp8(model: nn.Module, skip: tuple[str, ...] = ("out_head",), block_size: int = 128) -> list[str]:
    """Replace every ``nn.Linear`` of ``model`` by an :class:`FP8Linear` sharing its parameters (Lecture 27).

    Layers whose name contains one of ``skip`` stay in high precision (DeepSeek keeps the output
    head, as well as embeddings, norms and MoE gating, in BF16/FP32), as do layers whose
    ``in_features`` is not a multiple of ``block_size``. Returns the names of the replaced layers.
    """
    replaced = []
    for name, module in list(model.named_modules()):
        if type(module) is not nn.Linear or any(part in name for part in skip):
            continue
        if module.in_features % block_size:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, FP8Linear.from_linear(module, block_size))
        replaced.append(name)
    return replaced


def fp8_weight_bytes(rows: int, cols: int, block_size: int = 128) -> int:
    """Bytes of a (rows, cols) weight in FP8 with one FP32 scale per block (Lecture 27).

    ``rows * cols`` one-byte values plus ``4 * ceil(rows / bs) * ceil(cols / bs)`` scale bytes.
    """
    _check_block_size(block_size)
    for name, n in (("rows", rows), ("cols", cols)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"{name} must be a non-negative int, got {n!r}.")
    n_rows, n_cols = _blocks(rows, cols, block_size)
    return rows * cols + 4 * n_rows * n_cols

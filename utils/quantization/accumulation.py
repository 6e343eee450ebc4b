"""Lecture 28: accumulation precision and online quantization (DeepSeek-V3 section 3.3).

Two pieces of DeepSeek's FP8 recipe that are about *numbers*, not layouts:

1. **Limited accumulation precision and promotion** (V3 section 3.3.2). An FP8 GEMM on the
   H800's tensor cores keeps "around 14 bits" of the running sum, not FP32's 24; DeepSeek
   copies the partial sum to an FP32 register on the CUDA cores every ``N_C = 128`` elements of
   the inner dimension K. :func:`accumulate` simulates both: the running sum is rounded to
   ``mantissa_bits`` fraction bits after every add, and with ``promote_every`` the partial sum
   restarts from zero every ``N_C`` products and is added to an FP32 accumulator.

   What the simulation assumes (and what it leaves out):

   - the products are exact in FP32 (true for E4M3 x E4M3: 4 x 4 significant bits fit in 24);
   - the running sum is rounded to nearest, ties to even (``rounding="nearest"``), or
     truncated toward zero (``rounding="toward_zero"``), after *every* add;
   - the exponent range is unlimited (no overflow or underflow of the partial sum);
   - the promotion adds the partial sum to an FP32 accumulator (one FP32 rounding per add);
   - NOT modelled: how the tensor core aligns a group of products to their largest exponent
     and drops the bits shifted out within one instruction (section 3.5.2 of the report
     describes such a truncation; NVIDIA does not document it), the order in which the
     hardware adds, and the per-block dequantization scales (they multiply the partial sum,
     they do not change its relative error).

2. **Delayed vs online scaling** (V3 section 3.3.2, "online quantization"). Delayed scaling (NVIDIA Transformer
   Engine, after Micikevicius et al. 2022) takes this step's scale from the amax *history* of
   earlier steps; a spike beyond the history's maximum is clipped at the format's largest value
   (448 for E4M3). Online scaling, DeepSeek's choice, computes the scale from the *current*
   tensor (``scale = max(amax, 1e-4) / 448``), so nothing saturates.
   :class:`DelayedScaler`, :func:`online_scale`, :func:`saturated_fraction` and
   :func:`scaling_trace` follow both over training steps; :func:`first_delayed_overflow` finds
   the first step whose delayed scale overflows.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch

from utils.quantization.fp8 import AMAX_FLOOR, E4M3_MAX, to_fp8

__all__ = [
    "DEEPSEEK_PROMOTION_INTERVAL",
    "round_mantissa",
    "accumulate",
    "accumulation_inputs",
    "relative_errors",
    "online_scale",
    "DelayedScaler",
    "saturated_fraction",
    "quantize_e4m3_saturating",
    "scaling_trace",
    "first_delayed_overflow",
]

DEEPSEEK_PROMOTION_INTERVAL = 128  # N_C in DeepSeek-V3 section 3.3.2: four WGMMA instructions of K = 32
_E4M3_MAX = E4M3_MAX  # 448.0 (Lecture 27)
_MIN_AMAX = AMAX_FLOOR  # the official act_quant clamps amax to at least 1e-4 (Lecture 27)
_ROUNDINGS = {"nearest": torch.round, "toward_zero": torch.trunc}  # torch.round: ties to even


def _check_bits(mantissa_bits: int) -> None:
    if isinstance(mantissa_bits, bool) or not isinstance(mantissa_bits, int) or not 1 <= mantissa_bits <= 50:
        raise ValueError(f"mantissa_bits must be an int from 1 to 50 (FP32 has 23, the simulated tensor-core "
                         f"accumulator about 13), got {mantissa_bits!r}")


def round_mantissa(x: torch.Tensor, mantissa_bits: int, rounding: str = "nearest") -> torch.Tensor:
    """Round ``x`` to ``mantissa_bits`` fraction bits (after the leading one); same dtype as ``x``.

    ``x = f * 2**e`` with ``0.5 <= |f| < 1`` (``torch.frexp``); ``f`` keeps ``mantissa_bits + 1``
    significant bits. ``rounding="nearest"``: to nearest, ties to even; ``"toward_zero"``: truncate.
    The exponent is not limited. ``round_mantissa(x, 23)`` of a float64 ``x`` is ``x`` rounded to
    FP32 precision (without FP32's exponent range).
    """
    _check_bits(mantissa_bits)
    if rounding not in _ROUNDINGS:
        raise ValueError(f"rounding must be one of {sorted(_ROUNDINGS)}, got {rounding!r}")
    if not torch.is_floating_point(x):
        raise ValueError(f"round_mantissa needs a floating-point tensor, got dtype {x.dtype}")
    return _round_bits(x.double(), mantissa_bits, rounding).to(x.dtype)


def _round_bits(x: torch.Tensor, mantissa_bits: int, rounding: str) -> torch.Tensor:
    """float64 ``x`` rounded to ``mantissa_bits`` fraction bits by integer operations on its bits
    (the same result as scaling ``torch.frexp``'s fraction, rounding and ``torch.ldexp``, faster)."""
    bits = x.view(torch.int64)
    drop = 52 - mantissa_bits  # float64 keeps 52 fraction bits
    if rounding == "nearest":  # add half an ulp minus 1, plus 1 if the kept part is odd: ties go to even
        bits = bits + ((1 << (drop - 1)) - 1) + ((bits >> drop) & 1)
    return (bits & ~((1 << drop) - 1)).view(torch.float64)


def accumulate(products: torch.Tensor, mantissa_bits: int, promote_every: int | None = None,
               rounding: str = "nearest") -> torch.Tensor:
    """Sum ``products`` (..., K) over K with a limited-precision accumulator; returns FP32 (...,).

    Without ``promote_every``: one running sum, rounded to ``mantissa_bits`` after every add.
    With ``promote_every = N_C``: the running sum restarts at zero every ``N_C`` products (the
    last group may be shorter) and each finished partial sum is added to an FP32 accumulator,
    as DeepSeek-V3 does with ``N_C = 128``. All dot products are simulated at once: the loop runs
    over the K (or ``N_C``) positions, each step a few vector operations on every sum.
    """
    _check_bits(mantissa_bits)
    if promote_every is not None and (isinstance(promote_every, bool) or not isinstance(promote_every, int)
                                      or promote_every < 1):
        raise ValueError(f"promote_every (N_C) must be a positive int or None (no promotion), got {promote_every!r}")
    if rounding not in _ROUNDINGS:
        raise ValueError(f"rounding must be one of {sorted(_ROUNDINGS)}, got {rounding!r}")
    if not torch.is_floating_point(products) or products.dim() < 1:
        raise ValueError(f"products must be a floating-point tensor (..., K), got dtype {products.dtype}, "
                         f"shape {tuple(products.shape)}")
    if not torch.isfinite(products).all():
        raise ValueError("products contain inf or NaN: the simulated accumulator needs finite values")
    k = products.shape[-1]
    group = k if promote_every is None else min(promote_every, k)
    if k == 0:
        return torch.zeros(products.shape[:-1], dtype=torch.float32)
    p = products.detach().to(torch.float64)  # FP32 products and the m-bit partial sums add exactly in float64
    p = torch.nn.functional.pad(p, (0, (-k) % group))  # zeros: adding 0 changes no partial sum
    p = p.reshape(*p.shape[:-1], -1, group).movedim(-1, 0).contiguous()  # (N_C, ..., n_groups)
    partial = torch.zeros(p.shape[1:], dtype=torch.float64)  # (..., n_groups): one partial sum per group
    for i in range(group):
        partial = _round_bits(partial + p[i], mantissa_bits, rounding)
    total = torch.zeros(p.shape[1:-1], dtype=torch.float32)  # the FP32 accumulator on the CUDA cores
    for g in range(partial.shape[-1]):
        total = total + partial[..., g].to(torch.float32)
    return total


def accumulation_inputs(n: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` dot products of length ``k``: two (n, k) FP32 tensors holding E4M3 values.

    The inputs are |N(0, 1)| (half-normal) cast to E4M3. Non-negative inputs are the hard case
    for a running sum: nothing cancels, the sum grows with every product, and the relative error
    of each dot product is well defined (with signed inputs some sums are near zero and their
    relative error says nothing about the accumulator). The half-normal keeps the spread of
    magnitudes of real activations and weights. Drawn from a private generator.
    """
    if n < 1 or k < 1:
        raise ValueError(f"n and k must be positive, got n={n}, k={k}")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, generator=gen).abs().to(torch.float8_e4m3fn).float()
    w = torch.randn(n, k, generator=gen).abs().to(torch.float8_e4m3fn).float()
    return x, w


def relative_errors(x: torch.Tensor, w: torch.Tensor, mantissa_bits: int, promote_every: int | None = None,
                    rounding: str = "nearest") -> torch.Tensor:
    """|simulated - exact| / |exact| of each dot product ``(x * w).sum(-1)``; (n,) float64.

    The exact sums are computed in float64 (exact for E4M3 inputs at these lengths).
    """
    if x.shape != w.shape:
        raise ValueError(f"x and w must have the same shape, got {tuple(x.shape)} and {tuple(w.shape)}")
    products = x * w  # exact in FP32 for E4M3 inputs
    exact = products.double().sum(-1)
    if (exact == 0).any():
        raise ValueError("a dot product is exactly zero: its relative error is undefined")
    simulated = accumulate(products, mantissa_bits, promote_every, rounding).double()
    return (simulated - exact).abs() / exact.abs()


# --- delayed vs online scaling ---------------------------------------------------------------------

def _amax(x: torch.Tensor) -> float:
    if not torch.is_floating_point(x):
        raise ValueError(f"scaling needs a floating-point tensor, got dtype {x.dtype}")
    if x.numel() and not torch.isfinite(x).all():
        raise ValueError("the tensor contains inf or NaN: its amax (and any scale from it) would be meaningless")
    return float(x.abs().max()) if x.numel() else 0.0


def online_scale(x: torch.Tensor, fmt_max: float = _E4M3_MAX, min_amax: float = _MIN_AMAX) -> float:
    """Online (current) scaling: ``max(amax(x), min_amax) / fmt_max``, from the tensor itself.

    Per tensor here, to compare with delayed scaling; DeepSeek applies the same rule per
    1 x 128 tile and 128 x 128 block (Lecture 27, ``act_quant``).
    """
    if fmt_max <= 0 or min_amax <= 0:
        raise ValueError(f"fmt_max and min_amax must be positive, got {fmt_max} and {min_amax}")
    return max(_amax(x), min_amax) / fmt_max


@dataclass
class DelayedScaler:
    """Delayed scaling: the scale of step t comes from the amax of steps t - history_len .. t - 1.

    ``scale()`` is ``max(history) / fmt_max`` (amax clamped to at least ``min_amax``); with an
    empty history (the first step) it is ``initial_amax / fmt_max``. ``update(x)`` records
    this step's amax *after* the step is quantized, as Transformer Engine does.
    """

    history_len: int = 16
    initial_amax: float = _E4M3_MAX  # scale 1 before any history, Transformer Engine's default
    fmt_max: float = _E4M3_MAX
    min_amax: float = _MIN_AMAX
    history: deque = field(default_factory=deque, repr=False)

    def __post_init__(self):
        if isinstance(self.history_len, bool) or not isinstance(self.history_len, int) or self.history_len < 1:
            raise ValueError(f"history_len must be a positive int, got {self.history_len!r}")
        if self.initial_amax <= 0 or self.fmt_max <= 0 or self.min_amax <= 0:
            raise ValueError("initial_amax, fmt_max and min_amax must be positive")
        self.history = deque(self.history, maxlen=self.history_len)

    def scale(self) -> float:
        amax = max(self.history) if self.history else self.initial_amax
        return max(amax, self.min_amax) / self.fmt_max

    def update(self, x: torch.Tensor) -> None:
        self.history.append(_amax(x))


def saturated_fraction(x: torch.Tensor, scale: float, fmt_max: float = _E4M3_MAX) -> float:
    """Fraction of entries with ``|x| / scale > fmt_max``: they are clipped to ``fmt_max`` (or NaN
    in a cast that does not saturate). A relative margin of 1e-6 absorbs the rounding of
    ``amax / (amax / fmt_max)``, so the entry that set an online scale never counts."""
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    if x.numel() == 0:
        return 0.0
    scaled = x.detach().double().abs() / scale
    return float((scaled > fmt_max * (1 + 1e-6)).double().mean())


def quantize_e4m3_saturating(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x / scale`` clipped to [-448, 448], cast to E4M3 and scaled back: what a saturating FP8
    cast returns (FP32 out, same shape)."""
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    return to_fp8(x.float() / scale).float() * scale  # Lecture 27's saturating cast


def scaling_trace(tensors: Iterable[torch.Tensor], mode: str, history_len: int = 16) -> dict[str, list]:
    """Quantize a sequence of tensors (one per training step) with delayed or online scaling.

    Returns lists over steps: ``amax``, ``scale``, ``saturated`` (fraction clipped),
    ``overflow`` (bool: something clipped) and ``rel_error`` (relative Frobenius error of the
    saturating E4M3 round trip).
    """
    if mode not in ("delayed", "online"):
        raise ValueError(f"mode must be 'delayed' or 'online', got {mode!r}")
    scaler = DelayedScaler(history_len) if mode == "delayed" else None
    trace: dict[str, list] = {"amax": [], "scale": [], "saturated": [], "overflow": [], "rel_error": []}
    for x in tensors:
        s = scaler.scale() if scaler is not None else online_scale(x)
        frac = saturated_fraction(x, s)
        err = float((quantize_e4m3_saturating(x, s) - x).norm() / x.float().norm().clamp_min(1e-30))
        trace["amax"].append(_amax(x))
        trace["scale"].append(s)
        trace["saturated"].append(frac)
        trace["overflow"].append(frac > 0)
        trace["rel_error"].append(err)
        if scaler is not None:
            scaler.update(x)
    return trace


def first_delayed_overflow(amaxes: Sequence[float], history_len: int) -> int:
    """The first step t >= 1 whose amax exceeds the largest amax of steps t - history_len .. t - 1.

    With delayed scaling, step t's scale is ``max(history) / 448``, so step t overflows exactly
    when its own amax is larger than the history's maximum. Step 0 has no history and is not
    counted. Returns -1 if no step overflows.
    """
    if isinstance(history_len, bool) or not isinstance(history_len, int) or history_len < 1:
        raise ValueError(f"history_len must be a positive int, got {history_len!r}")
    values = [float(a) for a in amaxes]
    for t in range(1, len(values)):
        if values[t] > max(values[max(0, t - history_len):t]):
            return t
    return -1

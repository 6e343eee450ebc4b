"""Positional encodings: integer and binary (Lecture 14), sinusoidal (Lecture 15).

Every function returns one row per position ``p = 0 ... T - 1``:

- :func:`integer_positions` ``(T, d)``: the position itself, ``p``, in every dimension (Lecture 14);
- :func:`binary_positions` ``(T, n_bits)`` int64: the bits of ``p``, most significant bit first,
  so row 200 of an 8-bit table reads ``1 1 0 0 1 0 0 0`` (Lecture 14);
- :func:`sinusoidal_positions` ``(T, d)``: Vaswani et al. (2017, section 3.5),
  ``PE(p, 2i) = sin(p / base^(2i/d))``, ``PE(p, 2i+1) = cos(p / base^(2i/d))`` (Lecture 15);
- :func:`sinusoid_rotation` ``(d, d)``: the fixed block-diagonal rotation ``R_k`` with
  ``PE(p + k) = PE(p) @ R_k`` for every ``p`` (row vectors on the left; Lecture 15).

Sinusoids are computed in float64 and returned in ``dtype`` (float32 by default).
"""

from __future__ import annotations

import math
import numbers

import torch


def _positive_int(name: str, value, hint: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be a positive int, got {value!r}{hint}.")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}{hint}.")
    return int(value)


def _even_width(d) -> int:
    d = _positive_int("d", d, " (the width of the encoding)")
    if d % 2:
        raise ValueError(f"d must be even for sinusoids (one sin/cos pair per frequency), got {d}: "
                         f"use an even width such as {d + 1} or {d - 1 if d > 1 else 2}.")
    return d


def _check_base(base) -> float:
    if isinstance(base, bool) or not isinstance(base, numbers.Real) or not base > 1:
        raise ValueError(f"base must be a number larger than 1 (the paper uses 10000.0), got {base!r}.")
    return float(base)


def integer_positions(T: int, d: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Row ``p`` is ``p`` in each of the ``d`` dimensions: ``(T, d)`` (Lecture 14).

    The naive encoding: added to token embeddings of size 0.02 to 1, position 200 swamps them.
    """
    T = _positive_int("T", T, " (the number of positions)")
    d = _positive_int("d", d, " (the width of the encoding)")
    return torch.arange(T, dtype=dtype)[:, None].expand(T, d).clone()   # (T, d)


def binary_positions(T: int, n_bits: int) -> torch.Tensor:
    """The bits of positions ``0 ... T - 1``, most significant bit first: ``(T, n_bits)`` int64 (Lecture 14).

    Column ``j`` holds bit ``n_bits - 1 - j`` (worth ``2**(n_bits - 1 - j)``), so each row reads like
    the binary numeral: ``binary_positions(256, 8)[200]`` is ``[1, 1, 0, 0, 1, 0, 0, 0]``. The last
    column (the lowest bit) flips at every step, the first one once in ``2**n_bits`` positions.
    """
    T = _positive_int("T", T, " (the number of positions)")
    n_bits = _positive_int("n_bits", n_bits)
    if T > 2 ** n_bits:
        raise ValueError(f"{n_bits} bits hold positions 0 ... {2 ** n_bits - 1}, not {T} positions: "
                         f"use n_bits >= {max(1, (T - 1).bit_length())} or a smaller T.")
    shifts = torch.arange(n_bits - 1, -1, -1)                  # (n_bits,): n_bits - 1, ..., 1, 0
    return (torch.arange(T)[:, None] >> shifts) & 1            # (T, n_bits), int64


def sinusoid_frequencies(d: int, base: float = 10000.0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The ``d / 2`` angular frequencies ``omega_i = base^(-2i/d)``, ``i = 0 ... d/2 - 1`` (Lecture 15).

    Pair ``i`` (dimensions ``2i`` and ``2i + 1``) turns by ``omega_i`` radians per position: from
    1 radian (wavelength ``2 pi``) down to nearly ``1 / base`` (wavelength nearly ``2 pi base``).
    """
    d, base = _even_width(d), _check_base(base)
    two_i = torch.arange(0, d, 2, dtype=torch.float64)         # (d/2,): 0, 2, 4, ..., d - 2
    return (base ** (-two_i / d)).to(dtype)


def sinusoidal_positions(T: int, d: int, base: float = 10000.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sinusoidal encoding of Vaswani et al. (2017, section 3.5): ``(T, d)`` (Lecture 15).

    ``PE[p, 2i] = sin(p * omega_i)`` and ``PE[p, 2i + 1] = cos(p * omega_i)`` with
    ``omega_i = base^(-2i/d)`` (:func:`sinusoid_frequencies`): sines in the even columns, cosines
    in the odd ones, interleaved. Every entry lies in [-1, 1] and every row has norm ``sqrt(d / 2)``.
    """
    T = _positive_int("T", T, " (the number of positions)")
    angles = torch.arange(T, dtype=torch.float64)[:, None] * sinusoid_frequencies(d, base)[None, :]  # (T, d/2)
    pe = torch.stack([angles.sin(), angles.cos()], dim=-1)     # (T, d/2, 2): (sin, cos) per pair
    return pe.reshape(T, d).to(dtype)                          # (T, d): sin, cos, sin, cos, ...


def sinusoid_rotation(k: float, d: int, base: float = 10000.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The fixed rotation ``R_k`` with ``PE(p + k) = PE(p) @ R_k`` for every position ``p``: ``(d, d)`` (Lecture 15).

    Row-vector convention (the encoding on the left, as in ``x @ W``). ``R_k`` is block diagonal with
    one 2 x 2 block per sin/cos pair, at rows and columns ``2i, 2i + 1``::

        [[ cos(k omega_i), -sin(k omega_i)],
         [ sin(k omega_i),  cos(k omega_i)]]

    from ``sin(a + b) = sin a cos b + cos a sin b`` and ``cos(a + b) = cos a cos b - sin a sin b``.
    It depends on the offset ``k`` only (any real ``k``, negative too), never on ``p``.
    """
    if isinstance(k, bool) or not isinstance(k, numbers.Real) or not math.isfinite(k):
        raise ValueError(f"k must be a finite number (the offset in positions), got {k!r}.")
    angles = float(k) * sinusoid_frequencies(d, base)          # (d/2,)
    c, s = angles.cos(), angles.sin()
    blocks = torch.stack([torch.stack([c, -s], dim=-1), torch.stack([s, c], dim=-1)], dim=-2)  # (d/2, 2, 2)
    return torch.block_diag(*blocks).to(dtype)                 # (d, d)

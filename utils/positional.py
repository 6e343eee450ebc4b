"""Positional encodings: integer and binary (Lecture 14), sinusoidal (Lecture 15), rotary (Lecture 16).

Every function returns one row per position ``p = 0 ... T - 1``:

- :func:`integer_positions` ``(T, d)``: the position itself, ``p``, in every dimension (Lecture 14);
- :func:`binary_positions` ``(T, n_bits)`` int64: the bits of ``p``, most significant bit first,
  so row 200 of an 8-bit table reads ``1 1 0 0 1 0 0 0`` (Lecture 14);
- :func:`sinusoidal_positions` ``(T, d)``: Vaswani et al. (2017, section 3.5),
  ``PE(p, 2i) = sin(p / base^(2i/d))``, ``PE(p, 2i+1) = cos(p / base^(2i/d))`` (Lecture 15);
- :func:`sinusoid_rotation` ``(d, d)``: the fixed block-diagonal rotation ``R_k`` with
  ``PE(p + k) = PE(p) @ R_k`` for every ``p`` (row vectors on the left; Lecture 15).

Rotary position embeddings (RoPE, Su et al. 2021; Lecture 16) rotate queries and keys instead:

- :func:`rope_cache` ``(T_max, d/2)`` twice: the precomputed ``cos(p theta_i)`` and ``sin(p theta_i)``,
  ``theta_i = base^(-2i/d)`` (the frequencies of Lecture 15);
- :func:`apply_rope` rotates pair ``i`` of ``x`` (..., T, d) at position ``p`` by the angle ``p theta_i``,
  pairing either interleaved features ``(x_2i, x_2i+1)`` (the paper, DeepSeek's checkpoints) or split
  halves ``(x_i, x_i+d/2)`` (Hugging Face's Llama and GPT-NeoX code);
- :func:`rope_permutation` the fixed feature order that turns one pairing into the other.

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


# --- Lecture 16: rotary position embeddings (RoPE) ------------------------------------------------


def rope_cache(T_max: int, d: int, base: float = 10000.0,
               dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The tables ``cos(p theta_i)`` and ``sin(p theta_i)`` for ``p < T_max``: two ``(T_max, d/2)`` tensors (Lecture 16).

    ``theta_i = base^(-2i/d)`` are :func:`sinusoid_frequencies` (Lecture 15); ``d`` is the width
    that gets rotated (a head's query/key width, or DeepSeek's 64-dim RoPE part). Angles are built
    in float64, so position 100,000 is as accurate as position 1.
    """
    T_max = _positive_int("T_max", T_max, " (the number of positions in the table)")
    angles = torch.arange(T_max, dtype=torch.float64)[:, None] * sinusoid_frequencies(d, base)[None, :]  # (T_max, d/2)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rope_permutation(d: int) -> torch.Tensor:
    """The feature order ``[0, 2, 4, ..., d-2, 1, 3, ..., d-1]``: interleaved pairs -> split halves (Lecture 16).

    ``apply_rope(x, ..., interleaved=True)[..., perm] == apply_rope(x[..., perm], ..., interleaved=False)``,
    so permuting the output columns of ``W_q`` and ``W_k`` by ``perm`` turns a model trained with one
    pairing into the same model with the other (the scores ``q . k`` are unchanged).
    """
    d = _even_width(d)
    return torch.cat([torch.arange(0, d, 2), torch.arange(1, d, 2)])   # (d,)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions=None, offset: int = 0,
               interleaved: bool = True) -> torch.Tensor:
    """Rotate each pair of features of ``x`` (..., T, d) by ``p * theta_i`` at its position ``p`` (Lecture 16).

    ``cos, sin``: the ``(T_max, d/2)`` tables of :func:`rope_cache`. Positions are ``positions``
    (int tensor of shape ``(T,)`` or broadcastable to ``x``'s leading dims + ``(T,)``) or, without it,
    ``offset, offset + 1, ..., offset + T - 1`` (``offset`` = the number of cached tokens when decoding).
    Pair ``i`` is ``(x_2i, x_2i+1)`` with ``interleaved=True`` (RoFormer, DeepSeek) and
    ``(x_i, x_i+d/2)`` with ``interleaved=False`` (Llama/GPT-NeoX in Hugging Face); each pair ``(a, b)``
    becomes ``(a cos - b sin, a sin + b cos)``, a counter-clockwise turn. Returns ``x``'s shape and dtype.
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError("x must be a tensor of shape (..., T, d), for example (batch, heads, T, head_dim).")
    T, d = x.shape[-2], x.shape[-1]
    if d % 2 or d == 0:
        raise ValueError(f"the rotated width d = {d} must be even and positive (features are rotated in pairs): "
                         f"use an even head (or RoPE) width.")
    if cos.dim() != 2 or cos.shape != sin.shape or cos.shape[-1] != d // 2:
        raise ValueError(f"cos and sin must be (T_max, d/2) = (T_max, {d // 2}) tables for x of width {d}, "
                         f"got {tuple(cos.shape)} and {tuple(sin.shape)}: build them with rope_cache(T_max, {d}).")
    T_max = cos.shape[0]
    if positions is None:
        if isinstance(offset, bool) or not isinstance(offset, numbers.Integral) or offset < 0:
            raise ValueError(f"offset must be a non-negative int (the number of tokens before x), got {offset!r}.")
        if offset + T > T_max:
            raise ValueError(f"positions {offset} ... {offset + T - 1} go beyond the table of {T_max} positions: "
                             f"build it with rope_cache(T_max >= {offset + T}, {d}).")
        c, s = cos[offset:offset + T], sin[offset:offset + T]          # (T, d/2)
    else:
        positions = torch.as_tensor(positions)
        if positions.dtype.is_floating_point or positions.dtype == torch.bool or positions.dim() == 0 \
                or positions.shape[-1] != T:
            raise ValueError(f"positions must be an int tensor whose last dimension is T = {T}, "
                             f"got {positions.dtype} of shape {tuple(positions.shape)}.")
        if positions.numel() and (positions.min() < 0 or positions.max() >= T_max):
            raise ValueError(f"positions must lie in 0 ... {T_max - 1} (the table has {T_max} positions), got "
                             f"{int(positions.min())} ... {int(positions.max())}: build it with "
                             f"rope_cache(T_max >= {int(positions.max()) + 1}, {d}).")
        c, s = cos[positions], sin[positions]                          # (..., T, d/2)
    c, s = c.to(x.dtype), s.to(x.dtype)
    if interleaved:
        a, b = x[..., 0::2], x[..., 1::2]                              # (..., T, d/2): x_2i, x_2i+1
        return torch.stack([a * c - b * s, a * s + b * c], dim=-1).flatten(-2)   # (..., T, d)
    a, b = x[..., : d // 2], x[..., d // 2:]                           # (..., T, d/2): x_i, x_i+d/2
    return torch.cat([a * c - b * s, a * s + b * c], dim=-1)           # (..., T, d)

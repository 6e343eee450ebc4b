"""Exercises of Lecture 14: the binary encoding of positions, and the bits that flip between neighbours."""

from __future__ import annotations

import torch

from utils.exercises import Case, exercise
from utils.positional import binary_positions


@exercise("14.1", "binary positions, most significant bit first")
def _cases_binary():
    inputs = [
        ("the lecture's 256 positions in 8 bits (row 200 = 11001000)", 256, 8),
        ("5 positions in 3 bits: rows 000 ... 100", 5, 3),
        ("one position (T = 1) in 4 bits", 1, 4),
        ("T = 2**n_bits exactly: 16 positions in 4 bits", 16, 4),
        ("1000 positions in 10 bits (T not a power of 2)", 1000, 10),
        ("7 positions in 12 bits: leading zeros", 7, 12),
    ]
    return [Case(label, (T, n_bits), binary_positions(T, n_bits)) for label, T, n_bits in inputs]


def _flips(bits: torch.Tensor) -> torch.Tensor:
    return (bits[1:] != bits[:-1]).sum(dim=-1)


@exercise("14.2", "Hamming distance between neighbouring rows")
def _cases_hamming():
    g = torch.Generator().manual_seed(14)
    inputs = [
        ("the lecture's 256 positions in 8 bits", binary_positions(256, 8)),
        ("8 positions in 3 bits: 3 -> 4 flips all 3 bits", binary_positions(8, 3)),
        ("two rows only", binary_positions(2, 5)),
        ("random bit rows (not consecutive numbers), 6 x 7", torch.randint(0, 2, (6, 7), generator=g)),
        ("random bit rows, 10 x 3", torch.randint(0, 2, (10, 3), generator=g)),
        ("one bit per row: 0, 1, 1, 0, 0", torch.tensor([[0], [1], [1], [0], [0]])),
    ]
    return [Case(label, (bits.clone(),), _flips(bits)) for label, bits in inputs]

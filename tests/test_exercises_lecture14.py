"""Lecture 14's checkers accept the right answers and reject the wrong answers learners write."""

import pytest
import torch

from checker_tools import assert_accepts, assert_rejects

# --- 14.1: binary positions -------------------------------------------------------------------------


def binary_shift(T, n_bits):
    return (torch.arange(T)[:, None] >> torch.arange(n_bits - 1, -1, -1)) & 1


def binary_strings(T, n_bits):  # via Python's format: slow but right
    return torch.tensor([[int(c) for c in format(p, f"0{n_bits}b")] for p in range(T)], dtype=torch.long)


def binary_divide(T, n_bits):
    p = torch.arange(T)[:, None]
    powers = 2 ** torch.arange(n_bits - 1, -1, -1)
    return (p // powers) % 2


def test_14_1_accepts():
    for answer in (binary_shift, binary_strings, binary_divide):
        assert_accepts("14.1", answer)


@pytest.mark.parametrize("wrong, fragment", [
    # least significant bit first: row 200 reads 00010011
    (lambda T, n: (torch.arange(T)[:, None] >> torch.arange(n)) & 1, "case 1 (the lecture's 256 positions"),
    # float bits
    (lambda T, n: ((torch.arange(T)[:, None] >> torch.arange(n - 1, -1, -1)) & 1).float(),
     "expected dtype torch.int64, got torch.float32"),
    # int32 bits
    (lambda T, n: ((torch.arange(T)[:, None] >> torch.arange(n - 1, -1, -1)) & 1).int(),
     "expected dtype torch.int64, got torch.int32"),
    # positions 1 ... T instead of 0 ... T - 1
    (lambda T, n: (torch.arange(1, T + 1)[:, None] >> torch.arange(n - 1, -1, -1)) & 1, "entries differ"),
    # the powers of two themselves instead of 0/1 bits
    (lambda T, n: torch.arange(T)[:, None] & 2 ** torch.arange(n - 1, -1, -1), "entries differ"),
    # a Python list of strings
    (lambda T, n: [format(p, f"0{n}b") for p in range(T)], "expected a tensor"),
])
def test_14_1_rejects(wrong, fragment):
    assert_rejects("14.1", wrong, fragment)


# --- 14.2: Hamming distance between neighbours --------------------------------------------------------


def test_14_2_accepts():
    assert_accepts("14.2", lambda b: (b[1:] != b[:-1]).sum(dim=-1))
    assert_accepts("14.2", lambda b: (b[1:] - b[:-1]).abs().sum(dim=-1))
    assert_accepts("14.2", lambda b: (b[1:] ^ b[:-1]).sum(dim=-1))


@pytest.mark.parametrize("wrong, fragment", [
    # signed sum of the differences: 0111 -> 1000 gives -2, not 4
    (lambda b: (b[1:] - b[:-1]).sum(dim=-1), "entries differ"),
    # Euclidean distance: a float, sqrt of the count
    (lambda b: (b[1:] - b[:-1]).float().norm(dim=-1), "expected dtype torch.int64, got torch.float32"),
    # counts as floats
    (lambda b: (b[1:] != b[:-1]).float().sum(dim=-1), "expected dtype torch.int64, got torch.float32"),
    # wrap-around with roll: T rows instead of T - 1
    (lambda b: (torch.roll(b, -1, dims=0) != b).sum(dim=-1), "expected shape (255,), got (256,)"),
    # computed from the row index (trailing ones + 1): right only for consecutive numbers
    (lambda b: torch.tensor([((p ^ (p + 1)).bit_length()) for p in range(b.shape[0] - 1)]),
     "case 4 (random bit rows"),
    # summed over the wrong axis
    (lambda b: (b[1:] != b[:-1]).sum(dim=0), "expected shape"),
])
def test_14_2_rejects(wrong, fragment):
    assert_rejects("14.2", wrong, fragment)

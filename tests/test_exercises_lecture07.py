"""Lecture 07 checkers: each accepts the right answer and rejects the wrong answers learners write."""

import torch
from torch import nn

from checker_tools import assert_accepts, assert_rejects
from utils.attention import CausalAttention


# --- 07.1 the head wrapper -------------------------------------------------------------------------

class Wrapper(nn.Module):
    def __init__(self, d_in, d_out, context_length, n_heads, dropout=0.0, qkv_bias=False):
        super().__init__()
        self.heads = nn.ModuleList(
            CausalAttention(d_in, d_out // n_heads, context_length, dropout, qkv_bias) for _ in range(n_heads))

    def forward(self, x):
        return torch.cat([head(x) for head in self.heads], dim=-1)


def test_07_1_accepts_the_wrapper():
    assert_accepts("07.1", Wrapper)


def test_07_1_rejects_concatenating_along_the_wrong_axis():
    class TokenAxis(Wrapper):
        def forward(self, x):
            return torch.cat([head(x) for head in self.heads], dim=1)

    assert_rejects("07.1", TokenAxis, "expected shape (1, 11, 4), got (1, 22, 2)")

    class Stacked(Wrapper):
        def forward(self, x):
            return torch.stack([head(x) for head in self.heads], dim=-1).flatten(-2)  # interleaves the heads

    assert_rejects("07.1", Stacked, "largest difference")


def test_07_1_rejects_heads_of_full_width():
    class FullWidth(Wrapper):
        def __init__(self, d_in, d_out, context_length, n_heads, dropout=0.0, qkv_bias=False):
            nn.Module.__init__(self)
            self.heads = nn.ModuleList(
                CausalAttention(d_in, d_out, context_length, dropout, qkv_bias) for _ in range(n_heads))

    assert_rejects("07.1", FullWidth, "check the layer sizes")


def test_07_1_rejects_summing_the_heads_and_a_plain_list():
    class Summed(Wrapper):
        def forward(self, x):
            return sum(head(x) for head in self.heads)

    assert_rejects("07.1", Summed, "expected shape (1, 11, 4), got (1, 11, 2)")

    class PlainList(Wrapper):  # a Python list hides the heads' weights from the module
        def __init__(self, d_in, d_out, context_length, n_heads, dropout=0.0, qkv_bias=False):
            nn.Module.__init__(self)
            self.heads = [CausalAttention(d_in, d_out // n_heads, context_length, dropout, qkv_bias)
                          for _ in range(n_heads)]

    assert_rejects("07.1", PlainList, "keep the attribute names")


def test_07_1_rejects_one_head_reused_n_times():
    class Shared(Wrapper):
        def forward(self, x):
            return torch.cat([self.heads[0](x) for _ in self.heads], dim=-1)

    assert_rejects("07.1", Shared, "largest difference")


# --- 07.2 split a projection matrix ----------------------------------------------------------------

def test_07_2_accepts_column_blocks():
    assert_accepts("07.2", lambda W, n: [W[:, h * (W.shape[1] // n):(h + 1) * (W.shape[1] // n)] for h in range(n)])
    assert_accepts("07.2", lambda W, n: list(W.chunk(n, dim=1)))


def test_07_2_rejects_rows_and_interleaved_columns():
    assert_rejects("07.2", lambda W, n: list(W.chunk(n, dim=0)), "expected shape (8, 2)")
    assert_rejects("07.2", lambda W, n: [W[:, h::n] for h in range(n)], "largest difference")


# --- 07.3 counting weights -------------------------------------------------------------------------

def test_07_3_accepts_the_count():
    assert_accepts("07.3", lambda H, T: (H * T * T, H * T * (T + 1) // 2))


def test_07_3_rejects_a_float_a_missing_diagonal_and_one_head_only():
    assert_rejects("07.3", lambda H, T: (H * T * T, H * T * (T + 1) / 2), "return an int")
    assert_rejects("07.3", lambda H, T: (H * T * T, H * T * (T - 1) // 2), "result 1")
    assert_rejects("07.3", lambda H, T: (T * T, T * (T + 1) // 2), "result 0")

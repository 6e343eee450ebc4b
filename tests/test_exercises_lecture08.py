"""Lecture 08's checkers accept the right answers and reject the wrong answers learners write."""

import math

import pytest
import torch

from checker_tools import assert_accepts, assert_rejects
from utils.attention import MultiHeadAttention

# --- 08.1: split into heads -----------------------------------------------------------------------


def split_right(x, n_heads):
    B, T, d_out = x.shape
    return x.view(B, T, n_heads, d_out // n_heads).transpose(1, 2)


def split_unflatten(x, n_heads):
    return x.unflatten(-1, (n_heads, -1)).transpose(1, 2)


def split_view_only(x, n_heads):  # right shape, wrong head layout: reads memory in token order
    B, T, d_out = x.shape
    return x.view(B, n_heads, T, d_out // n_heads)


def split_no_transpose(x, n_heads):  # (B, T, H, d_h): the heads are not grouped
    B, T, d_out = x.shape
    return x.view(B, T, n_heads, d_out // n_heads)


def split_interleaved(x, n_heads):  # head h takes columns h, h + H, ...: interleaved instead of blocks
    B, T, d_out = x.shape
    return x.view(B, T, d_out // n_heads, n_heads).permute(0, 3, 1, 2)


def test_08_1_accepts_split():
    assert_accepts("08.1", split_right)
    assert_accepts("08.1", split_unflatten)


@pytest.mark.parametrize("wrong, fragment", [
    (split_view_only, "case 1 (the lecture's shape: (1, 3, 6) into 2 heads of 3) is wrong: largest difference"),
    (split_no_transpose, "expected shape (1, 2, 3, 3), got (1, 3, 2, 3)"),
    (split_interleaved, "largest difference"),
])
def test_08_1_rejects(wrong, fragment):
    assert_rejects("08.1", wrong, fragment)


# --- 08.2: MultiHeadAttention.forward --------------------------------------------------------------


def make_forward(view_without_transpose=False, merge_without_transpose=False, scale_by_d_out=False,
                 no_out_proj=False, uncropped_mask=False, no_dropout=False, mask_after_softmax=False,
                 dropout_on_context=False, split_by_d_in=False):
    """The right forward pass, or one with a mistake learners make."""

    class Answer(MultiHeadAttention):
        def forward(self, x):
            B, T, d_in = x.shape
            H, d_h = self.n_heads, self.head_dim
            q, k, v = self.qkv(x).split(d_in if split_by_d_in else self.d_out, dim=-1)
            if view_without_transpose:  # reshape: .view itself refuses the column slices of qkv(x)
                q, k, v = (t.reshape(B, H, T, d_h) for t in (q, k, v))
            else:
                q, k, v = (t.view(B, T, H, d_h).transpose(1, 2) for t in (q, k, v))
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.d_out if scale_by_d_out else d_h)
            mask = self.mask if uncropped_mask else self.mask[:T, :T]
            if mask_after_softmax:
                weights = torch.softmax(scores, dim=-1).masked_fill(mask, 0.0)
            else:
                weights = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
            if not (no_dropout or dropout_on_context):
                weights = self.dropout(weights)
            context = weights @ v  # (B, H, T, d_h)
            if dropout_on_context:
                context = self.dropout(context)
            if merge_without_transpose:
                merged = context.contiguous().view(B, T, self.d_out)
            else:
                merged = context.transpose(1, 2).contiguous().view(B, T, self.d_out)
            return merged if no_out_proj else self.out_proj(merged)

    return Answer


def test_08_2_accepts_forward():
    assert_accepts("08.2", make_forward())
    assert_accepts("08.2", MultiHeadAttention)  # the reference itself


@pytest.mark.parametrize("flaw, fragment", [
    ("view_without_transpose", "case 1 (the lecture's X (1, 3, 6), d_out 6, 2 heads of 3) is wrong"),
    ("merge_without_transpose", "case 1 (the lecture's X"),
    ("scale_by_d_out", "case 1 (the lecture's X"),
    ("no_out_proj", "case 1 (the lecture's X"),
    ("uncropped_mask", "case 2 (batch of 2, T = 4 < context_length 7, 3 heads of 2) raised RuntimeError"),
    ("no_dropout", "case 5 (training mode: dropout 0.5 on the attention weights (seeded)) is wrong"),
    ("dropout_on_context", "case 5 (training mode"),
    ("mask_after_softmax", "case 1 (the lecture's X"),
    ("split_by_d_in", "case 3 (d_in 5 != d_out 8"),
])
def test_08_2_rejects(flaw, fragment):
    assert_rejects("08.2", make_forward(**{flaw: True}), fragment)


def test_08_2_shows_the_learners_line_when_the_mask_is_not_cropped():
    text = assert_rejects("08.2", make_forward(uncropped_mask=True), "in your code, line")
    assert "masked_fill" in text


def test_08_2_rejects_view_without_transpose_on_the_split_slices():
    class ViewOnly(MultiHeadAttention):
        def forward(self, x):
            B, T, _ = x.shape
            q, k, v = self.qkv(x).split(self.d_out, dim=-1)
            q = q.view(B, self.n_heads, T, self.head_dim)
            return q

    assert_rejects("08.2", ViewOnly, "raised RuntimeError")


def test_08_2_rejects_renamed_attributes():
    class Renamed(torch.nn.Module):
        def __init__(self, d_in, d_out, context_length, n_heads, dropout=0.0, qkv_bias=False):
            super().__init__()
            self.W_qkv = torch.nn.Linear(d_in, 3 * d_out, bias=qkv_bias)
            self.out_proj = torch.nn.Linear(d_out, d_out)

        def forward(self, x):
            return self.out_proj(self.W_qkv(x)[..., : self.out_proj.in_features])

    assert_rejects("08.2", Renamed, "keep the attribute names")


# --- 08.3: count the parameters --------------------------------------------------------------------


def params_right(d_in, d_out, qkv_bias):
    return 3 * d_out * d_in + (3 * d_out if qkv_bias else 0) + d_out * d_out + d_out


def test_08_3_accepts_count():
    assert_accepts("08.3", params_right)


@pytest.mark.parametrize("wrong, fragment", [
    (lambda d_in, d_out, qkv_bias: 3 * d_out * d_in + (3 * d_out if qkv_bias else 0) + d_out * d_out,
     "case 1 (the lecture's layer"),  # forgets out_proj's bias
    (lambda d_in, d_out, qkv_bias: 3 * d_out * d_in + d_out * d_out + d_out, "case 2 (GPT-2 small"),  # no qkv bias
    (lambda d_in, d_out, qkv_bias: 4 * d_in * d_out + (3 * d_out if qkv_bias else 0) + d_out,
     "case 5 (d_in 8 != d_out 4"),  # out_proj taken as d_in x d_out
    (lambda d_in, d_out, qkv_bias: float(params_right(d_in, d_out, qkv_bias)), "return an int"),
])
def test_08_3_rejects(wrong, fragment):
    assert_rejects("08.3", wrong, fragment)

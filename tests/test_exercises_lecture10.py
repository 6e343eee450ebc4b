"""Lecture 10's checkers accept the right answers and reject the wrong answers learners write."""

import math

import pytest
import torch

from checker_tools import assert_accepts, assert_rejects
from utils.attention import MultiHeadAttention, MultiQueryAttention

# --- 10.1: MultiQueryAttention.forward -------------------------------------------------------------


def make_forward(share="broadcast", no_scale=False, scale_by_d_out=False, uncropped_mask=False,
                 no_dropout=False, mask_after_softmax=False, no_out_proj=False, split_in_thirds=False,
                 base=MultiQueryAttention):
    """The right forward pass (K/V shared by broadcasting, expand or repeat_interleave), or one with a mistake.

    ``share``: how the one K/V head reaches every query head. "broadcast", "expand" and "repeat" are
    right; "tokens" repeats K/V along the token axis of (B, T, d_h) and then views it as heads (the
    right shape, the wrong rows); "axis2" expands a new axis 2 of (B, T, d_h), the layout of the
    queries before their transpose, so K/V are (B, T, H, d_h) while Q is (B, H, T, d_h).
    """

    class Answer(base):
        def forward(self, x):
            B, T, _ = x.shape
            H, d_h = self.n_heads, self.head_dim
            if split_in_thirds:
                q, k, v = self.qkv(x).chunk(3, dim=-1)
            else:
                q, k, v = self.qkv(x).split([self.d_out, d_h, d_h], dim=-1)  # (B, T, d_out), 2 x (B, T, d_h)
            q = q.reshape(B, T, H, d_h).transpose(1, 2)  # (B, H, T, d_h)
            if share == "broadcast":
                k, v = k.unsqueeze(1), v.unsqueeze(1)  # (B, 1, T, d_h): broadcast over the heads
            elif share == "expand":
                k, v = (t.unsqueeze(1).expand(B, H, T, d_h) for t in (k, v))
            elif share == "repeat":
                k, v = (t.unsqueeze(1).repeat_interleave(H, dim=1) for t in (k, v))
            elif share == "tokens":  # dim 1 of (B, T, d_h) is the token axis: rows t0 t0 t0 t0 t1 ...
                k, v = (t.repeat_interleave(H, dim=1).reshape(B, H, T, d_h) for t in (k, v))
            elif share == "axis2":  # (B, T, H, d_h): heads on axis 2, not 1
                k, v = (t.unsqueeze(2).expand(B, T, H, d_h) for t in (k, v))
            scale = 1.0 if no_scale else math.sqrt(self.d_out if scale_by_d_out else d_h)
            scores = q @ k.transpose(-2, -1) / scale  # (B, H, T, T)
            mask = self.mask if uncropped_mask else self.mask[:T, :T]
            if mask_after_softmax:
                weights = torch.softmax(scores, dim=-1).masked_fill(mask, 0.0)
            else:
                weights = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
            if not no_dropout:
                weights = self.dropout(weights)
            merged = (weights @ v).transpose(1, 2).reshape(B, T, self.d_out)
            return merged if no_out_proj else self.out_proj(merged)

    return Answer


def test_10_1_accepts_forward():
    for share in ("broadcast", "expand", "repeat"):
        assert_accepts("10.1", make_forward(share=share))
    assert_accepts("10.1", MultiQueryAttention)  # the reference itself


@pytest.mark.parametrize("flaw, fragment", [
    ({"share": "tokens"}, "case 1 (the notebook's example: X (1, 9, 8), 4 query heads of 2, one K/V head) is wrong"),
    ({"share": "axis2"}, "case 1 (the notebook's example: X (1, 9, 8), 4 query heads of 2, one K/V head) raised"),
    ({"no_scale": True}, "case 1 (the notebook's example"),
    ({"scale_by_d_out": True}, "case 1 (the notebook's example"),
    ({"uncropped_mask": True}, "case 2 (batch of 3, T = 5 < context_length 9, 2 heads of 4) raised RuntimeError"),
    ({"no_dropout": True}, "case 5 (training mode: dropout 0.5 on the attention weights (seeded)) is wrong"),
    ({"mask_after_softmax": True}, "case 1 (the notebook's example"),
    ({"no_out_proj": True}, "case 1 (the notebook's example"),
    ({"split_in_thirds": True}, "case 1 (the notebook's example"),
])
def test_10_1_rejects(flaw, fragment):
    assert_rejects("10.1", make_forward(**flaw), fragment)


def test_10_1_rejects_per_head_key_value_projections():
    # multi-head sizes: qkv maps d_in to 3 * d_out (a K and a V head per query head)
    text = assert_rejects("10.1", make_forward(base=MultiHeadAttention), "raised ValueError: parameter qkv.weight")
    assert "has shape (24, 8), the reference's (12, 8)" in text


def test_10_1_rejects_renamed_attributes():
    class Renamed(torch.nn.Module):
        def __init__(self, d_in, d_out, context_length, n_heads, dropout=0.0, qkv_bias=False):
            super().__init__()
            self.W_query = torch.nn.Linear(d_in, d_out, bias=qkv_bias)
            self.W_kv = torch.nn.Linear(d_in, 2 * (d_out // n_heads), bias=qkv_bias)
            self.out_proj = torch.nn.Linear(d_out, d_out)

        def forward(self, x):
            return self.out_proj(self.W_query(x))

    assert_rejects("10.1", Renamed, "keep the attribute names")


# --- 10.2: cache bytes, MHA and MQA ----------------------------------------------------------------


def cache_right(n_layers, n_heads, head_dim, seq_len, batch, bytes_per_element):
    per_head = n_layers * batch * seq_len * head_dim * 2 * bytes_per_element  # K and V, every layer
    return n_heads * per_head, per_head


def test_10_2_accepts_cache_bytes():
    assert_accepts("10.2", cache_right)
    assert_accepts("10.2", lambda *a: list(cache_right(*a)))  # a list is fine too


@pytest.mark.parametrize("wrong, fragment", [
    (lambda L, H, d, T, B, b: (L * B * T * H * d * b, L * B * T * d * b), "case 1 (GPT-3 175B"),  # K only
    (lambda L, H, d, T, B, b: (2 * L * B * T * H * d * b, 2 * L * B * T * H * b), "case 1 (GPT-3 175B"),  # / d_h
    (lambda L, H, d, T, B, b: (2 * B * T * H * d * b, 2 * B * T * d * b), "case 1 (GPT-3 175B"),  # one layer
    (lambda L, H, d, T, B, b: (2 * L * T * H * d * b, 2 * L * T * d * b), "case 2 (GPT-2 small"),  # no batch
    (lambda L, H, d, T, B, b: (2 * L * B * T * H * d * b, 2 * L * B * T * H * d * b / H), "return an int"),
    (lambda L, H, d, T, B, b: (16 * L * B * T * H * d, 16 * L * B * T * d), "case 1 (GPT-3 175B"),  # bits
    (lambda L, H, d, T, B, b: 2 * L * B * T * H * d * b, "expected 2 results"),  # only the MHA number
])
def test_10_2_rejects(wrong, fragment):
    assert_rejects("10.2", wrong, fragment)


# --- 10.3: parameters of one MQA layer ---------------------------------------------------------------


def params_right(d_in, d_out, n_heads, qkv_bias):
    d_h = d_out // n_heads
    width = d_out + 2 * d_h  # Q for every head, one K head, one V head
    return d_in * width + (width if qkv_bias else 0) + d_out * d_out + d_out


def test_10_3_accepts_count():
    assert_accepts("10.3", params_right)


@pytest.mark.parametrize("wrong, fragment", [
    (lambda d_in, d_out, H, bias: 3 * d_out * d_in + (3 * d_out if bias else 0) + d_out * d_out + d_out,
     "case 1 (the notebook's small GPT"),  # the MHA count
    (lambda d_in, d_out, H, bias: params_right(d_in, d_out, H, bias) - d_out, "case 1 (the notebook's small GPT"),
    (lambda d_in, d_out, H, bias: d_in * (d_out + 2 * (d_out // H)) + (3 * d_out if bias else 0) + d_out * d_out
     + d_out, "case 2 (GPT-2 small's width"),  # K/V biases as wide as d_out
    (lambda d_in, d_out, H, bias: d_in * (d_out + 2 * d_out / H) + (d_out + 2 * d_out / H if bias else 0)
     + d_out * d_out + d_out, "return an int"),
    (lambda d_in, d_out, H, bias: d_in * (d_out + 2 * (d_out // H)) + (d_out + 2 * (d_out // H) if bias else 0)
     + d_in * d_out + d_out, "case 4 (d_in 10 != d_out 8"),  # out_proj taken as d_in x d_out
])
def test_10_3_rejects(wrong, fragment):
    assert_rejects("10.3", wrong, fragment)

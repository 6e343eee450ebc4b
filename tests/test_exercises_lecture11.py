"""Lecture 11's checkers accept the right answers and reject the wrong answers learners write."""

import math

import pytest
import torch

from checker_tools import assert_accepts, assert_rejects
from utils.attention import GroupedQueryAttention

# --- 11.1: share each K/V head with its group ------------------------------------------------------


def repeat_right(kv, group_size):
    return kv.repeat_interleave(group_size, dim=1)


def repeat_expand(kv, group_size):  # the copy-free view, reshaped at the end
    B, G, T, d_h = kv.shape
    return kv[:, :, None].expand(B, G, group_size, T, d_h).reshape(B, G * group_size, T, d_h)


def repeat_index(kv, group_size):
    return kv[:, torch.arange(kv.shape[1] * group_size) // group_size]


def test_11_1_accepts():
    for answer in (repeat_right, repeat_expand, repeat_index):
        assert_accepts("11.1", answer)


@pytest.mark.parametrize("wrong, fragment", [
    # .repeat tiles the groups: heads g0 g1 g0 g1; right shape, wrong content on the lecture's case
    (lambda kv, gs: kv.repeat(1, gs, 1, 1),
     "case 1 (the lecture's keys: 2 K/V heads for 4 query heads, (1, 2, 5, 2)) is wrong: largest difference"),
    # expanded on the token axis instead of the head axis
    (lambda kv, gs: kv.repeat_interleave(gs, dim=2), "expected shape (1, 4, 5, 2), got (1, 2, 10, 2)"),
    # expanded on the batch axis
    (lambda kv, gs: kv.repeat_interleave(gs, dim=0), "expected shape (1, 4, 5, 2), got (2, 2, 5, 2)"),
    # the expand view with the group axis after the heads: same tiling mistake as .repeat
    (lambda kv, gs: kv[:, None].expand(kv.shape[0], gs, *kv.shape[1:]).reshape(
        kv.shape[0], -1, *kv.shape[2:]), "case 1 (the lecture's keys"),
    # only right for multi-query attention: expand the single head to all query heads
    (lambda kv, gs: kv.expand(kv.shape[0], kv.shape[1] * gs, *kv.shape[2:]), "case 1 (the lecture's keys"),
])
def test_11_1_rejects(wrong, fragment):
    assert_rejects("11.1", wrong, fragment)


# --- 11.2: GroupedQueryAttention.forward -------------------------------------------------------------


def make_forward(split_equal=False, kv_as_query_heads=False, tile_groups=False, scale_by_kv_dim=False,
                 no_dropout=False, uncropped_mask=False, no_out_proj=False, mask_after_softmax=False):
    """The right forward pass, or one with a mistake learners make."""

    class Answer(GroupedQueryAttention):
        def forward(self, x):
            B, T, d_in = x.shape
            H, G, d_h = self.n_heads, self.n_kv_groups, self.head_dim
            if split_equal:  # lecture 08's split into three equal parts
                q, k, v = self.qkv(x).split(self.d_out, dim=-1)
            else:
                q, k, v = self.qkv(x).split([self.d_out, self.kv_dim, self.kv_dim], dim=-1)
            q = q.view(B, T, H, d_h).transpose(1, 2)
            if kv_as_query_heads:  # reshape the keys as H heads: mixes tokens into heads
                k, v = (t.reshape(B, H, T, -1) for t in (k, v))
            else:
                k, v = (t.view(B, T, G, d_h).transpose(1, 2) for t in (k, v))
                if tile_groups:
                    k, v = k.repeat(1, H // G, 1, 1), v.repeat(1, H // G, 1, 1)
                else:
                    k, v = k.repeat_interleave(H // G, dim=1), v.repeat_interleave(H // G, dim=1)
            scores = q @ k.transpose(2, 3) / math.sqrt(self.kv_dim if scale_by_kv_dim else d_h)
            mask = self.mask if uncropped_mask else self.mask[:T, :T]
            if mask_after_softmax:
                weights = torch.softmax(scores, dim=-1).masked_fill(mask, 0.0)
            else:
                weights = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
            if not no_dropout:
                weights = self.dropout(weights)
            context = (weights @ v).transpose(1, 2).contiguous().view(B, T, self.d_out)
            return context if no_out_proj else self.out_proj(context)

    return Answer


def test_11_2_accepts():
    assert_accepts("11.2", make_forward())
    assert_accepts("11.2", GroupedQueryAttention)  # the reference itself


@pytest.mark.parametrize("flaw, fragment", [
    ("split_equal", "case 1 (the lecture's X (1, 5, 8): 4 heads of 2 in 2 groups) raised"),
    ("kv_as_query_heads", "case 1 (the lecture's X"),
    ("tile_groups", "case 1 (the lecture's X (1, 5, 8): 4 heads of 2 in 2 groups) is wrong"),
    ("scale_by_kv_dim", "case 1 (the lecture's X"),
    ("uncropped_mask", "case 2 (6 heads in 3 groups, batch 2, T = 4 < context_length 7) raised"),
    ("no_out_proj", "case 1 (the lecture's X"),
    ("mask_after_softmax", "case 1 (the lecture's X"),
    ("no_dropout", "case 6 (training mode: dropout 0.5 on the attention weights (seeded)) is wrong"),
])
def test_11_2_rejects(flaw, fragment):
    assert_rejects("11.2", make_forward(**{flaw: True}), fragment)


def test_11_2_rejects_an_mha_layer():
    class MHALike(torch.nn.Module):  # K/V as wide as the queries: the parameter shapes differ
        def __init__(self, d_in, d_out, context_length, n_heads, n_kv_groups, dropout=0.0, qkv_bias=False):
            super().__init__()
            self.qkv = torch.nn.Linear(d_in, 3 * d_out, bias=qkv_bias)
            self.out_proj = torch.nn.Linear(d_out, d_out)

        def forward(self, x):
            return self.out_proj(self.qkv(x)[..., : self.out_proj.in_features])

    assert_rejects("11.2", MHALike, "parameter qkv.weight has shape")


# --- 11.3: groups for a memory budget ------------------------------------------------------------------


def budget_right(n_layers, n_heads, head_dim, seq_len, batch, budget_bytes, bytes_per_element):
    per_group = n_layers * batch * seq_len * head_dim * 2 * bytes_per_element
    return max((g for g in range(1, n_heads + 1) if n_heads % g == 0 and g * per_group <= budget_bytes), default=0)


def budget_not_a_divisor(n_layers, n_heads, head_dim, seq_len, batch, budget_bytes, bytes_per_element):
    per_group = n_layers * batch * seq_len * head_dim * 2 * bytes_per_element
    return min(n_heads, budget_bytes // per_group)


def budget_strict(n_layers, n_heads, head_dim, seq_len, batch, budget_bytes, bytes_per_element):
    per_group = n_layers * batch * seq_len * head_dim * 2 * bytes_per_element
    return max((g for g in range(1, n_heads + 1) if n_heads % g == 0 and g * per_group < budget_bytes), default=0)


def budget_no_kv_factor(n_layers, n_heads, head_dim, seq_len, batch, budget_bytes, bytes_per_element):
    per_group = n_layers * batch * seq_len * head_dim * bytes_per_element  # forgets K *and* V
    return max((g for g in range(1, n_heads + 1) if n_heads % g == 0 and g * per_group <= budget_bytes), default=0)


def budget_at_least_one(n_layers, n_heads, head_dim, seq_len, batch, budget_bytes, bytes_per_element):
    return max(1, budget_right(n_layers, n_heads, head_dim, seq_len, batch, budget_bytes, bytes_per_element))


def test_11_3_accepts():
    assert_accepts("11.3", budget_right)


@pytest.mark.parametrize("wrong, fragment", [
    (budget_not_a_divisor, "case 1 (Llama-3-8B shape, 8k tokens, batch 16, 16 GB in bf16 (7.45 groups would fit: "
                           "not a divisor)) is wrong: expected 4, got 7"),
    (budget_strict, "case 2 (the same, budget exactly the cache of 8 groups"),
    (budget_no_kv_factor, "case 1 (Llama-3-8B shape"),
    (budget_at_least_one, "case 4 (Llama-3-70B shape, 128k tokens, batch 8, 10 GB: not even one K/V head fits)"),
    (lambda *args: float(budget_right(*args)), "return an int"),
])
def test_11_3_rejects(wrong, fragment):
    assert_rejects("11.3", wrong, fragment)
